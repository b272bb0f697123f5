"""Headers that disagree with their tensors, and malformed headers: one `error:` line from
`dvkit import` and `dvkit compose --merged`, and the catalog as it was."""

import json
import struct
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dvkit.catalog import Catalog
from dvkit.catalog.records import BaseModelRecord
from dvkit.io.adapter_file import serialize_with_hash
from dvkit.io.adapter_layout import _hidden_width
from dvkit.io.export import export_merged

BLOCK = "down_blocks.0.attentions.0.transformer_blocks.0"


def _state(home: Path) -> tuple:
    """What a failed command must leave as it was: rows, weights files, temporaries, videos."""
    with Catalog.open(home) as catalog:
        return (
            catalog.adapter_json(all_versions=True),
            catalog.evaluation_rows(),
            sorted(path.name for _, path in catalog.blobs.stored()),
            sorted(path.name for path in catalog.blobs.temporaries(stale_only=False)),
            sorted(path.name for path in (home / "videos").glob("*")),
        )


def _refused(cli, home: Path, args: list, *expected: str) -> None:
    before = _state(home)
    code, out, err = cli("--home", home, *args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    for text in expected:
        assert text in lines[0], lines[0]
    assert _state(home) == before


def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _write_raw(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def _with_metadata(path: Path, **changes: str | None) -> Path:
    """`path` with header metadata changed (None removes a key); the tensor data and its hash
    stay as they are."""
    header, data = _split(path)
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            header["__metadata__"].pop(key, None)
        else:
            header["__metadata__"][key] = value
    encoded = json.dumps(header).encode()
    return _write_raw(path, encoded + b" " * (-len(encoded) % 8), data)


def _with_tensors(path: Path, change) -> Path:
    """`path` with its tensors changed by `change(tensors)` and the data hash written anew."""
    tensors = load_file(path)
    header, _ = _split(path)
    metadata = header["__metadata__"]
    change(tensors)
    path.write_bytes(serialize_with_hash(tensors, metadata)[0])
    return path


# ---- header fields against the tensors (dvkit import) ----------------------------------------

SUBJECT_FIELDS = [
    # the example: the header says -3, the tensors 4 of 8 channels
    ({"dvkit__hidden_ratio": "-3"}, ["dvkit.hidden_ratio is -3.0", "[4, 8]", "ratio 0.5"]),
    ({"dvkit__hidden_ratio": "0.25"}, ["dvkit.hidden_ratio is 0.25", "[4, 8]", "ratio 0.5"]),
    ({"dvkit__hidden_ratio": "nan"}, ["dvkit.hidden_ratio 'nan' is not a number"]),
    ({"dvkit__hidden_ratio": "1e999"}, ["dvkit.hidden_ratio '1e999' is not a number"]),
    ({"dvkit__hidden_ratio": None}, ["lacks dvkit.hidden_ratio"]),
    ({"dvkit__kind": "motion", "modelspec__architecture": "dvkit-tiny/dreamvideo-motion"},
     ["dvkit.kind is 'motion'", "'token_embedding'", "only subject adapters have"]),
    ({"modelspec__architecture": "dvkit-tiny/dreamvideo-motion"},
     ["modelspec.architecture is 'dvkit-tiny/dreamvideo-motion'", "/dreamvideo-identity"]),
    ({"dvkit__placement": '["attn1"]'},
     ["dvkit.placement is ['attn1']", "adapters beside ['attn2']"]),
    ({"dvkit__placement": '{"attn2": 1}'}, ["dvkit.placement must be a JSON list"]),
    ({"dvkit__token": None}, ["subject adapter header lacks dvkit.token"]),
    ({"modelspec__trigger_phrase": "<dog>"},
     ["modelspec.trigger_phrase '<dog>' is not dvkit.token '<cat>'"]),
    ({"dvkit__training": '{"num_vectors": 3}'},
     ["dvkit.training's num_vectors is 3", "token_embedding holds 1"]),
    ({"dvkit__training": "[1, 2]"}, ["dvkit.training must be a JSON object"]),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "expected"), SUBJECT_FIELDS)
def test_subject_header_fields_are_checked_against_tensors(
    cli, home, make_adapter, changes, expected
) -> None:
    path = _with_metadata(make_adapter("cat", "subject"), **changes)
    _refused(cli, home, ["import", path], str(path), *expected)


MOTION_FIELDS = [
    ({"dvkit__kind": "subject", "modelspec__architecture": "dvkit-tiny/dreamvideo-identity",
      "dvkit__token": "<surf>"},
     ["dvkit.kind is 'subject'", "has a cond layer, which only motion adapters have"]),
    ({"dvkit__placement": '["attn1", "attn2"]'},
     ["dvkit.placement is ['attn1', 'attn2']", "beside ['attn1', 'attn2', 'ff']"]),
    ({"dvkit__hidden_ratio": "2"}, ["dvkit.hidden_ratio is 2.0", "ratio 0.5"]),
    ({"dvkit__training": '{"cond_dim": 1024}'},
     ["dvkit.training's cond_dim is 1024", "take 12-wide image embeddings"]),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "expected"), MOTION_FIELDS)
