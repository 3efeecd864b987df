"""Console output of the jobs: quiet by default (issue 14).

--log_level (default WARNING) is the level for libraries (Beam, transformers, ...); ComMer's own
loggers (pipelines, commer, schemas) stay at INFO unless --log_level asks for less. Lines Beam logs
on every local run that say nothing to a user are dropped at the default level, and library
progress bars (tqdm) are switched off, so they never interleave with the job's own lines.

Record text never reaches a log at any level (DESIGN.md invariant 7): Beam's worker logs every element it
processes at DEBUG (`Processing [(('u1', {... 'instruction': ...}), MIN_TIMESTAMP, ...`), so the loggers
that do (ELEMENT_LOGGERS) stay at INFO whatever --log_level says, and a filter on the handler drops any
other library DEBUG line that carries an element's repr (a windowed value) should a Beam version add one.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Sequence

import huggingface_hub.utils as hf_hub_utils
import transformers.utils.logging as hf_logging

from pipelines.flags import DEFAULT_LOG_LEVEL, LOG_LEVELS

LEVELS, DEFAULT_LEVEL = LOG_LEVELS, DEFAULT_LOG_LEVEL
OWN_LOGGERS = ("pipelines", "commer", "schemas", "training")
FORMAT = "%(levelname)s %(name)s: %(message)s"
# Known noise of a local Beam run (each says nothing a ComMer user can act on).
NOISE = ("Resource module is not available for current platform",  # RunInference on Linux, every job
         "Converting string literal type hint to Any",
         "BatchElements statistics",
         "WriteImpl min_shards undef",
         "Creating state cache with size")


# Beam loggers whose DEBUG lines print whole elements (documents, queries, predictions).
ELEMENT_LOGGERS = ("apache_beam.runners.worker.operations", "apache_beam.runners.worker.bundle_processor",
                   "apache_beam.runners.common")
# What an element's repr looks like in a Beam log line (WindowedValue and its parts).
ELEMENT_MARKS = ("MIN_TIMESTAMP", "GlobalWindow", "WindowedValue", "PaneInfo(")


class DropElements(logging.Filter):
    """Drops library DEBUG lines that print an element (record text may be in it); ComMer's own lines stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG or record.name.split(".")[0] in OWN_LOGGERS:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed library call: drop it rather than risk what it holds
            return False
        return not any(mark in message for mark in ELEMENT_MARKS)


class DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else str(record.msg)
        return not any(noise in message for noise in NOISE)


def level_from(argv: Sequence[str]) -> str:
    """The --log_level value in argv (--log_level X or --log_level=X), else the default."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--log_level="):
            return arg.split("=", 1)[1].upper()
        if arg == "--log_level" and i + 1 < len(argv):
            return argv[i + 1].upper()
    return DEFAULT_LEVEL


def setup(level: str = DEFAULT_LEVEL) -> None:
    """Root handler at `level` (libraries), ComMer's loggers at INFO or `level` if higher."""
    level = level.upper() if level and level.upper() in LEVELS else DEFAULT_LEVEL
    numeric = getattr(logging, level)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(DropElements())
    if numeric > logging.INFO:
        handler.addFilter(DropNoise())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(min(numeric, logging.INFO) if numeric <= logging.WARNING else numeric)
    for name in ELEMENT_LOGGERS:  # never below INFO: their DEBUG lines are the elements themselves
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))
    if numeric > logging.INFO:
        # Library bars (weights loading, conversion) would interleave with the progress lines.
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        hf_logging.disable_progress_bar()  # the env vars above only reach processes started later
        hf_logging.set_verbosity_error()
        hf_hub_utils.disable_progress_bars()
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.captureWarnings(True)
