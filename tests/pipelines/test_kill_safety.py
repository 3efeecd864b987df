"""Issues 15 and 24 / DESIGN.md invariant 9: an output table is always at the previous version or the new one.

The job runs as a child process that SIGKILLs itself at each named moment (pipelines.faults, armed by
COMMER_TEST_KILL_AT): after the model is loaded, during compression, during the table write, after the
pipeline (nothing committed), between the run's commits (dead letters, document compressions, profiles)
and after the last. After each kill every table reads (with any Delta reader) as the previous version or
the new one, never a killed run's files; a refresh reads a matching profiles/compressions pair; then a
rerun succeeds and equals a clean run, and vacuum removes what the killed runs left. Two runs racing for
one table: the second to commit fails in one line and the first's version stays. compress_users, generate,
evaluate."""
import json
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines import evaluate, generate
from pipelines.compress_users import run
from delta_helpers import files as table_files, rows as table_rows, versions
from deltalake import DeltaTable
from pipelines import compress_users, vacuum
from pipelines.faults import KILL_AT
from pipelines.runtime import CliError
from schemas import DocumentCompression, Profile, from_table, read_parquet, tensor_column

ROWS = [{"user_id": f"u{u}", "doc_id": f"d{d}", "text": f"user {u} writes about topic {d} " * (1 + d)}
        for u in range(6) for d in range(3)]
OLD, NEW = ROWS[:10], ROWS


def flags(tmp: Path, checkpoint: str, cache: str, input_file: str, out: str, *extra) -> list[str]:
    return ["--input", str(tmp / input_file), "--output", str(tmp / out), "--checkpoint", checkpoint,
            "--cache_dir", cache, "--direct_running_mode=in_memory", "--batch_size", "2",
            "--profiles_per_table", "1", *extra]


def state(folder: Path) -> dict:
    table = from_table(read_parquet(str(folder)), Profile)
    users = [p.user_id for p in table]
    assert len(users) == len(set(users)), f"a user appears twice: {sorted(users)}"
    return {p.user_id: (p.doc_ids, p.soft_prompt) for p in table}


def same(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(a[u][0] == b[u][0] and np.allclose(a[u][1], b[u][1], atol=1e-6) for u in a)


def _child(phase: str, argv: list[str], job) -> None:
    torch.set_num_threads(1)  # two cores; the parent test process is idle meanwhile
    os.environ[KILL_AT] = phase
    job(argv)
    os._exit(0)  # not killed: the test fails on the exit code


# delta-rs' runtime does not survive fork() once used, so children fork from a server process that imported
# the jobs but never opened a table (no 20 s start-up per kill, and no state shared with this process).
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["torch", "pipelines.compress_users", "pipelines.generate", "pipelines.evaluate"])


def killed_at(phase: str, argv: list[str], job=run) -> int:
    """Run the job in a child process that SIGKILLs itself at `phase`; its exit code (-9 when killed there)."""
    child = _CONTEXT.Process(target=_child, args=(phase, argv, job))
    child.start()
    child.join(120)
    if child.exitcode is None:
        child.kill()
        child.join()
    return child.exitcode


REFRESH_KILLS = ("model_loaded", "compressing", "writing:2", "written", "between_commits", "committed")


def committed_files(table: Path) -> set[str]:
    return set(DeltaTable(str(table)).file_uris())


