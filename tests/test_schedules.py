"""KL schedules and free bits: cyclical annealing (Fu et al. 2019) follows its formula and
resumes exactly; free bits (Kingma et al. 2016) are the ELBO minus the per-dimension shortfall,
stop the KL gradient of dimensions below λ, and keep β > 1 from shrinking dimensions to
nothing on real data."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE, Config, fit, load
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.evaluate import evaluate
from pyro_vae.io.data import binarize_fixed
from pyro_vae.parts.objectives import FreeBitsTrace_ELBO, FreeBitsTraceMeanField_ELBO, build_elbo
from pyro_vae.training.schedules import kl_weight


def test_cyclical_schedule_rises_in_each_cycle_and_holds_beta():
    config = Config(beta=2.0, kl_schedule="cyclical:2,0.5", epochs=4, data_shape=(4,))
    weights = [kl_weight(config, e, s, 10) for e in (1, 2, 3, 4) for s in range(10)]
    # T = 40 steps, two cycles of 20: rising over steps 1-10 of each, then β.
    for cycle in (0, 20):
        rising = weights[cycle:cycle + 10]
        assert rising == pytest.approx([2.0 * (i + 1) / 10 for i in range(10)])
        assert weights[cycle + 10:cycle + 20] == [2.0] * 10
    assert weights[20] < weights[19]  # the second cycle starts again from near 0
    assert min(weights) > 0  # poutine.scale refuses 0
    one = Config(kl_schedule="cyclical:1,1", epochs=3, data_shape=(4,))
    assert [kl_weight(one, e, s, 5) for e in (1, 2, 3) for s in range(5)] == pytest.approx(
        [(t + 1) / 15 for t in range(15)])  # one cycle with R = 1: a warm-up over the run


@pytest.mark.parametrize("options, message", [
    ({"kl_schedule": "linear:3"}, "unknown --kl-schedule 'linear:3'; give --kl-schedule "
                                  "cyclical:M,R"),
    ({"kl_schedule": "cyclical:2"}, "is not cyclical:M,R"),
    ({"kl_schedule": "cyclical:0,0.5"}, "needs M ≥ 1 cycles and 0 < R ≤ 1"),
    ({"kl_schedule": "cyclical:2,1.5"}, "needs M ≥ 1 cycles and 0 < R ≤ 1"),
    ({"kl_schedule": "cyclical:2,0.5", "kl_warmup": 2}, "both set the KL weight; give one"),
    ({"kl_schedule": "cyclical:2,0.5", "elbo": "iwae", "particles": 3},
     "--kl-schedule act on the KL term of the ELBO, which --elbo iwae does not have"),
    ({"free_bits": 0.5, "elbo": "iwae-dreg", "particles": 3}, "--free-bits act on the KL term"),
    ({"free_bits": -1.0}, "--free-bits must be"),
    ({"free_bits": 0.5, "guide": "iaf"}, "needs a diagonal Gaussian guide"),
    ({"free_bits": 0.5, "prior": "mog"}, "a prior that factorises"),
])
def test_bad_schedules_and_free_bits_are_refused_in_one_line(options, message):
    with pytest.raises(ConfigError, match=message) as err:
        Config(z_dim=4, data_shape=(20,), **options)
    assert "\n" not in str(err.value)


def test_cyclical_schedule_resumes_exactly(fmnist_npz, tmp_path, monkeypatch):
    from conftest import dies_at_save

    options = dict(dataset=str(fmnist_npz), z_dim=4, hidden=(32,), batch_size=250,
                   kl_schedule="cyclical:3,0.5", epochs=4, progress=False)
    # The process dies after its second epoch.
    with dies_at_save(monkeypatch, lambda progress: progress["epoch"] == 2):
        fit(out=tmp_path / "run", **options)
    _, resumed = fit(resume=tmp_path / "run", progress=False)
    _, whole = fit(out=tmp_path / "whole", **options)

    def no_time(rows):
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]

    assert no_time(resumed) == no_time(whole) and len(whole) == 4
    for (name, a), b in zip(load(tmp_path / "run").state_dict().items(),
                            load(tmp_path / "whole").state_dict().values()):
        assert torch.equal(a, b), name
    # The schedule reached the model: a constant weight trains differently.
    _, constant = fit(out=tmp_path / "constant", **{**options, "kl_schedule": None})
    assert no_time(constant) != no_time(whole)


def _tiny(**options):
    pyro.set_rng_seed(0)
    config = Config(z_dim=3, hidden=(16,), data_shape=(20,), **options)
    return config, VAE.from_config(config)


def _grads(elbo, vae, *args, seed=1):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae.zero_grad()
    loss = elbo.loss_and_grads(vae.model, vae.guide, *args)
    return loss, {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}


def test_free_bits_zero_is_the_elbo_and_the_shortfall_is_added_per_dimension():
    x = torch.rand(8, 20).bernoulli()
    for elbo, plain in (("trace", Trace_ELBO), ("meanfield", TraceMeanField_ELBO)):
        config, vae = _tiny(elbo=elbo, free_bits=0.0)
        assert type(build_elbo(config)) is plain  # λ = 0: Pyro's own estimator
    config, vae = _tiny(elbo="meanfield", free_bits=0.3)
    objective = build_elbo(config)
    assert isinstance(objective, FreeBitsTraceMeanField_ELBO)
    pyro.set_rng_seed(1)
    loss = objective.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    elbo = TraceMeanField_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, x)
    # KL(N(μ, σ²) ‖ N(0, 1)) per dimension in closed form, averaged over the batch.
    loc, scale = vae.encode(x)
    kl = 0.5 * (loc ** 2 + scale ** 2 - 1 - 2 * scale.log())
    shortfall = 8 * torch.relu(0.3 - kl.mean(0)).sum()
    assert shortfall > 0
    assert loss == pytest.approx(elbo + float(shortfall), rel=1e-6)


def test_free_bits_stop_the_kl_gradient_of_dimensions_below_lambda():
    x = torch.rand(8, 20).bernoulli()
    config, vae = _tiny(free_bits=100.0)  # above every dimension's KL
    assert isinstance(build_elbo(config), FreeBitsTrace_ELBO)
    _, free = _grads(build_elbo(config), vae, x)
    # The reconstruction term alone: the z sites scaled away (a KL weight of 0 as a scale
    # factor on the z sites; poutine.scale refuses 0, so scale them by a tiny weight).
    reconstruction = Trace_ELBO(max_plate_nesting=1)
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    vae.zero_grad()
    reconstruction.loss_and_grads(vae.model, vae.guide, x, torch.tensor(1e-30))
    only = {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}
    assert free.keys() == only.keys()
    for name in free:
        torch.testing.assert_close(free[name], only[name], rtol=1e-5, atol=1e-6)
    # With a small λ most dimensions keep their KL gradient: the encoder's differs.
    config, vae = _tiny(free_bits=1e-6)
    _, small = _grads(build_elbo(config), vae, x)
    assert any(not torch.allclose(small[n], only[n], atol=1e-4) for n in small
               if n.startswith("encoder"))


def test_free_bits_keep_every_dimension_in_use_under_a_strong_beta(fmnist_small):
    x = binarize_fixed(fmnist_small.test).float().flatten(1)
    figures = {}
    for free_bits in (0.0, 1.0):
        pyro.clear_param_store()
        result = fit(data=fmnist_small, epochs=5, z_dim=10, hidden=(200,), beta=4.0,
                     free_bits=free_bits, progress=False)
        figures[free_bits] = evaluate(result.model, x, iwae_samples=50, progress=False)
    # Measured: β = 4 alone leaves dimensions at 0.08-0.84 nats and NLL 298.8; with λ = 1
    # every dimension holds 0.84-1.24 nats and NLL is 288.6.
    assert min(figures[0.0]["kl_per_dim"]) < 0.3
    assert min(figures[1.0]["kl_per_dim"]) > 0.6
    assert figures[1.0]["nll"] < figures[0.0]["nll"] - 4


def test_free_bits_shortfall_follows_the_kl_weight_and_the_value_of_the_step():
    x = torch.rand(8, 20).bernoulli()
    config, vae = _tiny(free_bits=100.0)
    objective = build_elbo(config)
    weight = torch.tensor(4.0)  # β = 4 on the z sites: the shortfall scales with them
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    vae.zero_grad()
    objective.loss_and_grads(vae.model, vae.guide, x, weight)
    free = {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    vae.zero_grad()
    Trace_ELBO(max_plate_nesting=1).loss_and_grads(vae.model, vae.guide, x,
                                                   torch.tensor(1e-30))
    for name, p in vae.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(free[name], p.grad, rtol=1e-5, atol=1e-6)
    # The value of a step is the loss, and for Trace_ELBO the ELBO plus the shortfall
    # B Σ_j max(0, λ − KL̄_j) with KL_nj = log q(z_j|x) − log p(z_j) at the sampled z.
    config, vae = _tiny(free_bits=0.2)
    objective = build_elbo(config)
    pyro.set_rng_seed(2)
    value = objective.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(2)
    assert objective.loss_and_grads(vae.model, vae.guide, x) == pytest.approx(value, rel=1e-6)
    pyro.set_rng_seed(2)
    guide = pyro.poutine.trace(vae.guide).get_trace(x)
    model = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide)).get_trace(x)
    z = guide.nodes["z"]["value"]
    kl = guide.nodes["z"]["fn"].base_dist.log_prob(z) - model.nodes["z"]["fn"].base_dist \
        .log_prob(z)
    elbo = model.log_prob_sum() - guide.log_prob_sum()
    expected = -elbo + 8 * torch.relu(0.2 - kl.mean(0)).sum()
    assert value == pytest.approx(float(expected.detach()), rel=1e-5)


def test_more_cycles_than_steps_are_refused_before_anything_is_written(fmnist_npz, tmp_path):
    with pytest.raises(ConfigError, match="asks for 100 cycles in a run of 4 steps"):
        fit(dataset=str(fmnist_npz), epochs=1, batch_size=500, z_dim=4, hidden=(32,),
            kl_schedule="cyclical:100,0.5", out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
