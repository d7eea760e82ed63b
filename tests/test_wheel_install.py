"""A wheel of the project works outside the clone: the recipes ship inside the package.

The wheel is built offline from a copy of the sources (setuptools is in the venv), installed with
--no-deps into a fresh virtual environment whose own site-packages come first; the dependencies are
borrowed from the running environment through a .pth line (installing torch again would take minutes),
which adds that directory to sys.path without running its .pth files, so the editable install of the
clone is never imported. Every command runs from an empty directory with no PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import RECIPES, ROOT

pytestmark = pytest.mark.slow


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} exited {p.returncode}\nstdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}"
    return p


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for pkg in ("prokt_deploy", "exporters"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=ignore)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist), str(src)], cwd=tmp, env=env)
    wheels = list(dist.glob("prokt_deploy-*.whl"))
    assert len(wheels) == 1, wheels

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp, env=env)
    vpy = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "--no-deps", "--no-index", "-q", str(wheels[0])], cwd=tmp, env=env)
    site = Path(_run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp, env=env).stdout.strip())
    (site / "zz_borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp / "elsewhere"
    work.mkdir()
    return venv, env, work


def test_wheel_ships_recipes_and_is_what_gets_imported(installed):
    venv, env, work = installed
    p = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import prokt_deploy, exporters; from prokt_deploy.recipe import RECIPES_DIR, DEFAULT_RECIPE;"
            "print(prokt_deploy.__file__); print(exporters.__file__); print(DEFAULT_RECIPE.is_file());"
            "print(sorted(p.name for p in RECIPES_DIR.glob('*.yaml')));"
            "from prokt_deploy.rundir.checkpoint import resolve_checkpoint; print(resolve_checkpoint('shipped:fashion-mnist-vgg-w32').is_file())",
        ],
        cwd=work,
        env=env,
    )
    pkg_file, exp_file, default_exists, names, teacher_shipped = p.stdout.strip().splitlines()
    assert teacher_shipped == "True"  # the default recipe's teacher travels in the wheel
    assert Path(pkg_file).is_relative_to(venv), pkg_file
    assert Path(exp_file).is_relative_to(venv), exp_file
    assert default_exists == "True"
    assert names == str(sorted(p.name for p in RECIPES.glob("*.yaml")))  # every shipped recipe, the teacher's included


def test_installed_cli_checks_and_plans_from_another_directory(installed):
    venv, env, work = installed
    cli = str(venv / "bin" / "prokt-deploy")
    env = {**env, "PROKT_DEPLOY_CACHE": str(work / "cache")}
    # the default recipe, named as a user of the wheel would (no path to site-packages)
    p = _run([cli, "recipe", "check", "fashion-mnist"], cwd=work, env=env)
    assert "fashion-mnist: ok" in p.stdout or "ok (fashion-mnist" in p.stdout, p.stdout
    # plan on the digits recipe (offline data, seconds); the default recipe's plan needs the
    # Fashion-MNIST Debian package and the same code path
    p = _run([cli, "plan", "--recipe", "digits", "--json"], cwd=work, env=env, timeout=180)
    plan = json.loads(p.stdout)
    assert plan["chosen"]["arch"].startswith("cnn-") and plan["budget_bytes"] == 20_000, plan["chosen"]
    assert not (work / "recipes").exists()
    p = subprocess.run([cli, "recipe", "check", "no-such-recipe"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 3 and ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml"))) in p.stderr, p.stderr
