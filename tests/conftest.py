"""Fixtures shared by every tier, and the tier markers.

The tiers are folders: ``unit`` (pure: no DeepSpeed engine, no process group; the whole tier
runs in under a minute), ``integration`` (DeepSpeed or compilation in one process),
``distributed`` (several processes, each launch under a timeout) and ``e2e`` (the command-line
programs). Each test is marked with its folder's name (``pytest -m "not e2e"``). Helpers live
in ``tests/support``, worker scripts in ``tests/workers``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

TIERS = ("unit", "integration", "distributed", "e2e")

# Prepared data goes to a cache of this test session, never to the user's ~/.cache.
os.environ.setdefault("MEGARAPTR_CACHE", tempfile.mkdtemp(prefix="megaraptr-test-cache-"))


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """A data cache shared by the tests of one session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def mlm(cache):
    """The built-in sample prepared for masked LM (WordPiece, 8192)."""
    from megaraptr.data import SAMPLE_DIR, prepare_cached

    return prepare_cached([SAMPLE_DIR], kind="mlm", vocab_size=8192, cache_dir=cache)


@pytest.fixture(scope="session")
def causal(cache):
    """The built-in sample prepared for causal LM (byte-level BPE, 8192)."""
    from megaraptr.data import SAMPLE_DIR, prepare_cached

    return prepare_cached([SAMPLE_DIR], kind="causal", vocab_size=8192, cache_dir=cache)
