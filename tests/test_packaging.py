"""A package that looks like one (issue 26): pyproject metadata, one version, console scripts that resolve,
py.typed, a CHANGELOG naming the current package, checkpoint and output-format versions."""
import importlib
import re
from pathlib import Path

import pytest

import commer
from commer.config import CONFIG_FORMAT_VERSION
from schemas import SCHEMA_VERSION

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_one_version_from_commer():
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "commer.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", commer.__version__)


def test_changelog_names_the_current_versions():
    text = (ROOT / "CHANGELOG.md").read_text()
    latest = text.split("\n## ", 2)[1]
    assert latest.startswith(commer.__version__)
    assert f"checkpoint format {CONFIG_FORMAT_VERSION}" in latest and f"output format {SCHEMA_VERSION}" in latest


@pytest.mark.parametrize("name, target", sorted(PYPROJECT["project"]["scripts"].items()))
def test_console_scripts_resolve(name, target):
    module, function = target.split(":")
    assert name.startswith("commer-") and callable(getattr(importlib.import_module(module), function))


def test_console_scripts_cover_the_jobs():
    scripts = PYPROJECT["project"]["scripts"]
    assert {"commer-compress-users", "commer-generate", "commer-evaluate", "commer-init", "commer-train"} <= set(scripts)


def test_typed_packages_and_bundled_data_are_shipped():
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    for package in ("commer", "schemas"):
        assert (ROOT / package / "py.typed").exists() and "py.typed" in data[package]
    assert "sample_data/*.jsonl" in data["pipelines"] and "checkpoints/**/*" in data["commer"]


def test_setup_py_stays_for_dataflow_and_reads_the_pins():
    text = (ROOT / "setup.py").read_text()
    assert "requirements.txt" in text and "install_requires" in text
    assert PYPROJECT["project"]["dynamic"] == ["version", "dependencies"]
