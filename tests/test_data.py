import gzip
import shutil

import numpy as np
import pytest
import torch
import torchvision.datasets

from pyro_vae import Config, Data, DataError
from pyro_vae.io import data
from pyro_vae.io.data import DEBIAN_DIRS, load_data

DEBIAN = DEBIAN_DIRS["fashion-mnist"]


def test_fashion_mnist_loads_whole_split_in_memory(fashion_mnist):
    d = fashion_mnist
    assert d.train.shape == (60000, 784) and d.test.shape == (10000, 784)
    assert d.train.dtype == torch.float32 and d.data_shape == (28, 28)
    assert d.train.min() == 0 and d.train.max() == 1
    assert sorted(d.train_labels.unique().tolist()) == list(range(10))


@pytest.fixture
def no_system_data(tmp_path, monkeypatch):
    """No Debian package and an empty cache: only --data-dir or a download can help."""
    monkeypatch.setattr(data, "DEBIAN_DIRS", {"fashion-mnist": tmp_path / "no-debian"})
    monkeypatch.setattr(data, "DEFAULT_CACHE", tmp_path / "cache")
    return tmp_path


def test_data_dir_with_flat_gz_files_is_found_first(no_system_data, fashion_mnist):
    folder = no_system_data / "mine"
    folder.mkdir()
    for f in DEBIAN.glob("*.gz"):
        shutil.copy(f, folder / f.name)
    d = load_data(Config(data_dir=str(folder)))
    assert torch.equal(d.train, fashion_mnist.train) and torch.equal(d.test, fashion_mnist.test)


def test_data_dir_in_torchvision_layout_is_used_as_is(no_system_data):
    raw = no_system_data / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in DEBIAN.glob("*.gz"):
        with gzip.open(f) as src, open(raw / f.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    d = load_data(Config(data_dir=str(no_system_data / "tv"), limit=300, batch_size=100))
    assert d.train.shape == (300, 784) and d.test.shape == (10000, 784)


def test_missing_fashion_mnist_names_both_ways_to_get_it(no_system_data, monkeypatch):
    def offline(self):
        raise RuntimeError("no internet")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)
    with pytest.raises(DataError) as err:
        load_data(Config())
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and "download" in message
    assert "\n" not in message


def test_npz_with_test_split(fmnist_npz, fmnist_small):
    d = load_data(Config(dataset=str(fmnist_npz)))
    assert d.data_shape == (28, 28)
    torch.testing.assert_close(d.train, fmnist_small.train)
    torch.testing.assert_close(d.test, fmnist_small.test)
    assert torch.equal(d.test_labels, fmnist_small.test_labels)


def test_npy_gets_a_seeded_ten_percent_holdout(tmp_path):
    x = np.random.default_rng(0).random((1000, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    config = Config(dataset=str(tmp_path / "x.npy"), likelihood="normal")
    a, b = load_data(config), load_data(config.replace(seed=7))
    assert a.train.shape == (900, 12) and a.test.shape == (100, 12) and a.data_shape == (12,)
    assert torch.equal(a.test, b.test), "the hold-out must not depend on --seed"
    rows = {tuple(r) for r in torch.cat([a.train, a.test]).tolist()}
    assert len(rows) == 1000, "train and test are disjoint and cover the file"


def test_separate_test_file_and_limit(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "train.npy", rng.integers(0, 256, (500, 8, 8), dtype=np.uint8))
    np.savez(tmp_path / "test.npz", x_test=rng.integers(0, 256, (50, 8, 8), dtype=np.uint8))
    d = load_data(Config(dataset=str(tmp_path / "train.npy"), batch_size=10, limit=40,
                         test_dataset=str(tmp_path / "test.npz")))
    assert d.train.shape == (40, 64) and d.test.shape == (50, 64)
    assert 0 <= d.train.min() and d.train.max() <= 1


def test_limit_below_batch_size_is_refused(fmnist_npz):
    with pytest.raises(DataError, match="--batch-size"):
        load_data(Config(dataset=str(fmnist_npz), limit=100, batch_size=128))


def test_a_separate_test_file_keeps_every_training_row(tmp_path):
    rng = np.random.default_rng(2)
    np.save(tmp_path / "train.npy", rng.integers(0, 256, (100, 8, 8), dtype=np.uint8))
    np.save(tmp_path / "test.npy", rng.integers(0, 256, (30, 8, 8), dtype=np.uint8))
    d = load_data(Config(dataset=str(tmp_path / "train.npy"), batch_size=10,
                         test_dataset=str(tmp_path / "test.npy")))
    assert d.train.shape == (100, 64) and d.test.shape == (30, 64)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.bool_])
def test_integer_zeros_and_ones_are_binary_data_not_grey_levels(tmp_path, dtype):
    x = (np.random.default_rng(3).random((200, 6, 6)) > 0.5).astype(dtype)
    np.save(tmp_path / "binary.npy", x)
    d = load_data(Config(dataset=str(tmp_path / "binary.npy"), binarize="none", batch_size=10))
    assert set(d.train.unique().tolist()) == {0.0, 1.0}


def test_damaged_cached_files_name_the_folder_to_delete(no_system_data):
    raw = no_system_data / "cache" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in DEBIAN.glob("*.gz"):
        with gzip.open(f) as src:
            (raw / f.name[:-3]).write_bytes(src.read()[:5000])  # truncated, as after a crash
    with pytest.raises(DataError, match="damaged .*delete that folder"):
        load_data(Config())


def test_in_memory_data_are_checked_and_limited(fmnist_small):
    from pyro_vae import fit

    bad = Data(fmnist_small.train * 5, fmnist_small.test, (28, 28), source="scaled")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        fit(data=bad, epochs=1, progress=False)
    _, metrics = fit(data=fmnist_small, limit=256, epochs=1, hidden=(32,), progress=False)
    assert len(metrics) == 1
