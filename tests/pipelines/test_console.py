"""What a user sees on the console: quiet by default, a progress line at a steady interval,
defaults in --help, output paths printed."""
import logging
import os
import time

import pytest

from pipelines import compress_users, evaluate, generate, logs, progress


@pytest.fixture
def restore_logging(monkeypatch):
    for key in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # restored after the test
        if not os.environ[key]:
            monkeypatch.delenv(key)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    own = {name: logging.getLogger(name).level for name in logs.OWN_LOGGERS}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for name, lvl in own.items():
        logging.getLogger(name).setLevel(lvl)


def test_log_level_is_read_from_argv():
    assert logs.level_from([]) == "WARNING"
    assert logs.level_from(["--output", "o", "--log_level", "info"]) == "INFO"
    assert logs.level_from(["--log_level=DEBUG"]) == "DEBUG"


def test_default_level_drops_known_noise_and_keeps_our_lines(restore_logging, capsys):
    logs.setup("WARNING")
    logging.getLogger("apache_beam.typehints.native_type_compatibility").info(
        'Converting string literal type hint to Any: "int"')
    logging.getLogger("apache_beam.transforms.util").info("BatchElements statistics: timings=[...]")
    logging.getLogger().warning("Resource module is not available for current platform, memory usage cannot be fetched.")
    logging.getLogger("apache_beam.io.filebasedsink").info("Renamed 1 shards in 0.03 seconds.")
    logging.getLogger("pipelines.progress").info("progress: 1 documents compressed")
    logging.getLogger("apache_beam").warning("a real library warning")
    err = capsys.readouterr().err.splitlines()
    assert err == ["INFO pipelines.progress: progress: 1 documents compressed",
                   "WARNING apache_beam: a real library warning"]


def test_error_level_silences_our_info_too(restore_logging, capsys):
    logs.setup("ERROR")
    logging.getLogger("pipelines.progress").info("progress")
    assert capsys.readouterr().err == ""


def test_progress_lines_at_a_steady_interval(restore_logging, caplog):
    caplog.set_level(logging.INFO, logger="pipelines.progress")
    with progress.Reporter("documents compressed", interval=0.05):
        progress.add(progress.READ, 10)
        progress.add(progress.DONE, 4)
        time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if r.name == "pipelines.progress"]
    assert len(lines) >= 3
    assert lines[-1].startswith("progress: 4 documents compressed (10 read), ") and "s elapsed" in lines[-1]


def test_a_progress_line_says_what_a_slow_batch_is_doing(restore_logging, caplog):
    """generate's first batch can take a minute on CPU: the line at 0 answered says why (issue 26)."""
    caplog.set_level(logging.INFO, logger="pipelines.progress")
    with progress.Reporter("queries answered", interval=0.05):
        progress.add(progress.READ, 13)
        progress.now("generating a batch of 13 answers (up to 32 tokens each)")
        time.sleep(0.2)
        progress.now()
        progress.add(progress.DONE, 13)
        time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if r.name == "pipelines.progress"]
    assert any(x.startswith("progress: 0 queries answered (13 read)") and
               x.endswith("; now generating a batch of 13 answers (up to 32 tokens each)") for x in lines)
    assert lines[-1].startswith("progress: 13 queries answered") and "now" not in lines[-1]


def test_progress_only_reports_on_local_runners():
    from apache_beam.options.pipeline_options import PipelineOptions
    assert isinstance(progress.report(PipelineOptions(["--runner=FnApiRunner"]), "x"), progress.Reporter)
    assert not isinstance(progress.report(PipelineOptions(["--runner=DataflowRunner"]), "x"), progress.Reporter)
    assert not isinstance(progress.report(PipelineOptions(["--runner=FnApiRunner"]), None), progress.Reporter)


@pytest.mark.parametrize("job", [compress_users, generate, evaluate])
def test_help_shows_defaults(job, capsys):
    job.parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "--log_level" in text and "(default: WARNING)" in text
    if job is not evaluate:
        assert "(default: auto)" in text  # --dtype, --device
    if job is generate:
        assert "(default: 16)" in text  # --batch_size
