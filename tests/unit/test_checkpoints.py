"""megaraptr.runtime.checkpoints without an engine: the weights-only loader and its allow-list,
manifests, ``latest``, retention, choosing the checkpoint to resume (fallback, notes), and the
run lock, on real files in a temporary folder. (Real DeepSpeed checkpoints and faults injected
into real runs: tests/e2e/test_checkpoint_faults.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

from megaraptr.errors import CheckpointError, DeepSpeedCompatError
from megaraptr.runtime import checkpoints, compat
from megaraptr.runtime.checkpoints import engine_io, lock, manifest, safe_load, store
from megaraptr.runtime.compat import registry
from megaraptr.runtime.compat.patch import TCE

MARKER_CODE = "open({!r}, 'w').close()"


class Hostile:
    """Unpickled with weights_only=False, it creates a marker file (as a real payload would
    run a command)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (MARKER_CODE.format(self.marker),))


# ------------------------------------------------------------------ the weights-only loader
def test_deepspeeds_checkpoint_classes_load_and_nothing_else(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    dynamic = CreateLossScaler(torch.half, 0, True, {"init_scale": 2 ** 16, "scale_window": 1000,
                                                     "min_scale": 1, "delayed_shift": 2,
                                                     "consecutive_hysteresis": False})
    state = {"loss_scaler": CreateLossScaler(torch.float32, 1.0, False, None),
             "fp16_scaler": dynamic, "zero_stage": ZeroStageEnum.gradients,
             "param_slice_mappings": [OrderedDict(w=fragment_address(numel=6, start=2))],
             "shapes": OrderedDict(w=torch.Size([2, 3])), "t": torch.arange(4.0)}
    torch.save(state, tmp_path / "ok.pt")
    loaded = safe_load.load(str(tmp_path / "ok.pt"), mmap=True)
    assert type(loaded["fp16_scaler"]).__name__ == "DynamicLossScaler"
    assert vars(loaded["fp16_scaler"]) == vars(dynamic)  # incl. its dtype torch.float16
    assert loaded["zero_stage"] is ZeroStageEnum.gradients
    assert loaded["param_slice_mappings"][0]["w"] == fragment_address(numel=6, start=2)
    assert torch.equal(loaded["t"], torch.arange(4.0))


def test_a_hostile_pickle_is_refused_in_one_line_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"t": torch.ones(2), "x": Hostile(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as err:
        safe_load.load(str(tmp_path / "evil.pt"))
    assert str(err.value) == (
        f"{tmp_path / 'evil.pt'}: refused: its pickle calls exec, which is neither a "
        "tensor, a plain container nor one of DeepSpeed's checkpoint classes (loading it could "
        "run code); resume only from checkpoints a trusted run wrote")
    assert not marker.exists()


def test_a_truncated_file_cannot_be_read_in_one_line(tmp_path):
    torch.save({"t": torch.ones(1000)}, tmp_path / "x.pt")
    os.truncate(tmp_path / "x.pt", 300)
    with pytest.raises(CheckpointError, match=r"x\.pt: cannot be read \(") as err:
        safe_load.load(str(tmp_path / "x.pt"))
    assert "\n" not in str(err.value)


def test_deepspeeds_loader_patch_stops_when_its_source_differs(monkeypatch):
    target = TCE + ".load"
    monkeypatch.setitem(registry.SOURCES, target, "0" * 64)
    with pytest.raises(DeepSpeedCompatError, match="TorchCheckpointEngine.load differs from "
                       "DeepSpeed 0.19.8's .* checkpoint_io has no safe fallback"):
        engine_io.install(object(), {})


def test_writes_are_recorded_during_a_save_only():
    log = engine_io.WriteLog()

    def full(state, path):
        raise OSError(28, "No space left on device", path)

    guarded = log.guard(full, path_arg=1)
    with pytest.raises(OSError):
        guarded({}, "/x/a.pt")  # outside a save: DeepSpeed's own behaviour
    log.start()
    assert guarded({}, path="/x/.partial-step2/b.pt") is None
    assert log.stop() == "writing b.pt: No space left on device (errno 28)"


# ------------------------------------------------------------------ manifests and latest
def fake_checkpoint(root, tag, step, *, files=("mp_rank_00_model_states.pt",), saved_at=0.0):
    folder = root / tag
    folder.mkdir(parents=True)
    for i, name in enumerate(files):
        (folder / name).write_bytes(bytes([i + step]) * (1000 + i))
    manifest.write(str(folder), {"tag": tag, "step": step, "saved_at": saved_at,
                                 "files": manifest.records(str(folder), files, fsync=False)})
    return folder


@pytest.mark.parametrize("text", ["../x", "/etc", "a/b", "..", ".partial-step2", "", "latest",
                                  "step2\n../y"])
def test_latest_naming_anything_but_a_folder_inside_is_refused(tmp_path, text):
    (tmp_path / "latest").write_text(text)
    with pytest.raises(CheckpointError) as err:
        checkpoints.resolve(str(tmp_path))
    assert str(err.value).startswith(f"{tmp_path / 'latest'} names ")
    assert f"not a checkpoint folder inside {tmp_path}; allowed: a folder name without a path " \
           "separator" in str(err.value)


def test_problems_name_the_missing_resized_changed_and_unlisted_files(tmp_path):
    folder = fake_checkpoint(tmp_path, "s", 1, files=("a.pt", "b.pt", "c.pt"))
    content = manifest.read(str(folder))
    assert manifest.structure_problems(str(folder), content) == []
    (folder / "a.pt").unlink()
    os.truncate(folder / "b.pt", 10)
    with open(folder / "c.pt", "r+b") as f:
        f.seek(500)
        f.write(b"\xff" * 8)
    (folder / "planted.pt").write_bytes(b"x")
    assert manifest.structure_problems(str(folder), content) == [
        "a.pt is missing", "b.pt has 10 bytes, the manifest 1001", "planted.pt not in the manifest"]
    assert manifest.checksum_problems(str(folder), content, ["a.pt", "c.pt"]) == [
        "c.pt: sha256 differs from the manifest (changed or corrupted)"]


def test_resolve_falls_back_to_the_newest_complete_checkpoint_saying_why(tmp_path):
    for step in (2, 4, 6):
        fake_checkpoint(tmp_path, f"step{step}", step, files=("m.pt", "o.pt"))
    store.write_latest(str(tmp_path), "step6")
    with open(tmp_path / "step6" / "m.pt", "r+b") as f:
        f.write(b"garbage!")
    (tmp_path / "step4" / "o.pt").unlink()
    resume = checkpoints.resolve(str(tmp_path))
    assert resume.tag == "step2" and resume.manifest["step"] == 2
    assert resume.notes == (
        f"{tmp_path / 'step6'} fails verification: m.pt: sha256 differs from the manifest "
        "(changed or corrupted)",
        f"{tmp_path / 'step4'} fails verification: o.pt is missing; resuming from "
        f"{tmp_path / 'step2'}, the newest complete checkpoint")
    assert checkpoints.resolve(str(tmp_path), verify="sizes").tag == "step6"  # sizes only
    assert checkpoints.newest_complete(str(tmp_path)) == "step2"
    with pytest.raises(CheckpointError, match=r"no complete checkpoint to resume \(step6: m.pt: "
                       r"sha256 differs"):
        checkpoints.resolve(str(tmp_path), "step6")  # an explicit tag: no fallback
    os.truncate(tmp_path / "step2" / "m.pt", 1)
    with pytest.raises(CheckpointError) as err:
        checkpoints.resolve(str(tmp_path))
    assert str(err.value) == (
        f"--load {tmp_path}: no complete checkpoint to resume (step6: m.pt: sha256 differs from "
        "the manifest (changed or corrupted); step4: o.pt is missing; step2: m.pt has 1 bytes, "
        "the manifest 1000)")
    assert checkpoints.newest_complete(str(tmp_path)) is None


def test_retention_keeps_the_newest_and_the_one_latest_names(tmp_path):
    for step in (1, 2, 3, 4, 5):
        fake_checkpoint(tmp_path, f"step{step}", step, saved_at=float(step))
    (tmp_path / ".partial-step6").mkdir()  # an interrupted save
    (tmp_path / "notes").mkdir()  # not a checkpoint: never touched
    store.write_latest(str(tmp_path), "step1")
    assert checkpoints.prune(str(tmp_path), 2) == ["step3", "step2"]
    assert sorted(os.listdir(tmp_path)) == ["latest", "notes", "step1", "step4", "step5"]
    assert checkpoints.prune(str(tmp_path), 0) == []


def test_retention_keeps_a_resumed_runs_own_checkpoints_over_the_future_it_abandoned(tmp_path):
    for step, saved_at in ((2, 1.0), (4, 2.0), (6, 3.0), (3, 4.0)):  # resumed from step 2
        fake_checkpoint(tmp_path, f"step{step}", step, saved_at=saved_at)
    store.write_latest(str(tmp_path), "step3")
    assert checkpoints.prune(str(tmp_path), 2) == ["step4", "step2"]
    assert [m["tag"] for m in checkpoints.complete(str(tmp_path))] == ["step6", "step3"]


# ------------------------------------------------------------------ the run lock
def test_a_second_writer_is_refused_and_the_lock_released(tmp_path):
    held = checkpoints.RunLock.acquire(str(tmp_path))
    holder = json.loads((tmp_path / lock.NAME).read_text())
    assert holder["pid"] == os.getpid() and held.note is None
    with pytest.raises(CheckpointError) as err:
        checkpoints.RunLock.acquire(str(tmp_path))
    assert str(err.value) == (
        f"--save {tmp_path}: in use by another run (host {holder['host']}, pid {os.getpid()}, "
        f"started {holder['started']}); one run writes a folder at a time: wait for it to end "
        f"or give another --save (if no run uses it, remove {tmp_path / lock.NAME})")
    held.release()
    assert not (tmp_path / lock.NAME).exists()


def _lock_of(pid: int, **change) -> dict:
    holder = dict(lock.identity(), pid=pid, proc_start=lock._proc_start(pid))
    holder.update(change)
    return holder


def test_a_dead_holders_lock_is_taken_over_with_a_warning(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid now names no process
    (tmp_path / lock.NAME).write_text(json.dumps(_lock_of(child.pid, proc_start="1")))
    taken = checkpoints.RunLock.acquire(str(tmp_path))
    assert taken.note.startswith(f"took over the lock on {tmp_path} from a run that has ended (")
    assert f": process {child.pid} is gone" in taken.note
    assert json.loads((tmp_path / lock.NAME).read_text())["pid"] == os.getpid()
    taken.release()


def test_a_live_holder_elsewhere_keeps_its_lock_unless_it_is_this_jobs_earlier_attempt(
        tmp_path, monkeypatch):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / lock.NAME).write_text(json.dumps(_lock_of(sleeper.pid)))
        with pytest.raises(CheckpointError, match=f"pid {sleeper.pid}"):
            checkpoints.RunLock.acquire(str(tmp_path))  # live, same host
        with pytest.raises(CheckpointError, match=f"pid {sleeper.pid}"):
            checkpoints.check_lock(str(tmp_path))  # another launch's: the other ranks stop too
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
        monkeypatch.setenv("MASTER_PORT", "29500")
        ours = _lock_of(sleeper.pid, rendezvous="10.0.0.1:29500")
        (tmp_path / lock.NAME).write_text(json.dumps(ours))
        checkpoints.check_lock(str(tmp_path))  # this launch's rank 0: fine
    finally:
        sleeper.kill()
        sleeper.wait()
    elsewhere = _lock_of(12345, host="other-node", job="777")
    (tmp_path / lock.NAME).write_text(json.dumps(elsewhere))
    with pytest.raises(CheckpointError, match="host other-node, pid 12345"):
        checkpoints.RunLock.acquire(str(tmp_path))  # liveness unknowable: refused
    monkeypatch.setenv("SLURM_JOB_ID", "777")  # a requeued attempt of the same job
    taken = checkpoints.RunLock.acquire(str(tmp_path))
    assert taken.note.endswith("it is an earlier attempt of job 777)")
    taken.release()


def test_prune_never_runs_on_a_latest_it_did_not_write(tmp_path):
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, f"step{step}", step)
    (tmp_path / "latest").write_text("../elsewhere")
    assert checkpoints.prune(str(tmp_path), 1) == []
    assert sorted(os.listdir(tmp_path)) == ["latest", "step1", "step2", "step3"]


def test_the_compat_registry_knows_the_checkpoint_patches():
    for name in ("checkpoint_io", "zero12_reshard"):
        assert compat.mismatch(name) is None, name
        assert registry.PATCHES[name].fallback is None


class _CallsWhatGetattrFetched:
    def __reduce__(self):  # pickled as getattr(OrderedDict, "fromkeys"), then called
        return (OrderedDict.fromkeys, (["pwned"],))


def test_getattr_may_fetch_but_what_it_fetches_is_never_called(tmp_path):
    torch.save({"t": torch.ones(2), "x": _CallsWhatGetattrFetched()}, tmp_path / "sneaky.pt")
    with pytest.raises(CheckpointError, match=r"sneaky\.pt: refused"):
        safe_load.load(str(tmp_path / "sneaky.pt"))
