"""The README's Python example runs as written: the soft prompt's (K, 576) shape, then one answer
per user to the same instruction, and the answers differ (personalization, not plumbing)."""
import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    match = re.search(r"<!-- readme-example.*?-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README lost its example block"
    return match.group(1)


def test_example_is_short():
    assert len(readme_example().strip().splitlines()) <= 12


def test_readme_shows_the_example_output():
    text = README.read_text()
    after = text[text.index(readme_example()):]
    shown = re.search(r"```\s*```text\n(.*?)```", after, re.S)
    assert shown, "the example's printed output is pasted right after it"
    assert shown.group(1).startswith("(")
    runner, cook = answers(shown.group(1))
    assert runner and cook and runner != cook


def answers(printed: str) -> tuple[str, str]:
    """The two users' answers in the example's output (an answer may span lines)."""
    found = re.search(r"^runner: (.*?)\ncook: (.*?)\s*$", printed, re.S | re.M)
    assert found, printed
    return found.group(1).strip(), found.group(2).strip()


@pytest.mark.integration
def test_readme_example_prints_soft_prompt_shape():
    from commer.checkpoint import read_config
    from commer.defaults import default_checkpoint

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    K = read_config(default_checkpoint()).num_compression_tokens
    assert lines[0] == f"({K}, 576)"
    runner, cook = answers(out.getvalue())
    assert runner and cook and runner != cook
