"""Numbers that are not numbers: every float option of every command, and the library behind
them, refuses NaN, infinities and values outside its range with one line."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import typer
from pydantic import ValidationError

from dvkit import ranges
from dvkit.cli.app import build_app
from dvkit.cli.context import FiniteFloat
from dvkit.errors import DvkitError
from dvkit.ranges import Range

NOT_NUMBERS = ("nan", "inf", "-Infinity", "1e999")


def _walk() -> tuple[list[tuple[tuple[str, ...], str, int, int, Range]], list[str]]:
    """(command path, option, element count, element index, range) of every float option of
    every command parsed by `number(RANGE)`, and the float options declared any other way."""
    found, undeclared = [], []

    def walk(command, path: tuple[str, ...]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))
        for param in getattr(command, "params", []) if path else []:
            elements = getattr(param.type, "types", None) or [param.type]
            for index, element in enumerate(elements):
                func = getattr(element, "func", None)
                if isinstance(func, FiniteFloat):
                    found.append((path, param.opts[0], len(elements), index, func.bounds))
                elif "Float" in type(element).__name__ or func is float:
                    undeclared.append(f"{' '.join(path)} {param.opts[0]}")

    walk(typer.main.get_command(build_app()), ())
    return found, undeclared


FLOAT_OPTIONS, UNDECLARED = _walk()


def test_every_float_option_is_parsed_by_number() -> None:
    assert UNDECLARED == []


def test_the_walk_finds_every_known_float_option() -> None:
    options = {(" ".join(path), option) for path, option, *_ in FLOAT_OPTIONS}
    known = {
        ("compose", "--subject-scale"), ("compose", "--motion-scale"), ("compose", "--guidance"),
        ("compose", "--fps"), ("compose", "--image-strength"),
        ("compose", "--image-strength-uncond"), ("compose", "--motion-until"),
        ("bench", "--guidance"), ("bench", "--motion-until"),
        ("export", "--subject-scale"), ("export", "--motion-scale"), ("export", "--guidance"),
        ("export", "--image-strength"), ("export", "--image-strength-uncond"),
        ("export", "--motion-until"),
        ("add-subject", "--inversion-lr"), ("add-subject", "--identity-lr"),
        ("add-subject", "--hidden-ratio"), ("add-subject", "--high-noise-share"),
        ("add-subject", "--high-noise-band"),
        ("add-motion", "--fps"), ("add-motion", "--lr"), ("add-motion", "--hidden-ratio"),
        ("add-motion", "--text-dropout"), ("add-motion", "--image-dropout"),
        ("add-motion", "--high-noise-share"), ("add-motion", "--high-noise-band"),
    }  # fmt: skip
    assert known <= options


def _inside(bounds: Range) -> float:
    low = -1.0 if bounds.low is None else bounds.low
    high = low + 2 if bounds.high is None else bounds.high
    return (low + high) / 2


def _outside(bounds: Range) -> list[float]:
    """Values just outside `bounds` (the open lower bound itself)."""
    values = []
    if bounds.low is not None:
        values.append(bounds.low if bounds.low_open else bounds.low - 0.01)
    if bounds.high is not None:
        values.append(bounds.high + 0.01)
    return values


@pytest.mark.parametrize(
    ("path", "option", "count", "index", "bounds"),
    FLOAT_OPTIONS,
    ids=[f"{' '.join(p)} {o} {i}" for p, o, _, i, _ in FLOAT_OPTIONS],
)
def test_every_float_option_refuses_non_numbers_and_values_out_of_range(
    cli, home, path, option, count, index, bounds
) -> None:
    catalog_bytes = (home / "catalog.db").read_bytes()
    for bad in (*NOT_NUMBERS, *map(str, _outside(bounds))):
        values = [str(_inside(bounds))] * count
        values[index] = bad
        code, out, err = cli("--home", home, *path, option, *values)
        lines = err.strip().splitlines()
        assert code != 0 and out == "", (bad, out, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert f"'{option}'" in lines[0] and f"'{bad}' is not" in lines[0], err
    assert (home / "catalog.db").read_bytes() == catalog_bytes


def test_option_parser_accepts_numbers_in_range() -> None:
    parse = FiniteFloat(ranges.FRACTION)
    assert [parse(text) for text in ("0", "0.25", "1", "1e-3")] == [0.0, 0.25, 1.0, 0.001]
    assert FiniteFloat(ranges.POSITIVE)("1e-5") == 1e-5
    assert FiniteFloat(ranges.ADAPTER_SCALE)("-0.5") == -0.5
    with pytest.raises(typer.BadParameter, match="'abc' is not a number"):
        parse("abc")


def test_help_shows_each_range(cli) -> None:
    _, out, _ = cli("compose", "--help")
    for notation in ("-10<=x<=10", "0<=x<=100", "0.1<=x<=240", "0<=x<=10", "0<=x<=1"):
        assert notation in out


def test_message_for_the_reported_example(cli, home) -> None:
    code, _, err = cli("--home", home, "compose", "--motion-scale", "nan")
    assert (code, err) == (
        2,
        "error: Invalid value for '--motion-scale': 'nan' is not a finite number from -10 to 10\n",
    )


@pytest.mark.parametrize(
    ("bounds", "inside", "outside", "text"),
    [
        (ranges.FRACTION, [0, 0.5, 1, np.float32(0.5)], [-0.01, 1.01], "from 0 to 1"),
        (ranges.POSITIVE, [1e-9, 1e9], [0, -1], "above 0"),
        (Range(0), [0, 5], [-1], "of at least 0"),
        (Range(high=2), [-5, 2], [3], "of at most 2"),
        (Range(), [-1e300, 0, 1e300], [], "a finite number"),
        (ranges.HIDDEN_RATIO, [0.01, 4], [0, 4.5], "above 0 and up to 4"),
    ],
)
def test_range_check(bounds, inside, outside, text) -> None:
    assert bounds.describe().endswith(text)
    for value in inside:
        assert bounds.check("x", value) == float(value)
    for value in (*outside, math.nan, math.inf, -math.inf, True, "0.5", None):
        with pytest.raises(DvkitError, match=rf"^x must be {bounds.describe()}, not "):
            bounds.check("x", value)


def _float_fields(model) -> list[str]:
    return [
        name
        for name, field in model.model_fields.items()
        if float in (typing.get_args(field.annotation) or (field.annotation,))
        or field.annotation == tuple[float, float]
    ]


def test_training_settings_refuse_nan_and_infinities_in_every_float_field() -> None:
    from dvkit.train.settings import MotionSettings, SubjectSettings

    for model in (SubjectSettings, MotionSettings):
        fields = _float_fields(model)
        assert {"hidden_ratio", "high_noise_share", "high_noise_band", "offset_noise"} <= set(
            fields
        )
        for name in fields:
            for bad in (math.nan, math.inf, -math.inf):
                value = (0.5, bad) if name == "high_noise_band" else bad
                with pytest.raises(ValidationError, match="finite number"):
                    model(**{name: value})


def test_training_options_have_the_ranges_of_their_settings() -> None:
    """The CLI refuses exactly what the settings models refuse (bounds from their fields)."""
    from annotated_types import Ge, Gt, Le

    from dvkit.train.settings import MotionSettings, SubjectSettings

    models = {"add-subject": SubjectSettings, "add-motion": MotionSettings}
    checked = 0
    for path, option, _, _, bounds in FLOAT_OPTIONS:
        model = models.get(path[0])
        field = model and model.model_fields.get(option.lstrip("-").replace("-", "_"))
        if field is None or not field.metadata:
            continue
        low = next((m.ge if isinstance(m, Ge) else m.gt for m in field.metadata
                    if isinstance(m, (Ge, Gt))), None)  # fmt: skip
        open_low = any(isinstance(m, Gt) for m in field.metadata)
        high = next((m.le for m in field.metadata if isinstance(m, Le)), None)
        assert (bounds.low, bounds.low_open, bounds.high) == (low, open_low, high), option
        checked += 1
    assert checked >= 8


def test_training_library_refuses_nan_before_reading_anything(catalog, tmp_path) -> None:
    from dvkit.train.api import add_motion, add_subject

    missing = tmp_path / "nowhere"
    with pytest.raises(DvkitError, match="invalid training setting lr: .*finite number"):
        add_motion("surf", [missing], catalog=catalog, lr=math.nan)
    with pytest.raises(DvkitError, match="invalid training setting hidden_ratio: .*finite"):
        add_subject("cat", [missing], catalog=catalog, hidden_ratio=math.inf)
    assert catalog.adapter_rows() == []


def test_sampler_settings_refuse_nan_guidance() -> None:
    from dvkit.generate.sampler import SamplerSettings

    for bad in (math.nan, math.inf, -1.0, 101.0):
        with pytest.raises(DvkitError, match="guidance scale must be a finite number from 0"):
            SamplerSettings(guidance_scale=bad)
    with pytest.raises(DvkitError, match="--motion-until must be a fraction"):
        SamplerSettings(motion_until=math.nan)
    assert SamplerSettings(guidance_scale=0.0).guidance_scale == 0.0


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("motion_scale", math.nan, "motion scale must be a finite number from -10 to 10"),
        ("subject_scale", -math.inf, "subject scale must be"),
        ("guidance", math.inf, "guidance must be a finite number from 0 to 100"),
        ("image_strength", math.nan, "image strength must be"),
        ("image_strength_uncond", -1.0, "image strength uncond must be"),
        ("fps", 0.0, "fps must be a finite number from 0.1 to 240"),
        ("frames", 0, "frames must be a whole number from 1 to 256"),
        ("size", -16, "size must be a whole number from 8 to 2048"),
        ("seeds", [-1], "seed must be a whole number from 0"),
        ("steps", 0, "steps must be a whole number from 1 to 1000"),
    ],
)
def test_compose_library_refuses_before_loading_anything(
    catalog, tmp_path, option, value, message
) -> None:
    from dvkit.generate.compose import compose

    out = tmp_path / "videos"
    out.mkdir()
    with pytest.raises(DvkitError, match=message):
        compose(catalog=catalog, out=out, **{option: value})
    assert list(out.iterdir()) == [] and catalog.evaluation_rows() == []


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("guidance_scale", math.nan, "guidance scale must be a finite number from 0 to 100"),
        ("image_strength", math.inf, "image strength must be"),
        ("image_strength_uncond", math.nan, "unconditional image strength must be"),
        ("subject_scale", math.nan, "subject scale must be"),
        ("motion_scale", 11.0, "motion scale must be a finite number from -10 to 10"),
        ("motion_until", math.nan, "--motion-until must be a fraction"),
    ],
)
def test_merged_export_refuses_before_reading_adapters(
    catalog, tmp_path, option, value, message
) -> None:
    from dvkit.io.export import export_merged

    out = tmp_path / "pair.safetensors"
    with pytest.raises(DvkitError, match=message):
        export_merged(catalog, "nobody", "nothing", out, **{option: value})
    assert not out.exists()
