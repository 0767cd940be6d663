"""pyproject.toml and environment.yml name the same runtime packages."""

import pathlib
import re

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    env_lines = (ROOT / "environment.yml").read_text().splitlines()
    start = env_lines.index("  # runtime")
    conda = set()
    for line in env_lines[start + 1 :]:
        if line.strip().startswith("#"):
            break
        conda.add(_name(line.strip().lstrip("- ")))
    assert conda == runtime
    assert "torch" not in {_name(r) for extra in project["optional-dependencies"].values() for r in extra}


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and ci.strip().endswith("make test")


def test_lint_is_clean():
    """`make lint` (ruff with pyproject's rules) passes on the package, tests and benchmarks."""
    import shutil
    import subprocess
    import sys

    import pytest

    ruff = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the dev extra)")
    result = subprocess.run([ruff, "check", "minicrate", "tests", "benchmarks"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
