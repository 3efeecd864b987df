"""The layers of DESIGN.md invariant 10, checked on the source of every module (ast, nothing imported).

    schemas  ←  commer  ←  training, benchmarks, pipelines

schemas imports no other project package; commer imports only schemas (and never Beam);
training and benchmarks never import pipelines or Beam; nothing outside pipelines imports
pipelines. Project imports sit at the top of a file (a function may import only optional heavy
third-party dependencies), and the module import graph has no cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "commer", "training", "benchmarks", "pipelines")
# What each package may import from the project (besides itself).
ALLOWED = {
    "schemas": set(),
    "commer": {"schemas"},
    "training": {"schemas", "commer"},
    "benchmarks": {"schemas", "commer", "training"},
    "pipelines": {"schemas", "commer"},
}
BEAM_FREE = ("schemas", "commer", "training", "benchmarks")
# Files another change is rewriting right now; their function-level imports go with it
# (issue 10 removes the checkpoint <-> model cycle). Remove entries as they land.
PENDING_FUNCTION_IMPORTS: set[str] = set()


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            found[".".join(parts)] = path
    return found


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, inside a function?) for every import statement of a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[str, bool]] = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.module, in_function))
                # `from package import module` imports the submodule too.
                out.extend((f"{child.module}.{alias.name}", in_function) for alias in child.names)
            visit(child, nested)

    visit(tree, False)
    return out


MODULES = modules()


def _project(name: str) -> str | None:
    top = name.split(".")[0]
    return top if top in PACKAGES else None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module):
    package = module.split(".")[0]
    for name, _ in imports(MODULES[module]):
        target = _project(name)
        if target and target != package:
            assert target in ALLOWED[package], f"{module} imports {name}: {package} may not import {target}"
        if package in BEAM_FREE:
            assert not name.startswith("apache_beam"), f"{module} imports Beam ({name})"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_project_imports_at_the_top(module):
    rel = MODULES[module].relative_to(ROOT).as_posix()
    if rel in PENDING_FUNCTION_IMPORTS:
        pytest.skip("being rewritten by issue 10")
    inside = sorted({name for name, in_function in imports(MODULES[module]) if in_function and _project(name)})
    assert not inside, f"{rel} imports project modules inside functions: {inside}"


TEST_LAYERS = {"schemas": {"schemas"}, "commer": {"schemas", "commer"},
               "training": {"schemas", "commer", "training"}, "pipelines": {"schemas", "commer", "pipelines"}}


@pytest.mark.parametrize("layer", sorted(TEST_LAYERS))
def test_tests_mirror_the_layers(layer):
    """tests/<layer> imports only that layer and the ones below it."""
    for path in sorted((ROOT / "tests" / layer).rglob("*.py")):
        for name, _ in imports(path):
            target = _project(name)
            assert target is None or target in TEST_LAYERS[layer], f"{path.relative_to(ROOT)} imports {name}"


def test_no_import_cycle():
    def pending(p, in_function):  # issue 10 removes these function-level edges (checkpoint <-> model)
        return in_function and p.relative_to(ROOT).as_posix() in PENDING_FUNCTION_IMPORTS

    graph = {m: {n for n, f in imports(p) if n in MODULES and n != m and not pending(p, f)}
             for m, p in MODULES.items()}
    # A package's __init__ importing its own modules is not a cycle worth refusing.
    for m in graph:
        graph[m] = {n for n in graph[m] if not (m == n.split(".")[0] and "." not in m)}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph[m]):
            if n.startswith(m + "."):
                continue
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


# ---- the house rules of issue 25 --------------------------------------------------------

TRAINING_MAX_LINES = 400


def test_training_modules_stay_small():
    """No file in training/ over ~400 lines: an experiment, a statistic, a report each in its own module."""
    long = {p.relative_to(ROOT).as_posix(): n for p in sorted((ROOT / "training").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > TRAINING_MAX_LINES}
    assert not long, f"training/ files over {TRAINING_MAX_LINES} lines: {long}"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def project_files() -> list[Path]:
    return sorted(p for top in (*PACKAGES, "tests", "tools") for p in (ROOT / top).rglob("*.py"))


TEST_MODULES = {p.stem for p in (ROOT / "tests").rglob("*.py")}


def private_imports(path: Path) -> list[str]:
    """`from project.module import _name`, and `module._name` on a project module imported here."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found, aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if _project(node.module) or node.module.split(".")[0] in TEST_MODULES:
                found += [f"from {node.module} import {a.name}" for a in node.names if _private(a.name)]
                aliases |= {a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in MODULES}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.asname and _project(a.name)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_private_name_is_imported_across_modules():
    """A leading underscore means "this module's own": another module (a test included) uses public names."""
    found = {p.relative_to(ROOT).as_posix(): names for p in project_files() if (names := private_imports(p))}
    assert not found, f"private names used across modules: {found}"


def test_the_private_import_rule_can_fail(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from training.evaluation import controls\nfrom commer.checkpoint import _trainable_parameters\n"
                      "x = controls._hidden\n")
    assert private_imports(sample) == ["from commer.checkpoint import _trainable_parameters", "controls._hidden"]
