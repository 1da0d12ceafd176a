"""Reliability promises: non-finite batches, periodic checkpoints, full disks, a second Ctrl-C."""

import re

import pytest
import torch

from pyro_vae import VAE, Config, TrainingError, fit, load
from pyro_vae.io.checkpoint import load_training_state
from pyro_vae.training.optim import JointOptim
from conftest import snapshot

SMALL = dict(hidden=(32,), z_dim=4, batch_size=100, progress=False)


def _no_time(rows):
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]


def poison_gradients(monkeypatch, at_calls):
    """Make the optimiser see a NaN gradient on the given calls (counting from 1)."""
    step, calls = JointOptim.__call__, {"n": 0}

    def poisoned(self, params, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] in at_calls:
            next(p for p in self.params if p.grad is not None).grad[0] = float("nan")
        return step(self, params, *args, **kwargs)

    monkeypatch.setattr(JointOptim, "__call__", poisoned)


def test_a_nan_gradient_is_not_applied():
    torch.manual_seed(0)
    vae = VAE.from_config(Config(z_dim=3, hidden=(16,), data_shape=(20,)))
    optim = JointOptim(torch.optim.Adam, vae, {"lr": 0.1})
    before = [p.detach().clone() for p in vae.parameters()]
    for p in vae.parameters():
        p.grad = torch.ones_like(p)
    next(vae.parameters()).grad[0, 0] = float("inf")
    optim(set(vae.parameters()))
    assert optim.skipped
    assert all(torch.equal(p, b) for p, b in zip(vae.parameters(), before))
    for p in vae.parameters():
        p.grad = torch.ones_like(p)
    optim(set(vae.parameters()))
    assert not optim.skipped
    assert not any(torch.equal(p, b) for p, b in zip(vae.parameters(), before))


def test_skip_nonfinite_tolerates_n_bad_batches_and_stops_at_the_next(fmnist_small, tmp_path,
                                                                      monkeypatch, capsys):
    # 2000 training images in batches of 100: 20 steps per epoch; calls 22 and 25 are steps 2
    # and 5 of epoch 2.
    poison_gradients(monkeypatch, {22, 25})
    _, rows = fit(data=fmnist_small, epochs=2, skip_nonfinite=2, **SMALL)
    assert all(torch.isfinite(torch.tensor(r["train_neg_elbo"])) for r in rows)
    assert capsys.readouterr().err.count("a gradient is not finite; batch skipped") == 2

    poison_gradients(monkeypatch, {22, 25})
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as err:
        fit(data=fmnist_small, epochs=2, skip_nonfinite=1, out=run, **SMALL)
    message = str(err.value)
    assert "training diverged at epoch 2, step 5 (a gradient is not finite)" in message
    assert f"the checkpoint of epoch 1 in {run} is intact" in message
    assert load_training_state(run)["progress"]["epoch"] == 1
    assert torch.isfinite(torch.cat([p.flatten() for p in load(run).parameters()])).all()


def test_the_first_nan_stops_training_and_says_how_to_skip(fmnist_small, monkeypatch):
    poison_gradients(monkeypatch, {3})
    with pytest.raises(TrainingError, match=r"epoch 1, step 3 .*--skip-nonfinite N; no epoch "
                                            r"had finished, so nothing was saved"):
        fit(data=fmnist_small, epochs=1, **SMALL)


def test_checkpoint_every_saves_mid_epoch_states_that_resume_exactly(fmnist_npz, tmp_path,
                                                                     monkeypatch):
    import pyro_vae.io.checkpoint as checkpoint

    saved, real_save = [], checkpoint.save_training_state

    class Killed(Exception):
        pass

    def save_then_maybe_die(run_dir, vae, optim_state, progress, epoch_start_rng=None):
        real_save(run_dir, vae, optim_state, progress, epoch_start_rng)
        partial = progress.get("partial")
        saved.append((progress["epoch"], partial and partial["step"]))
        if partial and partial["epoch"] == 2 and partial["step"] == 10:
            raise Killed  # the process dies right after this periodic checkpoint

    monkeypatch.setattr(checkpoint, "save_training_state", save_then_maybe_die)
    options = dict(dataset=str(fmnist_npz), checkpoint_every=5, **SMALL)
    with pytest.raises(Killed):
        fit(out=tmp_path / "run", epochs=3, **options)
    # every 5 of 20 steps in epoch 1 (the 20th is its end), then 5 and 10 in epoch 2
    assert saved == [(0, 5), (0, 10), (0, 15), (1, None), (1, 5), (1, 10)]
    monkeypatch.setattr(checkpoint, "save_training_state", real_save)
    _, resumed = fit(resume=tmp_path / "run", epochs=3, progress=False)
    _, whole = fit(out=tmp_path / "whole", epochs=3, **options)
    assert _no_time(resumed) == _no_time(whole)
    a, b = load(tmp_path / "run"), load(tmp_path / "whole")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_a_periodic_checkpoint_in_the_first_epoch_makes_the_run_resumable(fmnist_npz, tmp_path,
                                                                          monkeypatch):
    import pyro_vae.io.checkpoint as checkpoint

    real_save = checkpoint.save_training_state

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_training_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(dataset=str(fmnist_npz), out=tmp_path / "run", epochs=1, checkpoint_every=4,
            **SMALL)
    monkeypatch.setattr(checkpoint, "save_training_state", real_save)
    state = load_training_state(tmp_path / "run")
    assert state["progress"]["epoch"] == 0 and state["progress"]["partial"]["step"] == 4
    before = snapshot(tmp_path / "run")
    _, rows = fit(resume=tmp_path / "run", epochs=1, progress=False)
    assert [r["epoch"] for r in rows] == [1] and snapshot(tmp_path / "run") != before


