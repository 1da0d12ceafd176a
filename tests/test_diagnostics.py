import warnings

import numpy as np
import pyro
import pytest
import torch

from pyro_vae import VAE, Config, ConfigError, fit
from pyro_vae.io.data import Data
from pyro_vae.evaluation.diagnostics import (
    check_diagnosable,
    inference_data,
    nuts_reference,
    pareto_khat,
    verdict,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az


@pytest.fixture(scope="module")
def linear_gaussian_1d():
    """A trained linear-Gaussian VAE with one latent unit. Its posterior p(z|x) is Gaussian with
    a mean linear in x and a constant variance, which the amortised Gaussian guide can match."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 1)) * 2
    x = rng.normal(size=(3000, 1)) @ w.T + 0.5 * rng.normal(size=(3000, 8))
    x = torch.tensor(x, dtype=torch.float32)
    vae, _ = fit(data=Data(x[:2800], x[2800:], (8,)), arch="linear", likelihood="normal",
                 obs_scale=0.5, z_dim=1, epochs=15, lr=1e-2, progress=False)
    return vae, x[2800:]


def test_khat_is_small_when_q_matches_the_posterior_and_large_when_it_misses(linear_gaussian_1d):
    vae, x = linear_gaussian_1d
    pyro.set_rng_seed(0)
    good = pareto_khat(vae, x[:50], draws=1000)
    assert good.shape == (50,) and np.mean(good < 0.5) > 0.9, good
    with torch.no_grad():  # shift q by two posterior sds and shrink it: a bad proposal
        head = vae.family.head
        head.bias[0] += 2 * torch.exp(0.5 * head.bias[1])
        head.bias[1] -= 2.0
    bad = pareto_khat(vae, x[:50], draws=1000)
    assert np.mean(bad > 0.7) > 0.9, bad


def test_nuts_recovers_the_closed_form_posterior(linear_gaussian_1d):
    # x | z ~ N(wz + b, c²I), z ~ N(0, 1)  ⇒  z | x ~ N(m, s²) with s² = 1/(1 + wᵀw/c²),
    # m = s² wᵀ(x − b)/c² (Bishop 2006, eq. 2.116–2.117).
    vae, x = linear_gaussian_1d
    w, b = vae.decoder.net.weight.detach()[:, 0], vae.decoder.net.bias.detach()
    s2 = 1.0 / (1.0 + w @ w / 0.25)
    m = s2 * ((x[:2] - b) @ w) / 0.25
    pyro.set_rng_seed(0)
    nuts = nuts_reference(vae, x[:2], chains=4, warmup=200, samples=400, progress=False)
    draws = nuts.posterior["z"].values.reshape(-1, 2, 1)[..., 0]  # (chains·draws, image)
    assert np.allclose(draws.mean(0), m.numpy(), atol=4 * np.sqrt(s2.item() / 800))
    assert np.allclose(draws.std(0), np.sqrt(s2.item()), rtol=0.1)
    assert float(az.rhat(nuts)["z"].max()) <= 1.01


def test_inference_data_has_the_groups_and_dims_arviz_expects(linear_gaussian_1d, tmp_path):
    vae, x = linear_gaussian_1d
    idata = inference_data(vae, x[:7], draws=30)
    assert set(idata.groups()) == {"posterior", "prior", "posterior_predictive",
                                   "log_likelihood", "observed_data"}
    assert idata.posterior["z"].dims == ("chain", "draw", "image", "latent")
    assert idata.posterior["z"].shape == (1, 30, 7, 1)
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "image")
    assert idata.posterior_predictive["x"].shape == (1, 30, 7, 8)
    assert idata.observed_data["x"].dims == ("image", "pixel")
    idata.to_netcdf(str(tmp_path / "p.nc"))
    back = az.from_netcdf(str(tmp_path / "p.nc"))
    assert len(az.summary(back, var_names=["z"])) == 7


def test_verdict_follows_khat_and_the_nuts_comparison():
    good = np.full(100, 0.3)
    assert verdict(good, None)[0]
    assert not verdict(np.full(100, 0.9), None)[0]
    converged = [{"r_hat": 1.001, "std_diff": 0.1, "sd_ratio": 0.95}]
    assert verdict(good, converged)[0]
    narrow = [{"r_hat": 1.001, "std_diff": 0.1, "sd_ratio": 0.3}]
    trusted, words = verdict(good, narrow)
    assert not trusted and "0.30×" in words
    unconverged = [{"r_hat": 1.2, "std_diff": 3.0, "sd_ratio": 0.3}]
    trusted, words = verdict(good, unconverged)
    assert trusted and "did not converge" in words


def test_point_mass_guides_and_flat_priors_cannot_be_diagnosed():
    delta = VAE.from_config(Config(guide="delta", z_dim=2, hidden=(8,), data_shape=(4,)))
    with pytest.raises(ConfigError, match="no density"):
        check_diagnosable(delta)
    flat = VAE.from_config(Config(guide="delta", prior="none", z_dim=2, hidden=(8,),
                                  data_shape=(4,)))
    with pytest.raises(ConfigError):
        check_diagnosable(flat)
