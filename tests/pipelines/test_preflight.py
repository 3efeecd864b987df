"""Before a pipeline is built: remote paths well formed and reachable, checkpoint and backbone
compatible; each failure is one line naming the flag, the cause and the fix."""
import argparse
import shutil

import fsspec
import pytest

from pipelines import preflight
from pipelines.runtime import CliError, run_cli


@pytest.fixture
def memory_bucket():
    fs = fsspec.filesystem("memory")
    fs.pipe("/present-bucket/docs/a.jsonl", b"{}\n")
    yield "memory://present-bucket"
    fs.rm("/present-bucket", recursive=True)


def ONLINE(seconds):
    return None


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_remote_paths_come_from_job_and_beam_flags():
    flags = argparse.Namespace(input="gs://b/docs/*.jsonl", output="out", checkpoint=None)
    assert preflight.remote_paths(flags, {"temp_location": "gs://b/tmp", "project": "p"}) == [
        ("--input", "gs://b/docs/*.jsonl"), ("--temp_location", "gs://b/tmp")]


def test_an_empty_bucket_is_named_with_the_flag():
    with pytest.raises(CliError) as exc:
        preflight.check_remote_paths([("--checkpoint", "gs:///checkpoints/commer-v1")],
                                     credentials=pytest.fail, exists=pytest.fail)
    assert _one_line(exc).startswith("--checkpoint gs:///checkpoints/commer-v1: the bucket name is empty")


def test_memory_filesystem_bucket_found_and_missing(memory_bucket):
    preflight.check_remote_paths([("--input", f"{memory_bucket}/docs/*.jsonl")])
    with pytest.raises(CliError) as exc:
        preflight.check_remote_paths([("--output", "memory://no-such-bucket/out")])
    assert "--output memory://no-such-bucket/out" in _one_line(exc) and "no such bucket" in str(exc.value)


def test_no_credentials_is_one_line_with_the_fix():
    from google.auth.exceptions import DefaultCredentialsError

    def no_credentials(project):
        raise DefaultCredentialsError("Your default credentials were not found.")

    with pytest.raises(CliError) as exc:
        preflight.check_remote_paths([("--input", "gs://bucket/docs/*.jsonl")], credentials=no_credentials,
                                     exists=pytest.fail, network=ONLINE)
    text = _one_line(exc)
    assert text.startswith("--input gs://bucket/docs/*.jsonl") and "no credentials" in text
    assert "gcloud auth application-default login" in text


@pytest.mark.parametrize("error, cause", [(ConnectionError("Name or service not known"), "no network"),
                                          (PermissionError("403 Forbidden"), "no access"),
                                          (FileNotFoundError("gone"), "no such bucket")])
def test_probe_failures_are_classified(error, cause):
    def exists(scheme, bucket, project, credentials):
        raise error

    with pytest.raises(CliError) as exc:
        preflight.check_remote_paths([("--output", "gs://bucket/out")], credentials=lambda p: None, exists=exists,
                                     network=ONLINE)
    assert cause in _one_line(exc) and "--output gs://bucket/out" in str(exc.value)


def test_a_probe_that_hangs_times_out():
    import time
    with pytest.raises(CliError, match="no network"):
        preflight.check_remote_paths([("--output", "gs://bucket/out")], credentials=lambda p: None,
                                     exists=lambda *a: time.sleep(5), network=ONLINE, seconds=0.2)


def test_dataflow_without_project_is_refused():
    from apache_beam.options.pipeline_options import PipelineOptions
    flags = argparse.Namespace(output="out")
    with pytest.raises(CliError, match="--project is empty"):
        preflight.run_checks(flags, PipelineOptions(["--runner=DataflowRunner", "--project="]))


def _model_flags(**kw):
    return argparse.Namespace(**{"checkpoint": None, "backbone": None, "cache_dir": None, **kw})


def test_a_folder_that_is_not_a_checkpoint_names_the_flag(tmp_path):
    with pytest.raises(CliError) as exc:
        preflight.check_model(_model_flags(checkpoint=str(tmp_path)))
    assert _one_line(exc).startswith(f"--checkpoint {tmp_path}:") and "fix:" in str(exc.value)


def test_a_backbone_that_is_not_a_model_names_the_flag(tmp_path, tiny_checkpoint, commer_cache):
    with pytest.raises(CliError) as exc:
        preflight.check_model(_model_flags(checkpoint=tiny_checkpoint, backbone=str(tmp_path),
                                           cache_dir=commer_cache))
    assert _one_line(exc).startswith(f"--backbone {tmp_path}:")


