"""The jobs share one skeleton: one dead-letter flag, one counter namespace, one filesystem layer,
one parse DoFn, one CombineFn, and job modules that keep only flags, plan and wiring."""
import ast
from pathlib import Path

import pytest

from pipelines import compress_users, evaluate, generate
from pipelines.options import parse

PIPELINES = Path(compress_users.__file__).parent
JOBS = {"compress_users": (compress_users, 350), "generate": (generate, 300), "evaluate": (evaluate, 300)}


def _trees():
    return {p.name: ast.parse(p.read_text()) for p in sorted(PIPELINES.glob("*.py"))}


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_job_has_the_one_dead_letter_flag(name, capsys):
    job, _ = JOBS[name]
    base = ["--output=o"]
    assert parse(job.parser, base + ["--dead_letter_output=d"])[0].dead_letter_output == "d"
    assert parse(job.parser, base + ["--dead_letters=d"])[0].dead_letter_output == "d"  # the old name, hidden
    job.parser.print_help()
    text = capsys.readouterr().out
    assert "--dead_letter_output" in text and "--dead_letters " not in text


@pytest.mark.parametrize("name", sorted(JOBS))
def test_job_modules_stay_small(name):
    job, limit = JOBS[name]
    assert len(Path(job.__file__).read_text().splitlines()) <= limit


def test_one_counter_namespace_one_filesystem_layer_one_parse_dofn_one_combinefn():
    for file, tree in _trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "counter" and getattr(node.value, "id", "") == "Metrics":
                assert file == "runtime.py", f"{file} creates counters outside runtime.counter (one namespace)"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                # preflight.py only probes that a bucket is reachable (fsspec, as commer.checkpoint reads)
                assert file == "preflight.py" or not any(n.startswith(("fsspec", "commer.storage")) for n in names), \
                    f"{file}: pipelines use Beam's FileSystems only"
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                if "beam.CombineFn" in bases:
                    assert file == "combiners.py", f"{file}.{node.name}: use combiners.AccumulatorFn"
                if "beam.DoFn" in bases and node.name.startswith("Parse"):
                    assert (file, node.name) == ("io.py", "ParseRecords"), f"{file}.{node.name}: use io.ParseRecords"
