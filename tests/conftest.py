"""Shared fixtures: a real Fashion-MNIST subset, in memory and as a user's .npz file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from pyro_vae import Config, Data, VAE
from pyro_vae.io.data import DEBIAN_DIRS, load_data

N_TRAIN, N_TEST = 2000, 500


@pytest.fixture(scope="session", autouse=True)
def sigint_delivered():
    """The Ctrl-C tests need SIGINT to reach the suite and the fit processes it starts. A
    suite started in the background of a non-interactive shell (``cmd &``) inherits SIGINT
    ignored, and fit rightly leaves an ignored signal alone (as under nohup), so those tests
    would fail for how the suite was started; Python's own handler is put back for the run (a
    caught signal reverts to its default in a child process, which Python then catches)."""
    import signal

    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(scope="session")
def fashion_mnist() -> Data:
    """The full Fashion-MNIST split, loaded the way `pyro-vae fit` loads it."""
    if not DEBIAN_DIRS["fashion-mnist"].is_dir():
        pytest.fail(
            "Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (.ci/run does this)"
        )
    return load_data(Config())


@pytest.fixture(scope="session")
def fmnist_small(fashion_mnist: Data) -> Data:
    """The first 2000 training and 500 test images of Fashion-MNIST, grey levels in [0, 1]."""
    d = fashion_mnist
    return Data(
        d.train[:N_TRAIN].clone(),
        d.test[:N_TEST].clone(),
        d.data_shape,
        d.train_labels[:N_TRAIN].clone(),
        d.test_labels[:N_TEST].clone(),
        source="fashion-mnist subset",
    )


@pytest.fixture(scope="session")
def fmnist_npz(fmnist_small: Data, tmp_path_factory) -> Path:
    """The subset saved as a user would: uint8 (N, 28, 28) x_train/x_test with labels."""
    path = tmp_path_factory.mktemp("npz") / "fmnist_small.npz"

    def as_uint8(x):
        return (x * 255).round().to(torch.uint8).reshape(-1, 28, 28).numpy()
    np.savez(
        path,
        x_train=as_uint8(fmnist_small.train),
        x_test=as_uint8(fmnist_small.test),
        y_train=fmnist_small.train_labels.numpy(),
        y_test=fmnist_small.test_labels.numpy(),
    )
    return path


@pytest.fixture
def small_vae() -> VAE:
    pyro.set_rng_seed(0)
    return VAE.from_config(Config(z_dim=4, hidden=(32,), data_shape=(28, 28)))


def cli(*args):
    """``pyro-vae ARGS`` through click's test runner (arguments made strings); the Result."""
    from click.testing import CliRunner

    from pyro_vae.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, str]:
    """Path → content hash of every file under ``folder``: compare before and after a command."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            p = Path(root) / name
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def slow_fit_process(dataset: Path, out: Path) -> subprocess.Popen:
    """A real ``pyro-vae fit`` process writing ``out``, with wide layers and small batches:
    epochs of 40 steps that each take a noticeable time, for tests that signal it, kill it or
    write beside it while it trains."""
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_vae.cli", "fit", "--dataset", str(dataset),
         "--hidden", "2000", "--hidden", "2000", "--batch-size", "50", "--epochs", "100",
         "--quiet", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Killed(Exception):
    """The death of a training process, simulated inside one of its checkpoint writes."""


@contextlib.contextmanager
def dies_at_save(monkeypatch, when, before: bool = False):
    """Inside the block, the ``save_training_state`` whose ``progress`` makes ``when(progress)``
    true raises :class:`Killed`: after writing the file, or with ``before`` instead of writing
    it. The block must end in that death; afterwards saving works again."""
    from pyro_vae.io import checkpoint

    real_save = checkpoint.save_training_state

    def save_or_die(run_dir, vae, optim_state, progress, epoch_start_rng=None):
        if before and when(progress):
            raise Killed
        real_save(run_dir, vae, optim_state, progress, epoch_start_rng)
        if when(progress):
            raise Killed

    monkeypatch.setattr(checkpoint, "save_training_state", save_or_die)
    try:
        with pytest.raises(Killed):
            yield
    finally:
        monkeypatch.setattr(checkpoint, "save_training_state", real_save)
