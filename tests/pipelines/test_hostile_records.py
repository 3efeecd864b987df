"""Issue 15: nothing a record carries takes a run down. Every hostile input goes through the real
compress_users job (tiny model, in-process runner) and ends as a profile or a dead letter naming it."""
import json
from pathlib import Path

from pipelines.compress_users import run
import pytest

from delta_helpers import files as table_files, rows as table_rows
from pipelines.runtime import CliError
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

    from pipelines.jsonl_reader import read_lines
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


# ---- issue 24: no record takes a job down, nothing is lost silently ----------------------------------------

BIG = "1" * 5000  # an integer Python refuses to convert (more than 4,300 digits)


def _job(tmp_path, tiny_checkpoint, commer_cache, *args):
    return run(["--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache, "--direct_running_mode=in_memory",
                *args])


def test_huge_integers_deep_nesting_and_edge_dates_are_dead_letters(tmp_path: Path, tiny_checkpoint, commer_cache):
    good = [{"user_id": "u", "doc_id": f"d{i}", "text": f"fine {i}", "created_at": "2026-01-01T00:00:00Z"}
            for i in range(6)]
    hostile = [f'{{"user_id": "u", "doc_id": "big", "text": "x", "n": {BIG}}}'.encode(),
               b"[" * 100_000,
               json.dumps({"user_id": "u", "doc_id": "early", "text": "x", "created_at": "0001-01-01T00:00:00+14:00"}).encode(),
               json.dumps({"user_id": "u", "doc_id": "late", "text": "x", "created_at": "9999-12-31T23:59:59-14:00"}).encode()]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join([json.dumps(g).encode() for g in good] + hostile) + b"\n")
    out, dc = str(tmp_path / "out"), str(tmp_path / "dc")
    summary = _job(tmp_path, tiny_checkpoint, commer_cache, "--input", str(tmp_path / "in.jsonl"), "--output", out,
                   "--document_compressions_output", dc, "--half_life_days", "30")
    assert summary["reconciled"] and summary["documents_compressed"] == 6 and summary["dead_letters"] == 4
    reasons = sorted(x["reason"] for x in table_rows(tmp_path / "out" / "dead_letters"))
    assert any("4300 digits" in r for r in reasons) and any("too deeply nested" in r for r in reasons)
    assert sum("outside the supported range" in r for r in reasons) == 2
    # Deletions: the same decode rules; a document named twice (once padded) is counted, not lost.
    (tmp_path / "del.jsonl").write_bytes(b"\n".join([
        f'{{"user_id": "u", "doc_id": {BIG}}}'.encode(), b"[" * 100_000,
        b'{"user_id": "u", "doc_id": "d0"}', b'{"user_id": " u ", "doc_id": " d0 "}']) + b"\n")
    (tmp_path / "new.jsonl").write_text(json.dumps({"user_id": "u", "doc_id": "n", "text": "new"}) + "\n")
    refresh = _job(tmp_path, tiny_checkpoint, commer_cache, "--input", str(tmp_path / "new.jsonl"), "--output", out,
                   "--previous_profiles", out, "--previous_document_compressions", dc,
                   "--document_compressions_output", dc, "--deletions", str(tmp_path / "del.jsonl"),
                   "--half_life_days", "30")
    assert refresh["deletions"] == {"requested": 2, "applied": 1, "unmatched": 0, "duplicate": 1, "invalid": 2}
    assert refresh["reconciled"] and refresh["users"] == 1
    (profile,) = from_table(read_parquet(out), Profile)
    assert profile.doc_ids == ["d1", "d2", "d3", "d4", "d5", "n"]


