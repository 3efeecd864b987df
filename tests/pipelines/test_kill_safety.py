"""Issue 15 / DESIGN.md invariant 9: an output folder is always in exactly one state.

The job runs as a child process that SIGKILLs itself at each named phase (pipelines.output_state.phase,
armed by COMMER_TEST_KILL_AT): after the model is loaded, during compression, during the profile write,
after the write (before CURRENT switches) and after the switch (before the old runs are removed). After
each kill the folder must read as the previous run or the new one; then a rerun succeeds, equals a clean
run, and leaves nothing else behind."""
import json
import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.compress_users import run
from pipelines.io import parquet_shards
from pipelines.output_state import KILL_AT, PHASES
from pipelines.runtime import CliError
from schemas import Profile, from_table, read_parquet

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


def _child(phase: str, argv: list[str]) -> None:
    # A forked child must not use the parent's OpenMP thread pool (it does not survive fork():
    # a segfault in the first matmul when the parent ran torch with several threads).
    torch.set_num_threads(1)
    os.environ[KILL_AT] = phase
    run(argv)
    os._exit(0)  # not killed: the test fails on the exit code


def killed_at(phase: str, argv: list[str]) -> int:
    """Run the job in a forked child process (modules already imported: no 20 s start-up per kill) that
    SIGKILLs itself at `phase`; its exit code (-9 when killed there)."""
    child = multiprocessing.get_context("fork").Process(target=_child, args=(phase, argv))
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