def test_a_kill_at_any_phase_leaves_the_old_or_the_new_state(tmp_path, tiny_checkpoint, commer_cache):
    for name, rows in (("old.jsonl", OLD), ("new.jsonl", NEW)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Clean references: the old state, and the refresh that every killed run attempts.
    run(flags(tmp_path, tiny_checkpoint, commer_cache, "old.jsonl", "clean"))
    old = state(tmp_path / "clean")
    run(flags(tmp_path, tiny_checkpoint, commer_cache, "new.jsonl", "clean", "--previous_profiles",
              str(tmp_path / "clean")))
    new = state(tmp_path / "clean")
    assert len(old) == 4 and len(new) == 6

    run(flags(tmp_path, tiny_checkpoint, commer_cache, "old.jsonl", "live"))
    live = tmp_path / "live"
    refresh = flags(tmp_path, tiny_checkpoint, commer_cache, "new.jsonl", "live", "--previous_profiles", str(live))
    for phase in REFRESH_KILLS:
        before = committed_files(live / "profiles")
        assert killed_at(phase, refresh) == -signal.SIGKILL, phase
        got = state(live)
        assert same(got, new if phase == "committed" else old), phase
        # Any Delta reader (here pandas through delta-rs, as --previous_profiles and generate --profiles read)
        # sees only committed files: none of the killed run's.
        committed = committed_files(live / "profiles")
        assert len(DeltaTable(str(live / "profiles")).to_pandas()) == len(got)
        assert committed == before or phase == "committed", phase
    on_disk = {str(p) for p in (live / "profiles").rglob("*.parquet")}
    assert on_disk - committed_files(live / "profiles"), "the killed runs left no file (the kills came too late)"

    summary = run(refresh)  # the rerun, from the folder every kill went through
    assert summary["reconciled"] and same(state(live), new)
    assert summary["already_merged"] == len(NEW)  # the kill after the commit had already refreshed it
    # Nothing was deleted by a job; vacuum removes every file the current version does not need.
    removed = vacuum.vacuum(str(live / "profiles"), 0, delete=True)
    assert removed and {str(p) for p in (live / "profiles").rglob("*.parquet")} == committed_files(live / "profiles")
    assert same(state(live), new)


def test_a_folder_of_the_layout_before_delta_is_read_and_converted_once(tmp_path, tiny_checkpoint, commer_cache):
    (tmp_path / "old.jsonl").write_text("".join(json.dumps(r) + "\n" for r in OLD))
    run(flags(tmp_path, tiny_checkpoint, commer_cache, "old.jsonl", "made"))
    profiles = tmp_path / "live" / "profiles"
    profiles.mkdir(parents=True)
    run_id = "20261101T000000-aaaaaaaa"  # the layout before Delta: CURRENT naming a run folder of shards
    (profiles / run_id).mkdir()
    for i, f in enumerate(table_files(tmp_path / "made")):
        legacy = pq.read_table(f)  # written as the old layout did: fixed-shape tensor columns
        for name in ("soft_prompt", "soft_prompt_sum"):
            values = tensor_column(legacy, name)
            legacy = legacy.set_column(legacy.schema.get_field_index(name), name,
                                       pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(values)))
        pq.write_table(legacy, profiles / run_id / f"profiles-{i}.parquet")
    (profiles / "CURRENT").write_text(f"{run_id}\n")
    (profiles / "beam-temp-profiles-x").mkdir()
    (profiles / "beam-temp-profiles-x" / "partial.parquet").write_bytes(b"PAR1 truncated")
    before = state(tmp_path / "live")  # the old layout is still read (the truncated temp file ignored)
    assert len(before) == 4
    summary = run(flags(tmp_path, tiny_checkpoint, commer_cache, "old.jsonl", "live", "--previous_profiles",
                        str(tmp_path / "live")))
    assert summary["already_merged"] == len(OLD) and same(state(tmp_path / "live"), before)
    assert not (profiles / "CURRENT").exists() and versions(profiles) == [0, 1]
    assert same(state(str(profiles) + "@0"), before)  # version 0: the converted old state, readable by polars too
    polars = pytest.importorskip("polars")
    assert polars.read_delta(str(profiles), version=0).height == 4


def test_duplicated_users_in_previous_profiles_fail_with_one_line(tmp_path, tiny_checkpoint, commer_cache, capsys):
    (tmp_path / "old.jsonl").write_text("".join(json.dumps(r) + "\n" for r in OLD))
    run(flags(tmp_path, tiny_checkpoint, commer_cache, "old.jsonl", "live"))
    (shard,) = table_files(tmp_path / "live")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.parquet").write_bytes(Path(shard).read_bytes())  # an old bad state: the same users twice
    (bad / "b.parquet").write_bytes(Path(shard).read_bytes())
    with pytest.raises(CliError) as err:
        run(flags(tmp_path, tiny_checkpoint, commer_cache, "old.jsonl", "out2", "--previous_profiles", str(bad)))
    message = str(err.value)
    assert "\n" not in message and "'u0'" in message and "a.parquet" in message and "b.parquet" in message


