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
