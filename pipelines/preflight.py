"""Checks a job runs before it builds its pipeline, so a wrong flag costs one line and a second,
not a traceback after a minute of retries:

    check_remote_paths   every gs:// (or other remote) flag: well formed (a non-empty bucket), and the
                         bucket reachable with the current credentials; the cause (no credentials, no
                         network, no such bucket, no access) and the fix in one line
    check_model          --checkpoint readable, --backbone the model the checkpoint was trained on
                         (commer.checkpoint.backbone_for: hashes the backbone, loads no model)

Each failure is a CliError naming the flag; runtime.run_cli prints it without a traceback.
This module talks to remote storage through fsspec (gcsfs for gs://) to probe a bucket, the way
commer.checkpoint reads a checkpoint; the jobs' data still goes through Beam's FileSystems.
"""
from __future__ import annotations

import re
import threading
from typing import Callable, Iterable

import fsspec
import google.auth

from commer import BackboneError, CheckpointError
from commer.checkpoint import backbone_for, read_config
from commer.defaults import default_checkpoint
from pipelines.flags import CliError

# Flags (job flags and Beam's) that may name remote paths.
PATH_FLAGS = ("input", "output", "checkpoint", "backbone", "previous_profiles", "previous_document_compressions",
              "document_compressions_output", "document_compressions", "deletions", "dead_letter_output", "profiles",
              "queries", "documents", "predictions", "references", "temp_location", "staging_location", "cache_dir")
PROBE_SECONDS = 15.0
AUTH_FIX = "run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS)"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


def remote_paths(*namespaces) -> list[tuple[str, str]]:
    """(--flag, value) for every flag value with a URL scheme (gs://, s3://, memory://, ...)."""
    found = []
    for ns in namespaces:
        values = ns if isinstance(ns, dict) else vars(ns)
        for name in PATH_FLAGS:
            value = values.get(name)
            if isinstance(value, str) and "://" in value and not value.startswith("file://"):
                found.append((f"--{name}", value))
    return found


def split_url(flag: str, url: str) -> tuple[str, str]:
    """(scheme, bucket) of a well-formed URL; a CliError naming the flag otherwise."""
    scheme, _, rest = url.partition("://")
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise CliError(f"{flag} {url}: the bucket name is empty (an unset shell variable, e.g. $BUCKET?); "
                       f"fix: {flag}={scheme}://YOUR_BUCKET/...")
    if scheme == "gs" and not _BUCKET.match(bucket):
        raise CliError(f"{flag} {url}: {bucket!r} is not a valid Cloud Storage bucket name; fix: {flag}=gs://BUCKET/...")
    return scheme, bucket


def google_credentials(project: str | None):
    """The application-default credentials (raises google.auth's DefaultCredentialsError if none)."""
    return google.auth.default()


def bucket_exists(scheme: str, bucket: str, project: str | None) -> bool:
    """Whether the bucket exists and is readable, through fsspec (gcsfs for gs://)."""
    options = {"project": project, "token": "google_default"} if scheme == "gs" else {}
    fs = fsspec.filesystem(scheme, **{k: v for k, v in options.items() if v})
    return fs.exists(bucket if scheme == "gs" else f"{scheme}://{bucket}")


def _with_timeout(call: Callable, seconds: float):
    """call() in a daemon thread: (result, exception); TimeoutError when it does not answer in time."""
    box: dict = {}

    def target():
        try:
            box["result"] = call()
        except BaseException as exc:  # noqa: BLE001 (classified by the caller)
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return None, TimeoutError(f"no answer in {seconds:.0f} s")
    return box.get("result"), box.get("error")


def cause_of(exc: BaseException) -> str:
    """A short, actionable cause for a probe's exception."""
    name, text = type(exc).__name__, str(exc)
    if "DefaultCredentialsError" in name or "RefreshError" in name or "credential" in text.lower():
        return f"no credentials; fix: {AUTH_FIX}"
    if isinstance(exc, PermissionError) or any(s in text for s in ("401", "403", "Forbidden", "Unauthorized")):
        return ("no access with the current credentials; fix: use an account that can read it "
                f"({AUTH_FIX}) or check --project")
    if isinstance(exc, FileNotFoundError) or "404" in text or "NotFound" in name:
        return "no such bucket; fix: create it or correct the flag"
    return f"no network or the storage service did not answer ({name}); fix: check the connection or proxy"


def check_remote_paths(paths: Iterable[tuple[str, str]], project: str | None = None,
                       credentials: Callable = google_credentials, exists: Callable = bucket_exists,
                       seconds: float = PROBE_SECONDS) -> None:
    """Each (flag, url): well formed, then its bucket reachable (one probe per bucket)."""
    paths = list(paths)
    parsed = [(flag, url, *split_url(flag, url)) for flag, url in paths]  # all well formed before any probe
    if any(scheme == "gs" for _, _, scheme, _ in parsed):
        _, error = _with_timeout(lambda: credentials(project), seconds)
        if error is not None:
            flag, url = paths[0]
            raise CliError(f"{flag} {url}: {cause_of(error)}")
    seen = set()
    for flag, url, scheme, bucket in parsed:
        if (scheme, bucket) in seen:
            continue
        seen.add((scheme, bucket))
        found, error = _with_timeout(lambda s=scheme, b=bucket: exists(s, b, project), seconds)
        if error is None and not found:
            error = FileNotFoundError(bucket)
        if error is not None:
            raise CliError(f"{flag} {url}: cannot reach bucket {bucket!r}: {cause_of(error)}")


def check_model(flags) -> None:
    """--checkpoint readable and --backbone (or the checkpoint's recorded one) the model it was trained on."""
    checkpoint = flags.checkpoint or default_checkpoint(flags.cache_dir)
    try:
        config = read_config(checkpoint)
    except (CheckpointError, OSError, ValueError) as exc:
        raise CliError(f"--checkpoint {checkpoint}: {_one_line(exc)}; fix: pass a folder written by "
                       "save_pretrained or training (leave it out for the bundled one)") from None
    try:
        backbone_for(checkpoint, config, flags.backbone, flags.cache_dir)
    except (CheckpointError, BackboneError, OSError) as exc:
        flag = f"--backbone {flags.backbone}" if flags.backbone else f"--checkpoint {checkpoint}"
        raise CliError(f"{flag}: {_one_line(exc)}; fix: pass the --backbone the checkpoint was trained on "
                       "(or leave --backbone out), or a --checkpoint made for this backbone") from None


def run_checks(flags, options) -> None:
    """Everything a job checks before planning: remote paths (with Beam's options), then the model."""
    beam_options = options.get_all_options() if options is not None else {}
    if "Dataflow" in str(beam_options.get("runner") or "") and not beam_options.get("project"):
        raise CliError("--project is empty (an unset $PROJECT?); fix: --project=YOUR_GCP_PROJECT")
    paths = remote_paths(flags, beam_options)
    if beam_options.get("dry_run"):
        # A dry run builds the job graph offline (no credentials, no network): well-formed paths only.
        for flag, url in paths:
            split_url(flag, url)
    else:
        check_remote_paths(paths, beam_options.get("project"))
    if hasattr(flags, "checkpoint"):
        check_model(flags)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
