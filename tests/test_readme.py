"""The README's Python example runs as written and prints the soft prompt's (K, 576) shape."""
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
    assert len(lines) >= 2
