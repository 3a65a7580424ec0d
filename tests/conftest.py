"""Shared test helpers: CPU DeepSpeed environment and time-bounded multi-process launches."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _corpus() -> Path:
    """The shared corpus: $MEGARAPTR_CORPUS, else ../shared/data/corpus beside the checkout."""
    candidates = [os.environ.get("MEGARAPTR_CORPUS"), ROOT.parent / "shared" / "data" / "corpus",
                  "/work/shared/data/corpus"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "val.jsonl.gz").is_file():
            return Path(candidate)
    return ROOT.parent / "shared" / "data" / "corpus"


CORPUS = _corpus()

# Prepared data goes to a cache of this test session, never to the user's ~/.cache.
os.environ.setdefault("MEGARAPTR_CACHE", tempfile.mkdtemp(prefix="megaraptr-test-cache-"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_env(tmp_cache: Path | None = None, **extra) -> dict:
    """Environment for a DeepSpeed process on CPU (gloo, one thread, no tokenizer threads)."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd: list, *, timeout: int, env: dict | None = None, cwd=ROOT,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run a command under a hard timeout; on failure show the tail of its output."""
    proc = subprocess.run(["timeout", "-k", "10", str(timeout)] + [str(c) for c in cmd],
                          cwd=cwd, env=env or cpu_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                    f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def torchrun(nproc: int, args: list, **kwargs) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node nproc`` on a free local port."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port())] + args
    return run(cmd, **kwargs)


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
