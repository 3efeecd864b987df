"""What every ComMer Beam job shares: model flags, one model per worker process, CLI errors.

Jobs define their own PipelineOptions subclass for their flags and mix in ModelOptions.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Callable, Sequence

from apache_beam.options.pipeline_options import PipelineOptions
from commer import BackboneError, CheckpointError, ComMer
from commer.defaults import default_checkpoint

log = logging.getLogger(__name__)

# With no --runner, jobs run on the FnApiRunner: the engine Beam 2.77's DirectRunner uses for
# batch pipelines, minus its first step of downloading the Prism runner binary from GitHub
# (which hangs or fails on machines without internet, e.g. batch workers behind a firewall).
LOCAL_RUNNER = "FnApiRunner"


class CliError(Exception):
    """A user error with a fix; the CLI prints it (naming the flag) without a traceback."""


class ModelOptions(PipelineOptions):
    """Flags that choose and place the ComMer model."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--checkpoint", default=None,
                            help="ComMer checkpoint folder (local or gs://). Default: the checkpoint bundled "
                                 "with the package (a seeded untrained one if none is bundled).")
        parser.add_argument("--backbone", default=None,
                            help="Override the checkpoint's backbone reference (an HF folder, local or gs://). "
                                 "It must be the same model: its content hash is checked.")
        parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                            help="Backbone precision.")
        parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                            help="Where the model runs on each worker.")
        parser.add_argument("--cache_dir", default=None,
                            help="Where converted/downloaded backbones are cached (default $COMMER_CACHE_DIR "
                                 "or ~/.cache/commer).")


def resolve_checkpoint(options: ModelOptions) -> str:
    return options.checkpoint or default_checkpoint(options.cache_dir)


_MODELS: dict[tuple, object] = {}
_MODELS_LOCK = threading.Lock()


def shared_model(checkpoint: str, backbone: str | None, dtype: str, device: str, cache: str | None):
    """The ComMer model for these settings, loaded once per process and shared by its threads."""
    key = (checkpoint, backbone, dtype, device, cache)
    with _MODELS_LOCK:
        if key not in _MODELS:
            import torch

            if device == "cuda" and not torch.cuda.is_available():
                raise CliError("--device=cuda was given but this worker has no CUDA device; use --device=cpu")
            model = ComMer.from_pretrained(checkpoint, backbone=backbone, dtype=dtype, cache=cache)
            _MODELS[key] = model.to(device).eval()
        return _MODELS[key]


def with_local_runner(argv: Sequence[str]) -> list[str]:
    """argv with the local runner added when no runner was named."""
    argv = list(argv)
    if not any(a == "--runner" or a.startswith("--runner=") for a in argv):
        argv.append(f"--runner={LOCAL_RUNNER}")
    return argv


def run_cli(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a job's main; user errors print one clear line and exit 2, never a traceback."""

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = main(list(sys.argv[1:] if argv is None else argv))
    except (CliError, BackboneError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def counter_values(result, namespace: str, names=()) -> dict[str, int]:
    """A finished pipeline's counters in `namespace`, summed over steps (`names` default to 0)."""
    from apache_beam.metrics.metric import MetricsFilter

    values = {name: 0 for name in names}
    for counter in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        # Some runners only report attempted values.
        value = counter.committed if counter.committed is not None else counter.attempted
        values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + int(value or 0)
    return values


def new_run_id() -> str:
    """A sortable, unique id for one run; every shard the run writes carries it in its name."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def run_pipeline(options, build: Callable, *args):
    """Build a pipeline with `build(pipeline, *args)`, run it to the end; (result, seconds)."""
    import apache_beam as beam

    started = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    build(pipeline, *args)
    result = pipeline.run()
    result.wait_until_finish()
    return result, time.perf_counter() - started


def remove_stale_shards(folder: str, run_id: str, pattern: str) -> None:
    """Delete the shards matching folder/pattern that an earlier run left (names without run_id).

    Called only after this run succeeded, so a failed run never leaves a folder without its
    previous output, and a rerun that writes fewer shards leaves none of the old ones mixed in."""
    from apache_beam.io.filesystems import FileSystems

    try:
        found = FileSystems.match([f"{folder}/{pattern}"])[0].metadata_list
    except Exception:  # the folder does not exist yet
        return
    stale = [m.path for m in found if run_id not in m.path.rsplit("/", 1)[-1]]
    if stale:
        FileSystems.delete(stale)
