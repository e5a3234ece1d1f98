"""Packaging: ``pip install .`` (not editable) into a fresh environment ships the configs and
runs ``xlt-run`` from any directory; ``pyproject.toml`` names only what exists."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
#: Not part of a source distribution: environments, outputs, caches, and what does not ship.
NOT_SOURCE = (".git", ".venv", ".ci", "outputs", ".cache", ".pytest_cache", "wandb", "build", "dist", "__pycache__",
              "*.egg-info", "tests", "bench", "tools")


def test_pyproject_names_only_what_exists():
    setuptools_cfg = PYPROJECT["tool"]["setuptools"]
    for pattern in setuptools_cfg["packages"]["find"]["include"]:
        top = pattern.split(".")[0].rstrip("*")
        assert (REPO / top).is_dir(), f"packages.find includes {pattern!r}, but there is no {top}/ directory"
    for package, patterns in setuptools_cfg["package-data"].items():
        for pattern in patterns:
            assert list((REPO / package.replace(".", "/")).glob(pattern)), \
                f"package-data {package}: {pattern!r} matches no file"
    assert (REPO / PYPROJECT["project"]["readme"]).is_file()
    for script, target in PYPROJECT["project"]["scripts"].items():
        module, function = target.split(":")
        source = (REPO / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        defined = {node.name for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}
        assert function in defined, f"script {script} -> {target}: no function {function} in {module}"


def _run(command: list, cwd: Path, env: dict | None = None) -> str:
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    """(the ``bin`` directory of a fresh virtual environment with xlt_runner installed from an
    sdist of this checkout, the environment variables to run it with).

    The sdist is built from a copy of the source (nothing is written into the checkout), and
    pip builds the wheel from the sdist, so a file missing from either is missing here. The
    dependencies are those of the running environment, reached through a path line in a
    ``.pth`` file: such a directory is not a site directory, so its own ``.pth`` files (the
    editable install's import hook) do not run and the checkout stays invisible.
    """
    root = tmp_path_factory.mktemp("packaging")
    source, dist, env_dir = root / "source", root / "dist", root / "env"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    sdist = _run([sys.executable, "-c", f"from setuptools import build_meta; print(build_meta.build_sdist({str(dist)!r}))"],
                 cwd=source).strip().splitlines()[-1]
    venv.create(env_dir, with_pip=False)
    env_python = env_dir / "bin" / "python"
    site_packages = Path(_run([env_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              cwd=root).strip())
    dependency_dirs = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_packages / "dependencies.pth").write_text("".join(f"{path}\n" for path in dependency_dirs))
    _run([sys.executable, "-m", "pip", "--python", env_python, "install", "--no-deps", "--no-build-isolation",
          "--no-index", "--no-compile", "--disable-pip-version-check", "--quiet", dist / sdist], cwd=root)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    return env_dir / "bin", env


def test_the_installed_package_is_not_the_checkout_and_ships_every_config(installed, tmp_path):
    bin_dir, env = installed
    located = _run([bin_dir / "python", "-c", "import xlt_runner, hydra_plugins.xlt_runner_sweeper as s; "
                    "print(xlt_runner.__file__); print(s.__file__)"], cwd=tmp_path, env=env).split()
    package, plugin = (Path(path).resolve() for path in located)
    env_dir = bin_dir.parent.resolve()
    for path in (package, plugin):
        assert path.is_relative_to(env_dir) and not path.is_relative_to(REPO), f"{path} is not the installed copy"
    package_dir, checkout = package.parent, REPO / "xlt_runner"
    shipped = {str(p.relative_to(package_dir)) for p in package_dir.rglob("*") if p.suffix in (".yaml", ".tsv")}
    expected = {str(p.relative_to(checkout)) for p in (*checkout.glob("conf/**/*.yaml"), *checkout.glob("data/*.tsv"))}
    assert "conf/hydra/launcher/slurm_a100.yaml" in expected and "data/languages.tsv" in expected
    assert shipped == expected


def test_xlt_run_composes_the_config_outside_the_checkout(installed, tmp_path):
    bin_dir, env = installed
    out = _run([bin_dir / "xlt-run", "--cfg", "job"], cwd=tmp_path, env=env)
    top_level = {line.split(":")[0] for line in out.splitlines() if line and not line[0].isspace()}
    assert {"model", "method", "benchmark", "trainer"} <= top_level, out
    assert not (tmp_path / "outputs").exists()  # --cfg only prints
