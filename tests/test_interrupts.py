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
