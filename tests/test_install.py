"""A non-editable install finds its configs from any directory."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import TIMEOUT, child_env

ROOT = Path(__file__).resolve().parents[1]


def test_installed_package_ships_its_configs(tmp_path):
    # build from a copy of the tracked tree: setuptools reuses a build/ folder it finds, so a stale
    # one (a renamed config, say) would ship, and a build in the checkout itself would leave one
    source = tmp_path / "source"
    for name in ("gancli", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    target = tmp_path / "site"
    # with setuptools here, pip needs no index at all; without it, pip fetches it to build
    offline = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation", "--no-index"]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *offline, "--target", str(target), str(source)],
        check=True, capture_output=True, text=True, timeout=TIMEOUT,
        env=child_env({"PIP_DISABLE_PIP_VERSION_CHECK": "1"}),
    )
    def yaml_files(root: Path) -> list[Path]:
        return sorted(p.relative_to(root) for p in root.rglob("*.yaml"))

    # every config ships: a new config folder must be added to pyproject.toml's packages
    assert yaml_files(target / "gancli" / "configs") == yaml_files(ROOT / "configs")
    assert (target / "gancli" / "configs" / "model" / "classic.yaml").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = child_env({"PYTHONPATH": str(target)})  # the installed copy, not the source tree
    where = subprocess.run([sys.executable, "-c", "import gancli; print(gancli.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True, timeout=TIMEOUT)
    assert where.stdout.strip().startswith(str(target))
    proc = subprocess.run(
        [sys.executable, "-m", "gancli", "train", "experiment=debug", "model=mlp", "model.width=16", "train.steps=2",
         "device=cpu", "hydra.run.dir=run"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert (elsewhere / "run" / "summary.json").is_file()


def test_no_function_of_the_package_is_longer_than_120_lines():
    """The loop and its homes stay readable: a function past 120 lines has grown a second job."""
    import ast

    package = Path(__file__).resolve().parents[1] / "gancli"
    long = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 120:
                long.append(f"{path.relative_to(package)}:{node.lineno} {node.name}")
    assert long == []