def test_a_disk_too_small_for_the_checkpoints_is_refused_before_training(fmnist_small, tmp_path,
                                                                         monkeypatch):
    import shutil
    from collections import namedtuple

    from pyro_vae import RunDirError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(RunDirError, match=r"only 1 MiB free on its disk, and the run's "
                                          r"checkpoints need about \d+ MiB"):
        fit(data=fmnist_small, out=tmp_path / "run", epochs=1, **SMALL)
    assert not (tmp_path / "run").exists()


def test_a_full_disk_mid_run_fails_in_one_line_and_keeps_the_last_checkpoint(fmnist_npz,
                                                                             tmp_path):
    # A child process whose files may not exceed 100 KB (RLIMIT_FSIZE; the write fails with
    # EFBIG, as it would with ENOSPC on a full disk) continues a run whose training state is
    # larger than that.
    import subprocess
    import sys

    run = tmp_path / "run"
    fit(dataset=str(fmnist_npz), out=run, epochs=1, **SMALL)
    before = snapshot(run)
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)); "
            "from pyro_vae.cli import main; sys.argv[0] = 'pyro-vae'; main()")
    result = subprocess.run([sys.executable, "-c", code, "fit", "--resume", str(run),
                             "--epochs", "2", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot write" in lines[0] and "training_state.safetensors" in lines[0], lines
    assert "previous version is intact" in lines[0]
    assert snapshot(run) == before
    _, rows = fit(resume=run, epochs=2, progress=False)
    assert [r["epoch"] for r in rows] == [1, 2]


def test_a_second_ctrl_c_quits_at_once_and_the_last_checkpoint_stays_whole(fmnist_npz,
                                                                           tmp_path):
    import signal
    import time

    from conftest import slow_fit_process

    out = tmp_path / "run"
    proc = slow_fit_process(fmnist_npz, out)  # steps long enough for a signal to land inside
    curve = out / "training_curve.png"  # the last file of epoch 1's checkpoint
    deadline = time.time() + 120
    while not curve.exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # early in epoch 2
    proc.send_signal(signal.SIGINT)
    first = ""
    while "Ctrl-C again" not in first and proc.poll() is None:  # the notice, written at once
        first += proc.stderr.readline()
    proc.send_signal(signal.SIGINT)  # while the step the first one waits for still runs
    _, rest = proc.communicate(timeout=60)
    err = first + rest
    assert proc.returncode == 1, err
    assert "press Ctrl-C again to quit at once" in err and err.strip().endswith("Aborted!"), err
    assert "Traceback" not in err
    progress = load_training_state(out)["progress"]
    assert "partial" not in progress, "the second Ctrl-C did not wait for the step to finish"
    load(out)
    _, rows = fit(resume=out, epochs=progress["epoch"] + 1, progress=False)
    assert [r["epoch"] for r in rows] == list(range(1, progress["epoch"] + 2))


@pytest.mark.parametrize("options, message", [
    ({"skip_nonfinite": -1}, "--skip-nonfinite must be a whole number of batches ≥ 0"),
    ({"skip_nonfinite": 1.5}, "--skip-nonfinite must be a whole number of batches ≥ 0"),
    ({"checkpoint_every": 0}, "--checkpoint-every must be a positive integer"),
    ({"hidden": (2**31,)}, "--hidden must be at most 2^31 - 1"),
])
def test_bad_reliability_options_are_refused(options, message):
    from pyro_vae import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        Config(**options)


@pytest.mark.parametrize("options, message", [
    ({"jit": True}, "--jit is not supported under torchrun"),
    ({"checkpoint_every": 5}, "--checkpoint-every is not supported under torchrun"),
])
def test_options_torchrun_cannot_honour_are_refused_before_anything_starts(
        options, message, fmnist_small, tmp_path, monkeypatch):
    from pyro_vae import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match=message):
        fit(data=fmnist_small, out=tmp_path / "run", epochs=1, **options, **SMALL)
    assert not (tmp_path / "run").exists()


def test_running_out_of_memory_is_one_line_from_the_cli(tmp_path, fmnist_npz):
    from click.testing import CliRunner

    from pyro_vae.cli import main

    result = CliRunner().invoke(main, ["fit", "--dataset", str(fmnist_npz), "--epochs", "1",
                                       "--hidden", "8", "--z-dim", "2", "--particles",
                                       "100000000", "--quiet", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: not enough memory"), lines
    assert not (tmp_path / "run").exists()
