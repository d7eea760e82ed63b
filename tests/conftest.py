from __future__ import annotations

import contextlib
import io
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs ``-n auto``) each worker gets one thread: torch, OpenMP and the
    subprocesses a test starts, so two workers on two cores do not fight over them (two 2-thread trainings on 2
    cores ran 7x slower than one). Set before any test module imports torch."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"


@pytest.fixture(autouse=True, scope="session")
def _shared_size_cache(tmp_path_factory):
    """One artifact-size cache for the whole session, never the user's own."""
    os.environ["PROKT_DEPLOY_CACHE"] = str(tmp_path_factory.mktemp("size-cache"))
    yield


@pytest.fixture
def one_thread():
    """Tiny models train faster and more reproducibly on one thread when the cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli_in_process(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``prokt-deploy *args`` run in ``cwd`` through the real entry point (``prokt_deploy.cli.main.main``) in this
    process, with ``env`` added to the environment for the call: the exit code, stdout and stderr as a
    CompletedProcess, so the same assertions read it as a subprocess's. It saves an interpreter start and a torch
    import (1-2 s) per call; tests whose point is a separate process (the entry point itself, a traceback with
    --debug, imports, signals, races, an installed wheel) keep a subprocess. ``OMP_NUM_THREADS`` in ``env``
    sets this process's torch threads for the call, as it would a subprocess's."""
    import torch

    from prokt_deploy.cli.main import main

    env = {k: str(v) for k, v in (env or {}).items()}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_cwd, saved_threads = os.getcwd(), torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env)
        if "OMP_NUM_THREADS" in env:
            torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        torch.set_num_threads(saved_threads)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(["prokt-deploy", *map(str, args)], code, out.getvalue(), err.getvalue())
