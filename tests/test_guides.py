import math

import pyro
import pytest
import torch

from pyro_vae import VAE, Config
from pyro_vae.model import contractive_penalty
from pyro_vae.training.step import regularisers
from pyro_vae.registry import FAMILIES as GUIDES


def build(guide: str, **options):
    prior = options.pop("prior", "normal")
    config = Config(guide=guide, prior=prior, z_dim=3, hidden=(16,), data_shape=(10,), **options)
    vae = VAE.from_config(config)
    # What the training plan passes to the model and guide, and the run's objective.
    vae.extra, vae.run = regularisers(config), config
    return vae


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_every_guide_gives_q_with_batch_and_event_shape(name):
    q = build(name).posterior(torch.rand(4, 10))
    assert q.batch_shape == (4,) and q.event_shape == (3,)
    assert q.has_rsample, "the guide must be reparameterised"
    assert q.rsample().shape == (4, 3)


def test_delta_guide_is_a_point_mass_at_the_code():
    vae = build("delta")
    x = torch.rand(4, 10)
    q = vae.posterior(x)
    code, scale = vae.encode(x)
    assert torch.equal(q.rsample(), code) and torch.equal(scale, torch.zeros_like(code))
    assert torch.equal(q.log_prob(code), torch.zeros(4))


def test_iaf_density_obeys_change_of_variables():
    torch.manual_seed(0)
    vae = build("iaf", flows=2)
    for flow in vae.family.flows:  # away from the identity at initialisation
        for p in flow.parameters():
            torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(1, 10)
    features = vae.encoder(x)
    loc, scale = vae.family._gaussian(features)
    transforms = [f.condition(features) for f in vae.family.flows]

    def flow(z0):
        for t in transforms:
            z0 = t(z0)
        return z0

    z0 = torch.randn(1, 3)
    z = flow(z0)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0], z0[0])
    expected = (
        torch.distributions.Normal(loc, scale).log_prob(z0).sum() - torch.linalg.slogdet(jac)[1]
    )
    torch.testing.assert_close(vae.posterior(x).log_prob(z)[0], expected, rtol=1e-4, atol=1e-4)


def test_contractive_penalty_matches_finite_differences():
    torch.manual_seed(1)
    vae = build("normal", activation="tanh").double()
    x = torch.rand(3, 10, dtype=torch.float64)
    eps = 1e-6
    for i in range(3):
        jac = torch.zeros(3, 10, dtype=torch.float64)
        for d in range(10):
            step = torch.zeros(10, dtype=torch.float64)
            step[d] = eps
            up = vae.encode((x[i] + step)[None])[0][0]
            down = vae.encode((x[i] - step)[None])[0][0]
            jac[:, d] = (up - down) / (2 * eps)
        penalty = contractive_penalty(vae.code, x)[i]
        assert math.isclose(penalty.item(), jac.pow(2).sum().item(), rel_tol=1e-6)


def test_contractive_penalty_reaches_the_encoder_through_pyro_factor():
    pyro.set_rng_seed(0)
    vae = build("normal", contractive=0.5)
    x = torch.rand(4, 10).bernoulli()
    trace = pyro.poutine.trace(pyro.poutine.replay(
        vae.model, trace=pyro.poutine.trace(vae.guide).get_trace(x, **vae.extra))).get_trace(
        x, **vae.extra)
    site = trace.nodes["contractive"]
    expected = -0.5 * contractive_penalty(vae.code, x)
    torch.testing.assert_close(site["fn"].log_prob(site["value"]), expected)
    expected.sum().backward()
    assert vae.family.head.weight.grad is not None
    assert "contractive" not in pyro.poutine.trace(vae.model).get_trace(x).nodes


@pytest.mark.parametrize("spec", ["gaussian:0.5", "mask:0.5"])
def test_denoising_guide_sees_corrupted_x_while_model_scores_clean_x(spec):
    pyro.set_rng_seed(0)
    vae = build("normal", corrupt=spec)
    x = torch.rand(64, 10).bernoulli()
    seen = []
    vae.encoder.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    guide_trace = pyro.poutine.trace(vae.guide).get_trace(x, **vae.extra)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide_trace)).get_trace(
        x, **vae.extra)
    assert not torch.equal(seen[-1], x), "the encoder sees x̃"
    assert torch.equal(model_trace.nodes["x"]["value"], x), "the likelihood scores clean x"
    if spec.startswith("mask"):
        dropped = ((x == 1) & (seen[-1] == 0)).sum() / (x == 1).sum()
        assert 0.35 < dropped < 0.65
    vae.guide(x)
    assert torch.equal(seen[-1], x), "evaluation encodes the clean x"


def test_iaf_encode_gives_the_flowed_code_the_decoder_sees():
    torch.manual_seed(0)
    vae = build("iaf", flows=2)
    for flow in vae.family.flows:
        for p in flow.parameters():
            torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(3, 10)
    q = vae.posterior(x)
    code = q.base_dist.base_dist.loc
    for transform in q.transforms:
        code = transform(code)
    loc, _ = vae.encode(x)
    torch.testing.assert_close(loc, code)
    assert not torch.allclose(loc, q.base_dist.base_dist.loc)
    torch.testing.assert_close(vae.reconstruct(x), vae.decode(code))


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "iwae"])
def test_contractive_penalty_is_counted_once_per_image_under_particles(elbo):
    from pyro_vae.parts.objectives import build_elbo

    x = torch.rand(6, 10).bernoulli()
    losses = []
    for lam in (0.0, 0.7):
        pyro.set_rng_seed(0)
        vae = build("normal", elbo=elbo, particles=4, contractive=lam if lam else 0.0)
        pyro.set_rng_seed(1)
        losses.append(build_elbo(vae.run).loss(vae.model, vae.guide, x, **vae.extra))
    penalty = contractive_penalty(vae.code, x).sum().item()
    assert math.isclose(losses[1] - losses[0], 0.7 * penalty, rel_tol=1e-4)
