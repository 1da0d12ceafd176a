import math

import pytest
import torch

from pyro_vae import VAE, Config
from pyro_vae.parts.priors import LaplacePrior, StandardNormalPrior
from pyro_vae.registry import PRIORS


def build(name: str, z_dim: int = 3, **options):
    guide = "delta" if name == "none" else "normal"
    config = Config(prior=name, guide=guide, z_dim=z_dim, hidden=(8,), data_shape=(5,), **options)
    return VAE.from_config(config).prior


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


@pytest.mark.parametrize("df", [1.0, 3.0, 30.0])
def test_student_t_log_density_is_closed_form(df):
    z = torch.randn(9, 3) * 3
    per_dim = (
        math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        - (df + 1) / 2 * torch.log1p(z**2 / df)
    )
    torch.testing.assert_close(build("studentt", prior_df=df)().log_prob(z), per_dim.sum(-1))


def test_mixture_log_density_is_log_sum_of_weighted_gaussians():
    prior = build("mog", prior_components=4)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.3, -1.0, 2.0, 0.0]))
        prior.log_scales.normal_(0, 0.3)
    z = torch.randn(6, 3)
    log_w = prior.logits.log_softmax(0)
    normal = torch.distributions.Normal(prior.locs, prior.log_scales.exp())  # 4 x 3
    per_component = normal.log_prob(z[:, None, :]).sum(-1) + log_w  # 6 x 4
    torch.testing.assert_close(prior().log_prob(z), per_component.logsumexp(-1))


def test_vamp_prior_is_the_average_posterior_at_the_pseudo_inputs():
    vae = VAE.from_config(
        Config(prior="vamp", prior_components=5, z_dim=3, hidden=(8,), data_shape=(5,))
    )
    loc, scale = vae.encode(vae.prior.pseudo_inputs)
    z = torch.randn(4, 3)
    log_q = torch.distributions.Normal(loc, scale).log_prob(z[:, None, :]).sum(-1)  # 4 x 5
    expected = log_q.logsumexp(-1) - math.log(5)
    torch.testing.assert_close(vae.prior().log_prob(z), expected)
    names = [n for n, _ in vae.prior.named_parameters()]
    assert names == ["pseudo_inputs"], "the encoder is shared, not owned by the prior"


def test_flow_prior_density_obeys_change_of_variables():
    torch.manual_seed(0)
    prior = build("flow", z_dim=3, flows=2)
    for flow in prior.flows:  # move away from the identity at initialisation
        for p in flow.parameters():
            torch.nn.init.normal_(p, std=0.3)
    z = torch.randn(5, 3)

    def to_base(zi):  # T⁻¹: apply the autoregressive maps in reverse order
        for flow in reversed(prior.flows):
            zi = flow(zi)
        return zi

    for zi, log_p in zip(z, prior().log_prob(z)):
        u = to_base(zi)
        jac = torch.autograd.functional.jacobian(to_base, zi)
        expected = torch.distributions.Normal(0, 1).log_prob(u).sum() + torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(log_p, expected, rtol=1e-4, atol=1e-4)
    assert prior().sample((7,)).shape == (7, 3)


def test_flat_prior_has_zero_log_density():
    z = torch.randn(4, 3) * 100
    assert torch.equal(build("none")().log_prob(z), torch.zeros(4))


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_every_prior_has_event_shape_z_dim(name):
    d = build(name)()
    assert d.event_shape == (3,) and d.batch_shape == ()
    if name != "none":
        assert d.sample().shape == (3,)


@pytest.mark.parametrize("name, learnable", [("normal", False), ("laplace", False),
                                             ("studentt", False), ("mog", True),
                                             ("vamp", True), ("flow", True), ("none", False)])
def test_learnable_priors_have_parameters(name, learnable):
    assert bool(list(build(name).parameters())) == learnable


def test_prior_scale_reaches_the_laplace_prior():
    prior = build("laplace", prior_scale=0.25, z_dim=2)
    assert torch.allclose(prior().base_dist.scale, torch.full((2,), 0.25))
