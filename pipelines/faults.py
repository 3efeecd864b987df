"""Fault injection for the kill tests, and nothing else: the one module that knows about kills.

A job calls `point(name)` at a few named moments; when the environment variable KILL_AT names that
moment (set only by tests/pipelines/test_kill_safety.py), the process SIGKILLs itself there, as a
preempted worker or a crashed launcher would. `point(name, after=n)` fires on the n-th call in this
process (e.g. during a sink's write, once a first table is already in a temporary file). Unset, a
point costs one dictionary lookup.

    model_loaded     the model is loaded on a worker                     (pipelines.inference)
    compressing      a batch is being compressed                         (pipelines.inference)
    writing          a second table is being written into a temp file    (pipelines.io)
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


def point(name: str, after: int = 1) -> None:
    """A named moment of a job; SIGKILL this process here when KILL_AT names it (on its `after`-th call)."""
    if os.environ.get(KILL_AT) != name:
        return
    _calls[name] += 1
    if _calls[name] >= after:
        os.kill(os.getpid(), signal.SIGKILL)
