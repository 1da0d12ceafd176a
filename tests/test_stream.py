"""Data larger than memory: compact storage (uint8 grey levels, bool draws) converted batch by
batch, and .npy files streamed through a memory map, on real Fashion-MNIST images."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pyro_vae import Config, ConfigError, DataError, fit
from pyro_vae.cli import main
from pyro_vae.io import stream
from pyro_vae.io.data import (
    DataConfig, as_float, binarize, binarize_rows, load_data, read_data)
from pyro_vae.io.stream import MappedRows, block_order, open_npy

DEBIAN_TRAIN = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.fixture(scope="module")
def grey_npy(fashion_mnist, tmp_path_factory):
    """3000 Fashion-MNIST training images as a user's uint8 (N, 28, 28) .npy file."""
    path = tmp_path_factory.mktemp("stream") / "grey.npy"
    levels = fashion_mnist.train_rows[:3000].reshape(-1, 28, 28).numpy()
    np.save(path, levels)
    return path


def test_grey_levels_are_stored_as_uint8_and_read_as_before(fashion_mnist):
    rows = fashion_mnist.train_rows
    assert rows.dtype == torch.uint8 and rows.shape == (60000, 784)  # 47 MB, not 188 MB
    with gzip.open(DEBIAN_TRAIN) as idx:  # the IDX file: a 16-byte header, then the levels
        raw = np.frombuffer(idx.read(), np.uint8, offset=16)
    expected = torch.from_numpy(raw.reshape(60000, -1).astype(np.float32) / 255.0)
    assert torch.equal(fashion_mnist.train, expected)  # exactly the float values of before


def test_chunked_binarisation_draws_what_one_draw_of_the_whole_set_draws(fashion_mnist):
    rows = fashion_mnist.train_rows[:12000]  # several chunks of 2^22 values
    a = binarize_rows(rows, torch.Generator().manual_seed(5))
    b = binarize(as_float(rows), torch.Generator().manual_seed(5))
    assert a.dtype == torch.bool and torch.equal(a.float(), b)


def test_streamed_file_holds_the_rows_and_test_set_of_the_in_memory_read(grey_npy):
    memory = read_data(DataConfig(dataset=str(grey_npy), stream=False))
    mapped = read_data(DataConfig(dataset=str(grey_npy), stream=True))
    assert not memory.streamed and mapped.streamed
    assert isinstance(mapped.train_rows, MappedRows) and mapped.train_rows.shape == (2700, 784)
    assert isinstance(mapped.test_rows, MappedRows)  # the 10% hold-out stays in the file too
    assert torch.equal(mapped.test_rows.gather(), memory.test_rows)
    assert torch.equal(mapped.train, memory.train)
    positions = torch.tensor([5, 0, 2699, 1234])
    assert torch.equal(mapped.train_rows[positions], memory.train_rows[positions])


def test_streamed_colour_rows_are_moved_to_channels_first(tmp_path):
    skimage = pytest.importorskip("skimage.data")
    photo = skimage.astronaut()[:256, :256]  # (256, 256, 3) uint8
    patches = photo.reshape(8, 32, 8, 32, 3).transpose(0, 2, 1, 3, 4).reshape(64, 32, 32, 3)
    np.save(tmp_path / "patches.npy", np.ascontiguousarray(patches))
    memory = read_data(DataConfig(dataset=str(tmp_path / "patches.npy"), stream=False))
    mapped = read_data(DataConfig(dataset=str(tmp_path / "patches.npy"), stream=True))
    assert mapped.data_shape == memory.data_shape == (3, 32, 32)
    assert torch.equal(mapped.train, memory.train)


