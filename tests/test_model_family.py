"""One real SVI step for each allowed prior × likelihood × guide × objective; others refused."""

import itertools
import math

import pyro
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_vae import VAE, Config, ConfigError
from pyro_vae.registry import NETWORKS as ARCHS, OBJECTIVES as ELBOS
from pyro_vae.io.data import binarize_fixed
from pyro_vae.registry import FAMILIES as GUIDES
from pyro_vae.registry import LIKELIHOODS
from pyro_vae.parts.objectives import build_elbo
from pyro_vae.registry import PRIORS

PARTICLES = {"trace": 1, "meanfield": 2, "iwae": 3, "iwae-dreg": 3, "tc": 1}


def _config(prior, likelihood, guide, elbo, **extra):
    if prior in ("mog", "vamp"):
        extra["prior_components"] = 3
    if prior == "flow" or guide == "iaf":
        extra["flows"] = 1
    particles = 1 if guide == "delta" else PARTICLES[elbo]
    if extra.get("arch") != "linear":  # a linear network has no hidden layers
        extra["hidden"] = (16,)
    return Config(
        prior=prior, likelihood=likelihood, guide=guide, elbo=elbo, particles=particles,
        z_dim=2, data_shape=(28, 28), **extra,
    )


def _combinations():
    allowed, refused = [], []
    for combo in itertools.product(sorted(PRIORS), sorted(LIKELIHOODS), sorted(GUIDES), ELBOS):
        try:
            _config(*combo)
        except ConfigError as err:
            refused.append((combo, str(err)))
        else:
            allowed.append(combo)
    return allowed, refused


ALLOWED, REFUSED = _combinations()


@pytest.fixture(scope="module")
def batches(fmnist_small):
    grey = fmnist_small.train[:16]
    return {"binary": binarize_fixed(grey), "grey": grey, "levels": (grey * 255).round()}


def _one_step_moves_everything(config, x):
    pyro.set_rng_seed(0)
    vae = VAE.from_config(config)
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), build_elbo(config))
    loss = svi.step(x)
    assert math.isfinite(loss)
    unchanged = [k for k, v in vae.named_parameters() if torch.equal(v, before[k])]
    assert unchanged == [], unchanged


@pytest.mark.parametrize("prior, likelihood, guide, elbo", ALLOWED,
                         ids=["-".join(c) for c in ALLOWED])
def test_svi_step_on_fashion_mnist(prior, likelihood, guide, elbo, batches):
    kind = "binary" if likelihood == "bernoulli" else (
        "levels" if LIKELIHOODS[likelihood].counts else "grey")  # counts: levels 0-255
    x = batches[kind]
    _one_step_moves_everything(_config(prior, likelihood, guide, elbo), x)


def test_the_refused_combinations_are_exactly_the_senseless_ones():
    reasons = {}
    for (prior, likelihood, guide, elbo), message in REFUSED:
        if elbo in ("iwae", "iwae-dreg") and guide == "delta":
            reasons.setdefault(f"{elbo}-delta", set()).add(message)
        elif elbo == "iwae-dreg" and guide == "iaf":  # a flow's parameters cannot be stopped
            reasons.setdefault("dreg-iaf", set()).add(message)
        elif elbo == "tc" and guide in ("iaf", "delta"):  # no per-dimension q(z_d|x)
            reasons.setdefault(f"tc-{guide}", set()).add(message)
        elif elbo == "tc" and prior in ("mog", "vamp", "flow"):  # no per-dimension p(z_d)
            reasons.setdefault("tc-prior", set()).add(message)
        elif prior == "none":
            assert guide != "delta"
            reasons.setdefault("flat-prior", set()).add(message)
        elif prior == "vamp":
            assert guide != "normal"
            reasons.setdefault("vamp", set()).add(message)
        elif prior in ("mog", "flow") and guide == "delta":
            reasons.setdefault(f"delta-{prior}", set()).add(message)
        else:
            pytest.fail(f"unexpected refusal of {(prior, likelihood, guide, elbo)}: {message}")
    assert set(reasons) == {"iwae-delta", "iwae-dreg-delta", "dreg-iaf", "flat-prior", "vamp",
                            "delta-mog", "delta-flow", "tc-prior", "tc-iaf", "tc-delta"}
    assert all(len(m) == 1 for m in reasons.values()), "one clear reason per kind of refusal"
    assert len(ALLOWED) == 500  # 50 for each of the 10 likelihoods


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(elbo="iwae", particles=2, beta=0.5), "--beta and --kl-warmup"),
        (dict(elbo="iwae", particles=2, kl_warmup=2), "--beta and --kl-warmup"),
        (dict(guide="iaf", z_dim=1), "need --z-dim ≥ 2"),
        (dict(prior="flow", z_dim=1), "need --z-dim ≥ 2"),
        (dict(arch="conv", data_shape=(3, 30)), "at least 4×4"),
        (dict(arch="conv", data_shape=(784,)), "needs images"),
        (dict(corrupt="gaussian"), "--corrupt"),
        (dict(corrupt="mask:1.5"), "--corrupt"),
        (dict(corrupt="salt:0.1"), "--corrupt"),
        (dict(contractive=-1.0), "--contractive"),
        (dict(particles=0), "--particles"),
        (dict(clip_norm=0.0), "--clip-norm"),
        (dict(beta=0.0), "--beta"),
        (dict(prior="mog", prior_components=0), "--prior-components"),
        (dict(likelihood="categorical", binarize="static"), "bernoulli likelihood only"),
        (dict(elbo="iwae"), "--particles K ≥ 2"),
        (dict(guide="delta", particles=3), "repeats work"),
        (dict(prior_df=5.0), "--prior-df applies to --prior studentt only"),
        (dict(prior="laplace", prior_components=4), "--prior-components applies"),
        (dict(obs_scale=0.2), "--obs-scale applies to --likelihood normal or laplace"),
        (dict(flows=3), "--flows applies to --guide iaf or --prior flow"),
    ],
)
def test_other_senseless_options_are_refused(options, message):
    options.setdefault("data_shape", (28, 28))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Config(**options)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "categorical", "normal-learned"])
def test_every_architecture_trains(arch, likelihood, batches):
    x = batches["binary" if likelihood == "bernoulli" else "grey"]
    config = _config("normal", likelihood, "iaf", "iwae", arch=arch)
    _one_step_moves_everything(config, x)


def test_regularisers_train_together(batches):
    config = _config("laplace", "bernoulli", "normal", "trace", corrupt="mask:0.3",
                     contractive=0.1, beta=0.5, clip_norm=5.0)
    _one_step_moves_everything(config, batches["binary"])
