"""Issue 15: nothing a record carries takes a run down. Every hostile input goes through the real
compress_users job (tiny model, in-process runner) and ends as a profile or a dead letter naming it."""
import json
from pathlib import Path

from pipelines.compress_users import run
from delta_helpers import rows as table_rows
from schemas import Profile, from_table, read_parquet

HOSTILE = [
    b'\xef\xbb\xbf{"user_id": "bom", "doc_id": "1", "text": "first line after a byte-order mark"}',  # valid
    b'{"user_id": "s", "doc_id": "1", "text": "x\\ud800y"}',              # lone surrogate in text
    b'{"user_id": "s\\udc80", "doc_id": "2", "text": "fine"}',             # ... in user_id
    b'{"user_id": "s", "doc_id": "\\ud800", "text": "fine"}',             # ... in doc_id
    b'{"user_id": "s", "doc_id": "4", "text": "ok", "extra": "\\udfff"}',  # ... in an ignored field
    b'{"user_id": "   ", "doc_id": "5", "text": "blank user"}',           # whitespace-only id
    b'{"user_id": " s ", "doc_id": " 6 ", "text": "padded ids"}',         # stripped: user s, doc 6
    b'{"user_id": "s", "doc_id": "7", "text": "a\x01b"}',                  # control character: bad JSON
    b'{"user_id": "s", "doc_id": "8", "text": "\xed\xa0\x80"}',            # surrogate as raw (invalid) UTF-8
]


def test_every_hostile_record_ends_in_a_profile_or_a_named_dead_letter(tmp_path: Path, tiny_checkpoint, commer_cache):
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(HOSTILE) + b"\n")
    summary = run(["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--checkpoint",
                   tiny_checkpoint, "--cache_dir", commer_cache, "--direct_running_mode=in_memory",
                   "--max_dead_letter_fraction=1"])  # mostly hostile on purpose
    assert summary["reconciled"] and summary["documents_read"] == len(HOSTILE)
    assert summary["documents_compressed"] == 2 and summary["dead_letters"] == len(HOSTILE) - 2
    profiles = {p.user_id: p for p in from_table(read_parquet(str(tmp_path / "out")), Profile)}
    assert sorted(profiles) == ["bom", "s"] and profiles["s"].doc_ids == ["6"]
    letters = table_rows(tmp_path / "out" / "dead_letters")
    assert len(letters) == len(HOSTILE) - 2
    unicode = [x for x in letters if "invalid Unicode" in x["reason"]]
    assert len(unicode) == 4
    assert {(x["user_id"], x["doc_id"]) for x in unicode} == {("s", "1"), ("s\\udc80", "2"), ("s", "\\ud800"),
                                                              ("s", "4")}
    assert all(x["escaped"] for x in unicode if "\\u" in (x["user_id"] + x["doc_id"]))
    assert any("line 1 column" in x["reason"] for x in letters if x["stage"] == "parse")


def test_bounded_reader_splits_ranges_exactly_and_never_holds_a_long_line(tmp_path: Path):
    import random

    from pipelines.reading import read_lines
    from schemas.validation import Oversized
    rng = random.Random(0)
    for trial in range(200):
        lines = [bytes(rng.choice(b"ab{}\r") for _ in range(rng.choice([0, 1, 3, 10, 40])))
                 for _ in range(rng.randint(0, 30))]
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        path = str(tmp_path / "lines.jsonl")
        with open(path, "wb") as f:
            f.write(data)
        limit, chunk, span = rng.choice([5, 12, 100]), rng.choice([1, 2, 3, 7, 64]), rng.choice([1, 4, 9, 1000])
        got = [x for start in range(0, max(len(data), 1), span)
               for _, x in read_lines(path, start, start + span, limit, chunk)]
        want = data.split(b"\n")[:-1] if data.endswith(b"\n") else ([] if not data else data.split(b"\n"))
        want = [w[:-1] if w.endswith(b"\r") else w for w in want]
        assert [None if isinstance(x, Oversized) else x for x in got] == \
            [None if len(w) > limit else w for w in want], (data, limit, chunk, span)
        assert all(abs(x.size - len(w)) <= 1 and len(x.prefix) <= len(w) + 1
                   for x, w in zip(got, want) if isinstance(x, Oversized))


def test_a_very_long_line_costs_about_its_bytes(tmp_path: Path, tiny_checkpoint, commer_cache):
    import time
    big = 20 << 20
    line = b'{"user_id": "u", "doc_id": "big", "text": "' + b"x" * big + b'"}'
    with open(tmp_path / "in.jsonl", "wb") as f:
        f.write(line + b"\n")
        f.write(b'{"user_id": "u", "doc_id": "small", "text": "fine"}\n')
    started = time.perf_counter()
    summary = run(["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--checkpoint",
                   tiny_checkpoint, "--cache_dir", commer_cache, "--direct_running_mode=in_memory"])
    seconds = time.perf_counter() - started
    assert summary["reconciled"] and summary["documents_compressed"] == 1 and summary["dead_letters"] == 1
    (letter,) = table_rows(tmp_path / "out" / "dead_letters")
    assert letter["reason"] == f"record is {len(line)} bytes, over --max_record_bytes={1 << 20}"
    assert len(letter["record"]) <= 4096
    assert seconds < 30, seconds  # was 25 s for the 30 MB line alone in Beam's text source (quadratic)
