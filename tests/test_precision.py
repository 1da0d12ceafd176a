"""bf16 training (``--precision bf16``): Pyro's ELBO of the model and guide under
``torch.autocast``, weights, gradients and every evaluation in float32."""

import json

import pyro
import pytest
import torch

from pyro_vae import VAE, Config, fit
from pyro_vae.errors import ConfigError
from pyro_vae.parts.objectives import build_elbo, jit_unsupported
from pyro_vae.training.optim import JointOptim
from pyro_vae.training.step import TrainingStep, autocast

from conftest import cli

CASES = [
    {},
    {"prior": "laplace", "likelihood": "continuous-bernoulli"},
    {"prior": "mog", "prior_components": 3, "likelihood": "normal-learned"},
    {"prior": "vamp", "prior_components": 3},
    {"prior": "flow", "likelihood": "laplace"},
    {"guide": "iaf", "likelihood": "categorical"},
    {"arch": "conv"},
    {"particles": 3, "elbo": "iwae"},
]


def _loss_and_grads(vae, config, x, bf16: bool):
    """Pyro's −ELBO of the batch (nats per image) and the flattened gradient, from seed 1."""
    pyro.set_rng_seed(1)
    for p in vae.parameters():
        p.grad = None
    with autocast(bf16, x.device):
        loss = build_elbo(config).loss_and_grads(vae.model, vae.guide, x)
    grads = torch.cat([p.grad.flatten() for p in vae.parameters() if p.grad is not None])
    return loss / x.shape[0], grads, [p.grad for p in vae.parameters()]


@pytest.mark.parametrize("options", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
                         or "default")
def test_bf16_scores_the_float32_elbo_to_a_tenth_of_a_nat(options, fmnist_small):
    # Same weights, same seed: the bar for bf16 is the float32 loss within 0.1 nats
    # per image; the gradient must point the same way, and stay float32 for the optimiser.
    pyro.set_rng_seed(0)
    config = Config(data_shape=(28, 28), **options)
    vae = VAE.from_config(config).train()
    x = fmnist_small.train[:128]
    if config.binarization:
        x = x.bernoulli()
    loss32, g32, _ = _loss_and_grads(vae, config, x, bf16=False)
    loss16, g16, grads = _loss_and_grads(vae, config, x, bf16=True)
    assert abs(loss16 - loss32) < 0.1, (loss16, loss32)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99
    assert all(g is None or g.dtype == torch.float32 for g in grads)


def test_bf16_steps_move_every_parameter_and_keep_float32_weights(fmnist_small):
    pyro.set_rng_seed(0)
    config = Config(data_shape=(28, 28), hidden=(64,), prior="vamp", prior_components=3,
                    likelihood="normal-learned", precision="bf16")
    vae = VAE.from_config(config).train()
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    step = TrainingStep(vae, JointOptim(torch.optim.Adam, vae, {"lr": 1e-3}), config)
    for batch in fmnist_small.train[:640].split(128):
        step(batch)
    assert all(p.dtype == torch.float32 for p in vae.parameters())
    unchanged = [k for k, v in vae.named_parameters() if torch.equal(v, before[k])]
    assert unchanged == []


def test_bf16_training_reaches_the_float32_test_elbo_on_fashion_mnist(fmnist_small):
    runs = {p: fit(data=fmnist_small, epochs=3, precision=p, progress=False)
            for p in ("float32", "bf16")}
    test32, test16 = (runs[p].metrics[-1]["test_neg_elbo"] for p in ("float32", "bf16"))
    assert test16 < runs["bf16"].metrics[0]["test_neg_elbo"] - 10
    assert abs(test16 - test32) < 1.0, (test16, test32)


def test_bf16_trains_uncompiled_and_an_explicit_jit_is_refused(fmnist_small):
    config = Config(data_shape=(28, 28), hidden=(32,), precision="bf16")
    assert "torch.autocast" in jit_unsupported(config)
    vae = VAE.from_config(config)
    assert TrainingStep(vae, JointOptim(torch.optim.Adam, vae, {"lr": 1e-3}), config).compiled \
        is None
    with pytest.raises(ConfigError, match="--jit is not possible here: --precision bf16"):
        fit(config.replace(jit=True), data=fmnist_small, progress=False)


def test_cli_precision_is_stored_and_checked(fmnist_npz, tmp_path):
    out = tmp_path / "run"
    result = cli("fit", "--dataset", fmnist_npz, "--epochs", "1", "--hidden", "32",
                 "--precision", "bf16", "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["training"]["precision"] == "bf16"
    bad = cli("fit", "--dataset", fmnist_npz, "--precision", "fp16", "--out", tmp_path / "b")
    assert bad.exit_code == 2 and "'fp16' is not one of 'float32', 'bf16'" in bad.output
    assert not (tmp_path / "b").exists()
