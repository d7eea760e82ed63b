from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"


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
