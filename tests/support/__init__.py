"""Test helpers: the corpus, a CPU DeepSpeed environment, time-bounded command and multi-process
launches, and what this machine can do (fp16 on CPU). Imported as ``support``; the fixtures
live in ``tests/conftest.py``."""
from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ROOT / "tests" / "workers"
"""The worker scripts that the distributed and integration tests launch."""


def _corpus() -> Path:
    """The shared corpus: $MEGARAPTR_CORPUS, else ../shared/data/corpus beside the checkout."""
    candidates = [os.environ.get("MEGARAPTR_CORPUS"), ROOT.parent / "shared" / "data" / "corpus",
                  "/work/shared/data/corpus"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "val.jsonl.gz").is_file():
            return Path(candidate)
    return ROOT.parent / "shared" / "data" / "corpus"


CORPUS = _corpus()


def small_corpus(folder: Path) -> Path:
    """A small corpus folder of the shared corpus's shape (lines with a ``source``): its test
    split as ``train.jsonl.gz`` (65 documents of 9 sources), its val split as val."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CORPUS / "test.jsonl.gz", folder / "train.jsonl.gz")
    shutil.copyfile(CORPUS / "val.jsonl.gz", folder / "val.jsonl.gz")
    return folder



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


@functools.lru_cache(maxsize=None)
def fp16_on_cpu() -> bool:
    """Whether DeepSpeed's CPU accelerator offers fp16 on this machine (it depends on the CPU's
    instruction set); asked in a fresh process so this one's accelerator is not fixed."""
    code = ("import torch; from deepspeed.accelerator import get_accelerator; "
            "print(torch.float16 in get_accelerator().supported_dtypes())")
    proc = subprocess.run([sys.executable, "-c", code], env=cpu_env(), capture_output=True,
                          text=True, timeout=120)
    return proc.stdout.strip().endswith("True")


def skip_without_fp16() -> None:
    """Skip the calling test, with the reason, where DeepSpeed's CPU accelerator has no fp16."""
    if not fp16_on_cpu():
        pytest.skip("fp16: DeepSpeed's CPU accelerator reports no fp16 support on this machine")
