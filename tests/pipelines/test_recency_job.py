"""--half_life_days through the main job (issue 16) on the in-process runner with the tiny model:
chained nights = a recompute, deletions exact, the rare rebuild, dating rules counted, mismatches
refused before anything runs, and the default (no flag) still the paper's plain mean."""
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow.parquet as pq
import pytest

from commer.merge import merge_all
from commer.recency import recency_merge_all
from pipelines import compress_users
from delta_helpers import files as table_files
from pipelines.profile_accumulator import PreviousProfile, ProfileAccumulator, StateError
from pipelines.profile_steps import Finalize
from pipelines.runtime import CliError
from schemas import DocumentCompression, read_metadata, read_parquet, from_table
from test_compress_users import corpus, job, profiles, write_jsonl
from test_dataflow_dry_run import dry_run

DAY0 = datetime(2026, 6, 1, 8, tzinfo=timezone.utc)
UTC = timezone.utc


def dated_rows(night: int, users=3) -> list[dict]:
    """Two documents per user per night: one written that day, one back-filled 200 days earlier."""
    rows = []
    for i, row in enumerate(r for r in corpus(users=users, seed=night) if r["doc_id"] in ("doc-0", "doc-1")):
        when = DAY0 + timedelta(days=20 * night - 200 * (i % 2), hours=i)
        rows.append({**row, "doc_id": f"n{night}-{row['doc_id']}", "created_at": when.isoformat()})
    return rows


def stored(folder) -> dict[str, dict[str, DocumentCompression]]:
    by_user: dict = {}
    for c in from_table(read_parquet(str(folder)), DocumentCompression):
        by_user.setdefault(c.user_id, {})[c.doc_id] = c
    return by_user


def rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def nights(tmp_path_factory, tiny_checkpoint, commer_cache):
    """Three chained nights with --half_life_days 30 (night 2 also deletes), and one full run of what remains."""
    tmp = tmp_path_factory.mktemp("recency-nights")
    run = lambda *a: job(tmp, tiny_checkpoint, commer_cache, *a, "--half_life_days", "30")  # noqa: E731
    sent, summaries = [], []
    for night in range(3):
        sent += dated_rows(night)
        write_jsonl(tmp / f"in{night}.jsonl", sent)  # the nightly input re-sends everything
        flags = ["--document_compressions_output", str(tmp / f"comp{night}")]
        if night:
            flags += ["--previous_profiles", str(tmp / f"n{night - 1}"),
                      "--previous_document_compressions", str(tmp / f"comp{night - 1}")]
        if night == 2:
            deleted = [r for r in sent if r["doc_id"] == "n0-doc-0"]
            write_jsonl(tmp / "del.jsonl", [{"user_id": r["user_id"], "doc_id": r["doc_id"]} for r in deleted])
            flags += ["--deletions", str(tmp / "del.jsonl")]
            sent = [r for r in sent if r not in deleted]
            write_jsonl(tmp / f"in{night}.jsonl", sent)
        summaries.append(run(tmp / f"in{night}.jsonl", f"n{night}", *flags))
    summaries.append(run(tmp / "in2.jsonl", "full"))
    return tmp, summaries, sent


