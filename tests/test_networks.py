import numpy as np
import pytest
import torch

from pyro_vae import Config, fit
from pyro_vae.io.data import Data


@pytest.mark.parametrize("arch", ["mlp", "conv", "linear"])
@pytest.mark.parametrize("k", [1, 2, 256])
def test_decoder_maps_leading_dims_to_likelihood_parameters(arch, k):
    config = Config(arch=arch, z_dim=4, data_shape=(8, 12),
                    **({} if arch == "linear" else {"hidden": (32,)}))
    network = config.model.arch.build()
    out = network.decoder(4, (8, 12), k)(torch.randn(3, 5, 4))
    assert out.shape == (3, 5, 96, k)
    body, features = network.encoder((8, 12))
    assert body(torch.rand(5, 96)).shape == (5, features)


def test_conv_decoder_keeps_pixels_in_place():
    # Channel c of pixel (i, j) must land at [..., i * W + j, c]: check against the raw network.
    config = Config(arch="conv", z_dim=2, hidden=(16,), data_shape=(8, 12))
    decoder = config.model.arch.build().decoder(2, (8, 12), 3)
    z = torch.randn(1, 2)
    raw = decoder.net[:-2](z)  # (1, 3, 8, 12) before regrouping and flattening
    out = decoder(z)
    assert torch.equal(out[0, 5 * 12 + 7], raw[0, :, 5, 7])


def _principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    qa, _ = np.linalg.qr(a)
    qb, _ = np.linalg.qr(b)
    return np.degrees(np.arccos(np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), -1, 1)))


def test_linear_gaussian_model_recovers_the_pca_subspace():
    # x = Wz + μ + ε with D = 20, d = 3, σ = 0.1: probabilistic PCA (Tipping & Bishop 1999),
    # whose maximum-likelihood W spans the top-3 principal subspace.
    rng = np.random.default_rng(0)
    w = rng.normal(size=(20, 3)) * np.array([3.0, 2.0, 1.0])
    x = rng.normal(size=(3000, 3)) @ w.T + rng.normal(size=20) + 0.1 * rng.normal(size=(3000, 20))
    x = torch.tensor(x, dtype=torch.float32)
    data = Data(x[:2700], x[2700:], (20,))
    vae, _ = fit(data=data, arch="linear", likelihood="normal", obs_scale=0.1, z_dim=3,
                 epochs=20, batch_size=64, lr=1e-2, progress=False)
    centred = x.numpy() - x.numpy().mean(0)
    top3 = np.linalg.svd(centred, full_matrices=False)[2][:3].T
    angles = _principal_angles(vae.decoder.net.weight.detach().numpy(), top3)
    assert angles.max() < 5.0, angles
