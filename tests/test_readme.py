"""The README's first Python example runs as written, on the built-in `tiny` base."""

import re
from pathlib import Path

import numpy as np
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def _library_example() -> str:
    section = README.read_text().split("## Python library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_library_example_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("DVKIT_BASE")  # the example chooses its base itself
    rng = np.random.default_rng(0)
    (tmp_path / "cat").mkdir()
    for index in range(3):
        pixels = (rng.random((24, 24, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(tmp_path / "cat" / f"{index}.png")
    (tmp_path / "surf").mkdir()
    for index in range(2):
        frames = [
            Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")) for _ in range(6)
        ]
        frames[0].save(tmp_path / "surf" / f"{index}.gif", save_all=True,
                       append_images=frames[1:], duration=125)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    exec(compile(_library_example(), str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "a <cat> surfing" in out and "8 cells" in out and "cat@1 <cat>" in out
