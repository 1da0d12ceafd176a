import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.optim import Adam
from pyro.poutine.subsample_messenger import _Subsample

from pyro_vae import VAE, Config


def _sites(trace):
    """Sample sites, without the plate's own subsample site."""
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not isinstance(site["fn"], _Subsample)
    }


def test_guide_samples_z_per_image_in_the_data_plate(small_vae):
    x = torch.rand(6, 784).bernoulli()
    trace = poutine.trace(small_vae.guide).get_trace(x)
    z = _sites(trace)["z"]
    assert z["value"].shape == (6, 4)
    assert z["fn"].event_shape == (4,) and z["fn"].batch_shape == (6,)
    assert z["fn"].has_rsample, "the guide must be reparameterised"
    assert [f.name for f in z["cond_indep_stack"]] == ["data"]
    assert z["cond_indep_stack"][0].size == 6


def test_model_scores_observed_x_given_guide_z(small_vae):
    x = torch.rand(6, 784).bernoulli()
    guide_trace = poutine.trace(small_vae.guide).get_trace(x)
    trace = poutine.trace(poutine.replay(small_vae.model, trace=guide_trace)).get_trace(x)
    sites = _sites(trace)
    assert set(sites) == {"z", "x"}
    assert torch.equal(sites["z"]["value"], guide_trace.nodes["z"]["value"])
    assert sites["x"]["is_observed"] and torch.equal(sites["x"]["value"], x)
    assert sites["x"]["fn"].event_shape == (784,) and sites["x"]["fn"].batch_shape == (6,)
    trace.compute_log_prob()
    assert sites["x"]["log_prob"].shape == (6,)


def test_predictive_draws_from_the_prior_predictive(small_vae):
    draws = Predictive(small_vae.model, num_samples=3)(None, num=5)
    assert draws["z"].shape == (3, 5, 4) and draws["x"].shape == (3, 5, 784)
    assert set(draws["x"].unique().tolist()) <= {0.0, 1.0}
    means = small_vae.sample(5, mean=True)
    assert means.shape == (5, 784) and 0 < means.min() and means.max() < 1


def test_two_vaes_in_one_process_each_train_their_own_parameters():
    # pyro.module returns an existing param-store tensor when names clash, which would leave a
    # second VAE untrained; every instance therefore registers under its own name.
    pyro.set_rng_seed(0)
    x = torch.rand(16, 784).bernoulli()
    config = Config(z_dim=2, hidden=(8,), data_shape=(784,))
    for _ in range(2):
        vae = VAE.from_config(config)
        before = {k: v.clone() for k, v in vae.named_parameters()}
        svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), Trace_ELBO())
        for _ in range(3):
            svi.step(x)
        unchanged = [k for k, v in vae.named_parameters() if torch.equal(v, before[k])]
        assert not unchanged


def test_encode_decode_reconstruct_shapes(small_vae):
    x = torch.rand(3, 784)
    loc, scale = small_vae.encode(x)
    assert loc.shape == scale.shape == (3, 4) and (scale > 0).all()
    assert small_vae.decode(loc).shape == (3, 784)
    assert small_vae.reconstruct(x).shape == (3, 784)