def test_motion_header_fields_are_checked_against_tensors(
    cli, home, make_adapter, changes, expected
) -> None:
    path = _with_metadata(make_adapter("surf", "motion"), **changes)
    _refused(cli, home, ["import", path], *expected)


def _drop(key):
    return lambda tensors: tensors.pop(key)


def _set(key, value):
    return lambda tensors: tensors.__setitem__(key, value)


def _tensor_cases():
    import torch

    slot = f"{BLOCK}.attn2_adapter"
    return [
        ("subject", _set(f"{slot}.up.weight", torch.zeros(8, 3)),
         [f"{slot}.up.weight is [8, 3], expected [8, 4]"]),
        ("subject", _drop(f"{slot}.up.bias"), [f"adapter {slot} lacks its up.bias tensor"]),
        ("subject", _set(f"{slot}.down.weight", torch.zeros(4, 8, dtype=torch.int32)),
         [f"tensor '{slot}.down.weight' is I32; adapter weights are floating point"]),
        ("subject", _set("lora_down.weight", torch.zeros(2)),
         ["tensor 'lora_down.weight' is not an adapter weight"]),
        ("subject", _set("token_embedding", torch.zeros(16)),
         ["'token_embedding' is [16], expected [vectors, dim]"]),
        ("subject", _set("reference_images", torch.zeros(1, 4, 4, 4, dtype=torch.uint8)),
         ["'reference_images' is U8 [1, 4, 4, 4], expected uint8 [N, H, W, 3]"]),
        ("motion", _set(f"{BLOCK}.ff_adapter.cond.weight", torch.zeros(8, 7)),
         ["the condition widths differ", "takes 7", "12"]),
        ("motion", lambda t: [t.pop(f"{BLOCK}.ff_adapter.cond.{p}") for p in ("weight", "bias")],
         [f"{BLOCK}.ff_adapter has no cond layer"]),
        ("motion", lambda t: t.update({f"down_blocks.9.{k.split('.', 2)[2]}": v.clone()
                                       for k, v in t.items() if "ff_adapter" not in k}),
         ["down_blocks.9.", "has adapters beside ['attn1', 'attn2'] only"]),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(9))
def test_tensors_that_contradict_the_layout(cli, home, make_adapter, case) -> None:
    kind, change, expected = _tensor_cases()[case]
    path = _with_tensors(make_adapter("cat" if kind == "subject" else "surf", kind), change)
    _refused(cli, home, ["import", path], *expected)


def test_token_width_is_checked_against_a_known_base(cli, home, make_adapter) -> None:
    with Catalog.open(home) as catalog:
        catalog.add_base(
            BaseModelRecord(name="tiny", source="builtin:tiny", fingerprint="tiny-fingerprint",
                            architecture="dvkit-tiny", config={"cross_attention_dim": 32})
        )  # fmt: skip
    path = make_adapter("cat", "subject")  # its token_embedding is [1, 16]
    _refused(cli, home, ["import", path], "token_embedding is 16 wide",
             "base 'tiny' (dvkit.base_fingerprint tiny-fingerp)", "is 32 wide")  # fmt: skip