def test_chained_nights_with_a_half_life_equal_a_recompute(nights):
    tmp, summaries, sent = nights
    assert all(s["reconciled"] and s["half_life_days"] == 30 for s in summaries)
    assert summaries[2]["counters"]["deletions_applied"] == 3
    got, comps = profiles(tmp / "n2"), stored(tmp / "comp2")
    for user, profile in got.items():
        docs = comps[user]
        assert profile.doc_ids == sorted(docs) == sorted(r["doc_id"] for r in sent if r["user_id"] == user)
        assert "n0-doc-0" not in docs  # deleted
        # The dates the compressions were weighted with are the documents' own.
        for row in (r for r in sent if r["user_id"] == user):
            assert docs[row["doc_id"]].created_at == datetime.fromisoformat(row["created_at"])
        # Exactly the weighted mean of the user's stored compressions, after three refreshes and a deletion.
        full = recency_merge_all(((c.compression, c.created_at) for c in docs.values()), 30.0)
        assert rel(profile.soft_prompt, full.mean()) <= 1e-6
        assert profile.recency_half_life_days == 30 and profile.recency_reference_time == profile.updated_at
    # Recency moved the profile away from the plain mean of the same compressions.
    plain = merge_all(c.compression for c in comps["user-0"].values()).mean()
    assert rel(got["user-0"].soft_prompt, plain) > 1e-4
    # A full run over the remaining documents gives the same profiles (within batch-composition noise).
    full_run = profiles(tmp / "full")
    for user, profile in got.items():
        assert full_run[user].doc_ids == profile.doc_ids
        np.testing.assert_allclose(full_run[user].soft_prompt, profile.soft_prompt, rtol=1e-5, atol=1e-6)
    meta = read_metadata(pq.read_schema(table_files(tmp / "n2")[0]))
    assert meta["half_life_days"] == 30 and meta["schema_version"] == 2


def test_another_half_life_is_refused_before_anything_runs(nights, tiny_checkpoint, commer_cache):
    tmp, _, _ = nights
    base = [tmp / "in2.jsonl", "refused", "--previous_profiles", str(tmp / "n2")]
    with pytest.raises(CliError, match=r"^--half_life_days none \(plain mean\) differs from the 30 .*pass "
                                       r"--half_life_days 30"):
        job(tmp, tiny_checkpoint, commer_cache, *base)
    with pytest.raises(CliError, match="^--half_life_days 60 differs from the 30"):
        job(tmp, tiny_checkpoint, commer_cache, *base, "--half_life_days", "60")
    with pytest.raises(CliError, match="^--half_life_days -1: must be a positive number"):
        job(tmp, tiny_checkpoint, commer_cache, tmp / "in2.jsonl", "refused", "--half_life_days", "-1")
    assert not (tmp / "refused").exists()


def test_dates_by_rule_are_counted_and_a_cancelled_user_is_rebuilt(tmp_path, tiny_checkpoint, commer_cache):
    rows = [{"user_id": "r", "doc_id": d, "text": f"rebuild me {d} " * (i + 1), "created_at": when}
            for i, (d, when) in enumerate([("a", "2020-01-01T00:00:00Z"), ("b", "2020-01-02T00:00:00Z"),
                                           ("c", "2020-03-01T00:00:00Z")])]  # c: 59 half-lives newer
    rows += [{"user_id": "m", "doc_id": "undated", "text": "no date at all"},
             {"user_id": "m", "doc_id": "future", "text": "from the future", "created_at": "2999-01-01T00:00:00Z"},
             {"user_id": "m", "doc_id": "dated", "text": "an ordinary day", "created_at": "2025-05-05T00:00:00Z"}]
    write_jsonl(tmp_path / "in.jsonl", rows)
    first = job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "in.jsonl", "first", "--half_life_days", "1",
                "--document_compressions_output", str(tmp_path / "comp"))
    assert (first["created_at_missing"], first["created_at_in_future"]) == (1, 1) and first["reconciled"]
    m, comps = profiles(tmp_path / "first")["m"], stored(tmp_path / "comp")
    assert comps["m"]["undated"].created_at == comps["m"]["future"].created_at == m.recency_reference_time
    assert comps["m"]["dated"].created_at == datetime(2025, 5, 5, tzinfo=UTC)

    write_jsonl(tmp_path / "del.jsonl", [{"user_id": "r", "doc_id": "c"}])
    write_jsonl(tmp_path / "none.jsonl", [])
    second = job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "none.jsonl", "second", "--half_life_days", "1",
                 "--previous_profiles", str(tmp_path / "first"), "--deletions", str(tmp_path / "del.jsonl"),
                 "--previous_document_compressions", str(tmp_path / "comp"))
    assert second["counters"]["profiles_rebuilt"] == 1 and second["reconciled"]
    r = profiles(tmp_path / "second")["r"]
    kept = [comps["r"][d] for d in ("a", "b")]
    exact = recency_merge_all(((c.compression, c.created_at) for c in kept), 1.0)
    assert r.doc_ids == ["a", "b"] and rel(r.soft_prompt, exact.mean()) <= 1e-6
    assert r.recency_gross_weight == r.recency_weight  # rebuilt from scratch: the cancellation is gone


