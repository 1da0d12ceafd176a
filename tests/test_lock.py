"""One writer per run directory (pyro_vae.io.lock): a second fit, fit --resume or --overwrite on
a run that a live process is writing is refused at once; a killed holder blocks nothing."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pyro_vae import fit
from pyro_vae.errors import DataError, RunDirError
from pyro_vae.io.checkpoint import load_training_state
from pyro_vae.io.lock import LOCK_FILE, RunLock, holder


def test_a_second_lock_is_refused_with_the_holder_and_released_on_exit(tmp_path):
    run = tmp_path / "run"
    with RunLock(run, "pyro-vae fit"):
        assert run.is_dir() and holder(run)["pid"] == os.getpid()
        with pytest.raises(RunDirError, match=rf"{run} is being written by process "
                                              rf"{os.getpid()} on .*\(pyro-vae fit, since "):
            RunLock(run).acquire()  # flock: a second open file description conflicts
    assert not run.exists(), "a lock that wrote nothing must not leave its folder behind"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    with RunLock(run):
        pass
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]


def test_a_failed_run_leaves_no_folder_and_a_stale_lock_file_counts_as_empty(tmp_path,
                                                                               fmnist_small):
    with pytest.raises(DataError):
        fit(dataset=str(tmp_path / "missing.npz"), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone"}))
    fit(data=fmnist_small, out=stale, epochs=1, limit=200, hidden=(16,), z_dim=2,
        progress=False)
    assert (stale / "model.safetensors").exists() and not (stale / LOCK_FILE).exists()


def _refused_within_a_second(pid, **options):
    started = time.perf_counter()
    with pytest.raises(RunDirError, match=rf"is being written by process {pid} "):
        fit(progress=False, **options)
    assert time.perf_counter() - started < 1.0


def test_concurrent_writers_are_refused_at_once_and_a_killed_holder_blocks_nothing(
        fmnist_npz, fmnist_small, tmp_path):
    from conftest import slow_fit_process

    run = tmp_path / "run"
    holder_proc = slow_fit_process(fmnist_npz, run)  # epochs long enough to ask in the first
    try:
        deadline = time.time() + 120
        while (holder(run) or {}).get("pid") != holder_proc.pid and time.time() < deadline:
            assert holder_proc.poll() is None, holder_proc.communicate()
            time.sleep(0.02)
        assert not (run / "training_state.safetensors").exists(), "ask before the checkpoint"
        # fit + fit, in the first epoch: without the lock this one would train a full epoch.
        _refused_within_a_second(holder_proc.pid, data=fmnist_small, out=run, epochs=1)
        cli = subprocess.run(
            [sys.executable, "-m", "pyro_vae.cli", "fit", "--dataset", str(fmnist_npz),
             "--out", str(run), "--epochs", "1"], capture_output=True, text=True, timeout=120)
        assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr
        assert f"is being written by process {holder_proc.pid}" in cli.stderr, cli.stderr
        assert cli.stderr.count("\n") == 1, cli.stderr
        while not (run / "training_state.safetensors").exists() and time.time() < deadline:
            time.sleep(0.02)
        # fit + fit --resume, and fit + --overwrite, once the run has a checkpoint.
        _refused_within_a_second(holder_proc.pid, resume=run, epochs=200)
        _refused_within_a_second(holder_proc.pid, data=fmnist_small, out=run, overwrite=True,
                                 epochs=1)
    finally:
        holder_proc.send_signal(signal.SIGKILL)
        holder_proc.communicate(timeout=60)
    assert holder(run)["pid"] == holder_proc.pid  # the dead holder's record is still there
    done = load_training_state(run)["progress"]["epoch"]
    _, rows = fit(resume=run, epochs=done + 1, progress=False)
    assert [r["epoch"] for r in rows] == list(range(1, done + 2))
    assert not (run / LOCK_FILE).exists()


def test_overwrite_keeps_the_old_run_whole_until_the_new_checkpoint_is_on_disk(
        fmnist_small, tmp_path, monkeypatch):
    from conftest import snapshot

    from pyro_vae import load
    from pyro_vae.io import checkpoint

    run = tmp_path / "run"
    small = dict(data=fmnist_small, limit=300, hidden=(16,), progress=False)
    fit(out=run, epochs=1, z_dim=2, **small)
    before = snapshot(run)

    class Killed(BaseException):
        """Stands for SIGKILL in the middle of the new run's first checkpoint."""

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "save_weights", killed)
        with pytest.raises(Killed):
            fit(out=run, overwrite=True, epochs=1, z_dim=3, **small)
    after = {k: v for k, v in snapshot(run).items() if not k.startswith(".incoming")}
    assert after == before, "the old run changed before the new checkpoint was whole"
    assert load(run).z_dim == 2
    fit(out=run, overwrite=True, epochs=1, z_dim=3, **small)
    assert load(run).z_dim == 3
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("moves, survivor", [(2, 2), (9, 3)])
def test_a_kill_inside_the_overwrite_swap_is_repaired_by_the_next_writer(
        moves, survivor, fmnist_small, tmp_path, monkeypatch):
    """Killed after ``moves`` renames of the swap: while the old run's files move out (2), the
    next writer puts them back and the old run (z = 2) is whole; while the new one's move in
    (9: the old run's seven files out, two of the new in), it finishes the swap (z = 3)."""
    from pyro_vae import load
    from pyro_vae.io import checkpoint

    run = tmp_path / "run"
    small = dict(data=fmnist_small, limit=300, hidden=(16,), progress=False)
    fit(out=run, epochs=1, z_dim=2, **small)
    real_swap, real_replace = checkpoint.swap_in, os.replace

    class Killed(BaseException):
        pass

    def swap_then_die(stage, run_dir):
        count = iter(range(1, 100))

        def replace(src, dst):
            if next(count) > moves:
                raise Killed
            real_replace(src, dst)

        with monkeypatch.context() as patch:
            patch.setattr(os, "replace", replace)
            real_swap(stage, run_dir)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "swap_in", swap_then_die)
        with pytest.raises(Killed):
            fit(out=run, overwrite=True, epochs=1, z_dim=3, **small)
    assert (run / checkpoint.PREVIOUS_DIR).is_dir()
    _, rows = fit(resume=run, epochs=2, data=fmnist_small, progress=False)  # repairs first
    assert [r["epoch"] for r in rows] == [1, 2]
    assert load(run).z_dim == survivor
    assert not (run / checkpoint.PREVIOUS_DIR).exists()
    assert not (run / checkpoint.STAGING_DIR).exists()
