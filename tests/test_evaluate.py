import math

import numpy as np
import pyro
import pytest
import torch

from pyro_vae import VAE, Config, ConfigError, fit
from pyro_vae.io.data import Data, binarize_fixed
from pyro_vae.evaluation.evaluate import active_units, evaluate, importance_terms


@pytest.fixture(scope="module")
def linear_gaussian():
    """A trained linear-Gaussian VAE on x = Wz + μ + ε (D = 10, d = 2), and held-out data."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(10, 2)) * 2
    x = rng.normal(size=(2200, 2)) @ w.T + rng.normal(size=10) + 0.5 * rng.normal(size=(2200, 10))
    x = torch.tensor(x, dtype=torch.float32)
    vae, _ = fit(data=Data(x[:2000], x[2000:], (10,)), arch="linear", likelihood="normal",
                 obs_scale=0.5, z_dim=2, epochs=10, lr=1e-2, progress=False)
    return vae, x[2000:]


def test_importance_sampled_nll_matches_the_closed_form_of_a_linear_gaussian(linear_gaussian):
    # z ~ N(0, I), x | z ~ N(Wz + b, c²I)  ⇒  p(x) = N(b, WWᵀ + c²I) (Tipping & Bishop 1999).
    vae, x = linear_gaussian
    w, b = vae.decoder.net.weight.detach(), vae.decoder.net.bias.detach()
    exact = -torch.distributions.MultivariateNormal(b, w @ w.T + 0.25 * torch.eye(10)).log_prob(x)
    pyro.set_rng_seed(0)
    result = evaluate(vae, x, iwae_samples=1000, chunk_size=128, progress=False)
    assert abs(result["nll"] - exact.mean().item()) < 3 * result["nll_stderr"]
    # Per image too: on average within a few hundredths of a nat, and not below the exact NLL
    # on average, since log of an unbiased estimate of p(x) is biased low.
    gap = result["nll_per_image"] - exact
    assert gap.abs().mean() < 0.05 and gap.mean() > -0.01, gap
    assert result["neg_elbo"] > result["nll"], "the ELBO bounds log p(x) from below"


def test_kl_per_dimension_adds_up_to_the_kl_term(linear_gaussian):
    vae, x = linear_gaussian
    result = evaluate(vae, x, iwae_samples=500, progress=False)
    assert len(result["kl_per_dim"]) == 2 and min(result["kl_per_dim"]) > 0
    assert math.isclose(sum(result["kl_per_dim"]), result["kl"], rel_tol=0.02)
    assert math.isclose(result["reconstruction"] + result["kl"], result["neg_elbo"], rel_tol=1e-6)


def test_more_importance_samples_tighten_the_bound_on_fashion_mnist(fmnist_small):
    vae, _ = fit(data=fmnist_small, epochs=3, hidden=(200,), z_dim=10, progress=False)
    x = binarize_fixed(fmnist_small.test[:200])
    pyro.set_rng_seed(0)
    few, many = (evaluate(vae, x, iwae_samples=k, progress=False) for k in (5, 500))
    assert many["nll"] < few["nll"] < few["neg_elbo"]
    assert many["neg_elbo"] - many["nll"] > 1.0
    assert few["bits_per_dim"] == pytest.approx(few["nll"] / (784 * math.log(2)))
    assert 0 < many["active_units"] <= 10


def test_memory_is_bounded_by_the_chunk_not_by_k(fmnist_small, monkeypatch):
    pyro.set_rng_seed(0)
    vae = VAE.from_config(Config(z_dim=4, hidden=(32,), data_shape=(28, 28)))
    x = binarize_fixed(fmnist_small.test[:20])
    seen = []
    original = importance_terms

    def spy(vae, xb, num_samples, proposal=None, y=None):
        seen.append(num_samples)
        return original(vae, xb, num_samples, proposal, y)

    monkeypatch.setattr("pyro_vae.evaluation.evaluate.importance_terms", spy)
    evaluate(vae, x, iwae_samples=1000, batch_size=10, chunk_size=64, progress=False)
    assert max(seen) == 64 and sum(seen) == 2 * 1000


def test_active_units_count_units_whose_posterior_mean_varies():
    codes = torch.randn(500, 5)
    codes[:, 1] = 0.3  # constant mean: an inactive unit
    codes[:, 3] *= 0.05  # variance 0.0025 < 0.01: inactive
    assert active_units(codes) == 3


def test_point_mass_guides_need_a_proposal_and_flat_priors_are_refused(fmnist_small):
    x = binarize_fixed(fmnist_small.test[:10])
    delta = VAE.from_config(Config(guide="delta", z_dim=3, hidden=(16,), data_shape=(28, 28)))
    with pytest.raises(ConfigError, match="--proposal-scale"):
        evaluate(delta, x, iwae_samples=10, progress=False)
    result = evaluate(delta, x, iwae_samples=10, proposal_scale=0.5, progress=False)
    assert math.isfinite(result["nll"]) and result["kl_per_dim"] is None
    flat = VAE.from_config(Config(guide="delta", prior="none", z_dim=3, hidden=(16,),
                                  data_shape=(28, 28)))
    with pytest.raises(ConfigError, match="flat prior"):
        evaluate(flat, x, iwae_samples=10, proposal_scale=0.5, progress=False)
    normal = VAE.from_config(Config(z_dim=3, hidden=(16,), data_shape=(28, 28)))
    with pytest.raises(ConfigError, match="point-mass guides"):
        evaluate(normal, x, iwae_samples=10, proposal_scale=0.5, progress=False)


@pytest.mark.parametrize("options", [dict(guide="iaf"), dict(prior="vamp"), dict(prior="flow"),
                                     dict(prior="studentt"), dict(likelihood="categorical")])
def test_every_kind_of_model_can_be_evaluated(options, fmnist_small):
    pyro.set_rng_seed(0)
    vae = VAE.from_config(Config(z_dim=3, hidden=(16,), data_shape=(28, 28), **options))
    x = fmnist_small.test[:20]
    x = x if "likelihood" in options else binarize_fixed(x)
    result = evaluate(vae, x, iwae_samples=20, progress=False)
    assert math.isfinite(result["nll"]) and result["nll"] <= result["neg_elbo"] + 1e-3
    assert (result["kl_per_dim"] is None) == (options.get("guide") == "iaf" or
                                              options.get("prior") in ("vamp", "flow"))


def test_training_regularisers_do_not_leak_into_evaluation(fmnist_small):
    x = binarize_fixed(fmnist_small.test[:20])
    plain = VAE.from_config(Config(z_dim=3, hidden=(16,), data_shape=(28, 28)))
    tuned = VAE.from_config(Config(z_dim=3, hidden=(16,), data_shape=(28, 28), beta=0.3,
                                   corrupt="mask:0.5", contractive=2.0))
    tuned.load_state_dict(plain.state_dict())
    results = []
    for vae in (plain, tuned):
        vae.train()  # evaluate must switch to the plain ELBO by itself
        pyro.set_rng_seed(5)
        results.append(evaluate(vae, x, iwae_samples=30, progress=False))
    for key in ("nll", "neg_elbo", "kl", "reconstruction"):
        assert results[0][key] == pytest.approx(results[1][key], rel=1e-6), key
