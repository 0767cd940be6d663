"""The house rules of the package (ARCHITECTURE.md), checked on the source itself.

- imports go only downward through the floors below, and there are no cycles;
- no file in ``minicrate/`` is over 400 lines;
- no module imports another module's private (``_``-prefixed) name;
- exactly one epoch/step loop lives in the package (``minicrate/training/loop.py``).
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "minicrate"

# Floor of each subpackage: a module may import from its own floor's subpackage or from lower floors.
FLOORS = {
    "core": 0,
    "checks": 1, "ops": 1, "data": 1,
    "objective": 2,
    "layers": 3,
    "models": 4,
    "measure": 5,
    "training": 6,
    "grading": 7,
    "commands": 8, "cli": 8, "runs": 8, "__main__": 8, "__init__": 9,
}
MAX_LINES = 400


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


MODULES = dict(_modules())


def _resolve(module, node):
    """Absolute names imported by an ``Import``/``ImportFrom`` node of ``module``."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names]
    base = node.module or ""
    if node.level:
        pkg = module.split(".")
        if not MODULES[module].name == "__init__.py":
            pkg = pkg[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    out = []
    for a in node.names:
        full = f"{base}.{a.name}"
        out.append((full, None) if full in MODULES else (base, a.name))
    return out


def _imports(module):
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target, name in _resolve(module, node):
                if target == "minicrate" or target.startswith("minicrate."):
                    yield target, name, node.lineno


def _floor(module):
    parts = module.split(".")
    if len(parts) == 1:
        return FLOORS["__init__"]
    return FLOORS[parts[1]]


def test_every_subpackage_has_a_floor():
    missing = {m.split(".")[1] for m in MODULES if "." in m} - set(FLOORS)
    assert not missing, f"add these to FLOORS (and ARCHITECTURE.md): {sorted(missing)}"


def test_imports_only_go_down_the_floors():
    bad = []
    for module in MODULES:
        for target, _, line in _imports(module):
            if target == "minicrate":
                if module != "minicrate" and _floor(module) < FLOORS["__init__"]:
                    bad.append(f"{module}:{line} imports the package namespace 'minicrate'")
                continue
            if _floor(target) > _floor(module):
                bad.append(f"{module}:{line} imports {target} (floor {_floor(target)} > {_floor(module)})")
    assert not bad, "\n".join(bad)


def _cycles():
    graph = {m: {t for t, _, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}
    # A package imports its own submodules from __init__; edges into a package's __init__ from
    # inside it are the usual re-export and not a cycle of logic.
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and "." in t)} for m, ts in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycles():
    cycles = _cycles()
    assert not cycles, "\n".join(cycles)


def _private_imports():
    return [
        f"{module}:{line} imports {target}.{name}"
        for module in MODULES
        for target, name, line in _imports(module)
        if name is not None and name.startswith("_") and not name.startswith("__") and target != module
    ]


def test_no_private_name_crosses_a_module():
    bad = _private_imports()
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_stay_small(module):
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[module]} has {n} lines (at most {MAX_LINES}: one job per file)"


def _loops_over_steps(path):
    """Loops whose test or iterator names the run's position (epoch/step counters)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.While):
            names = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
            names |= {n.attr for n in ast.walk(node.test) if isinstance(n, ast.Attribute)}
            text = ast.unparse(node.test)
            if names & {"epochs", "steps", "total_steps", "step"} or "epoch" in text or "step" in text:
                found.append(node.lineno)
    return found


def test_exactly_one_training_loop():
    loops = {str(p.relative_to(ROOT.parent)): lines for p in MODULES.values() if (lines := _loops_over_steps(p))}
    assert list(loops) == ["minicrate/training/loop.py"] and len(loops["minicrate/training/loop.py"]) == 1, loops
