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
from pyro_vae.training.step import TrainingStep, autocast, in_bf16, step_arguments

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
    """Pyro's −ELBO of the batch (nats per image) and the flattened gradient, from seed 1,
    with the model and guide run as TrainingStep runs them."""
    pyro.set_rng_seed(1)
    for p in vae.parameters():
        p.grad = None
    model, guide = (in_bf16(vae.model), in_bf16(vae.guide)) if bf16 else (vae.model, vae.guide)
    loss = build_elbo(config).loss_and_grads(model, guide, x)
    return loss / x.shape[0], torch.cat([p.grad.flatten() for p in vae.parameters()
                                         if p.grad is not None])


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
    loss32, g32 = _loss_and_grads(vae, config, x, bf16=False)
    loss16, g16 = _loss_and_grads(vae, config, x, bf16=True)
    assert loss16 != loss32  # the matrix products did run in bf16
    assert abs(loss16 - loss32) < 0.1, (loss16, loss32)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99


def test_bf16_steps_move_every_parameter_and_keep_float32_weights(fmnist_small):
    pyro.set_rng_seed(0)
    config = Config(data_shape=(28, 28), hidden=(64,), prior="vamp", prior_components=3,
                    likelihood="normal-learned", precision="bf16")
    vae = VAE.from_config(config).train()
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    step = TrainingStep(vae, JointOptim(torch.optim.Adam, vae, {"lr": 1e-3}), config)
    seen = []  # the dtype every module computes in, and hands on
    hooks = [m.register_forward_pre_hook(lambda m, i: seen.append(torch.is_autocast_enabled(
        "cpu"))) for m in vae.modules()] + [m.register_forward_hook(
            lambda m, i, out: seen.append(out.dtype) if torch.is_tensor(out) else None)
        for m in vae.modules()]
    global_hooks = len(torch.nn.modules.module._global_forward_hooks)
    for batch in fmnist_small.train[:640].split(128):
        step(batch)
    for hook in hooks:
        hook.remove()
    assert True in seen and False not in seen  # every module ran under autocast
    assert torch.bfloat16 not in seen and torch.float32 in seen  # and handed on float32
    assert not torch.is_autocast_enabled("cpu")
    assert len(torch.nn.modules.module._global_forward_hooks) == global_hooks
    assert all(p.dtype == torch.float32 for p in vae.parameters())
    unchanged = [k for k, v in vae.named_parameters() if torch.equal(v, before[k])]
    assert unchanged == []


def test_bf16_training_reaches_the_float32_test_elbo_on_fashion_mnist(fmnist_small):
    runs = {p: fit(data=fmnist_small, epochs=3, precision=p, progress=False)
            for p in ("float32", "bf16")}
    test32, test16 = (runs[p].metrics[-1]["test_neg_elbo"] for p in ("float32", "bf16"))
    assert test16 < runs["bf16"].metrics[0]["test_neg_elbo"] - 10
    assert abs(test16 - test32) < 1.0, (test16, test32)


def test_autocast_context_leaves_nothing_behind_when_a_step_fails():
    before = len(torch.nn.modules.module._global_forward_hooks)
    with pytest.raises(RuntimeError, match="diverged"):
        with autocast(True, torch.device("cpu")):
            assert torch.is_autocast_enabled("cpu")
            out = torch.nn.Linear(3, 2)(torch.ones(1, 3))
            assert out.dtype == torch.float32  # cast back from bf16
            raise RuntimeError("diverged")
    assert not torch.is_autocast_enabled("cpu")
    assert len(torch.nn.modules.module._global_forward_hooks) == before
    assert torch.nn.Linear(3, 2)(torch.ones(1, 3)).dtype == torch.float32


def test_bf16_trains_uncompiled_and_an_explicit_jit_is_refused(fmnist_small):
    config = Config(data_shape=(28, 28), hidden=(32,), precision="bf16")
    assert "torch.autocast" in jit_unsupported(config)
    vae = VAE.from_config(config)
    assert TrainingStep(vae, JointOptim(torch.optim.Adam, vae, {"lr": 1e-3}), config).compiled \
        is None
    with pytest.raises(ConfigError, match="--jit is not possible here: --precision bf16"):
        fit(config.replace(jit=True), data=fmnist_small, progress=False)
    with pytest.raises(ConfigError, match="--precision bf16 runs under torch.autocast"):
        TrainingStep(vae, JointOptim(torch.optim.Adam, vae, {"lr": 1e-3}),
                     config.replace(jit=True))


def test_cli_precision_is_stored_and_checked(fmnist_npz, tmp_path):
    out = tmp_path / "run"
    result = cli("fit", "--dataset", fmnist_npz, "--epochs", "1", "--hidden", "32",
                 "--precision", "bf16", "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["training"]["precision"] == "bf16"
    bad = cli("fit", "--dataset", fmnist_npz, "--precision", "fp16", "--out", tmp_path / "b")
    assert bad.exit_code == 2 and "'fp16' is not one of 'float32', 'bf16'" in bad.output
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("options, regularisers, labelled", [
    ({"contractive": 0.1}, {"contractive": 0.1}, False),
    ({"condition": "label"}, {}, True),
    ({"labelled": 100}, {"classifier_weight": 300.0}, False),  # y summed out by enumeration
    ({"labelled": 100}, {"classifier_weight": 300.0}, True),  # y observed, α·log q(y|x)
    ({"likelihood": "negbinomial"}, {}, False),
], ids=["contractive", "conditional", "m2-unlabelled", "m2-labelled", "counts"])
@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_bf16_scores_labels_counts_and_regularisers_as_float32(options, regularisers, labelled,
                                                               fmnist_small):
    # The parts that run more than the networks under autocast: the contractive penalty's
    # Jacobian (torch.func), the label one-hot fed to the networks, the enumerated class of
    # M2 and its classifier term, a count likelihood's dispersion and library size.
    pyro.set_rng_seed(0)
    labels = {"num_classes": 10} if "condition" in options or "labelled" in options else {}
    config = Config(data_shape=(28, 28), **labels, **options).for_data((28, 28), 1000)
    vae = VAE.from_config(config).train()
    x = fmnist_small.train[:128]
    x = (x * 255).round() if options.get("likelihood") else x.bernoulli()
    vae.adapt(x)
    y = fmnist_small.train_labels[:128] if labelled else None
    args = step_arguments(x, None, y)

    def run(bf16):
        pyro.set_rng_seed(1)
        for p in vae.parameters():
            p.grad = None
        model, guide = (in_bf16(vae.model), in_bf16(vae.guide)) if bf16 else (vae.model,
                                                                              vae.guide)
        loss = build_elbo(config).loss_and_grads(model, guide, *args, **regularisers)
        return loss / x.shape[0], torch.cat([p.grad.flatten() for p in vae.parameters()
                                             if p.grad is not None])

    (loss32, g32), (loss16, g16) = run(False), run(True)
    assert loss16 != loss32
    assert abs(loss16 - loss32) < 0.1, (loss16, loss32)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99
