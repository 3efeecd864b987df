"""A progress line at a steady interval while a job's pipeline runs locally (issue 14).

The DoFns and RunInference handlers call `add(READ)` / `add(DONE, n)`; on the in-process runner
they share this module with the launcher, whose `Reporter` thread logs, every `interval` seconds,

    progress: 96 documents compressed (217 read), 4.1/s, 30 s elapsed

On Dataflow (workers in other processes) the same steps count into Beam metrics (runtime's
`commer` namespace: records_read / query_read, documents_inferred / predictions), which the Dataflow console shows while the job
runs; no launcher thread is started there.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter

log = logging.getLogger(__name__)

READ, DONE = "read", "done"
INTERVAL_SECONDS = 10.0
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", None)

_counts: Counter = Counter()
_lock = threading.Lock()
_now: list[str] = [""]  # what the slow step is doing right now (a batch can take a minute on CPU)


def add(name: str, n: int = 1) -> None:
    """Count n items of `name` (READ or DONE) in this process (callers also count a Beam metric)."""
    with _lock:
        _counts[name] += n


def counts() -> dict:
    with _lock:
        return dict(_counts)


def now(activity: str = "") -> None:
    """Say what the slow step is doing (loading the model, generating a batch of N); "" when it is done.
    The progress line shows it, so a line that stays at 0 done still says why."""
    with _lock:
        _now[0] = activity


def line(unit: str, values: dict, seconds: float, activity: str = "") -> str:
    done, read = values.get(DONE, 0), values.get(READ, 0)
    rate = f"{done / seconds:.1f}/s" if seconds > 0 else "-"
    return f"progress: {done} {unit} ({read} read), {rate}, {seconds:.0f} s elapsed" + (f"; now {activity}"
                                                                                         if activity else "")


class Reporter:
    """Logs a progress line every `interval` seconds between start() and stop() (a daemon thread)."""

    def __init__(self, unit: str, interval: float = INTERVAL_SECONDS):
        self.unit, self.interval = unit, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commer-progress", daemon=True)
        self.started = 0.0

    def __enter__(self):
        with _lock:
            _counts.clear()
            _now[0] = ""
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(1.0)

    def _run(self):
        while not self._stop.wait(self.interval):
            with _lock:
                activity = _now[0]
            log.info(line(self.unit, counts(), time.monotonic() - self.started, activity))


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def runs_locally(options) -> bool:
    """Whether the pipeline's workers run in this process's machine (the in-process runners)."""
    runner = options.get_all_options().get("runner") if options is not None else None
    return runner in LOCAL_RUNNERS or str(runner).endswith(LOCAL_RUNNERS[:-1])


def report(options, unit: str | None, interval: float = INTERVAL_SECONDS):
    """A context manager: a Reporter on a local runner when `unit` is given, else nothing."""
    if unit and runs_locally(options):
        return Reporter(unit, interval)
    return _Nothing()