def test_hidden_width_matches_the_adapters_own() -> None:
    from dvkit.models.adapters import hidden_width

    for channels in (1, 7, 8, 320, 1280):
        for ratio in (0.01, 0.25, 0.3, 1 / 3, 0.5, 0.999, 1.0, 2.5, 4.0):
            assert _hidden_width(channels, ratio) == hidden_width(channels, ratio)
    assert _hidden_width(8, 1e308) is None


# ---- malformed headers -------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


def _malformed(tmp_path: Path, make_adapter):
    good = make_adapter("cat", "subject")
    header, data = _split(good)
    meta = header["__metadata__"]

    def raw(name: str, text: bytes, body: bytes = data) -> Path:
        return _write_raw(tmp_path / f"{name}.safetensors", text, body)

    def dumped(name: str, value) -> Path:
        return raw(name, json.dumps(value).encode())

    def with_training(name: str, text: str) -> Path:
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(good.read_bytes())
        return _with_metadata(path, dvkit__training=text)

    def lying(name: str, content: bytes) -> Path:
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        return path

    entry = next(iter(v for k, v in header.items() if k != "__metadata__"))
    return [
        (raw("deep", DEEP), "nested deeper than 32 levels"),
        (raw("deep-entry", b'{"t": ' + DEEP + b"}"), "nested deeper than 32 levels"),
        (with_training("deep-training", DEEP.decode()), "unreadable dvkit.training (nested"),
        (with_training("forty", "[" * 40 + "]" * 40), "nested deeper than 32 levels"),
        (raw("bad-json", b"{not json}"), "corrupt safetensors header"),
        (raw("not-object", b"[1, 2]"), "not a JSON object"),
        (raw("empty", b""), "corrupt safetensors header"),
        (raw("latin1", '{"é": 1}'.encode("latin-1")), "corrupt safetensors header"),
        (raw("nan-shape", json.dumps({**header, "x": {**entry, "shape": [float("nan")]}})
             .encode()), "NaN is not a JSON number"),
        (with_training("nan-training", '{"lr": NaN}'), "NaN is not a JSON number"),
        (with_training("inf-training", '{"lr": -Infinity}'), "-Infinity is not a JSON number"),
        (with_training("huge-number", '{"lr": 1e400}'), "number 1e400 is out of range"),
        (raw("twice", b'{"__metadata__": {}, "__metadata__": {}}'),
         "key '__metadata__' appears twice"),
        (with_training("twice-training", '{"lr": 1, "lr": 2}'), "key 'lr' appears twice"),
        (dumped("number-meta", {**header, "__metadata__": {**meta, "dvkit.kind": 3}}),
         "__metadata__ must map to strings"),
        (dumped("list-meta", {**header, "__metadata__": ["dvkit.kind"]}),
         "__metadata__ must map to strings"),
        (lying("huge", struct.pack("<Q", 200_000_000) + b"{}" * 10),
         "header length 200000000 does not fit"),
        (lying("long", struct.pack("<Q", 2**63) + b"{}"),
         "header length 9223372036854775808 does not fit"),
        (lying("short", b"abc"), "not a safetensors file (only 3 bytes)"),
    ]  # fmt: skip


def test_malformed_headers_are_one_line(cli, home, make_adapter, tmp_path) -> None:
    for path, expected in _malformed(tmp_path, make_adapter):
        _refused(cli, home, ["import", path], str(path), expected)


# ---- merged exports (dvkit compose --merged) --------------------------------------------------


@pytest.fixture
def merged(home, make_adapter, tmp_path) -> Path:
    with Catalog.open(home) as catalog:
        catalog.import_file(make_adapter("cat", "subject"))
        catalog.import_file(make_adapter("surf", "motion"))
        path = tmp_path / "pair.safetensors"
        export_merged(catalog, "cat", "surf", path)
    return path


def _recipe_edit(change):
    def edit(header: dict) -> None:
        recipe = json.loads(header["__metadata__"]["dvkit.recipe"])
        change(recipe)
        header["__metadata__"]["dvkit.recipe"] = json.dumps(recipe)

    return edit


