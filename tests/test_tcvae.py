"""β-TCVAE (Chen et al. 2018) and the decomposition of the KL term into index-code mutual
information, total correlation and dimension-wise KL: against a brute-force sum over the
batch, adding up to the KL term, the TC weighted by β alone, and lowering the total
correlation of a model trained on Fashion-MNIST; metrics.csv reports the three terms."""

import csv
import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import VAE, Config, fit
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.evaluate import kl_terms
from pyro_vae.io.data import binarize_fixed
from pyro_vae.parts.objectives import TCTrace_ELBO, build_elbo, kl_decomposition


def test_kl_decomposition_is_the_aggregate_posterior_summed_by_hand():
    torch.manual_seed(0)
    loc, scale = torch.randn(40, 3), torch.rand(40, 3) + 0.3
    q = dist.Normal(loc, scale).to_event(1)
    p = dist.Laplace(torch.zeros(3), 1.0).to_event(1)
    z = q.rsample()
    terms = kl_decomposition(q, p, z)
    # q(z_i) = (1/M) Σ_j q(z_i|x_j) and q(z_id) = (1/M) Σ_j q(z_id|x_j), written out.
    log_qz = torch.stack([torch.logsumexp(torch.stack(
        [dist.Normal(loc[j], scale[j]).log_prob(z[i]).sum() for j in range(40)]), 0)
        for i in range(40)]) - math.log(40)
    log_qd = torch.stack([torch.logsumexp(torch.stack(
        [dist.Normal(loc[j], scale[j]).log_prob(z[i]) for j in range(40)]), 0)
        for i in range(40)]) - math.log(40)
    torch.testing.assert_close(terms["mi"], q.log_prob(z) - log_qz, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["tc"], log_qz - log_qd.sum(-1), rtol=1e-5, atol=1e-5)
    total = terms["mi"] + terms["tc"] + terms["dim_kl"]
    torch.testing.assert_close(total, q.log_prob(z) - p.log_prob(z), rtol=1e-5, atol=1e-5)
    assert (terms["tc"] != 0).all()
    piece = kl_decomposition(q, p, z, slice(5, 12))
    for key in terms:
        torch.testing.assert_close(piece[key], terms[key][5:12])


def test_tc_objective_adds_beta_minus_one_times_the_total_correlation():
    pyro.set_rng_seed(0)
    config = Config(z_dim=3, hidden=(16,), data_shape=(20,), elbo="tc", beta=5.0)
    vae = VAE.from_config(config)
    x = torch.rand(30, 20).bernoulli()
    objective = build_elbo(config)
    assert isinstance(objective, TCTrace_ELBO) and objective.beta == 5.0
    pyro.set_rng_seed(1)
    loss = objective.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    elbo = model.log_prob_sum() - guide.log_prob_sum()
    tc = kl_decomposition(guide.nodes["z"]["fn"], model.nodes["z"]["fn"],
                          guide.nodes["z"]["value"])["tc"].sum()
    assert loss == pytest.approx(float((-elbo + 4.0 * tc).detach()), rel=1e-5)
    # β on the TC alone: the KL term itself is not scaled (no kl_weight reaches the model).
    from pyro_vae.training.schedules import kl_weight, scheduled
    assert not scheduled(config) and kl_weight(config, 1, 0, 10) == 1.0
    # With β = 1 it is the ELBO.
    plain = build_elbo(config.replace(beta=1.0))
    pyro.set_rng_seed(1)
    a = plain.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    assert a == pytest.approx(Trace_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x),
                              rel=1e-6)


def test_tc_vae_lowers_the_total_correlation_on_fashion_mnist(fmnist_small):
    x = binarize_fixed(fmnist_small.test)
    terms = {}
    for beta in (1.0, 6.0):
        pyro.clear_param_store()
        result = fit(data=fmnist_small, epochs=5, z_dim=10, hidden=(200,), elbo="tc",
                     beta=beta, progress=False)
        pyro.set_rng_seed(0)
        terms[beta] = kl_terms(result.model, x)
        assert {"test_mi", "test_tc", "test_dim_kl"} <= set(result.metrics[-1])
    # Measured: TC 5.9 nats per image at β = 1, 1.9 at β = 6.
    assert terms[6.0]["tc"] < 0.5 * terms[1.0]["tc"], terms
    assert terms[1.0]["tc"] > 1.0


def test_metrics_csv_reports_the_kl_decomposition(fmnist_npz, tmp_path):
    fit(dataset=str(fmnist_npz), epochs=1, z_dim=4, hidden=(32,), out=tmp_path / "run",
        progress=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    mi, tc, dim = (float(rows[0][k]) for k in ("test_mi", "test_tc", "test_dim_kl"))
    # MI ≤ log N (N = 500 test images) and the terms add up to about the KL term.
    assert 0 < mi <= math.log(500) + 1e-6 and tc > -1e-3 and dim > -1e-3
    # Not for a guide that does not factorise (the IAF): no columns rather than wrong ones.
    result = fit(dataset=str(fmnist_npz), epochs=1, z_dim=4, hidden=(32,), guide="iaf",
                 flows=1, progress=False)
    assert "test_tc" not in result.metrics[0]


@pytest.mark.parametrize("options, message", [
    ({"guide": "iaf"}, "splits q\\(z\\|x\\) into one factor per latent dimension, which it can "
                       "for a diagonal Gaussian guide, not --guide iaf"),
    ({"prior": "mog"}, "needs a prior that factorises"),
    ({"free_bits": 0.5}, "both reshape the KL term"),
    ({"labelled": "100"}, "sums the unknown class out exactly"),
])
def test_tc_refuses_what_it_cannot_decompose(options, message):
    with pytest.raises(ConfigError, match=message):
        Config(elbo="tc", beta=4.0, z_dim=4, data_shape=(20,), **options)


def test_tc_term_follows_the_kl_weight():
    pyro.set_rng_seed(0)
    config = Config(z_dim=3, hidden=(16,), data_shape=(20,), elbo="tc", beta=5.0)
    vae = VAE.from_config(config)
    x = torch.rand(30, 20).bernoulli()
    weight = torch.tensor(0.25)  # a warm-up's weight w: the TC then weighs w·β
    pyro.set_rng_seed(1)
    loss = build_elbo(config).loss(vae.model, vae.guide, x, weight)
    pyro.set_rng_seed(1)
    guide = poutine.trace(vae.guide).get_trace(x, weight)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x, weight)
    elbo = model.log_prob_sum() - guide.log_prob_sum()  # the z sites scaled by w
    tc = kl_decomposition(guide.nodes["z"]["fn"], model.nodes["z"]["fn"],
                          guide.nodes["z"]["value"])["tc"].sum()
    assert loss == pytest.approx(float((-elbo + 0.25 * 4.0 * tc).detach()), rel=1e-5)


def test_kl_terms_are_left_out_for_a_guide_of_yours_that_does_not_split():
    from torch import nn

    class BetaEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(20, 4)

        def forward(self, x):
            a, b = nn.functional.softplus(self.net(x)).chunk(2, -1)
            return dist.Beta(a + 0.5, b + 0.5).to_event(1)

    prior = dist.Normal(torch.zeros(2), 1.0).to_event(1)
    vae = VAE(BetaEncoder(), nn.Linear(2, 20), prior)
    assert kl_terms(vae, torch.rand(10, 20).bernoulli()) is None