def test_default_is_the_plain_mean_and_old_files_still_refresh(tmp_path, tiny_checkpoint, commer_cache):
    rows = dated_rows(0, users=2)
    write_jsonl(tmp_path / "in.jsonl", rows[:-1])
    first = job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "in.jsonl", "first",
                "--document_compressions_output", str(tmp_path / "comp"))
    assert first["half_life_days"] is None
    for profile in profiles(tmp_path / "first").values():
        assert profile.recency_half_life_days is None and profile.recency_reference_time is None
        assert profile.recency_weight == profile.doc_count and profile.recency_anchor == 0
    # The same profiles written in the old layout (schema version 1: no recency columns, no half-life).
    (tmp_path / "old").mkdir()
    for name, flag in (("profiles", "--profiles"), ("document_compressions", "--document_compressions")):
        table = pq.read_table(table_files(tmp_path / ("first" if name == "profiles" else "comp"), flag, name)[0])
        table = table.drop_columns([c for c in table.column_names if c.startswith("recency_") or c == "created_at"])
        meta = {k: v for k, v in read_metadata(table).items() if k != "half_life_days"}
        old = table.replace_schema_metadata({b"commer": json.dumps({**meta, "schema_version": 1}).encode()})
        pq.write_table(old, tmp_path / "old" / f"{name}.parquet")
    write_jsonl(tmp_path / "all.jsonl", rows)
    with pytest.raises(CliError, match="^--half_life_days 30 differs from the none"):
        job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "all.jsonl", "x", "--half_life_days", "30",
            "--previous_profiles", str(tmp_path / "old" / "profiles.parquet"))
    second = job(tmp_path, tiny_checkpoint, commer_cache, tmp_path / "all.jsonl", "second",
                 "--previous_profiles", str(tmp_path / "old" / "profiles.parquet"),
                 "--previous_document_compressions", str(tmp_path / "old" / "document_compressions.parquet"),
                 "--document_compressions_output", str(tmp_path / "comp2"))
    assert second["documents_compressed"] == 1 and second["reconciled"]
    comps = stored(tmp_path / "comp2")
    for user, profile in profiles(tmp_path / "second").items():
        assert profile.doc_ids == sorted(comps[user])
        assert rel(profile.soft_prompt, merge_all(c.compression for c in comps[user].values()).mean()) <= 1e-6


def test_the_rebuild_branch_builds_for_dataflow(nights, tiny_checkpoint, commer_cache, capsys):
    tmp, _, _ = nights
    out = dry_run(compress_users, ["--input", str(tmp / "in2.jsonl"), "--output", str(tmp / "dry"),
                                   "--previous_profiles", str(tmp / "n2"), "--deletions", str(tmp / "del.jsonl"),
                                   "--previous_document_compressions", str(tmp / "comp2"), "--half_life_days", "30",
                                   "--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache], capsys)
    assert "job graph built for Dataflow, not submitted" in out


def test_a_rebuild_where_none_is_wired_fails_rather_than_drop_the_user():
    dates = [datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 3, 1, tzinfo=UTC)]
    comps = np.ones((2, 4, 8), np.float32) * np.array([1, 3], np.float32)[:, None, None]
    base = ProfileAccumulator(1.0).add("a", comps[0], dates[0]).add("b", comps[1], dates[1])
    stored = base.finalize("u", "fp", dates[1])
    previous = PreviousProfile.from_row(stored.model_dump(), stored.soft_prompt_sum, stored.soft_prompt)
    state = ProfileAccumulator(1.0).set_previous(previous).remove("b", comps[1], dates[1])
    assert [type(x).__name__ for x in Finalize("fp", dates[1]).process(("u", state))] == ["TaggedOutput"]
    with pytest.raises(StateError, match="'u' must be rebuilt"):
        list(Finalize("fp", dates[1], can_rebuild=False).process(("u", state)))
