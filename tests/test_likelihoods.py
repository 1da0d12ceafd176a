import math

import pytest
import torch

from pyro_vae import DataError
from pyro_vae.likelihoods import BernoulliLikelihood, NormalLikelihood


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
