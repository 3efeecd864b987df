"""Every command line names itself the way it is run (`python -m package.module`), never `train.py`
(argparse's default prog is the file name). Checked on the source of every module (ast)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARSERS = ("ArgumentParser", "CliParser", "JobParser")


def parser_calls():
    for package in ("commer", "pipelines", "training", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                    if name in PARSERS or name == "job_parser":
                        yield path.relative_to(ROOT).as_posix(), node


CALLS = list(parser_calls())


def test_there_are_parsers_to_check():
    assert len(CALLS) >= 15


@pytest.mark.parametrize("where, call", CALLS, ids=[f"{w}:{c.lineno}" for w, c in CALLS])
def test_every_parser_names_its_module(where, call):
    if where == "pipelines/flags.py" or where == "commer/cli.py":
        return  # the generic parsers; their callers pass prog
    prog = next((k.value for k in call.keywords if k.arg == "prog"), call.args[0] if call.args else None)
    assert isinstance(prog, ast.Constant) and prog.value.startswith("python -m "), f"{where}:{call.lineno}"
    module = prog.value.removeprefix("python -m ")
    assert (ROOT / (module.replace(".", "/") + ".py")).exists()
    # TrainConfig's parser is training.train's; the evaluations run as their entry points (docs quote them)
    entry_points = {"training/config.py": "training.train", "training/evaluation/controls.py":
                    "training.evaluate_controls", "training/evaluation/recency.py": "training.evaluate_recency"}
    if where in entry_points:
        assert module == entry_points[where], f"{where}: prog {prog.value}"
    else:
        assert module == where.removesuffix(".py").replace("/", "."), f"{where}: prog {prog.value}"
