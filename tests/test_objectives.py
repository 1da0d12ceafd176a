import math

import pyro
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae import VAE, Config
from pyro_vae.parts.objectives import build_elbo, sampled_kl_sites
from pyro_vae.training.plan import kl_weight


def tiny(**options):
    pyro.set_rng_seed(0)
    config = Config(z_dim=3, hidden=(16,), data_shape=(20,), **options)
    vae = VAE.from_config(config)
    vae.run = config  # the run's objective, for build_elbo
    return vae


def _log_weights(vae, x, k):
    """log p(x, z_k) − log q(z_k|x) for K vectorised draws: (K, batch)."""
    with pyro.plate("particles", k, dim=-2):
        guide = poutine.trace(vae.guide).get_trace(x)
        model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    guide.compute_log_prob()
    model.compute_log_prob()
    log_joint = model.nodes["z"]["log_prob"] + model.nodes["x"]["log_prob"]
    return log_joint - guide.nodes["z"]["log_prob"]


def test_iwae_objective_is_the_per_image_importance_weighted_bound():
    vae = tiny(elbo="iwae", particles=7)
    x = torch.rand(5, 20).bernoulli()
    pyro.set_rng_seed(1)
    loss = build_elbo(vae.run).loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    log_w = _log_weights(vae, x, 7)
    bound = (log_w.logsumexp(0) - math.log(7)).sum()  # Burda et al. 2016, eq. 8, per image
    assert math.isclose(-loss, bound.item(), rel_tol=1e-5)


def test_iwae_bound_is_tighter_than_the_elbo():
    vae = tiny()
    x = torch.rand(50, 20).bernoulli()
    log_w = _log_weights(vae, x, 200)
    elbo = log_w.mean(0).sum()
    iwae = (log_w.logsumexp(0) - math.log(200)).sum()
    assert iwae > elbo + 1.0


def test_trace_elbo_averages_vectorised_particles():
    vae = tiny(particles=4)
    x = torch.rand(5, 20).bernoulli()
    pyro.set_rng_seed(2)
    loss = build_elbo(vae.run).loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(2)
    assert math.isclose(-loss, _log_weights(vae, x, 4).sum(-1).mean().item(), rel_tol=1e-5)


def test_meanfield_uses_analytic_kl_and_names_the_sites_it_cannot():
    x = torch.rand(5, 20).bernoulli()
    normal = tiny(elbo="meanfield")
    assert sampled_kl_sites(normal.model, normal.guide, x) == []
    laplace = tiny(elbo="meanfield", prior="laplace")  # torch has KL(Normal ‖ Laplace)
    assert sampled_kl_sites(laplace.model, laplace.guide, x) == []
    heavy = tiny(elbo="meanfield", prior="studentt")
    assert sampled_kl_sites(heavy.model, heavy.guide, x) == ["z (Normal guide, StudentT prior)"]
    # With a closed-form KL the estimator's only noise is the reconstruction term's.
    losses = [build_elbo(normal.run).loss(normal.model, normal.guide, x) for _ in range(200)]
    traces = [pyro.infer.Trace_ELBO().loss(normal.model, normal.guide, x) for _ in range(200)]
    assert abs(sum(losses) / 200 - sum(traces) / 200) < 3 * (torch.tensor(traces).std() / 14 + 0.1)
    assert torch.tensor(losses).std() < torch.tensor(traces).std()


def test_kl_weight_argument_scales_prior_and_guide_terms_only_when_given():
    # The training plan passes the KL weight (β, warm-up) to the model and guide; evaluation
    # calls them without it.
    vae = tiny(beta=0.25)
    x = torch.rand(5, 20).bernoulli()
    weight = torch.tensor(0.25)
    guide = poutine.trace(vae.guide).get_trace(x, weight)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x, weight)
    assert guide.nodes["z"]["scale"] == 0.25 and model.nodes["z"]["scale"] == 0.25
    assert model.nodes["x"]["scale"] == 1.0
    assert poutine.trace(vae.guide).get_trace(x).nodes["z"]["scale"] == 1.0


def test_kl_warmup_rises_linearly_to_beta():
    config = Config(beta=2.0, kl_warmup=2, data_shape=(4,))
    weights = [kl_weight(config, e, s, 10) for e in (1, 2, 3) for s in range(10)]
    assert weights[0] == pytest.approx(0.1) and weights[9] == pytest.approx(1.0)
    assert weights[19] == pytest.approx(2.0) and set(weights[20:]) == {2.0}
    assert all(a < b for a, b in zip(weights[:19], weights[1:20]))
    assert kl_weight(Config(beta=0.5, data_shape=(4,)), 1, 0, 10) == 0.5
