"""Issue 15 / DESIGN.md invariant 9: an output folder is always in exactly one state.

The job runs as a child process that SIGKILLs itself at each named phase (pipelines.output_state.phase,
armed by COMMER_TEST_KILL_AT): after the model is loaded, during compression, during the profile write,
after the write (before CURRENT switches) and after the switch (before the old runs are removed; for
compress_users with document compressions: between the profiles' switch and the compressions'). After
each kill the folder must read as the previous run or the new one; then a rerun succeeds, equals a clean
run, and leaves nothing else behind. compress_users, generate and evaluate."""
import json
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines import evaluate, generate
from pipelines.compress_users import run
from pipelines.io import parquet_shards, prediction_files
from pipelines.output_state import KILL_AT, PHASES, current_shards
from pipelines.runtime import CliError
from schemas import DocumentCompression, Profile, from_table, read_parquet

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
    # A forked child must not use the parent's OpenMP thread pool (it does not survive fork():
    # a segfault in the first matmul when the parent ran torch with several threads).
    torch.set_num_threads(1)
    os.environ[KILL_AT] = phase
    job(argv)
    os._exit(0)  # not killed: the test fails on the exit code


def killed_at(phase: str, argv: list[str], job=run) -> int:
    """Run the job in a forked child process (modules already imported: no 20 s start-up per kill) that
    SIGKILLs itself at `phase`; its exit code (-9 when killed there)."""
    child = multiprocessing.get_context("fork").Process(target=_child, args=(phase, argv, job))
    child.start()
    child.join(120)
    if child.exitcode is None:
        child.kill()
        child.join()
    return child.exitcode


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
    debris = set()
    for phase in PHASES:
        assert killed_at(phase, refresh) == -signal.SIGKILL, phase
        got = state(live)
        assert same(got, new if phase == "switched" else old), phase
        # Readers that follow CURRENT: --previous_profiles / generate --profiles take only its run's shards.
        assert len(pd.concat(pd.read_parquet(f) for f in parquet_shards(str(live), "--profiles", "profiles"))) \
            == len(got)
        debris |= {p.relative_to(live).as_posix() for p in live.rglob("*") if "beam-temp" in p.as_posix()}
    assert any(p.endswith(".parquet") or "beam-temp" in p for p in debris), "the write kill left no temp file"

    summary = run(refresh)  # the rerun, from the folder every kill went through
    assert summary["reconciled"] and same(state(live), new)
    assert sorted(p.name for p in (live / "profiles").iterdir()) == sorted(["CURRENT", summary["run_id"]])
    assert not [p for p in live.rglob("*") if "beam-temp" in p.as_posix() or p.name.endswith(".tmp")]


def test_a_legacy_flat_folder_is_still_read_and_moved_over(tmp_path, tiny_checkpoint, commer_cache):
    (tmp_path / "old.jsonl").write_text("".join(json.dumps(r) + "\n" for r in OLD))
    run(flags(tmp_path, tiny_checkpoint, commer_cache, "old.jsonl", "live"))
    profiles = tmp_path / "live" / "profiles"
    (run_dir,) = [p for p in profiles.iterdir() if p.is_dir()]
    for shard in run_dir.glob("*.parquet"):  # the layout before CURRENT: shards flat in profiles/
        shard.rename(profiles / shard.name)
    run_dir.rmdir()
    (profiles / "CURRENT").unlink()
    (profiles / "beam-temp-profiles-x").mkdir()
    (profiles / "beam-temp-profiles-x" / "partial.parquet").write_bytes(b"PAR1 truncated")
    before = state(tmp_path / "live")  # the truncated temp file is ignored
    assert len(before) == 4
    summary = run(flags(tmp_path, tiny_checkpoint, commer_cache, "old.jsonl", "live", "--previous_profiles",
                        str(tmp_path / "live")))
    assert summary["already_merged"] == len(OLD) and same(state(tmp_path / "live"), before)
    assert sorted(p.name for p in profiles.iterdir()) == sorted(["CURRENT", summary["run_id"]])


