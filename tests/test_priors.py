import math

import pytest
import torch

from pyro_vae import Config
from pyro_vae.priors import PRIORS, LaplacePrior, StandardNormalPrior, build_prior


def test_standard_normal_log_density_is_closed_form():
    z = torch.randn(7, 5)
    expected = -0.5 * (z**2).sum(-1) - 5 / 2 * math.log(2 * math.pi)
    torch.testing.assert_close(StandardNormalPrior(5)().log_prob(z), expected)


@pytest.mark.parametrize("b", [0.1, 1.0, 3.0])
def test_laplace_log_density_is_the_sparsity_penalty(b):
    # −log p(h) = λ|h| − log(λ/2) per coordinate, λ = 1/b (background notes, sparse autoencoder).
    lam = 1.0 / b
    z = torch.randn(11, 6) * 2
    expected = -(lam * z.abs() - math.log(lam / 2)).sum(-1)
    torch.testing.assert_close(LaplacePrior(6, scale=b)().log_prob(z), expected)


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_every_prior_has_event_shape_z_dim(name):
    prior = build_prior(Config(prior=name, z_dim=3, data_shape=(4,)))
    d = prior()
    assert d.event_shape == (3,) and d.batch_shape == ()
    assert d.sample().shape == (3,)


def test_prior_scale_reaches_the_laplace_prior():
    prior = build_prior(Config(prior="laplace", prior_scale=0.25, z_dim=2, data_shape=(4,)))
    assert torch.allclose(prior().base_dist.scale, torch.full((2,), 0.25))
