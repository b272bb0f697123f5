"""Prompt templates are checked in one place before any work: unknown, positional and
formatted placeholders and unmatched braces are one error line naming the allowed ones."""

import pytest

from dvkit.errors import DvkitError
from dvkit.templates import check_template

BENCH = ["subject", "motion"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("a {nonsense} {subject} {motion}", "unknown placeholder {nonsense}: use {subject} and"),
        ("{} {subject} {motion}", "unknown placeholder {}: use"),
        ("{0} {subject} {motion}", "unknown placeholder {0}: use"),
        ("a {subject.x} {motion}", "unknown placeholder {subject.x}"),
        ("a {subject:>3} {motion}", "unknown placeholder {subject:>3}"),
        ("a {subject {motion}", "unmatched brace"),
        ("a photo", "needs {subject} and {motion}"),
    ],
)
def test_bad_templates(template, message) -> None:
    with pytest.raises(DvkitError, match="^prompt template .*" + message.replace("{", r"\{")):
        check_template(template, BENCH)


def test_good_templates_fill_in() -> None:
    template = check_template("{{literal}} a {subject} {motion} {subject}", BENCH)
    assert template.format(subject="cat", motion="surfing") == "{literal} a cat surfing cat"


@pytest.mark.parametrize("line", ["a {nonsense} {subject} {motion}", "{}", "{0}"])
def test_cli_bench_prompts(cli, home, tmp_path, line) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(line + "\n")
    code, out, err = cli("--home", home, "bench", "--prompts", prompts)
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith("error: prompt template ") and "{subject} and {motion}" in err


def test_cli_add_subject_prompt(cli, home, tmp_path) -> None:
    for template, message in [("a {token} {foo}", "unknown placeholder {foo}: use {token}"),
                              ("a {}", "unknown placeholder {}")]:  # fmt: skip
        code, out, err = cli("--home", home, "add-subject", "cat", "--images", tmp_path / "none",
                             "--prompt", template)  # fmt: skip
        assert code == 1 and out == "" and err.count("\n") == 1, err
        assert "invalid training setting prompt: prompt template" in err and message in err
