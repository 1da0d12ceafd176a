"""The compiled training objective (Pyro's JitTrace_ELBO) against the uncompiled one."""

import pyro
import pytest
import torch

from pyro_vae import VAE, Config, fit
from pyro_vae.errors import ConfigError
from pyro_vae.objectives import build_elbo, jit_unsupported
from pyro_vae.optim import JointOptim
from pyro_vae.train import TrainingStep

CASES = [
    {},
    {"particles": 3},
    {"prior": "laplace", "likelihood": "continuous-bernoulli"},
    {"prior": "studentt", "likelihood": "normal"},
    {"prior": "mog", "prior_components": 3, "likelihood": "normal-learned"},
    {"prior": "vamp", "prior_components": 3},
    {"prior": "flow", "likelihood": "laplace"},
    {"guide": "iaf", "likelihood": "categorical"},
    {"guide": "delta", "prior": "laplace"},
    {"arch": "conv", "beta": 2.0},
    {"corrupt": "mask:0.3"},
    {"corrupt": "gaussian:0.2", "arch": "linear", "likelihood": "normal"},
]


def _loss_and_grads(vae, elbo, x, seed):
    """What an SVI step takes from the objective: the loss and the parameters' gradients."""
    pyro.set_rng_seed(seed)
    for p in vae.parameters():
        p.grad = None
    loss = elbo.loss_and_grads(vae.model_fn, vae.guide_fn, x, num=x.shape[0])
    return torch.tensor(loss), [None if p.grad is None else p.grad.clone()
                                for p in vae.parameters()]


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")
@pytest.mark.parametrize("options", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
                         or "default")
def test_compiled_objective_gives_pyros_loss_and_gradients(options, fmnist_small):
    # Same seed, same noise: on the CPU the traced torch.normal(0, 1) that replaces .normal_()
    # while tracing draws the same numbers, so the two agree to rounding.
    pyro.set_rng_seed(0)
    config = Config(z_dim=4, hidden=(32,), data_shape=(28, 28), **options)
    vae = VAE.from_config(config).train()
    x = fmnist_small.train[:64]
    if config.binarization:
        x = x.bernoulli()
    eager, compiled = build_elbo(config), build_elbo(config, jit=True)
    # One bound method each: Pyro keys its traces on the ids of the model and guide.
    vae.model_fn, vae.guide_fn = vae.model, vae.guide
    # As TrainingStep runs it: the recorded graph interpreted, differentiated by autograd.
    with pyro.validation_enabled(False), torch.jit.optimized_execution(False):
        compiled.differentiable_loss(vae.model_fn, vae.guide_fn, x, num=64)  # records the trace
        for seed in (1, 2):
            loss, grads = _loss_and_grads(vae, eager, x, seed)
            loss_jit, grads_jit = _loss_and_grads(vae, compiled, x, seed)
            torch.testing.assert_close(loss_jit, loss, rtol=1e-5, atol=1e-3)
            for (name, _), g, g_jit in zip(vae.named_parameters(), grads, grads_jit):
                assert (g is None) == (g_jit is None), name
                if g is not None:
                    torch.testing.assert_close(g_jit, g, rtol=1e-4, atol=1e-4, msg=name)


def test_tracing_uses_none_of_the_random_stream(fmnist_small):
    pyro.set_rng_seed(0)
    config = Config(z_dim=4, hidden=(32,), data_shape=(28, 28))
    vae = VAE.from_config(config).train()
    step = TrainingStep(vae, JointOptim(torch.optim.Adam, vae, {"lr": 1e-3}), config)
    x = fmnist_small.train[:50].bernoulli()
    before = torch.get_rng_state()
    step._trace(x)
    assert torch.equal(torch.get_rng_state(), before)
    assert 50 in step._traced_sizes


def test_every_batch_size_gets_its_own_trace(fmnist_small):
    # 2000 images in batches of 300: six full batches and one of 200; a trace recorded for 300
    # would break (or silently mis-score) the last one.
    runs = [fit(data=fmnist_small, epochs=2, batch_size=300, z_dim=4, hidden=(32,),
                progress=False, jit=jit).metrics for jit in (False, True)]
    for row in runs[0]:
        row.pop("train_seconds")
    for row in runs[1]:
        row.pop("train_seconds")
    assert runs[0] == runs[1]


@pytest.mark.parametrize("options, reason", [
    ({"elbo": "iwae", "particles": 3}, "only --elbo trace is compiled"),
    ({"elbo": "meanfield"}, "only --elbo trace is compiled"),
    ({"kl_warmup": 2}, "KL weight"),
    ({"contractive": 0.1}, "cannot be traced"),
])
def test_runs_that_cannot_be_compiled_train_uncompiled_or_are_refused(options, reason):
    config = Config(z_dim=4, hidden=(32,), data_shape=(28, 28), **options)
    assert reason in jit_unsupported(config)
    vae = VAE.from_config(config)
    assert TrainingStep(vae, JointOptim(torch.optim.Adam, vae, {"lr": 1e-3}), config).compiled \
        is None
    with pytest.raises(ConfigError, match="--jit is not possible here: .*; drop --jit"):
        config.replace(jit=True)


def test_jit_switch():
    config = Config(z_dim=4, hidden=(32,), data_shape=(28, 28))
    vae = VAE.from_config(config)
    optim = JointOptim(torch.optim.Adam, vae, {"lr": 1e-3})
    assert TrainingStep(vae, optim, config).compiled is not None  # automatic: compiled
    assert TrainingStep(vae, optim, config.replace(jit=False)).compiled is None
    with pytest.raises(ConfigError, match="jit must be true, false or null"):
        Config(jit="yes")
