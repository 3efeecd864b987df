"""Fault injection for the kill tests, and nothing else: the one module that knows about kills.

A job calls `point(name)` at a few named moments; when the environment variable KILL_AT names that
moment (set only by tests/pipelines/test_kill_safety.py), the process SIGKILLs itself there, as a
preempted worker or a crashed launcher would. KILL_AT=name:n fires on the n-th call in this process
(e.g. writing:2, once a first table is already in a sink's temporary file; between_commits:2, after the
second of three commits). Unset, a point costs one environment lookup.

    model_loaded     the model is loaded on a worker                     (pipelines.inference)
    compressing      a batch is being compressed                         (pipelines.inference)
    writing          a table is being written into a temp file           (pipelines.io)
    written          the pipeline finished; nothing is committed         (the job's launcher)
    between_commits  an earlier table of the run is committed (dead letters, document compressions),
                     the main one (profiles, predictions, per-query scores) not yet
    committed        every table is committed; the summary is not yet written
"""
from __future__ import annotations

import os
import signal
from collections import Counter

KILL_AT = "COMMER_TEST_KILL_AT"
PHASES = ("model_loaded", "compressing", "writing", "written", "between_commits", "committed")
_calls: Counter = Counter()


def point(name: str) -> None:
    """A named moment of a job; SIGKILL this process here when KILL_AT names it (name, or name:n for the n-th call)."""
    target = os.environ.get(KILL_AT)
    if not target or target.partition(":")[0] != name:
        return
    _calls[name] += 1
    if _calls[name] >= int(target.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)
