import pytest

from dvkit.errors import InvalidNameError
from dvkit.names import Ref, parse_ref, validate_name, validate_tag


@pytest.mark.parametrize("name", ["cat", "a", "0", "dog-2", "wolf_plushie", "x" * 64])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Cat", "a/b", "..", ".hidden", "-cat", "_cat", "cat dog", "x" * 65, "café"]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(name)


def test_refs() -> None:
    assert parse_ref("cat") == Ref("cat", None)
    assert parse_ref("cat@3") == Ref("cat", 3)
    assert str(parse_ref("cat@3")) == "cat@3"
    for bad in ("cat@", "cat@0", "cat@-1", "cat@x", "Cat@1", "@1"):
        with pytest.raises(InvalidNameError):
            parse_ref(bad)


def test_tags() -> None:
    assert validate_tag("v1.0") == "v1.0"
    assert validate_tag("stage:identity") == "stage:identity"
    for bad in ("", "Good", "a b", "x" * 65):
        with pytest.raises(InvalidNameError):
            validate_tag(bad)
