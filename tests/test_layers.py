"""The layering contracts of pyproject.toml hold (import-linter), and they do catch a violation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; "
               "sys.exit(c())", "--no-cache"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_library_never_imports_the_recipe_and_has_no_cycles():
    done = lint_imports(ROOT, ROOT / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken." in done.stdout


def test_the_contracts_catch_a_library_module_importing_the_recipe(tmp_path):
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    base = tmp_path / "src" / "manyheads" / "tasks" / "base.py"
    base.write_text(base.read_text() + "\nfrom ..recipe import config  # noqa: E402\n")
    done = lint_imports(tmp_path, tmp_path / "src")
    assert done.returncode == 1
    assert "The library never imports the recipe or the CLI BROKEN" in done.stdout
    assert "manyheads.tasks.base -> manyheads.recipe.config" in done.stdout


def test_every_module_of_the_package_is_in_the_layers_contract():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in config if c["type"] == "layers")["layers"]
    forbidden = next(c for c in config if c["type"] == "forbidden")
    named = {name.strip() for layer in layers for name in layer.split("|")}
    package = ROOT / "src" / "manyheads"
    modules = {f"manyheads.{p.stem if p.is_file() else p.name}" for p in package.iterdir()
               if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()}
    assert modules == named  # a new module must be placed in a layer
    assert set(forbidden["source_modules"]) == modules - {"manyheads.recipe", "manyheads.cli"}
