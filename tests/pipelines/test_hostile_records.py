"""Issue 15: nothing a record carries takes a run down. Every hostile input goes through the real
compress_users job (tiny model, in-process runner) and ends as a profile or a dead letter naming it."""
import json
from pathlib import Path

from pipelines.compress_users import run
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
                   tiny_checkpoint, "--cache_dir", commer_cache, "--direct_running_mode=in_memory"])
    assert summary["reconciled"] and summary["documents_read"] == len(HOSTILE)
    assert summary["documents_compressed"] == 2 and summary["dead_letters"] == len(HOSTILE) - 2
    profiles = {p.user_id: p for p in from_table(read_parquet(str(tmp_path / "out")), Profile)}
    assert sorted(profiles) == ["bom", "s"] and profiles["s"].doc_ids == ["6"]
    letters = [json.loads(line) for f in (tmp_path / "out" / "dead_letters").glob("*.jsonl")
               for line in f.read_text().splitlines()]
    assert len(letters) == len(HOSTILE) - 2
    unicode = [x for x in letters if "invalid Unicode" in x["reason"]]
    assert len(unicode) == 4
    assert {(x["user_id"], x["doc_id"]) for x in unicode} == {("s", "1"), ("s\\udc80", "2"), ("s", "\\ud800"),
                                                              ("s", "4")}
    assert all(x["escaped"] for x in unicode if "\\u" in (x["user_id"] + x["doc_id"]))
    assert any("line 1 column" in x["reason"] for x in letters if x["stage"] == "parse")
