"""Data-parallel training: two CPU processes under torchrun (gloo over loopback)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pyro_vae import fit
from pyro_vae.training.distributed import Cluster, shard
from tests_options import OPTIONS

HERE = Path(__file__).parent


def test_shards_split_every_epoch_evenly_and_disjointly():
    perm = torch.randperm(103)
    parts = [shard(perm, Cluster(r, 3, r)) for r in range(3)]
    assert {len(p) for p in parts} == {34}
    assert len(set(torch.cat(parts).tolist())) == 102


@pytest.fixture(scope="module")
def fmnist_12k(fashion_mnist, tmp_path_factory):
    """12,000 training and 2000 test images of Fashion-MNIST as a uint8 .npz, with labels."""
    path = tmp_path_factory.mktemp("ddp") / "fmnist_12k.npz"

    def as_uint8(x):
        return (x * 255).round().to(torch.uint8).reshape(-1, 28, 28).numpy()

    np.savez(path, x_train=as_uint8(fashion_mnist.train[:12000]),
             x_test=as_uint8(fashion_mnist.test[:2000]),
             y_train=fashion_mnist.train_labels[:12000].numpy(),
             y_test=fashion_mnist.test_labels[:2000].numpy())
    return path


@pytest.mark.slow  # about 70 s (M2: 150 s): two torchrun processes start, train and compare
@pytest.mark.parametrize("extra", [{}, {"labelled": 200}, {"precision": "bf16"}],
                         ids=["vae", "semi-supervised", "bf16"])
def test_two_processes_train_like_one(extra, fmnist_12k, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(HERE / "ddp_fit.py"), str(fmnist_12k), str(tmp_path),
               json.dumps(extra)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), f"{name} differs between ranks"
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert len(rows) == OPTIONS["epochs"], "one run directory, written once, by rank 0"
    parallel = json.loads(proc.stdout.strip().splitlines()[-1])
    _, single = fit(dataset=str(fmnist_12k), progress=False, **OPTIONS, **extra)
    assert abs(parallel["test_neg_elbo"] - single[-1]["test_neg_elbo"]) < 1.0, (parallel,
                                                                               single[-1])
    if "labelled" in extra:  # the classifier learns as well in two processes as in one
        assert abs(parallel["test_accuracy"] - single[-1]["test_accuracy"]) < 0.03


@pytest.mark.parametrize("batch", [101])
def test_a_global_batch_must_split_over_the_processes(batch, fmnist_npz, tmp_path, monkeypatch):
    from pyro_vae import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="multiple of 2"):
        fit(dataset=str(fmnist_npz), batch_size=batch, progress=False)
