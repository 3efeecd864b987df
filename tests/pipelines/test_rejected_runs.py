"""Issue 24 item 2 / DESIGN.md invariant 11: a run that fails its records fails. Above
--max_dead_letter_fraction a job exits non-zero in one line naming the most common reason and the dead-letter
table, and commits nothing but its dead letters; a run with no good record never replaces a table."""
import json

import pytest
from deltalake import DeltaTable

from delta_helpers import rows as table_rows, versions
from pipelines import compress_users, generate
from pipelines.runtime import run_cli

RUNNER = ["--direct_running_mode=in_memory"]
DOCS = [{"user_id": f"u{u}", "doc_id": f"d{d}", "text": f"user {u} on {d}"} for u in range(2) for d in range(2)]


def cli_error(job, argv, capfd) -> str:
    with pytest.raises(SystemExit) as exit_:
        run_cli(job.main, argv)
    assert exit_.value.code == 2
    (line,) = [x for x in capfd.readouterr().err.splitlines() if x.startswith("error:")]
    return line


@pytest.fixture
def made(tmp_path, tiny_checkpoint, commer_cache):
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DOCS))
    model = ["--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache, *RUNNER]
    compress_users.run(["--input", str(tmp_path / "docs.jsonl"), "--output", str(tmp_path / "out"), *model])
    return tmp_path, model


def test_a_renamed_field_fails_generate_and_keeps_the_previous_predictions(made, capfd):
    tmp, model = made
    good = [{"user_id": "u0", "query_id": f"q{i}", "instruction": "Say hi.", "reference": "hi"} for i in range(3)]
    (tmp / "good.jsonl").write_text("".join(json.dumps(q) + "\n" for q in good))
    (tmp / "typo.jsonl").write_text("".join(json.dumps({**{k: v for k, v in q.items() if k != "instruction"},
                                                        "instrution": q["instruction"]}) + "\n" for q in good))
    args = ["--profiles", str(tmp / "out"), "--output", str(tmp / "gen"), "--max_new_tokens", "2", *model]
    assert generate.main(["--queries", str(tmp / "good.jsonl"), *args]) == 0
    line = cli_error(generate, ["--queries", str(tmp / "typo.jsonl"), *args], capfd)
    assert "--queries: 3 of 3 records dead-lettered" in line and "field 'instruction'" in line
    assert str(tmp / "gen" / "dead_letters") in line and "(3×)" in line
    assert versions(tmp / "gen" / "predictions") == [0] and len(table_rows(tmp / "gen" / "predictions")) == 3
    # The dead letters that explain it are committed (a new version of their own table).
    assert versions(tmp / "gen" / "dead_letters") == [0, 1] and len(table_rows(tmp / "gen" / "dead_letters")) == 3
    summary = json.loads((tmp / "gen" / "run_summary.json").read_text())
    assert summary["status"] == "rejected" and "predictions" not in summary["committed"]


def test_mistyped_ids_fail_compress_users_and_the_profiles_stay(made, capfd):
    tmp, model = made
    (tmp / "ints.jsonl").write_text("".join(json.dumps({**r, "user_id": i}) + "\n" for i, r in enumerate(DOCS)))
    line = cli_error(compress_users, ["--input", str(tmp / "ints.jsonl"), "--output", str(tmp / "out"), *model], capfd)
    assert "--input: 4 of 4 records dead-lettered (100%" in line and "field 'user_id'" in line
    assert versions(tmp / "out" / "profiles") == [0] and len(table_rows(tmp / "out" / "profiles")) == 2


def test_a_run_with_no_good_record_never_replaces_a_table(made, capfd):
    tmp, model = made
    (tmp / "empty.jsonl").write_text("\n")
    line = cli_error(compress_users, ["--input", str(tmp / "empty.jsonl"), "--output", str(tmp / "out"),
                                      "--max_dead_letter_fraction", "1", *model], capfd)
    assert "no profiles to write" in line and "not replaced" in line
    assert DeltaTable(str(tmp / "out" / "profiles")).version() == 0


def test_the_report_lists_the_top_dead_letter_reasons(made, capfd):
    tmp, model = made
    bad = [b'{"user_id": "u0", "doc_id": "x", "text": ', b'{"user_id": "u0", "doc_id": "y", "text": ', b"[1]"]
    (tmp / "some.jsonl").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in DOCS) + b"\n".join(bad) + b"\n")
    assert compress_users.main(["--input", str(tmp / "some.jsonl"), "--output", str(tmp / "o2"), *model]) == 0
    out = capfd.readouterr().out
    assert "2  parse: malformed JSON" in out and "1  validate: record is a JSON list, not an object" in out


def test_the_fraction_flag_is_checked(made, capfd):
    tmp, model = made
    line = cli_error(compress_users, ["--output", str(tmp / "o3"), "--max_dead_letter_fraction", "2", *model], capfd)
    assert "--max_dead_letter_fraction" in line and "from 0 to 1" in line
