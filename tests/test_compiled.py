"""The compiled training objective (Pyro's JitTrace_ELBO) against the uncompiled one."""

import pyro
import pytest
import torch

from pyro_vae import VAE, Config, fit
from pyro_vae.errors import ConfigError
from pyro_vae.parts.objectives import InductorTrace_ELBO, build_elbo, jit_unsupported
from pyro_vae.training.optim import JointOptim
from pyro_vae.training.step import TrainingStep, regularisers

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


def _loss_and_grads(vae, elbo, x, seed, extra):
    """What an SVI step takes from the objective: the loss and the parameters' gradients."""
    pyro.set_rng_seed(seed)
    for p in vae.parameters():
        p.grad = None
    args = x if isinstance(x, tuple) else (x,)  # (x) or (x, KL weight, labels)
    loss = elbo.loss_and_grads(vae.model_fn, vae.guide_fn, *args, num=args[0].shape[0], **extra)
    return torch.tensor(loss), [None if p.grad is None else p.grad.clone()
                                for p in vae.parameters()]


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")
@pytest.mark.parametrize("options", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items())
                         or "default")
def test_compiled_objective_gives_pyros_loss_and_gradients(options, fmnist_small):
    # Same seed, same noise: on the CPU the traced torch.normal(0, 1) that replaces .normal_()
    # while tracing draws the same numbers, so the two agree to rounding.
    pyro.set_rng_seed(0)
    hidden = {} if options.get("arch") == "linear" else {"hidden": (32,)}
    config = Config(z_dim=4, data_shape=(28, 28), **hidden, **options)
    vae = VAE.from_config(config).train()
    extra = regularisers(config)  # the training-only arguments: the denoising corruption
    x = fmnist_small.train[:64]
    if config.binarization:
        x = x.bernoulli()
    eager, compiled = build_elbo(config), build_elbo(config, jit=True)
    # One bound method each: Pyro keys its traces on the ids of the model and guide.
    vae.model_fn, vae.guide_fn = vae.model, vae.guide
    # As TrainingStep runs it: the recorded graph interpreted, differentiated by autograd.
    with pyro.validation_enabled(False), torch.jit.optimized_execution(False):
        compiled.differentiable_loss(vae.model_fn, vae.guide_fn, x, num=64, **extra)  # records
        _assert_same_losses_and_gradients(vae, eager, compiled, x, extra, tolerance=1e-4)


def _assert_same_losses_and_gradients(vae, eager, compiled, x, extra, tolerance):
    """Both objectives from seeds 1 and 2: the same loss to rounding, every parameter's
    gradient to ``tolerance`` (relative and absolute), the same parameters reached."""
    for seed in (1, 2):
        loss, grads = _loss_and_grads(vae, eager, x, seed, extra)
        loss_c, grads_c = _loss_and_grads(vae, compiled, x, seed, extra)
        torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-3)
        for (name, _), g, g_c in zip(vae.named_parameters(), grads, grads_c):
            assert (g is None) == (g_c is None), name
            if g is not None:
                torch.testing.assert_close(g_c, g, rtol=tolerance, atol=tolerance, msg=name)


def test_tracing_uses_none_of_the_random_stream(fmnist_small):
    pyro.set_rng_seed(0)
    config = Config(z_dim=4, hidden=(32,), data_shape=(28, 28))
    vae = VAE.from_config(config).train()
    step = TrainingStep(vae, JointOptim(torch.optim.Adam, vae, {"lr": 1e-3}), config)
    x = fmnist_small.train[:50].bernoulli()
    before = torch.get_rng_state()
    step._trace((x,))
    assert torch.equal(torch.get_rng_state(), before)
    assert (50, 1) in step._traced


def test_every_batch_size_gets_its_own_trace(fmnist_small):
    # 2000 images in batches of 300: six full batches and one of 200; a trace recorded for 300
    # would break (or silently mis-score) the last one.
    runs = [fit(data=fmnist_small, epochs=2, batch_size=300, z_dim=4, hidden=(32,),
                progress=False, jit=jit) for jit in (False, True)]
    _assert_same_run(*runs)


