"""The job skeleton every ComMer Beam job shares: CLI errors, the checkpoint, run id, running,
counters (one namespace) and the summary file.

    plan (checks, before anything runs) → run_pipeline → rejections.check_run → tables.commit_outputs (the commit) → summary
"""
from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import Callable, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from commer import BackboneError, CheckpointError
from commer.checkpoint import read_config
from commer.config import ComMerConfig
from commer.defaults import default_checkpoint
from pipelines import logs, progress
from pipelines.flags import CliError  # noqa: F401 (jobs and tests import it from here too)
from pipelines.offline import stands_in

log = logging.getLogger(__name__)

# Every job's counters live in this namespace (RunInference's own metrics in INFERENCE_NAMESPACE).
NAMESPACE = "commer"
INFERENCE_NAMESPACE = "commer_inference"


class InputError(ValueError):
    """Raised on a worker when an input cannot be read whole (a corrupt Parquet page, a truncated gzip file,
    previous profiles that fail their checks): the job stops, commits nothing, and the launcher prints the
    message as one line (`run_pipeline` finds it by MARKER in whatever the runner re-raises)."""

    MARKER = "commer-input-error: "

    def __init__(self, message: str):
        super().__init__(self.MARKER + " ".join(message.split()))


def _input_error_line(exc: BaseException) -> str | None:
    text = str(exc)
    at = text.find(InputError.MARKER)
    if at < 0:
        return None
    line = text[at + len(InputError.MARKER):].splitlines()[0]
    return line.split(" [while running", 1)[0].strip()


class DryRun(Exception):
    """--dry_run=True: the runner built the job graph (e.g. for Dataflow) and submitted nothing, so there
    are no results, counters or outputs to report; the CLI says so and exits 0."""


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def distribution(name: str):
    """A distribution metric (count, sum, min, max of the values it is updated with) in NAMESPACE."""
    return Metrics.distribution(NAMESPACE, name)


def counters(*names: str) -> dict:
    """A DoFn's counters by name (all in NAMESPACE)."""
    return {name: counter(name) for name in names}


def checkpoint_config(flags) -> tuple[str, ComMerConfig]:
    """The checkpoint the model flags name (default: the bundled one) and its config; it must have a fingerprint.
    An offline dry run reads no remote checkpoint: the bundled one's config stands in (pipelines.offline)."""
    checkpoint = flags.checkpoint or default_checkpoint(flags.cache_dir)
    if stands_in(checkpoint):
        config = read_config(default_checkpoint(flags.cache_dir))
        log.info("dry run: --checkpoint %s is not read; the bundled checkpoint's K=%d, d=%d stand in", checkpoint,
                 config.num_compression_tokens, config.hidden_size)
        return checkpoint, config.model_copy(update={"fingerprint": f"dry-run:{checkpoint}"})
    config = read_config(checkpoint)
    if not config.fingerprint:
        raise CliError(f"--checkpoint {checkpoint} records no fingerprint; re-save it with save_pretrained")
    return checkpoint, config


def run_cli(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a job's main; user errors print one clear line and exit 2, never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logs.setup(logs.level_from(argv))
    try:
        code = main(argv)
    except (CliError, BackboneError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except DryRun as done:
        print(done)
        sys.exit(0)
    sys.exit(code or 0)


def counter_values(result, names=()) -> dict[str, int]:
    """A finished pipeline's counters (NAMESPACE), summed over steps (`names` default to 0)."""
    values = {name: 0 for name in names}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        # Some runners only report attempted values.
        value = c.committed if c.committed is not None else c.attempted
        values[c.key.metric.name] = values.get(c.key.metric.name, 0) + int(value or 0)
    return values


def distribution_values(result) -> dict[str, dict]:
    """A finished pipeline's distributions (NAMESPACE) by name: count, sum, min, max, merged over steps."""
    values: dict[str, dict] = {}
    for d in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["distributions"]:
        value = d.committed if d.committed is not None else d.attempted
        if value is None or not value.count:
            continue
        seen = values.setdefault(d.key.metric.name, {"count": 0, "sum": 0, "min": value.min, "max": value.max})
        seen["count"] += value.count
        seen["sum"] += value.sum
        seen["min"], seen["max"] = min(seen["min"], value.min), max(seen["max"], value.max)
    return values


def new_run_id() -> str:
    """A sortable, unique id for one run; every shard the run writes carries it in its name."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def run_pipeline(options, build: Callable, *args, progress_unit: str | None = None):
    """Build a pipeline with `build(pipeline, *args)`, run it to the end; (result, seconds).
    With `progress_unit` (e.g. "documents compressed"), a local run logs a progress line every 10 s."""
    started = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    build(pipeline, *args)
    with progress.report(options, progress_unit):
        try:
            result = pipeline.run()
            if options.get_all_options().get("dry_run"):
                runner = options.get_all_options().get("runner") or "the runner"
                raise DryRun(f"job graph built for {runner.removesuffix('Runner')}, not submitted")
            result.wait_until_finish()
        except Exception as exc:
            line = _input_error_line(exc)
            if line is None:
                raise
            raise CliError(f"{line}; nothing was committed") from None
    return result, time.perf_counter() - started


def write_json(path: str, data: dict) -> None:
    """A small JSON file (summary, metrics) on any filesystem Beam knows; written to a temporary name and
    renamed into place, so a kill never leaves a truncated one."""
    temporary = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with FileSystems.create(temporary) as f:
        f.write(json.dumps(data, indent=2).encode())
    FileSystems.rename([temporary], [path])