def test_a_streamed_batch_reads_its_rows_only(tmp_path):
    """numpy copies a strided (channels-moved) view whole to gather rows from it; the rows
    must be gathered from the file's own layout, batch by batch."""
    import tracemalloc

    np.save(tmp_path / "wide.npy", np.zeros((2000, 32, 32, 3), np.uint8))  # 6 MB, channels last
    rows = read_data(DataConfig(dataset=str(tmp_path / "wide.npy"), stream=True)).train_rows
    tracemalloc.start()
    batch = rows[torch.arange(10)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert batch.shape == (10, 3 * 32 * 32) and peak < 200_000  # 10 rows, not 6 MB


def test_block_order_is_a_permutation_read_in_runs_of_neighbouring_rows():
    generator = torch.Generator().manual_seed(0)
    order = block_order(100_000, 100, 8, generator)
    assert torch.equal(order.sort().values, torch.arange(100_000))
    for batch in order.split(128)[:50]:
        blocks = (batch // 100).unique()
        assert len(blocks) <= 16  # a batch touches the blocks of one or two windows
    assert not torch.equal(order[:800].sort().values, torch.arange(800))  # blocks are shuffled


def _mapped_kb(path) -> int:
    """Resident kB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if "-" in line.split()[0] and len(line.split()) >= 5:  # a mapping's header line
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not hasattr(__import__("mmap"), "MADV_DONTNEED"), reason="Linux only")
def test_pages_read_are_released_from_the_process(grey_npy):
    rows = read_data(DataConfig(dataset=str(grey_npy), stream=True)).train_rows
    rows.release = lambda: None  # as if nothing were released: the pages read stay mapped
    rows[torch.arange(0, 2700, 10)]
    assert _mapped_kb(grey_npy) > 200  # rows far apart map much of the 2.4 MB file
    del rows.release  # the class's own
    rows[torch.arange(0, 2700, 10)]
    assert _mapped_kb(grey_npy) == 0


def test_streamed_fit_matches_in_memory_fit_and_resumes_exactly(grey_npy, tmp_path):
    options = dict(dataset=str(grey_npy), epochs=2, z_dim=8, hidden=(64,), progress=False)
    _, memory = fit(**options, stream=False)
    _, streamed = fit(**options, stream=True, out=tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["stream"] is True
    # The same hold-out, another order and other binary draws: the same model to within the
    # noise of two seeds this early in training (a few per cent).
    assert abs(streamed[-1]["test_neg_elbo"] / memory[-1]["test_neg_elbo"] - 1) < 0.04
    assert streamed[-1]["test_neg_elbo"] < streamed[0]["test_neg_elbo"]

    # Stopped after epoch 1 and resumed: the same metrics as the uninterrupted run.
    fit(**{**options, "epochs": 1}, stream=True, out=tmp_path / "part")
    _, resumed = fit(resume=tmp_path / "part", epochs=2, progress=False)
    assert resumed[-1]["test_neg_elbo"] == streamed[-1]["test_neg_elbo"]
    assert resumed[-1]["train_neg_elbo"] == streamed[-1]["train_neg_elbo"]


def test_a_file_larger_than_half_the_memory_is_streamed_and_stored_so(grey_npy, monkeypatch,
                                                                      tmp_path):
    monkeypatch.setattr(stream, "available_memory", lambda: 2 * grey_npy.stat().st_size - 1)
    assert load_data(Config(dataset=str(grey_npy))).streamed
    fit(dataset=str(grey_npy), epochs=1, limit=500, out=tmp_path / "run", progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["stream"] is True
    monkeypatch.setattr(stream, "available_memory", lambda: 2 * grey_npy.stat().st_size + 1)
    assert not load_data(Config(dataset=str(grey_npy))).streamed


def test_evaluate_and_encode_a_streamed_run(grey_npy, tmp_path):
    run = tmp_path / "run"
    fit(dataset=str(grey_npy), stream=True, epochs=1, z_dim=4, out=run, progress=False)
    result = CliRunner().invoke(main, ["evaluate", str(run), "--iwae-samples", "10",
                                       "--limit", "100"])
    assert result.exit_code == 0, result.output
    assert "nats" in result.output


@pytest.mark.parametrize("dataset, extra, message", [
    ("fashion-mnist", [], "--stream reads .npy files only"),
    ("{npz}", [], "--stream reads .npy files only"),
    ("{npy}", ["--binarize", "static"], "--binarize static keeps one draw"),
])
def test_stream_refusals_are_one_line(dataset, extra, message, fmnist_npz, grey_npy, tmp_path):
    dataset = dataset.format(npz=fmnist_npz, npy=grey_npy)
    result = CliRunner().invoke(main, ["fit", "--dataset", dataset, "--stream", *extra,
                                       "--epochs", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code != 0 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_damaged_npy_files_are_refused_before_mapping(grey_npy, tmp_path):
    cut = tmp_path / "cut.npy"
    cut.write_bytes(grey_npy.read_bytes()[:-1000])
    with pytest.raises(DataError, match="shorter than its header says"):
        open_npy(str(cut))
    fortran = tmp_path / "fortran.npy"
    np.save(fortran, np.asfortranarray(np.zeros((10, 4, 3), np.uint8)))
    with pytest.raises(DataError, match="Fortran order"):
        open_npy(str(fortran))
    with pytest.raises(ConfigError, match="stream must be"):
        DataConfig(dataset=str(grey_npy), stream="yes")


def test_counts_beyond_float32_precision_are_refused_as_integers_and_floats(tmp_path):
    for dtype in (np.int64, np.float64):
        np.save(tmp_path / "big.npy", np.array([[3, 2**24 + 1], [0, 5]], dtype=dtype))
        with pytest.raises(DataError, match="counts above 2\\^24"):
            read_data(DataConfig(dataset=str(tmp_path / "big.npy")), counts=True)