def test_duplicated_users_in_previous_profiles_fail_with_one_line(tmp_path, tiny_checkpoint, commer_cache, capsys):
    (tmp_path / "old.jsonl").write_text("".join(json.dumps(r) + "\n" for r in OLD))
    run(flags(tmp_path, tiny_checkpoint, commer_cache, "old.jsonl", "live"))
    profiles = tmp_path / "live" / "profiles"
    (run_dir,) = [p for p in profiles.iterdir() if p.is_dir()]
    (shard,) = run_dir.glob("*.parquet")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.parquet").write_bytes(shard.read_bytes())  # an old bad state: the same users twice
    (bad / "b.parquet").write_bytes(shard.read_bytes())
    with pytest.raises(CliError) as err:
        run(flags(tmp_path, tiny_checkpoint, commer_cache, "old.jsonl", "out2", "--previous_profiles", str(bad)))
    message = str(err.value)
    assert "\n" not in message and "'u0'" in message and "a.parquet" in message and "b.parquet" in message


def compressions(folder: Path, paired_with: Path | None = None) -> dict:
    """A compressions table as {(user_id, doc_id): K×d}: its CURRENT, or the runs the profiles at
    `paired_with` were committed with (what a refresh reads); no document twice."""
    files = parquet_shards(str(folder), "--previous_document_compressions", "document_compressions",
                           str(paired_with) if paired_with else None)
    rows = [c for f in files for c in from_table(read_parquet(f), DocumentCompression)]
    keys = [(c.user_id, c.doc_id) for c in rows]
    assert len(keys) == len(set(keys)), f"a document appears twice: {sorted(keys)}"
    return {key: c.compression for key, c in zip(keys, rows)}