def compressions(folder: Path, paired_with: Path | None = None) -> dict:
    """A compressions table as {(user_id, doc_id): K×d}: its current version, or the version the profiles at
    `paired_with` were committed with (what a refresh reads); no document twice."""
    from pipelines.io import input_table
    from pipelines.tables import paired_compressions
    from schemas.tables import table_version
    paired = paired_compressions(table_version(str(paired_with / "profiles"))) if paired_with else None
    files = input_table(str(folder), "--previous_document_compressions", "document_compressions", paired).files
    rows = [c for f in files for c in from_table(read_parquet(f), DocumentCompression)]
    keys = [(c.user_id, c.doc_id) for c in rows]
    assert len(keys) == len(set(keys)), f"a document appears twice: {sorted(keys)}"
    return {key: c.compression for key, c in zip(keys, rows)}


def same_compressions(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_profiles_and_compressions_commit_as_a_pair(tmp_path, tiny_checkpoint, commer_cache):
    """The profiles and the document compressions are two tables, committed one after the other; a kill between
    the two commits must still leave a pair a refresh (with --deletions) reads consistently."""
    added = [r for r in NEW if r not in OLD]
    for name, rows in (("old.jsonl", OLD), ("new.jsonl", added)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "deletions.jsonl").write_text('{"user_id": "u0", "doc_id": "d0"}\n')

    def full(out):
        return flags(tmp_path, tiny_checkpoint, commer_cache, "old.jsonl", out,
                     "--document_compressions_output", str(tmp_path / f"{out}-dc"))

    def refresh(out):  # in place, with a deletion: exact only if profiles and compressions pair up
        return flags(tmp_path, tiny_checkpoint, commer_cache, "new.jsonl", out, "--previous_profiles",
                     str(tmp_path / out), "--previous_document_compressions", str(tmp_path / f"{out}-dc"),
                     "--document_compressions_output", str(tmp_path / f"{out}-dc"),
                     "--deletions", str(tmp_path / "deletions.jsonl"))

    run(full("clean"))
    old = state(tmp_path / "clean" / "profiles"), compressions(tmp_path / "clean-dc")
    run(refresh("clean"))
    new = state(tmp_path / "clean" / "profiles"), compressions(tmp_path / "clean-dc")
    assert ("u0", "d0") in old[1] and ("u0", "d0") not in new[1] and len(new[1]) == len(NEW) - 1

    live, dc = tmp_path / "live", tmp_path / "live-dc"
    run(full("live"))
    # between_commits: dead letters committed; between_commits:2: the compressions too, the profiles not yet.
    for phase in ("written", "between_commits", "between_commits:2"):
        assert killed_at(phase, refresh("live")) == -signal.SIGKILL, phase
        assert same(state(live / "profiles"), old[0]), phase
        assert same_compressions(compressions(dc, paired_with=live), old[1]), phase  # what a refresh reads
        # A plain reader of the compressions sees one whole version: the old, or (killed after their commit) the new.
        assert same_compressions(compressions(dc), new[1] if phase == "between_commits:2" else old[1]), phase

    summary = run(refresh("live"))
    assert summary["reconciled"] and same(state(live / "profiles"), new[0])
    assert same_compressions(compressions(dc, paired_with=live), new[1])
    assert same_compressions(compressions(dc), new[1])
    paired = json.loads(DeltaTable(str(live / "profiles")).history(1)[0]["commer"])["paired"]
    assert paired["document_compressions"]["version"] == DeltaTable(str(dc)).version()


def test_the_second_of_two_concurrent_runs_fails_and_leaves_the_first(tmp_path, tiny_checkpoint, commer_cache,
                                                                    monkeypatch, capsys):
    """A nightly run and a manual rerun into the same --output: the one that commits second exits non-zero in one
    line and commits nothing; the table holds the first one's version."""
    for name, rows in (("old.jsonl", OLD), ("new.jsonl", NEW)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    run(flags(tmp_path, tiny_checkpoint, commer_cache, "old.jsonl", "live"))
    real = compress_users.run_pipeline
    other = {}

    def with_a_rival(*args, **kwargs):  # while this run computes, another one commits to the same tables
        monkeypatch.setattr(compress_users, "run_pipeline", real)
        other.update(run(flags(tmp_path, tiny_checkpoint, commer_cache, "new.jsonl", "live")))
        return real(*args, **kwargs)

    monkeypatch.setattr(compress_users, "run_pipeline", with_a_rival)
    with pytest.raises(SystemExit) as exit_:
        compress_users.run_cli(compress_users.main, flags(tmp_path, tiny_checkpoint, commer_cache, "old.jsonl", "live"))
    (err,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_.value.code == 2 and other["run_id"] in err and "committed nothing" in err
    assert versions(tmp_path / "live" / "profiles") == [0, 1] and len(state(tmp_path / "live")) == 6
    assert json.loads((tmp_path / "live" / "run_summary.json").read_text())["run_id"] == other["run_id"]


QUERIES = [{"user_id": f"u{u}", "query_id": f"q{u}{k}", "instruction": f"Write about topic {k}.",
            "reference": f"topic {k}"} for u in range(5) for k in range(2)]


def test_generate_and_evaluate_outputs_are_one_state(tmp_path, tiny_checkpoint, commer_cache):
    """generate's predictions and evaluate's per-query/per-user tables: a kill after the pipeline, between the
    dead letters' commit and the main one, or after it, leaves the old or the new version, never both."""
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in OLD))
    run(flags(tmp_path, tiny_checkpoint, commer_cache, "docs.jsonl", "commer"))
    for name, rows in (("old.jsonl", QUERIES[:4]), ("new.jsonl", QUERIES)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def gen(queries, out):
        return ["--profiles", str(tmp_path / "commer"), "--queries", str(tmp_path / queries), "--output",
                str(tmp_path / out), "--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache,
                "--max_new_tokens", "2", "--direct_running_mode=in_memory"]

    def predictions(out) -> dict:
        rows = table_rows(tmp_path / out / "predictions")
        assert len(rows) == len({r["query_id"] for r in rows}) == len(read_parquet(str(tmp_path / out)))
        return {r["query_id"]: r["prediction"] for r in rows}

    def ev(predictions_folder, out):
        return ["--predictions", str(tmp_path / predictions_folder), "--output", str(tmp_path / out),
                "--no_plots", "--direct_running_mode=in_memory"]

    def per_query(out) -> dict:
        rows = table_rows(tmp_path / out / "per_query")
        assert len(rows) == len({r["query_id"] for r in rows})
        return {r["query_id"]: r for r in rows}

    assert generate.main(gen("new.jsonl", "clean")) == 0
    assert generate.main(gen("old.jsonl", "live")) == 0
    assert evaluate.main(ev("live", "m")) == 0  # the old predictions' evaluation
    old, new = predictions("live"), predictions("clean")
    assert sorted(old) != sorted(new)
    for phase in ("written", "between_commits", "committed"):
        assert killed_at(phase, gen("new.jsonl", "live"), generate.main) == -signal.SIGKILL, phase
        assert predictions("live") == (new if phase == "committed" else old), phase
    assert generate.main(gen("new.jsonl", "live")) == 0 and predictions("live") == new
    assert sorted(p.name for p in (tmp_path / "live").iterdir()) == ["dead_letters", "predictions",
                                                                     "run_summary.json"]

    assert evaluate.main(ev("clean", "metrics")) == 0  # the new predictions, evaluated cleanly
    before, after = per_query("m"), per_query("metrics")
    assert sorted(before) == sorted(old) and sorted(after) == sorted(new)
    users = {r["user_id"] for r in table_rows(tmp_path / "m" / "per_user")}
    # Commits: dead letters, then per_query (between_commits:2 comes after it), then per_user; each table is
    # always one whole version.
    for phase in ("written", "between_commits", "between_commits:2", "committed"):
        assert killed_at(phase, ev("clean", "m"), evaluate.main) == -signal.SIGKILL, phase
        assert per_query("m") == (before if phase in ("written", "between_commits") else after), phase
        got_users = {r["user_id"] for r in table_rows(tmp_path / "m" / "per_user")}
        assert got_users == ({f"u{u}" for u in range(5)} if phase == "committed" else users), phase
    assert evaluate.main(ev("clean", "m")) == 0 and per_query("m") == after
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["dead_letters", "metrics.json", "per_query",
                                                                  "per_user"]
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["run_id"] == json.loads(DeltaTable(str(tmp_path / "m" / "per_query")).history(1)[0]["commer"])["run_id"]
