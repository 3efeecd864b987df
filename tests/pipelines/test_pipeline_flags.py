"""All jobs can be imported into one process in any order (Beam shares one flag parser)."""
import subprocess
import sys

import pytest

JOBS = ["pipelines.generate", "pipelines.evaluate", "pipelines.compress_users"]
CHECK = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from apache_beam.options.pipeline_options import PipelineOptions
from pipelines.flags import parse_flags
from pipelines.compress_users import CompressUsersOptions, DEFAULT_OUTPUT
from pipelines.generate import GenerateOptions
PipelineOptions(["--output=x", "--batch_size=3"]).get_all_options()
assert parse_flags(CompressUsersOptions, []).output == DEFAULT_OUTPUT
assert parse_flags(CompressUsersOptions, ["--batch_size=3"]).batch_size == 3
assert parse_flags(GenerateOptions, []).output is None
print("ok")
"""


@pytest.mark.parametrize("order", [JOBS, JOBS[::-1]], ids=["generate-first", "compress-first"])
def test_jobs_import_in_any_order(order):
    result = subprocess.run([sys.executable, "-c", CHECK, *order], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
