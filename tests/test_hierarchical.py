"""Hierarchical VAEs (--latent-layers): the model and guide as the math, the importance-sampled
log-likelihood over every layer against a closed form, training moves every parameter, the
refusals, and the run directory (config, weights, evaluate, pictures) of a two-layer model."""

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from click.testing import CliRunner
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import pyro_vae
from pyro_vae import VAE, Config, ConfigError
from pyro_vae.cli import main
from pyro_vae.evaluation.evaluate import evaluate, evaluate_run
from pyro_vae.hierarchical import GaussianLayer, HierarchicalVAE
from pyro_vae.io.data import binarize_fixed
from pyro_vae.parts.likelihoods import NormalLikelihood


class _LinearEncoder(torch.nn.Module):
    """x (batch, 3) → (loc, scale) of q(z_1|x), an amortised Gaussian of the user's own."""

    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Linear(3, 2)
        self.log_scale = torch.nn.Parameter(torch.full((2,), -0.5))

    def forward(self, x):
        return self.loc(x), self.log_scale.exp().expand(*x.shape[:-1], 2)


def _linear_gaussian(seed=0):
    """z_2 ~ N(0, 1), z_1 | z_2 ~ N(a z_2 + b, diag s²), x | z_1 ~ N(C z_1 + c, 0.5² I): every
    marginal is Gaussian, so log p(x) has a closed form. Returns the model and (mean, cov)."""
    torch.manual_seed(seed)
    down = GaussianLayer(1, 2, ())
    with torch.no_grad():
        down.head.weight[2:].zero_()  # log σ² independent of z_2
        down.head.bias[2:] = torch.tensor([-1.0, -0.4])
    decoder = torch.nn.Linear(2, 3)
    # A broad guide, so that the importance weights have light tails and K = 4000 converges.
    encoder, up = _LinearEncoder(), GaussianLayer(2, 1, ())
    with torch.no_grad():
        encoder.loc.weight.mul_(0.3)
        encoder.log_scale.fill_(math.log(1.5))
        up.head.weight[1:].zero_()
        up.head.bias[1:] = math.log(2.0**2)
    vae = HierarchicalVAE(encoder, decoder,
                          dist.Normal(torch.zeros(1), torch.ones(1)).to_event(1),
                          NormalLikelihood(scale=0.5), upward=[up],
                          downward=[down], layer_dims=(2, 1), data_shape=(3,))
    with torch.no_grad():
        a, b = down.head.weight[:2, 0], down.head.bias[:2]
        s2 = torch.exp(down.head.bias[2:])
        cov_z1 = torch.outer(a, a) + torch.diag(s2)
        C, c = decoder.weight, decoder.bias
        mean = C @ b + c
        cov = C @ cov_z1 @ C.T + 0.25 * torch.eye(3)
    return vae, mean, cov, cov_z1, a, b


def test_model_and_guide_have_one_site_per_layer_with_the_layers_shapes():
    pyro.set_rng_seed(0)
    vae = VAE.from_config(Config(latent_layers=3, z_dim=8, hidden=(16,), data_shape=(28, 28)))
    assert isinstance(vae, HierarchicalVAE)
    assert vae.layer_dims == (8, 4, 2) and vae.latent_sites == ("z", "z2", "z3")
    x = torch.rand(5, 784).bernoulli()
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    for site, d in zip(vae.latent_sites, vae.layer_dims):
        assert guide.nodes[site]["value"].shape == (5, d)
        assert model.nodes[site]["fn"].event_shape == (d,)
    # The model's z_1 is drawn given z_2, the guide's z_2 given z_1, and p(z_3) is the prior.
    z2 = guide.nodes["z2"]["value"]
    expected = vae.downward[0](z2).log_prob(guide.nodes["z"]["value"])
    assert torch.allclose(model.nodes["z"]["fn"].log_prob(guide.nodes["z"]["value"]), expected)
    assert torch.allclose(guide.nodes["z2"]["fn"].mean,
                          vae.upward[0](guide.nodes["z"]["value"]).mean)
    assert model.nodes["z3"]["fn"].batch_shape == (5,)
    # Trace_ELBO's one-sample estimate is the sum over every site of log p − log q.
    model.compute_log_prob(), guide.compute_log_prob()
    by_hand = sum(model.nodes[s]["log_prob_sum"] for s in ("x", "z", "z2", "z3")) - sum(
        guide.nodes[s]["log_prob_sum"] for s in ("z", "z2", "z3"))
    assert torch.allclose(model.log_prob_sum() - guide.log_prob_sum(), by_hand)


