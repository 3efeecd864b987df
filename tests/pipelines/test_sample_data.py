"""The shipped sample corpus runs clean: every record of the default input is a valid document,
and the deliberately broken records live in a separate, clearly named demo file."""
from pathlib import Path

from pipelines.compress_users import SAMPLE_INPUT, parse_document
from schemas import DeadLetter

SAMPLE = Path(SAMPLE_INPUT).parent


def _parsed(path: Path):
    return [parse_document(line, str(path), 1 << 20) for line in path.read_bytes().splitlines() if line.strip()]


def test_default_input_is_documents_only_and_all_valid():
    files = sorted(SAMPLE.glob(Path(SAMPLE_INPUT).name))
    assert [f.name for f in files] == ["documents-0.jsonl", "documents-1.jsonl"]
    parsed = [r for f in files for r in _parsed(f)]
    assert len(parsed) > 100 and not any(isinstance(r, DeadLetter) for r in parsed)
    keys = [(r.user_id, r.doc_id) for r in parsed]
    assert len(keys) == len(set(keys))  # no duplicates either


def test_dead_letter_demo_is_separate_and_mostly_broken():
    parsed = _parsed(SAMPLE / "dead_letter_demo.jsonl")
    dead = [r for r in parsed if isinstance(r, DeadLetter)]
    assert len(dead) >= 5 and len(parsed) - len(dead) == 2  # one valid record and its duplicate