def test_a_mismatched_backbone_names_the_flag(tmp_path, tiny_checkpoint, commer_cache):
    from commer.checkpoint import backbone_for, read_config
    config = read_config(tiny_checkpoint)
    folder, _ = backbone_for(tiny_checkpoint, config, None, commer_cache)
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    import json
    cfg = json.loads((other / "config.json").read_text())
    cfg["rms_norm_eps"] = cfg.get("rms_norm_eps", 1e-6) * 10  # a config field that changes the math
    (other / "config.json").write_text(json.dumps(cfg))
    preflight.check_model(_model_flags(checkpoint=tiny_checkpoint, cache_dir=commer_cache))  # the right one passes
    with pytest.raises(CliError) as exc:
        preflight.check_model(_model_flags(checkpoint=tiny_checkpoint, backbone=str(other), cache_dir=commer_cache))
    assert _one_line(exc).startswith(f"--backbone {other}:") and "trained on" in str(exc.value)


def test_jobs_answer_a_bad_gs_path_in_one_line_before_anything_runs(capsys):
    from pipelines import compress_users
    with pytest.raises(SystemExit) as exit_info:
        run_cli(compress_users.main, ["--output", "gs:///commer/today"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --output gs:///commer/today: the bucket name is empty")


@pytest.mark.parametrize("content", [b"not parquet at all", None])
def test_an_unreadable_profiles_folder_is_one_line(tmp_path, content, tiny_checkpoint, commer_cache, capsys):
    import os
    from pipelines import generate
    folder = tmp_path / "profiles"
    folder.mkdir()
    shard = folder / "profiles-0.parquet"
    shard.write_bytes(content or b"PAR1")
    if content is None:
        os.chmod(shard, 0)
        if os.access(shard, os.R_OK):  # running as root: permissions do not apply
            shard.write_bytes(b"PAR1 truncated")
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"user_id": "u", "query_id": "q", "instruction": "hi"}\n')
    with pytest.raises(SystemExit) as exit_info:
        run_cli(generate.main, [f"--profiles={folder}", f"--queries={queries}", f"--output={tmp_path}/o",
                                f"--checkpoint={tiny_checkpoint}", f"--cache_dir={commer_cache}"])
    assert exit_info.value.code == 2
    text = capsys.readouterr().err
    err = [line for line in text.splitlines() if line.startswith("error:")]
    assert "Traceback" not in text and len(err) == 1 and err[0].startswith(f"error: --profiles {shard}: cannot be read")


def test_no_network_is_named_before_credentials_and_answers_at_once():
    """Offline, the first probe (Cloud Storage's host) fails: one line saying so, whatever the credentials."""
    import socket
    def unresolvable(seconds):
        raise socket.gaierror(-2, "Name or service not known")

    for network in (unresolvable, lambda s: __import__("time").sleep(5)):
        with pytest.raises(CliError) as exc:
            preflight.check_remote_paths([("--checkpoint", "gs://bucket/ckpt")], credentials=pytest.fail,
                                         exists=pytest.fail, network=network, seconds=0.2)
        text = _one_line(exc)
        assert text.startswith("--checkpoint gs://bucket/ckpt: no network") and "--dry_run=True" in text


@pytest.mark.parametrize("error, cause", [
    ("google.auth.exceptions.TransportError", "no network"), ("google.auth.exceptions.RefreshError", "refused")])
def test_credentials_that_cannot_be_refreshed_offline_or_revoked(error, cause):
    import importlib
    module, name = error.rsplit(".", 1)
    exc_type = getattr(importlib.import_module(module), name)

    def exists(scheme, bucket, project, credentials):
        raise exc_type("token request failed")

    with pytest.raises(CliError) as exc:
        preflight.check_remote_paths([("--input", "gs://bucket/x")], credentials=lambda p: object(), exists=exists,
                                     network=ONLINE)
    assert cause in _one_line(exc)


def test_the_real_probe_offline_is_one_line_within_seconds(monkeypatch, capsys):
    """This machine has no route to Cloud Storage (no network at test time): the default probes answer in one
    line, with no library retries or tracebacks printed (they took 56 s and 105 lines before issue 26)."""
    monkeypatch.setattr(preflight, "STORAGE_HOST", "storage.invalid")  # never resolvable, online or not
    for proxy in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    with pytest.raises(CliError) as exc:
        preflight.check_remote_paths([("--input", "gs://bucket/docs/*.jsonl")], seconds=2)
    assert "no network" in _one_line(exc)
    captured = capsys.readouterr()
    assert not captured.err and not captured.out
