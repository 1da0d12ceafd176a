import math

import pyro.distributions as dist
import pytest
import torch

from pyro_vae import DataError
from pyro_vae.parts.likelihoods import BernoulliLikelihood, IndependentBernoulli, NormalLikelihood


def test_bernoulli_log_prob_is_closed_form():
    logits = torch.randn(4, 9, 1)
    x = torch.bernoulli(torch.full((4, 9), 0.4))
    p = torch.sigmoid(logits.squeeze(-1))
    expected = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    d = BernoulliLikelihood()(logits)
    assert d.event_shape == (9,)
    torch.testing.assert_close(d.log_prob(x), expected)


@pytest.mark.parametrize("c", [0.05, 0.1, 1.0])
def test_normal_log_prob_is_scaled_squared_error(c):
    mu = torch.randn(3, 8, 1)
    x = torch.randn(3, 8)
    d = NormalLikelihood(c)(mu)
    expected = (
        -((x - mu.squeeze(-1)) ** 2).sum(-1) / (2 * c**2)
        - 8 * math.log(c)
        - 4 * math.log(2 * math.pi)
    )
    torch.testing.assert_close(d.log_prob(x), expected)
    torch.testing.assert_close(d.mean, mu.squeeze(-1))


def test_bernoulli_refuses_grey_levels_outside_unit_interval():
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        BernoulliLikelihood().check_support(torch.tensor([[0.0, 1.5]]), "data", "dynamic")


def test_bernoulli_without_binarisation_needs_binary_data():
    BernoulliLikelihood().check_support(torch.tensor([[0.0, 1.0]]), "data", "none")
    with pytest.raises(DataError, match="--binarize dynamic"):
        BernoulliLikelihood().check_support(torch.tensor([[0.0, 0.5]]), "data", "none")


def test_continuous_bernoulli_log_prob_is_closed_form():
    from pyro_vae.parts.likelihoods import ContinuousBernoulliLikelihood

    logits = torch.randn(3, 7, 1) * 2
    x = torch.rand(3, 7)
    lam = torch.sigmoid(logits.squeeze(-1))
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    expected = (log_c + x * lam.log() + (1 - x) * (1 - lam).log()).sum(-1)
    torch.testing.assert_close(ContinuousBernoulliLikelihood()(logits).log_prob(x), expected,
                               rtol=1e-4, atol=1e-4)


def test_learned_normal_scale_has_a_floor():
    from pyro_vae.parts.likelihoods import LearnedNormalLikelihood

    params = torch.stack([torch.randn(2, 5), torch.full((2, 5), -50.0)], dim=-1)
    d = LearnedNormalLikelihood(min_scale=0.05)(params)
    torch.testing.assert_close(d.base_dist.scale, torch.full((2, 5), 0.05))
    x = torch.randn(2, 5)
    loc, s = params[..., 0], 0.05
    expected = (-((x - loc) ** 2) / (2 * s**2) - math.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(d.log_prob(x), expected)


def test_laplace_likelihood_is_scaled_l1_error():
    from pyro_vae.parts.likelihoods import LaplaceLikelihood

    mu, x = torch.randn(4, 6, 1), torch.randn(4, 6)
    expected = -(x - mu.squeeze(-1)).abs().sum(-1) / 0.2 - 6 * math.log(2 * 0.2)
    torch.testing.assert_close(LaplaceLikelihood(0.2)(mu).log_prob(x), expected)


def test_categorical_scores_grey_levels_with_a_softmax():
    from pyro_vae.parts.likelihoods import CategoricalLikelihood

    lik = CategoricalLikelihood()
    logits = torch.randn(2, 5, 256)
    levels = torch.randint(0, 256, (2, 5))
    x = levels / 255.0
    obs = lik.to_obs(x)
    assert torch.equal(obs, levels.float())
    expected = logits.log_softmax(-1).gather(-1, levels[..., None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(lik(logits).log_prob(obs), expected)
    mean = (logits.softmax(-1) * torch.arange(256.0)).sum(-1) / 255
    torch.testing.assert_close(lik.mean(logits), mean)
    torch.testing.assert_close(lik.to_data(obs), x)


def test_categorical_refuses_values_between_grey_levels():
    from pyro_vae.parts.likelihoods import CategoricalLikelihood

    with pytest.raises(DataError, match="256 grey levels"):
        CategoricalLikelihood().check_support(torch.tensor([[0.5, 0.1234]]), "data", None)


def test_independent_bernoulli_scores_exactly_as_torchs_bernoulli_to_event(fmnist_small):
    torch.manual_seed(0)
    logits = 4 * torch.randn(3, 50, 784)
    x = fmnist_small.train[:50].bernoulli()
    ours, torchs = IndependentBernoulli(logits), dist.Bernoulli(logits=logits).to_event(1)
    assert (ours.batch_shape, ours.event_shape) == (torchs.batch_shape, torchs.event_shape)
    assert torch.equal(ours.log_prob(x), torchs.log_prob(x))  # (3, 50), broadcast over x
    wide = ours.expand((2, 3, 50))
    assert isinstance(wide, IndependentBernoulli) and wide.batch_shape == (2, 3, 50)
    assert torch.equal(wide.log_prob(x)[1], torchs.log_prob(x))
    with pytest.raises(ValueError):
        IndependentBernoulli(logits, validate_args=True).log_prob(torch.full_like(x, 0.5))