def test_importance_sampled_log_likelihood_sums_every_layer_and_matches_the_closed_form():
    vae, mean, cov, _, _, _ = _linear_gaussian()
    torch.manual_seed(1)
    x = dist.MultivariateNormal(mean, cov).sample((40,))
    exact = dist.MultivariateNormal(mean, cov).log_prob(x)
    pyro.set_rng_seed(0)
    result = evaluate(vae, x, iwae_samples=4000, batch_size=20, progress=False)
    nll = result["nll_per_image"]
    # Measured: the gap is 0.010 nats per image on average (0.033 at K = 100, 7.1 at K = 1),
    # at most 0.10; weights that left out z_2's log p(z_2) − log q(z_2|z_1) would be off by its
    # KL term, 1.3 nats.
    gap = nll - (-exact)
    assert -0.02 < float(gap.mean()) < 0.05, float(gap.mean())  # a bound that has converged
    assert float(gap.abs().max()) < 0.25, gap
    assert result["neg_elbo"] > result["nll"] + 0.05  # the one-sample ELBO is looser
    assert result["layer_dims"] == [2, 1]
    assert sum(result["kl_per_layer"]) == pytest.approx(result["kl"], abs=1e-6)
    assert result["active_units"] == sum(result["active_units_per_layer"])
    assert result["kl_per_dim"] is None  # z_1 has no fixed prior to split against


def test_prior_draws_come_from_the_marginal_of_the_bottom_layer():
    vae, _, _, cov_z1, _, b = _linear_gaussian()
    torch.manual_seed(0)
    draws = vae.prior_draws((100_000,))
    assert draws.shape == (100_000, 2)
    assert torch.allclose(draws.mean(0), b, atol=0.02)
    assert torch.allclose(torch.cov(draws.T), cov_z1, atol=0.03)


@pytest.mark.parametrize("objective", [
    {}, {"elbo": "iwae-dreg", "particles": 3},
    {"elbo": "iwae-dreg", "particles": 3, "prior": "vamp", "prior_components": 5},
], ids=["trace", "iwae-dreg", "iwae-dreg-vamp"])
def test_svi_moves_every_parameter_of_every_layer_on_fashion_mnist(fmnist_small, objective):
    from pyro_vae.parts.objectives import build_elbo

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    config = Config(latent_layers=2, z_dim=16, hidden=(64,), data_shape=(28, 28), **objective)
    vae = VAE.from_config(config)
    names = {k for k, _ in vae.named_parameters()}
    assert any(k.startswith("upward.") for k in names) and any(
        k.startswith("downward.") for k in names)
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    elbo = build_elbo(config)
    assert type(elbo).__name__ == ("DReGIWAE_ELBO" if objective else "Trace_ELBO")
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), elbo)
    x = binarize_fixed(fmnist_small.train[:256])
    for _ in range(3):
        svi.step(x)
    assert [k for k, v in vae.named_parameters() if torch.equal(v, before[k])] == []