def test_parquet_rows_python_cannot_hold_are_dead_letters(tmp_path: Path, tiny_checkpoint, commer_cache):
    import pyarrow as pa
    import pyarrow.parquet as pq
    far = 200_000 * 365 * 86400 * 10**6  # year ~202000: a valid Parquet timestamp, beyond Python's datetime
    table = pa.table({"user_id": ["u", "u", "u"], "doc_id": ["a", "b", "c"], "text": ["one", "two", "three"],
                      "created_at": pa.array([0, far, 10**15], pa.timestamp("us", tz="UTC"))})
    pq.write_table(table, tmp_path / "in.parquet")
    summary = _job(tmp_path, tiny_checkpoint, commer_cache, "--input", str(tmp_path / "in.parquet"), "--output",
                   str(tmp_path / "out"))
    assert summary["reconciled"] and summary["documents_compressed"] == 2 and summary["dead_letters"] == 1
    (letter,) = table_rows(tmp_path / "out" / "dead_letters")
    assert "column 'created_at'" in letter["reason"]


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_gzip_input_is_one_line_and_commits_nothing(tmp_path: Path, tiny_checkpoint, commer_cache, damage):
    import gzip
    data = gzip.compress(b"".join(json.dumps({"user_id": "u", "doc_id": f"d{i}", "text": f"text {i} " * 20}).encode()
                                  + b"\n" for i in range(3000)))
    data = data[:len(data) // 2] if damage == "truncated" else data[:200] + bytes(64) + data[264:]
    (tmp_path / "in.jsonl.gz").write_bytes(data)
    with pytest.raises(CliError) as err:
        _job(tmp_path, tiny_checkpoint, commer_cache, "--input", str(tmp_path / "in.jsonl.gz"), "--output",
             str(tmp_path / "out"))
    message = str(err.value)
    assert "\n" not in message and "--input" in message and "truncated or corrupt" in message
    assert "nothing was committed" in message and not (tmp_path / "out" / "profiles" / "_delta_log").exists()


def test_a_corrupt_parquet_input_or_a_folder_as_input_is_one_line(tmp_path: Path, tiny_checkpoint, commer_cache):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    for given, expected in ((tmp_path / "bad.parquet", "cannot be read as Parquet"), (tmp_path, "is a folder")):
        with pytest.raises(CliError) as err:
            _job(tmp_path, tiny_checkpoint, commer_cache, "--input", str(given), "--output", str(tmp_path / "out"))
        assert expected in str(err.value) and "\n" not in str(err.value)


def test_corrupt_previous_profiles_are_refused_never_carried(tmp_path: Path, tiny_checkpoint, commer_cache):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"user_id": f"u{i % 2}", "doc_id": f"d{i}", "text": f"t {i}"})
                                               + "\n" for i in range(4)))
    out = str(tmp_path / "out")
    _job(tmp_path, tiny_checkpoint, commer_cache, "--input", str(tmp_path / "in.jsonl"), "--output", out)
    (shard,) = table_files(tmp_path / "out")
    # 1. A value a model never writes (an exponent bit flipped in a file without page checksums): refused.
    table = pq.read_table(shard)
    blown = pc.multiply(pc.list_flatten(table["soft_prompt"].combine_chunks()), pa.scalar(1e24, pa.float32()))
    offsets = table["soft_prompt"].combine_chunks().offsets
    table = table.set_column(table.schema.get_field_index("soft_prompt"), table.schema.field("soft_prompt"),
                             pa.ListArray.from_arrays(offsets, blown))
    (tmp_path / "flipped").mkdir()
    pq.write_table(table, tmp_path / "flipped" / "profiles.parquet")
    with pytest.raises(CliError) as err:
        _job(tmp_path, tiny_checkpoint, commer_cache, "--input", str(tmp_path / "in.jsonl"), "--output",
             str(tmp_path / "o2"), "--previous_profiles", str(tmp_path / "flipped" / "profiles.parquet"))
    assert "soft_prompt" in str(err.value) and "corrupt" in str(err.value) and "\n" not in str(err.value)
    # 2. A byte flipped inside a data page of our own file (written with page checksums): refused.
    data = bytearray(Path(shard).read_bytes())
    data[len(data) // 3] ^= 0xFF
    Path(shard).write_bytes(bytes(data))
    with pytest.raises(CliError) as err:
        _job(tmp_path, tiny_checkpoint, commer_cache, "--input", str(tmp_path / "in.jsonl"), "--output",
             str(tmp_path / "o3"), "--previous_profiles", out)
    assert "--previous_profiles" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "o3" / "profiles" / "_delta_log").exists()
