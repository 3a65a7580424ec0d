"""Run control without a process group: the divergence guard's verdicts and spike check, the
per-step votes (signals delivered to this process, the save clock), the launcher watch on real
processes, --load auto's pick, and the output-path checks (--summary, TensorBoard job_name)."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from megaraptr.core.config import RaptrConfig
from megaraptr.errors import CheckpointError, ConfigError, DivergenceError
from megaraptr.runtime.divergence import DivergenceGuard, StepReduction
from megaraptr.tools.output_checks import check_job_name, check_summary_path, safe_job_name
from megaraptr.tools.resume_check import find
from megaraptr.tools.run_control import LauncherWatch, RunControl
from megaraptr.tools.train_args import parse_args


def reduction(loss: float, nonfinite: int = 0) -> StepReduction:
    return StepReduction(loss, nonfinite, 2, ())


# ------------------------------------------------------------------ the divergence guard
def test_stop_raises_naming_the_step():
    guard = DivergenceGuard(RaptrConfig(), fp16=False)
    assert guard.after_update(4, reduction(2.5), ds_skipped=False, grad_norm=1.0) is False
    with pytest.raises(DivergenceError, match=r"^step 5: non-finite training loss \(nan\) on "
                                              r"1 of 2 rank\(s\); stopped before"):
        guard.after_update(5, reduction(float("nan"), 1), ds_skipped=False, grad_norm=None)


def test_an_invalid_norm_diverges_except_under_fp16():
    with pytest.raises(DivergenceError, match="step 7: non-finite gradient norm \\(inf\\)"):
        DivergenceGuard(RaptrConfig(), fp16=False).after_update(
            7, reduction(2.0), ds_skipped=False, grad_norm=float("inf"))
    with pytest.raises(DivergenceError, match="DeepSpeed skipped the update"):
        DivergenceGuard(RaptrConfig(), fp16=False).after_update(
            7, reduction(2.0), ds_skipped=True, grad_norm=float("inf"))
    fp16 = DivergenceGuard(RaptrConfig(), fp16=True)  # the loss scaler's overflow: a retry
    assert fp16.after_update(7, reduction(2.0), ds_skipped=True, grad_norm=float("inf")) is False
    assert fp16.loss_count == 0  # a retried step does not enter the running mean


def test_skip_step_counts_a_streak_and_stops_past_the_limit():
    guard = DivergenceGuard(RaptrConfig(on_nonfinite="skip_step", max_consecutive_skips=2),
                            fp16=False)
    for step in (3, 4):
        guard.before_update(reduction(float("nan"), 2))
        assert guard.after_update(step, reduction(float("nan"), 2), ds_skipped=True,
                                  grad_norm=float("inf")) is True
    guard.before_update(reduction(3.0))
    assert guard.after_update(5, reduction(3.0), ds_skipped=False, grad_norm=1.0) is False
    assert (guard.consecutive, guard.dropped) == (0, 2)
    for step in (6, 7):
        guard.before_update(reduction(3.0))
        assert guard.after_update(step, reduction(3.0), ds_skipped=True, grad_norm=None)
    with pytest.raises(DivergenceError, match=r"^step 8: .*3 diverged steps in a row "
                                              r"\(raptr.max_consecutive_skips 2\)"):
        guard.after_update(8, reduction(3.0), ds_skipped=True, grad_norm=None)


def test_skip_step_refuses_an_update_that_was_applied():
    guard = DivergenceGuard(RaptrConfig(on_nonfinite="skip_step"), fp16=False)
    guard.before_update(reduction(2.0))  # finite loss: the gate lets the update through
    with pytest.raises(DivergenceError, match="the update was applied"):
        guard.after_update(9, reduction(2.0), ds_skipped=False, grad_norm=float("nan"))


def test_the_gate_blocks_the_optimizer_only_on_a_step_the_loss_dropped():
    class Optimizer:
        steps = 0

        def step(self):
            self.steps += 1

    guard = DivergenceGuard(RaptrConfig(on_nonfinite="skip_step"), fp16=False)
    opt = Optimizer()
    guard.install(opt)
    guard.before_update(reduction(2.0))
    opt.step()
    assert guard.after_update(1, reduction(2.0), ds_skipped=False, grad_norm=1.0) is False
    guard.before_update(reduction(float("inf"), 1))
    opt.step()
    assert guard.after_update(2, reduction(float("inf"), 1), ds_skipped=False, grad_norm=None)
    assert opt.steps == 1


def test_loss_spike_after_the_window_and_state_round_trip():
    guard = DivergenceGuard(RaptrConfig(loss_spike_factor=3.0, loss_spike_window=4),
                            fp16=False)
    assert guard.loss_verdict(reduction(100.0)) is None  # no spike check before 4 steps
    for step, loss in enumerate([4.0, 4.0, 2.0, 2.0, 8.0], start=1):  # 8 < 3 x mean 3
        assert guard.loss_verdict(reduction(loss)) is None
        guard.after_update(step, reduction(loss), ds_skipped=False, grad_norm=1.0)
    assert guard.loss_count == 4 and guard.loss_mean == 4.25  # then 1/4 per step
    assert guard.loss_verdict(reduction(22.0)) == (
        "loss spike: 22 is more than 3 x the running mean 4.25 (raptr.loss_spike_factor)")
    copy = DivergenceGuard(RaptrConfig(loss_spike_factor=3.0, loss_spike_window=4), fp16=False)
    copy.restore(guard.state())
    assert copy.state() == guard.state()


# ------------------------------------------------------------------ votes
def test_a_signal_is_a_vote_and_the_save_clock_runs():
    now = [100.0]
    control = RunControl(save_every_minutes=0.5, clock=lambda: now[0],
                         launcher=LauncherWatch([]))
    try:
        assert control.votes() == [0.0, 0.0, 0.0]
        now[0] += 30.0
        assert control.votes() == [0.0, 0.0, 1.0] and control.save_due([0.0, 0.0, 2.0])
        control.saved()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert control.votes() == [1.0, 0.0, 0.0]
        assert control.stop_reason([2.0, 0.0, 0.0]) == "SIGUSR1 (and on 1 other rank(s))"
    finally:
        control.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_a_stop_voted_elsewhere_is_named():
    control = RunControl(launcher=LauncherWatch([]))
    try:
        assert control.stop_reason([1.0, 0.0, 0.0]) == "a stop signal on 1 other rank(s)"
        assert control.stop_reason([0.0, 1.0, 0.0]) == "the death of another rank's launcher"
        assert control.stop_reason([0.0, 0.0, 1.0]) is None
    finally:
        control.close()


def test_launcher_watch_sees_a_parent_die():
    # a "launcher" (sh) whose child sleeps; killing the launcher re-parents the child
    launcher = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE,
                                text=True)
    child = int(launcher.stdout.readline())
    watch = LauncherWatch([(child, launcher.pid)], interval=0.0)
    try:
        assert not watch.died()
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 10
        while not watch.died() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watch.dead == launcher.pid
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_plain_process_is_not_watched(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert LauncherWatch.of_this_process().links == []
    monkeypatch.setenv("RANK", "0")
    assert LauncherWatch.of_this_process().links == [(os.getpid(), os.getppid())]


# ------------------------------------------------------------------ --load auto, outputs
def flags(*extra):
    return parse_args(["--deepspeed_config", "x.json", "--train-steps", "5", *extra])


def test_load_auto_starts_fresh_without_a_checkpoint(tmp_path):
    auto = ("--load", "auto", "--save")
    assert find(flags(*auto, str(tmp_path / "none"))) is None
    assert find(flags(*auto, str(tmp_path))) is None
    (tmp_path / "latest").write_text("step7")  # a previous run's: refused, never restarted over
    with pytest.raises(CheckpointError, match=r"no complete checkpoint to resume \(step7: no "
                                              r"such folder\)"):
        find(flags(*auto, str(tmp_path)))
    with pytest.raises(ConfigError, match="^--load: auto resumes the newest complete checkpoint "
                                          "of --save DIR; give --save DIR"):
        find(flags("--load", "auto"))


def test_summary_path_is_checked_up_front(tmp_path):
    check_summary_path(str(tmp_path / "new" / "deeper" / "s.json"))  # folders made at the end
    with pytest.raises(ConfigError, match=f"^--summary: {tmp_path} is a folder; give a file"):
        check_summary_path(str(tmp_path))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_summary_path(str(tmp_path / "file" / "s.json"))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="is not writable"):
            check_summary_path(str(locked / "s.json"))


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".", "", "a\\b", "x..y", 7])
def test_a_bad_job_name_is_refused(name):
    with pytest.raises(ConfigError, match=r"^tensorboard\.job_name: .* is not one folder name"):
        check_job_name("tensorboard", name)


def test_a_derived_job_name_is_made_safe():
    assert safe_job_name("bert-tiny-raptr-seed1") == "bert-tiny-raptr-seed1"
    assert safe_job_name("../../x-tiny-raptr-seed1") == "____x-tiny-raptr-seed1"
    assert "/" not in safe_job_name("a/b\\c d..e") and ".." not in safe_job_name("...")


def test_save_interval_has_a_default_and_minutes_must_be_finite(capsys):
    assert flags().save_interval == 1000 and flags().save_every_minutes == 0.0
    with pytest.raises(SystemExit) as exit_info:
        flags("--save-every-minutes", "-1")
    assert exit_info.value.code == 2
    assert "--save-every-minutes: must be a finite number" in capsys.readouterr().err
