"""Shared test fixtures: where the real data sets are, and a private decode cache."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("ACHROMA_DATA_DIR", REPO.parent / "shared" / "datasets"))

# Decoded caches go to a temporary folder, never into the user's home, during tests.
os.environ.setdefault("ACHROMA_CACHE_DIR", tempfile.mkdtemp(prefix="achroma-test-cache-"))

requires_data = pytest.mark.skipif(
    not (DATA_DIR / "cifar10-jpeg.tar.gz").is_file(),
    reason=f"real data sets not found in {DATA_DIR} (set ACHROMA_DATA_DIR to ../shared/datasets)",
)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (what the CLI's --threads 1 does), then restore the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