def same_compressions(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_profiles_and_compressions_commit_together(tmp_path, tiny_checkpoint, commer_cache):
    """Gap 2 of issue 15: the profiles and the document compressions are switched one after the other; a
    kill between the two switches must still leave a pair a refresh (with --deletions) reads consistently."""
    added = [r for r in NEW if r not in OLD]
    for name, rows in (("old.jsonl", OLD), ("new.jsonl", added)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "deletions.jsonl").write_text('{"user_id": "u0", "doc_id": "d0"}\n')

    def full(out):
        return flags(tmp_path, tiny_checkpoint, commer_cache, "old.jsonl", out,
                     "--document_compressions_output", str(tmp_path / out / "dc"))

    def refresh(out):  # in place, with a deletion: exact only if profiles and compressions pair up
        return flags(tmp_path, tiny_checkpoint, commer_cache, "new.jsonl", out, "--previous_profiles",
                     str(tmp_path / out), "--previous_document_compressions", str(tmp_path / out / "dc"),
                     "--document_compressions_output", str(tmp_path / out / "dc"),
                     "--deletions", str(tmp_path / "deletions.jsonl"))

    run(full("clean"))
    old = state(tmp_path / "clean" / "profiles"), compressions(tmp_path / "clean" / "dc")
    run(refresh("clean"))
    new = state(tmp_path / "clean" / "profiles"), compressions(tmp_path / "clean" / "dc")
    assert ("u0", "d0") in old[1] and ("u0", "d0") not in new[1] and len(new[1]) == len(NEW) - 1

    live = tmp_path / "live"
    run(full("live"))
    for phase, (profiles, paired) in (("written", old), ("switched", new)):  # before / between the switches
        assert killed_at(phase, refresh("live")) == -signal.SIGKILL, phase
        assert same(state(live / "profiles"), profiles), phase
        assert same_compressions(compressions(live / "dc", paired_with=live), paired), phase
        assert same_compressions(compressions(live / "dc"), old[1]), phase  # its own CURRENT: one whole state

    summary = run(refresh("live"))
    assert summary["reconciled"] and same(state(live / "profiles"), new[0])
    assert same_compressions(compressions(live / "dc", paired_with=live), new[1])
    assert same_compressions(compressions(live / "dc"), new[1])
    assert sorted(p.name for p in (live / "dc").iterdir()) == sorted(["CURRENT", summary["run_id"]])


QUERIES = [{"user_id": f"u{u}", "query_id": f"q{u}{k}", "instruction": f"Write about topic {k}.",
            "reference": f"topic {k}"} for u in range(5) for k in range(2)]


def test_generate_and_evaluate_outputs_are_one_state(tmp_path, tiny_checkpoint, commer_cache):
    """Gap 1 of issue 15: generate's predictions and evaluate's per-query/per-user tables are run folders
    switched by CURRENT; a kill between the write and the switch, or between the switch and the clean-up,
    leaves the old or the new run, never both."""
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in OLD))
    run(flags(tmp_path, tiny_checkpoint, commer_cache, "docs.jsonl", "commer"))
    for name, rows in (("old.jsonl", QUERIES[:4]), ("new.jsonl", QUERIES)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def gen(queries, out):
        return ["--profiles", str(tmp_path / "commer"), "--queries", str(tmp_path / queries), "--output",
                str(tmp_path / out), "--checkpoint", tiny_checkpoint, "--cache_dir", commer_cache,
                "--max_new_tokens", "2", "--direct_running_mode=in_memory"]

    def predictions(out) -> dict:
        files = prediction_files(str(tmp_path / out), "--predictions")  # what evaluate reads
        assert files == sorted(str(p) for p in (tmp_path / out).glob("*/predictions-*.parquet")
                               if p.parent.name == (tmp_path / out / "CURRENT").read_text().strip())
        rows = pd.concat(pd.read_parquet(f) for f in files).to_dict("records")
        assert len(rows) == len({r["query_id"] for r in rows}) == len(read_parquet(str(tmp_path / out)))
        return {r["query_id"]: r["prediction"] for r in rows}

    def ev(predictions_folder, out):
        return ["--predictions", str(tmp_path / predictions_folder), "--output", str(tmp_path / out),
                "--no_plots", "--direct_running_mode=in_memory"]

    def per_query(out) -> dict:
        rows = [json.loads(line) for f in current_shards(str(tmp_path / out), "per_query-*.jsonl")
                for line in Path(f).read_text().splitlines()]
        assert len(rows) == len({r["query_id"] for r in rows})
        return {r["query_id"]: r for r in rows}

    assert generate.main(gen("new.jsonl", "clean")) == 0
    assert generate.main(gen("old.jsonl", "live")) == 0
    assert evaluate.main(ev("live", "m")) == 0  # the old predictions' evaluation
    old, new = predictions("live"), predictions("clean")
    assert sorted(old) != sorted(new)
    for phase in ("written", "switched"):
        assert killed_at(phase, gen("new.jsonl", "live"), generate.main) == -signal.SIGKILL, phase
        assert predictions("live") == (new if phase == "switched" else old), phase
    assert generate.main(gen("new.jsonl", "live")) == 0 and predictions("live") == new
    live = tmp_path / "live"
    (run_id,) = (live / "CURRENT").read_text().split()
    assert sorted(p.name for p in live.iterdir()) == sorted(["CURRENT", run_id, "dead_letters", "run_summary.json"])
    assert sorted(p.name for p in (live / "dead_letters").iterdir()) == sorted(["CURRENT", run_id])

    assert evaluate.main(ev("clean", "metrics")) == 0  # the new predictions, evaluated cleanly
    before, after = per_query("m"), per_query("metrics")
    assert sorted(before) == sorted(old) and sorted(after) == sorted(new)
    for phase in ("written", "switched"):
        assert killed_at(phase, ev("clean", "m"), evaluate.main) == -signal.SIGKILL, phase
        assert per_query("m") == (after if phase == "switched" else before), phase
    assert evaluate.main(ev("clean", "m")) == 0 and per_query("m") == after
    (run_id,) = (tmp_path / "m" / "CURRENT").read_text().split()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(["CURRENT", run_id, "dead_letters",
                                                                        "metrics.json"])
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["run_id"] == run_id