def _part_meta(kind: str, key: str, value):
    return _recipe_edit(lambda r: r[kind]["metadata"].__setitem__(key, value))


MERGED = [
    (_part_meta("subject", "dvkit.hidden_ratio", "-3"),
     ["the subject part: dvkit.hidden_ratio is -3.0", "ratio 0.5"]),
    (_part_meta("motion", "dvkit.placement", '["ff"]'),
     ["the motion part: dvkit.placement is ['ff']"]),
    (_part_meta("motion", "dvkit.training", '{"cond_dim": 64}'),
     ["the motion part: dvkit.training's cond_dim is 64", "12-wide"]),
    (_part_meta("subject", "dvkit.kind", "motion"),
     ["the subject part: modelspec.architecture is 'dvkit-tiny/dreamvideo-identity'"]),
    (_recipe_edit(lambda r: r["subject"]["metadata"].update(
        {"dvkit.kind": "motion", "modelspec.architecture": "dvkit-tiny/dreamvideo-motion"})),
     ["the recipe's subject part is a 'motion' adapter"]),
    (_part_meta("subject", "dvkit.hidden_ratio", 0.5),
     ["the subject part: header entry 'dvkit.hidden_ratio' is not a string"]),
    (_recipe_edit(lambda r: r["subject"].update(hidden_ratio=0.25)),
     ["dvkit.recipe's subject hidden_ratio is 0.25", "header and tensors say 0.5"]),
    (_recipe_edit(lambda r: r["subject"].update(num_vectors=2)),
     ["dvkit.recipe's subject num_vectors is 2", "say 1"]),
    (_recipe_edit(lambda r: r["motion"].update(placement=["attn1"])),
     ["dvkit.recipe's motion placement is ['attn1']"]),
    (_recipe_edit(lambda r: r.update(guidance_scale=-1)),
     ["dvkit.recipe's guidance_scale must be a finite number from 0 to 100, not -1"]),
    (_recipe_edit(lambda r: r.update(steps=0)),
     ["dvkit.recipe's steps: sampling steps must be a whole number"]),
    (_recipe_edit(lambda r: r.update(steps=2.5)),
     ["dvkit.recipe's steps: sampling steps must be a whole number"]),
    (_recipe_edit(lambda r: r["motion"].update(scale="1")),
     ["dvkit.recipe's motion scale must be a finite number from -10 to 10, not '1'"]),
    (lambda h: h["__metadata__"].update({"dvkit.recipe": '{"guidance_scale": NaN}'}),
     ["unreadable dvkit.recipe (NaN is not a JSON number"]),
    (lambda h: h["__metadata__"].update({"dvkit.recipe": DEEP.decode()}),
     ["unreadable dvkit.recipe (nested deeper than 32 levels)"]),
    (lambda h: h["__metadata__"].update({"modelspec.architecture": "dvkit-tiny/dreamvideo-x"}),
     ["modelspec.architecture is 'dvkit-tiny/dreamvideo-x'", "/dreamvideo-pair"]),
    (lambda h: h["__metadata__"].update({"modelspec.trigger_phrase": "<dog>"}),
     ["modelspec.trigger_phrase '<dog>' is not the recipe's token '<cat>'"]),
    (_recipe_edit(lambda r: r["base"].update(name="other")),
     ["dvkit.recipe's base is 'other', the header's dvkit.base 'tiny'"]),
]  # fmt: skip


@pytest.mark.parametrize(("change", "expected"), MERGED)
def test_merged_files_are_checked_when_loaded(cli, home, merged, change, expected) -> None:
    header, data = _split(merged)
    change(header)
    encoded = json.dumps(header).encode()
    path = _write_raw(merged, encoded + b" " * (-len(encoded) % 8), data)
    _refused(cli, home, ["compose", "--merged", path], str(path), *expected)


def test_malformed_merged_header_is_one_line(cli, home, merged) -> None:
    _write_raw(merged, b'{"__metadata__": ' + DEEP + b"}")
    _refused(cli, home, ["compose", "--merged", merged], "nested deeper than 32 levels")
    _refused(cli, home, ["import", merged], "nested deeper than 32 levels")
