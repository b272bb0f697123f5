"""Ctrl-C inside a training step: seen during the backward pass, and the step dropped cleanly."""

import os
import signal
import threading

import pytest
import torch

from dvkit.train.loop import LoopSettings, SilentReporter, Stage, TrainingInterrupted, run_stage


def _stage(weight: torch.nn.Parameter, depth: int, on_backward=None) -> Stage:
    """A stage whose loss is a chain of `depth` matmuls, drawing noise from the generator."""

    def loss(generator: torch.Generator) -> torch.Tensor:
        value = torch.randn(weight.shape, generator=generator)
        for _ in range(depth):
            value = torch.tanh(value @ weight)
        result = value.square().mean()
        if on_backward is not None:
            result.register_hook(on_backward)
        return result

    return Stage("stage", steps=4, lr=0.1, parameters={"w": weight}, loss=loss)


def _fit(folder, weight, resume=False, on_backward=None, depth=3):
    generator = torch.Generator().manual_seed(0)
    settings = LoopSettings(warmup_steps=0, checkpoint_every=100)
    stage = _stage(weight, depth, on_backward)
    return run_stage(stage, settings, folder, generator, SilentReporter(), resume)


def test_an_interrupt_inside_a_step_drops_that_step_and_resumes_exactly(tmp_path) -> None:
    straight = torch.nn.Parameter(torch.eye(8) * 0.5)
    expected = _fit(tmp_path / "a", straight)
    calls = []

    def interrupt_in_third_backward(grad):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return grad

    weight = torch.nn.Parameter(torch.eye(8) * 0.5)
    with pytest.raises(TrainingInterrupted, match="step 2/4"):
        _fit(tmp_path / "b", weight, on_backward=interrupt_in_third_backward)
    resumed = _fit(tmp_path / "b", weight, resume=True)
    assert torch.equal(weight, straight)
    assert resumed.loss_curve == expected.loss_curve


def test_ctrl_c_during_a_long_backward_pass_is_raised_before_it_ends(tmp_path) -> None:
    """The signal arrives while backward runs in C++ (0.02 s into a pass of about 0.3 s);
    without the loop's hooks it would only be seen once the whole pass had finished and
    written the gradient."""
    main = threading.get_ident()

    def press_ctrl_c_soon(grad):  # the first thing backward does; the rest is C++
        threading.Timer(0.02, signal.pthread_kill, (main, signal.SIGINT)).start()
        return grad

    weight = torch.nn.Parameter(torch.eye(64) * 0.5)
    with pytest.raises(TrainingInterrupted, match="step 0/4"):
        _fit(tmp_path, weight, on_backward=press_ctrl_c_soon, depth=6000)
    assert weight.grad is None
    assert os.path.isfile(tmp_path / "stage" / "state.pt")


def test_ctrl_c_of_a_command_says_so_once_and_only_on_rank_0(cli, tmp_path, monkeypatch) -> None:
    """Typer turns a KeyboardInterrupt into a silent exit 130: the CLI says it stopped."""
    from dvkit.catalog import Catalog

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Catalog, "open", interrupted)
    assert cli("--home", tmp_path, "list") == (130, "", "error: interrupted\n")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")  # rank 0, stopped as well, says it
    assert cli("--home", tmp_path, "list") == (130, "", "")


def test_ctrl_c_of_a_grid_says_what_is_stored(cli, grid_home, tmp_path, monkeypatch) -> None:
    import shutil

    from dvkit.cli import progress
    from dvkit.train import loop

    home = tmp_path / "registry"
    shutil.copytree(grid_home, home)
    calls = []

    def count_two_cells(*_args):
        def on_cell(done: int, total: int) -> None:
            calls.append(done)
            if len(calls) == 3:  # the start, then two cells
                raise progress.Terminated

        return on_cell

    monkeypatch.setattr(loop, "count_progress", count_two_cells)
    grid = ("--steps", "2", "--frames", "3", "--size", "16", "--clip", "tiny", "--dino", "tiny",
            "--device", "cpu", "--batch-size", "1")  # fmt: skip
    code, out, err = cli("--home", home, "bench", *grid)
    assert (code, out) == (143, ""), err
    assert err == (
        "error: stopped by SIGTERM: 2 new cells stored (2/8 in the catalog); re-run the same "
        "command to make the rest\n"
    )