def test_vamp_prior_over_the_top_layer_mixes_its_guide_along_the_mean_path(fmnist_small):
    """p(z_2) = (1/K) Σ_k q(z_2 | z_1 = μ_1(u_k)) (Tomczak & Welling 2018, eq. 9, with the top
    layer's guide at the mean code of each pseudo-input); SVI trains the pseudo-inputs, the
    shared encoder through the prior, and every other parameter."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    config = Config(latent_layers=2, z_dim=12, hidden=(64,), prior="vamp", prior_components=7,
                    data_shape=(28, 28))
    vae = VAE.from_config(config)
    assert vae.layer_dims == (12, 6) and vae.prior.pseudo_inputs.shape == (7, 784)
    x = binarize_fixed(fmnist_small.train[:64])
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    top = guide.nodes["z2"]["value"]
    with torch.no_grad():
        loc1, _ = vae.family.location(vae.encoder(vae.prior.pseudo_inputs))
        q2 = vae.upward[0](loc1)  # (7,) Gaussians over z_2
        by_hand = torch.logsumexp(q2.log_prob(top.unsqueeze(1)), dim=1) - math.log(7)
        assert torch.allclose(model.nodes["z2"]["fn"].log_prob(top), by_hand, atol=1e-5)
    # The pseudo-inputs get a gradient, and so does the encoder through log p(z_2) alone.
    prior_term = model.nodes["z2"]["fn"].log_prob(top.detach()).sum()
    prior_term.backward()
    assert vae.prior.pseudo_inputs.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.encoder.parameters())
    vae.zero_grad()
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    for _ in range(3):
        svi.step(x)
    assert [k for k, v in vae.named_parameters() if torch.equal(v, before[k])] == []
    # The importance-sampled NLL weighs the mixture prior over z_2 like any other.
    result = evaluate(vae, x[:16], iwae_samples=20, progress=False)
    assert result["nll"] < result["neg_elbo"] and result["layer_dims"] == [12, 6]


@pytest.mark.parametrize("options, message", [
    ({"elbo": "tc"}, "splits the KL term of one latent site"),
    ({"elbo": "meanfield"}, "right for a mean-field guide only"),
    ({"guide": "delta", "prior": "laplace"}, "a point-mass guide"),
    ({"condition": "label"}, "built for unconditional models"),
    ({"upper_z_dim": (10, 5)}, "takes 1 of them, not 2"),
    ({"elbo": "iwae-dreg", "particles": 3, "corrupt": "mask:0.3"}, "would draw another x̃"),
])
def test_hierarchical_models_refuse_what_they_cannot_do(options, message):
    with pytest.raises(ConfigError, match=message):
        Config(latent_layers=2, z_dim=20, data_shape=(28, 28), **options)


def test_layer_dimensions_default_to_halving_and_follow_upper_z_dim():
    assert Config(latent_layers=2, z_dim=100).model.layer_dims == (100, 50)
    assert Config(latent_layers=3, z_dim=20).model.layer_dims == (20, 10, 5)
    assert Config(latent_layers=2, z_dim=64, upper_z_dim=(7,)).model.layer_dims == (64, 7)
    # The flow prior is over the top layer, so its least dimension applies there.
    with pytest.raises(ConfigError, match=r"need --upper-z-dim \(of the top layer\) ≥ 2"):
        Config(latent_layers=2, z_dim=20, upper_z_dim=(1,), prior="flow")
    # Burda et al.'s layers between z_1 (100) and z_2 (50): two of 100 tanh units each way.
    vae = VAE.from_config(Config(latent_layers=2, z_dim=100, data_shape=(28, 28)))
    for layer in (*vae.upward, *vae.downward):
        widths = [m.out_features for m in layer.body.modules() if isinstance(m, torch.nn.Linear)]
        assert widths == [100, 100]
    # A one-layer run's config.json has no trace of layers, as before they existed.
    assert "latent_layers" not in Config(data_shape=(28, 28)).to_dict()["model"]


def test_two_layer_run_trains_saves_evaluates_and_draws_from_the_cli(fmnist_npz, tmp_path):
    run = tmp_path / "run"
    runner = CliRunner()
    fitted = runner.invoke(main, ["fit", "--dataset", str(fmnist_npz), "--latent-layers", "2",
                                  "--z-dim", "16", "--upper-z-dim", "6", "--hidden", "128",
                                  "--elbo", "iwae", "--particles", "3", "--epochs", "3",
                                  "--out", str(run), "--quiet"])
    assert fitted.exit_code == 0, fitted.output
    body = json.loads((run / "config.json").read_text())["model"]
    assert body["latent_layers"] == 2 and body["upper_z_dim"] == [6]
    metrics = (run / "metrics.csv").read_text().splitlines()
    first, last = (float(r.split(",")[3]) for r in (metrics[1], metrics[-1]))
    assert first - last > 5  # the test -ELBO falls as it trains

    vae = pyro_vae.load(run)
    assert isinstance(vae, HierarchicalVAE) and vae.layer_dims == (16, 6)
    result = evaluate_run(run, limit=200, iwae_samples=50, progress=False)
    assert result["layer_dims"] == [16, 6]
    assert result["nll"] < result["neg_elbo"]
    assert result["kl"] == pytest.approx(sum(result["kl_per_layer"]), abs=1e-3)
    assert "kl_terms" not in result  # Chen et al.'s split needs one factorised prior
    shown = runner.invoke(main, ["evaluate", str(run), "--limit", "100", "--iwae-samples", "20"])
    assert shown.exit_code == 0, shown.output
    assert "per layer, bottom up:" in shown.output and "KL per layer" in shown.output
    for mode in ("prior", "traverse", "interpolate"):
        out = tmp_path / f"{mode}.png"
        drawn = runner.invoke(main, ["sample", str(run), "--mode", mode, "--out", str(out)])
        assert drawn.exit_code == 0 and out.stat().st_size > 1000, drawn.output
    codes = tmp_path / "codes.npz"
    encoded = runner.invoke(main, ["encode", str(run), "--data", str(fmnist_npz), "--limit", "50",
                                   "--out", str(codes)])
    assert encoded.exit_code == 0 and "z_dim 16 (and z2: 6)" in encoded.output, encoded.output
    arrays = np.load(codes)
    assert {k: arrays[k].shape for k in ("loc", "scale", "loc_z2", "scale_z2")} == {
        "loc": (50, 16), "scale": (50, 16), "loc_z2": (50, 6), "scale_z2": (50, 6)}
    from pyro_vae.io.checkpoint import read_config
    from pyro_vae.io.data import eval_data

    loc, scale = vae.encode(eval_data(read_config(run), str(fmnist_npz), 50).x)  # q(z_1|x)
    np.testing.assert_allclose(arrays["loc"], loc.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(arrays["scale"], scale.detach().numpy(), atol=1e-6)
    upper = vae.upward[0](torch.from_numpy(arrays["loc"]))  # q(z_2|z_1) at z_1's mean code
    np.testing.assert_allclose(arrays["loc_z2"], upper.mean.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(arrays["scale_z2"], upper.stddev.detach().numpy(), atol=1e-5)
    assert 0 < arrays["scale_z2"].min() and len(np.unique(arrays["loc_z2"][:, 0])) == 50
    refused = runner.invoke(main, ["fit", "--latent-layers", "2", "--elbo", "tc",
                                   "--out", str(tmp_path / "no")])
    assert refused.exit_code != 0 and "one latent site" in refused.output
    assert not (tmp_path / "no").exists()
    assert math.isfinite(result["nll"])


def test_encode_layers_chains_the_guide_up_every_layer():
    vae = VAE.from_config(Config(latent_layers=3, z_dim=8, hidden=(16,), data_shape=(28, 28)))
    x = torch.rand(5, 784)
    codes = vae.encode_layers(x)
    assert [(k, v[0].shape[1]) for k, v in codes.items()] == [("z", 8), ("z2", 4), ("z3", 2)]
    torch.testing.assert_close(codes["z"][0], vae.encode(x)[0])
    with torch.no_grad():
        q2 = vae.upward[0](vae.encode(x)[0])
        q3 = vae.upward[1](q2.mean)
    torch.testing.assert_close(codes["z3"][0], q3.mean)
    torch.testing.assert_close(codes["z3"][1], q3.stddev)


def test_an_iaf_guide_under_two_layers_evaluates_with_the_kl_split_by_layer(fmnist_small):
    pyro.set_rng_seed(0)
    vae = VAE.from_config(Config(latent_layers=2, guide="iaf", z_dim=8, hidden=(32,),
                                 data_shape=(28, 28)))
    x = binarize_fixed(fmnist_small.test[:64])
    result = evaluate(vae, x, iwae_samples=20, progress=False)
    assert result["layer_dims"] == [8, 4]
    assert len(result["active_units_per_layer"]) == 2
    assert sum(result["kl_per_layer"]) == pytest.approx(result["kl"], rel=1e-3, abs=1e-3)
