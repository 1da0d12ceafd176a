"""A model of the user's own: nn.Module encoder and decoder, a pyro.distributions prior, trained
by pyro_vae.fit with everything fit has, resumed, reloaded into the model built again, and
evaluated."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import VAE, CheckpointError, ConfigError, fit, load
from pyro_vae.evaluation.evaluate import evaluate, evaluate_run
from pyro_vae.io.checkpoint import load_training_state


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 64), nn.Tanh(), nn.Linear(64, 8))

    def forward(self, x):
        loc, log_scale = self.net(x).chunk(2, dim=-1)
        return loc, log_scale.exp()


class DistributionEncoder(Encoder):
    def forward(self, x):
        return dist.Normal(*super().forward(x)).to_event(1)


class LearnedPrior(nn.Module):
    """A prior module with a parameter: N(μ, I), μ learned."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(4))

    def forward(self):
        return dist.Normal(self.loc, 1.0).to_event(1)


def build(encoder=Encoder, prior=None):
    pyro.set_rng_seed(0)
    decoder = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 784))
    prior = prior if prior is not None else dist.Normal(torch.zeros(4), 1.0).to_event(1)
    return VAE(encoder(), decoder, prior=prior, likelihood="bernoulli")


OPTIONS = dict(epochs=2, batch_size=100, progress=False)


def test_user_model_trains_every_parameter_resumes_reloads_and_evaluates(fmnist_small, tmp_path):
    vae = build()
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    _, rows = fit(vae, data=fmnist_small, out=tmp_path / "run", **OPTIONS)
    assert [k for k, v in vae.named_parameters() if torch.equal(v, before[k])] == []
    assert rows[-1]["test_neg_elbo"] < rows[0]["test_neg_elbo"] < 550
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["model"] == {"z_dim": 4, "data_shape": [28, 28], "user_built": True,
                               "standardize": False, "likelihood": {"name": "bernoulli"}}
    for name in ("model.safetensors", "metrics.csv", "samples.png", "reconstructions.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0

    # Resume: one epoch, then a second from the saved state, equals two in one go.
    fit(build(), data=fmnist_small, out=tmp_path / "half", **{**OPTIONS, "epochs": 1})
    # Data given in memory are given again to resume.
    _, resumed = fit(build(), resume=tmp_path / "half", data=fmnist_small, epochs=2,
                     progress=False)
    for a, b in zip(resumed, rows):
        assert {k: v for k, v in a.items() if k != "train_seconds"} == {
            k: v for k, v in b.items() if k != "train_seconds"}
    assert load_training_state(tmp_path / "half")["progress"]["epoch"] == 2

    loaded = load(tmp_path / "run", model=build())
    x = fmnist_small.test[:50].bernoulli(generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.reconstruct(x), vae.reconstruct(x))
    pyro.set_rng_seed(0)
    result = evaluate(loaded, x, iwae_samples=50, progress=False)
    assert result["nll"] <= result["neg_elbo"] + 1e-3 and math.isfinite(result["nll"])
    figures = evaluate_run(tmp_path / "run", "fashion-mnist", limit=50, iwae_samples=20,
                           progress=False, model=build())
    assert figures["num_images"] == 50 and figures["nll"] < 550


def test_encoder_returning_a_distribution_and_a_learned_prior_module(fmnist_small):
    vae = build(DistributionEncoder, LearnedPrior())
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    _, rows = fit(vae, data=fmnist_small, **OPTIONS)
    assert "prior.module.loc" in before  # the prior's parameter reaches the optimiser
    assert [k for k, v in vae.named_parameters() if torch.equal(v, before[k])] == []
    assert rows[-1]["test_neg_elbo"] < 550


def test_user_model_refusals(fmnist_small, tmp_path):
    with pytest.raises(ConfigError, match="describes a built-in model"):
        fit(build(), data=fmnist_small, prior="laplace", **OPTIONS)
    with pytest.raises(ConfigError, match="event shape"):
        VAE(Encoder(), nn.Linear(4, 784), prior=dist.Normal(torch.zeros(4), 1.0))
    fit(build(), data=fmnist_small, out=tmp_path / "run", **{**OPTIONS, "epochs": 1})
    with pytest.raises(CheckpointError, match="user-built model"):
        load(tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not match"):
        load(tmp_path / "run", model=VAE(Encoder(), nn.Linear(4, 784 * 2),
                                         prior=dist.Normal(torch.zeros(4), 1.0).to_event(1)))
    with pytest.raises(ConfigError, match="pass the same VAE"):
        fit(resume=tmp_path / "run", epochs=2, progress=False)
