"""Checks a job runs before it builds its pipeline, so a wrong flag costs one line and a few seconds,
not a traceback after a minute of retries:

    check_remote_paths   every gs:// (or other remote) flag: well formed (a non-empty bucket), then, in this
                         order, the storage service reachable (no network?), credentials found, each bucket
                         readable (no such bucket? no access?): the cause and the fix in one line. Every probe
                         has a short timeout and no retries, and a dry run makes none (pipelines.offline)
    check_model          --checkpoint readable, --backbone the model the checkpoint was trained on
                         (commer.checkpoint.backbone_for: hashes the backbone, loads no model)

Each failure is a CliError naming the flag; runtime.run_cli prints it without a traceback.
A gs:// bucket is probed with one request to the Cloud Storage JSON API (google-auth's session, no
retries); other schemes through fsspec. The jobs' data still goes through Beam's FileSystems.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import threading
from contextlib import contextmanager
from typing import Callable, Iterable

import fsspec
import google.auth
from google.auth.transport.requests import AuthorizedSession

from commer import BackboneError, CheckpointError
from commer.checkpoint import backbone_for, read_config
from commer.defaults import default_checkpoint
from pipelines.flags import CliError
from pipelines.offline import is_remote, stands_in

# Flags (job flags and Beam's) that may name remote paths.
PATH_FLAGS = ("input", "output", "checkpoint", "backbone", "previous_profiles", "previous_document_compressions",
              "document_compressions_output", "document_compressions", "deletions", "dead_letter_output", "profiles",
              "queries", "documents", "predictions", "references", "temp_location", "staging_location", "cache_dir")
PROBE_SECONDS = 5.0  # each probe; with no retries anywhere, a job answers within seconds
STORAGE_HOST = "storage.googleapis.com"
READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"
AUTH_FIX = "run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS)"
OFFLINE_FIX = "check the connection or proxy (to only build a Dataflow job graph offline, add --dry_run=True)"
# Libraries that log their own retries and tracebacks while a probe fails; the probe reports the cause itself.
QUIET_LOGGERS = ("google.auth", "google.auth._default", "google.auth.transport", "urllib3", "gcsfs", "fsspec")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


def remote_paths(*namespaces) -> list[tuple[str, str]]:
    """(--flag, value) for every flag value with a URL scheme (gs://, s3://, memory://, ...)."""
    found = []
    for ns in namespaces:
        values = ns if isinstance(ns, dict) else vars(ns)
        for name in PATH_FLAGS:
            value = values.get(name)
            if is_remote(value):
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


def storage_reachable(seconds: float = PROBE_SECONDS) -> None:
    """One TCP connection to Cloud Storage (skipped behind an HTTPS proxy, which the bucket probe then uses)."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy")):
        return
    socket.create_connection((STORAGE_HOST, 443), timeout=seconds).close()


def google_credentials(project: str | None):
    """The application-default credentials (raises google.auth's DefaultCredentialsError if none)."""
    credentials, _ = google.auth.default(scopes=[READ_ONLY], quota_project_id=project)
    return credentials


def bucket_exists(scheme: str, bucket: str, project: str | None, credentials=None,
                  seconds: float = PROBE_SECONDS) -> bool:
    """Whether the bucket exists and is readable: one request, no retries (fsspec for other schemes)."""
    if scheme != "gs":
        return fsspec.filesystem(scheme).exists(f"{scheme}://{bucket}")
    session = AuthorizedSession(credentials, max_refresh_attempts=1, refresh_timeout=seconds)
    answer = session.get(f"https://{STORAGE_HOST}/storage/v1/b/{bucket}", params={"fields": "name"},
                         timeout=(seconds, seconds))
    if answer.status_code in (401, 403):
        raise PermissionError(f"{answer.status_code} {answer.reason}")
    if answer.status_code >= 500:
        raise ConnectionError(f"{answer.status_code} {answer.reason}")
    return answer.status_code == 200


@contextmanager
def _quiet():
    """Libraries' own retry warnings and tracebacks off while probing (the probe says what failed)."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _with_timeout(call: Callable, seconds: float):
    """call() in a daemon thread: (result, exception); TimeoutError when it does not answer in time."""
    box: dict = {}

    def target():
        try:
            box["result"] = call()
        except BaseException as exc:  # noqa: BLE001 (classified by the caller)
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    with _quiet():
        thread.start()
        thread.join(seconds)
    if thread.is_alive():
        return None, TimeoutError(f"no answer in {seconds:.0f} s")
    return box.get("result"), box.get("error")


def cause_of(exc: BaseException) -> str:
    """A short, actionable cause for a probe's exception."""
    name, text = type(exc).__name__, str(exc)
    if "DefaultCredentialsError" in name or ("credential" in text.lower() and "RefreshError" not in name):
        return f"no credentials; fix: {AUTH_FIX}"
    if "RefreshError" in name:
        return f"the credentials were refused (expired or revoked?); fix: {AUTH_FIX}"
    if "TransportError" in name or isinstance(exc, (TimeoutError, socket.gaierror, ConnectionError)) \
            or "Connection" in name or "Timeout" in name:
        return f"no network ({STORAGE_HOST} did not answer: {name}); fix: {OFFLINE_FIX}"
    if isinstance(exc, PermissionError) or any(s in text for s in ("401", "403", "Forbidden", "Unauthorized")):
        return ("no access with the current credentials; fix: use an account that can read it "
                f"({AUTH_FIX}) or check --project")
    if isinstance(exc, FileNotFoundError) or "404" in text or "NotFound" in name:
        return "no such bucket; fix: create it or correct the flag"
    return f"the storage service did not answer ({name}); fix: {OFFLINE_FIX}"


def check_remote_paths(paths: Iterable[tuple[str, str]], project: str | None = None,
                       credentials: Callable = google_credentials, exists: Callable = bucket_exists,
                       network: Callable = storage_reachable, seconds: float = PROBE_SECONDS) -> None:
    """Each (flag, url): well formed; then (gs://) the service reachable and credentials found; then its bucket
    readable (one probe per bucket). Each probe answers within `seconds`, with no retries."""
    paths = list(paths)
    parsed = [(flag, url, *split_url(flag, url)) for flag, url in paths]  # all well formed before any probe
    found_credentials = None
    google = [(flag, url) for flag, url, scheme, _ in parsed if scheme == "gs"]
    if google:
        flag, url = google[0]
        for probe in (lambda: network(seconds), lambda: credentials(project)):
            found_credentials, error = _with_timeout(probe, seconds)
            if error is not None:
                raise CliError(f"{flag} {url}: {cause_of(error)}")
    seen = set()
    for flag, url, scheme, bucket in parsed:
        if (scheme, bucket) in seen:
            continue
        seen.add((scheme, bucket))
        found, error = _with_timeout(lambda s=scheme, b=bucket: exists(s, b, project, found_credentials), seconds)
        if error is None and not found:
            error = FileNotFoundError(bucket)
        if error is not None:
            raise CliError(f"{flag} {url}: cannot reach bucket {bucket!r}: {cause_of(error)}")


def check_model(flags) -> None:
    """--checkpoint readable and --backbone (or the checkpoint's recorded one) the model it was trained on."""
    checkpoint = flags.checkpoint or default_checkpoint(flags.cache_dir)
    if stands_in(checkpoint) or stands_in(flags.backbone):
        return  # a dry run reads nothing remote; the real run checks them
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