def _assert_same_run(eager, compiled):
    """The same weights to the last bit, hence the same test −ELBO; the training losses agree
    to float32 rounding (the compiled objective sums the sites in float32, Pyro's eager one in
    Python floats, so the fourth decimal of an epoch's mean can differ)."""
    for (name, p), q in zip(eager.model.named_parameters(), compiled.model.parameters()):
        assert torch.equal(p, q), name
    for a, b in zip(eager.metrics, compiled.metrics):
        assert a["test_neg_elbo"] == b["test_neg_elbo"]
        assert a["train_neg_elbo"] == pytest.approx(b["train_neg_elbo"], abs=1e-3)


@pytest.mark.parametrize("options, reason", [
    ({"elbo": "iwae", "particles": 3}, "only --elbo trace is compiled"),
    ({"elbo": "meanfield"}, "only --elbo trace is compiled"),
    ({"contractive": 0.1}, "cannot be traced"),
])
def test_runs_that_cannot_be_compiled_train_uncompiled_or_are_refused(
        options, reason, fmnist_small):
    config = Config(z_dim=4, hidden=(32,), data_shape=(28, 28), **options)
    assert reason in jit_unsupported(config)
    vae = VAE.from_config(config)
    assert TrainingStep(vae, JointOptim(torch.optim.Adam, vae, {"lr": 1e-3}), config).compiled \
        is None
    # The environment decides what compiles, so an explicit --jit is refused when training
    # starts, not when a stored run is read.
    with pytest.raises(ConfigError, match="--jit is not possible here: .*; drop --jit"):
        fit(config.replace(jit=True, limit=256), data=fmnist_small, progress=False)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:FutureWarning")
@pytest.mark.parametrize("options", [{"kl_warmup": 2}, {"beta": 0.5},
                                     {"kl_warmup": 1, "beta": 2.0}])
def test_kl_schedules_run_compiled_with_the_uncompiled_losses(options, fmnist_small):
    # The KL weight is an argument of the model and guide (a 0-d tensor the trace takes as an
    # input), so warm-up compiles; on the CPU the losses are those of the uncompiled run.
    config = Config(z_dim=4, hidden=(32,), data_shape=(28, 28), **options)
    assert jit_unsupported(config) is None
    runs = [fit(data=fmnist_small, epochs=3, batch_size=300, z_dim=4, hidden=(32,),
                progress=False, jit=jit, **options) for jit in (False, True)]
    _assert_same_run(*runs)


def test_jit_switch():
    config = Config(z_dim=4, hidden=(32,), data_shape=(28, 28))
    vae = VAE.from_config(config)
    optim = JointOptim(torch.optim.Adam, vae, {"lr": 1e-3})
    assert TrainingStep(vae, optim, config).compiled is not None  # automatic: compiled
    assert TrainingStep(vae, optim, config.replace(jit=False)).compiled is None
    with pytest.raises(ConfigError, match="jit must be true, false or null"):
        Config(jit="yes")


# --compiler inductor: the ELBO recorded by make_fx and compiled by torch.compile.
INDUCTOR_CASES = [{}, {"particles": 3}, {"prior": "vamp", "prior_components": 3},
                  {"guide": "iaf", "likelihood": "categorical"}, {"corrupt": "mask:0.3"},
                  {"contractive": 0.1}, {"contractive": 0.1, "condition": "label"}]


