"""Colour images in every layout, and convolutional networks for any image size, on the
photographs that scikit-image ships."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pyro_vae.config import DataConfig
from pyro_vae.io.data import read_data
from pyro_vae.registry import NETWORKS

from conftest import cli


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    """32×32 colour patches of four photographs of skimage.data (astronaut, coffee, chelsea,
    rocket), (N, 32, 32, 3) uint8, N = 858."""
    import skimage.data

    tiles = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        photo = getattr(skimage.data, name)()[..., :3]
        rows, cols = photo.shape[0] // 32, photo.shape[1] // 32
        grid = photo[: rows * 32, : cols * 32].reshape(rows, 32, cols, 32, 3)
        tiles.append(grid.transpose(0, 2, 1, 3, 4).reshape(-1, 32, 32, 3))
    return np.concatenate(tiles)


def test_the_three_layouts_read_as_the_same_colour_images(patches, tmp_path):
    last, first = tmp_path / "last.npy", tmp_path / "first.npy"
    np.save(last, patches)
    np.save(first, patches.transpose(0, 3, 1, 2))
    np.save(tmp_path / "grey.npy", patches[..., :1])  # (N, H, W, 1): grey, as (N, H, W)
    a = read_data(DataConfig(dataset=str(last)))
    b = read_data(DataConfig(dataset=str(first)))
    assert a.data_shape == b.data_shape == (3, 32, 32)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    # Channels first in memory: the red channel of the first patch, scaled to [0, 1].
    expected = torch.from_numpy(patches[:, :, :, 0].reshape(len(patches), -1) / 255.0).float()
    assert torch.allclose(a.train[:, : 32 * 32], expected[_train_rows(len(patches))])
    assert read_data(DataConfig(dataset=str(tmp_path / "grey.npy"))).data_shape == (32, 32)
    # 3×3 images with 3 channels: either end could be the channels.
    np.save(tmp_path / "tiny.npy", patches[:, :3, :3, :])
    result = cli("fit", "--dataset", tmp_path / "tiny.npy", "--out", tmp_path / "run")
    assert result.exit_code == 1 and "--channels-first" in result.output, result.output
    assert not (tmp_path / "run").exists()
    tiny = read_data(DataConfig(dataset=str(tmp_path / "tiny.npy"), channels_first=False))
    assert tiny.data_shape == (3, 3, 3)


def _train_rows(n: int) -> torch.Tensor:
    """The rows of the seeded 10% hold-out split that stay in training."""
    generator = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=generator)
    return perm[int(np.ceil(0.1 * n)):].sort().values


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (3, 32, 32), (3, 17, 23),
                                   (3, 64, 96), (5, 5)])
def test_conv_networks_fit_any_image_size(shape):
    conv = NETWORKS["conv"](hidden=(32,))
    assert conv.check_data_shape(shape) is None
    encoder, features = conv.encoder(shape)
    decoder = conv.decoder(4, shape, 2)
    d = int(np.prod(shape))
    assert encoder(torch.rand(3, d)).shape == (3, features)
    assert decoder(torch.randn(3, 4)).shape == (3, d, 2)
    if shape == (28, 28):  # the first release's layers, so its runs load
        assert [k for k, _ in encoder.named_parameters()] == [
            "1.weight", "1.bias", "3.weight", "3.bias", "6.weight", "6.bias"]
        assert [k for k, _ in decoder.named_parameters()] == [
            "net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "net.5.weight",
            "net.5.bias", "net.7.weight", "net.7.bias"]
    assert "needs images" in conv.check_data_shape((784,))


def test_colour_patches_train_and_draw_in_colour(patches, tmp_path):
    data = tmp_path / "photos.npz"
    small = patches.reshape(-1, 16, 2, 16, 2, 3).mean((2, 4)).round().astype(np.uint8)
    np.savez(data, x_train=small[:600], x_test=small[600:])  # 16×16 colour patches
    out = tmp_path / "run"
    result = cli("fit", "--dataset", data, "--arch", "conv", "--hidden", 64,
                 "--likelihood", "binomial", "--z-dim", 8, "--epochs", 3,
                 "--batch-size", 50, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["model"]["data_shape"] == [3, 16, 16]
    bits = pd.read_csv(out / "metrics.csv")["test_bits_per_dim"]
    assert bits.iloc[-1] < bits.iloc[0]  # Binomial(255, p) per channel, in bits/dim
    for name in ("samples.png", "reconstructions.png"):
        with Image.open(out / name) as picture:
            assert picture.mode == "RGB"
            pixels = np.asarray(picture).astype(float)
        assert np.abs(pixels[..., 0] - pixels[..., 2]).mean() > 1.0  # not grey
    assert cli("sample", out, "--mode", "interpolate", "--num", 2,
               "--out", tmp_path / "line.png").exit_code == 0
    with Image.open(tmp_path / "line.png") as picture:
        assert picture.mode == "RGB"
    result = cli("evaluate", out, "--iwae-samples", 5)
    assert result.exit_code == 0 and "bits/dim" in result.output, result.output
