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


# One job's own steps and the Beam-free logic under them (issue 25): the shared io.py reads and writes for
# every job and imports none of them (compress_users' previous tables are read back in previous_outputs.py).
JOB_ONLY = {"previous_outputs", "profile_steps", "profile_accumulator", "reconcile", "profile_report",
            "retrieved_merge", "references"}


def _pipelines_imports(tree) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "pipelines":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipelines."):
            found.add(node.module.split(".", 1)[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("pipelines.")}
    return found


def test_shared_io_holds_no_one_jobs_steps():
    assert all((PIPELINES / f"{name}.py").exists() for name in JOB_ONLY), "JOB_ONLY names a module that is gone"
    wrong = _pipelines_imports(_trees()["io.py"]) & JOB_ONLY
    assert not wrong, f"pipelines/io.py imports one job's steps {sorted(wrong)}: keep them in that job's modules"
    assert _pipelines_imports(ast.parse("from pipelines.reconcile import Event\nfrom pipelines import references\n")) \
        == {"reconcile", "references"}  # the check can fail


# The steps between a document and its profile, query and its prediction, score and metrics.json pass
# named elements (pipelines.elements), never positional tuples (issue 25): no `x[2]` on a variable here.
NAMED_ELEMENTS = ("compress_users.py", "generate.py", "evaluate.py", "inference.py", "batching.py",
                  "profile_steps.py", "profile_accumulator.py", "retrieved_merge.py")


def _positional(tree) -> list[str]:
    """`name[int]` and `name[int:int]` subscripts: an element read by position."""
    def is_int(node):
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            node = node.operand
        return isinstance(node, ast.Constant) and type(node.value) is int

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            s = node.slice
            bounds = [b for b in (s.lower, s.upper, s.step) if b is not None] if isinstance(s, ast.Slice) else [s]
            if any(is_int(b) for b in bounds):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_elements_between_steps_are_read_by_name_and_handlers_are_typed():
    trees = _trees()
    for file in NAMED_ELEMENTS:
        assert not _positional(trees[file]), f"pipelines/{file} reads elements by position: " \
            f"{_positional(trees[file])}; give them names (pipelines.elements)"
    assert _positional(ast.parse("a = x[2]\nb = d[1:]\nc = y[-1]\nd = f()[0]\ne = x['k']\n")) == \
        ["line 1: x[2]", "line 2: d[1:]", "line 3: y[-1]"]  # the check can fail
    for file, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                untyped = [ast.unparse(b) for b in node.bases if ast.unparse(b) == "ModelHandler"]
                assert not untyped, f"{file}.{node.name}: ModelHandler[ExampleT, PredictionT, ModelT], as Beam's own"