@pytest.mark.parametrize("options", INDUCTOR_CASES,
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_inductor_objective_gives_pyros_loss_and_gradients(options, fmnist_small):
    # Same seed, same draws (Inductor's fallback_random: torch's generator): Trace_ELBO's
    # loss to float rounding, its gradients to float tolerance (the kernels sum in another
    # order), and the recording takes nothing from the random stream.
    pyro.set_rng_seed(0)
    classes = {"num_classes": 10} if "condition" in options else {}
    config = Config(z_dim=4, hidden=(32,), data_shape=(28, 28), compiler="inductor",
                    **classes, **options)
    vae = VAE.from_config(config).train()
    extra = regularisers(config)
    x = fmnist_small.train[:64]
    if config.binarization:
        x = x.bernoulli()
    if classes:  # the conditional VAE's arguments: x, the KL weight, the labels
        x = (x, torch.ones(()), fmnist_small.train_labels[:64])
    args = x if classes else (x,)
    eager, compiled = build_elbo(config), build_elbo(config, jit=True)
    assert isinstance(compiled, InductorTrace_ELBO)
    vae.model_fn, vae.guide_fn = vae.model, vae.guide
    before = torch.get_rng_state()
    compiled.differentiable_loss(vae.model_fn, vae.guide_fn, *args, num=64, **extra)  # records
    after = torch.get_rng_state()
    # Recording and compiling used a copy of the random state: the first call drew what one
    # eager loss draws, no more.
    torch.set_rng_state(before)
    eager.differentiable_loss(vae.model_fn, vae.guide_fn, *args, num=64, **extra)
    assert torch.equal(torch.get_rng_state(), after) and not torch.equal(after, before)
    _assert_same_losses_and_gradients(vae, eager, compiled, x, extra, tolerance=1e-3)
    assert len(compiled._graphs) == 1  # one graph for the one batch shape


def test_inductor_svi_with_pyros_optimiser_moves_every_parameter(fmnist_small):
    # The graph holds the parameters by reference, and each call issues their param sites,
    # so SVI with a pyro.optim optimiser (which steps the parameters it sees) trains them all.
    from pyro.infer import SVI
    from pyro.optim import Adam

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    config = Config(z_dim=4, hidden=(32,), data_shape=(28, 28), prior="vamp",
                    prior_components=3, compiler="inductor")
    vae = VAE.from_config(config)
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), InductorTrace_ELBO())
    x = fmnist_small.train[:128].bernoulli()
    losses = [svi.step(x) for _ in range(5)]
    assert [k for k, v in vae.named_parameters() if torch.equal(v, before[k])] == []
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("options", [{}, {"kl_warmup": 1}, {"contractive": 0.1}],
                         ids=["default", "kl_warmup=1", "contractive=0.1"])
def test_inductor_fit_trains_as_the_uncompiled_run(options, fmnist_small, monkeypatch):
    # Batches of 300 from 2000 images: one graph, for 300, whatever the KL weight of the
    # warm-up (an input of the graph) and with the contractive penalty's Jacobian recorded in
    # it. It runs the 5 middle steps of each epoch; the first (validated) and the last 200
    # images run uncompiled. The run ends where the uncompiled one does, to float tolerance.
    recorded, steps = [], []
    record = InductorTrace_ELBO._graph

    def counting(self, model, guide, args, kwargs):
        recorded.append(args[0].shape[0])
        graph = record(self, model, guide, args, kwargs)

        def run(*a):
            steps.append(a[0].shape[0])
            return graph(*a)

        return run

    monkeypatch.setattr(InductorTrace_ELBO, "_graph", counting)
    runs = [fit(data=fmnist_small, epochs=2, batch_size=300, z_dim=4, hidden=(32,),
                progress=False, jit=jit, compiler="inductor", **options)
            for jit in (False, True)]
    assert recorded == [300]
    assert steps == [300] * 11  # the recording's own call, then 2 epochs of 5 steps
    # Adam turns float-rounding differences of near-zero gradients into whole steps, so the
    # weights agree to a few steps' size (lr 1e-3 × 14 steps), not to rounding.
    for (name, p), q in zip(runs[0].model.named_parameters(), runs[1].model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-2, atol=2e-3, msg=name)
    for a, b in zip(*(r.metrics for r in runs)):
        assert b["test_neg_elbo"] == pytest.approx(a["test_neg_elbo"], abs=0.01)


@pytest.mark.parametrize("options, reason", [
    ({"elbo": "iwae", "particles": 3}, "compiles Trace_ELBO"),
    ({"free_bits": 0.1}, "--free-bits"),
    ({"precision": "bf16"}, "bf16 is not compiled"),
])
def test_inductor_says_what_it_cannot_compile(options, reason):
    config = Config(z_dim=4, hidden=(32,), data_shape=(28, 28), compiler="inductor", **options)
    assert reason in jit_unsupported(config)
    with pytest.raises(ConfigError, match="cannot be compiled"):
        build_elbo(config, jit=True)



def test_unknown_compiler_is_refused():
    with pytest.raises(ConfigError, match="--compiler must be one of torchscript, inductor"):
        Config(compiler="tvm")
