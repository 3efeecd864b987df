"""The dtype compress_users computes in: resolved once by the launcher, recorded, checked on a refresh.

One run computes in one dtype. The launcher resolves `--dtype auto` before anything runs, with
commer.precision's one rule for the device it sees (`run_dtype`), and hands the workers the resolved
name, so what the workers compute in and what the tables record cannot disagree. The profiles and
document-compressions tables record it in their ComMer metadata (`dtype`: every file's footer and each
Delta commit's table metadata), and the run summary says it too.

bfloat16 compressions differ from float32 ones (about 6e-3 relative on the bundled checkpoint, issue
27), so a refresh whose dtype differs from its previous profiles' would add the two kinds into one sum
that equals neither recompute: `check_dtype` refuses it before anything runs. Tables written before
the record carry none and read as float32 (pipelines.recorded.UNRECORDED_DTYPE says why).

Where the launcher is not where the workers run (Dataflow), it cannot see their device: with `--device
auto` it resolves `--dtype auto` for its own (float32 on a launcher without a GPU), and GPU workers then
compute, correctly but slower, in float32. Name `--device cuda` for GPU workers (bfloat16), or `--dtype`;
`remote_note` says so on the console when `--dtype auto` was resolved for a remote runner.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pipelines.inference import resolve_on_worker
from pipelines.progress import runs_locally
from pipelines.recorded import recorded_dtype
from pipelines.runtime import CliError

FULL_RUN = "recompute every profile with a full run (all documents, no --previous_profiles)"


def run_dtype(flags: argparse.Namespace) -> str:
    """The dtype this run computes in: --dtype as given, or for auto the default of the device this machine
    resolves --device to (one call to commer.precision's rule, through the workers' own resolver)."""
    return resolve_on_worker(flags.dtype, flags.device)[0]


def check_dtype(dtype: str, previous: Sequence[tuple[str, str, Sequence[str]]]) -> None:
    """Refuse, in one line naming --dtype and the fix, a refresh whose dtype differs from a previous table's;
    `previous`: (flag, the path given, its files) per previous table read."""
    for flag, path, files in previous:
        stored, found = recorded_dtype(files, flag)
        if found is not None and stored != dtype:
            raise CliError(f"--dtype: this run computes in {dtype}, the {flag} at {path} in {stored} (compressions "
                           f"of different dtypes cannot be merged exactly); rerun with --dtype {stored}, or {FULL_RUN}")


def remote_note(flags: argparse.Namespace, dtype: str, options) -> None:
    """One console note when `--dtype auto` was resolved on a launcher for workers elsewhere."""
    if flags.dtype == "auto" and not runs_locally(options):
        device = resolve_on_worker(flags.dtype, flags.device)[1]
        seen = f"--device auto: {device} here" if flags.device == "auto" else f"--device {device}"
        print(f"note: --dtype auto resolved to {dtype} on this launcher ({seen}); every worker computes in {dtype}, "
              "whatever its hardware. Name --dtype to choose (GPU workers: --device cuda, bfloat16)", file=sys.stderr)
