import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_vae import VAE, Config, fit
from pyro_vae.training.optim import JointOptim


def _twins():
    pyro.set_rng_seed(0)
    config = Config(z_dim=3, hidden=(16,), data_shape=(20,))
    a, b = VAE.from_config(config), VAE.from_config(config)
    b.load_state_dict(a.state_dict())
    return a, b


def test_one_joint_adam_takes_the_same_steps_as_pyros_per_parameter_adam():
    a, b = _twins()
    x = torch.rand(8, 20).bernoulli()
    svi_a = SVI(a.model, a.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi_b = SVI(b.model, b.guide, JointOptim(torch.optim.Adam, b, {"lr": 1e-2}), Trace_ELBO())
    for step in range(3):
        pyro.set_rng_seed(step)
        svi_a.step(x)
        pyro.set_rng_seed(step)
        svi_b.step(x)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_clip_norm_clips_each_parameter_gradient():
    _, vae = _twins()
    optim = JointOptim(torch.optim.SGD, vae, {"lr": 1.0}, clip_norm=0.5)
    before = [p.detach().clone() for p in vae.parameters()]
    for p in vae.parameters():
        p.grad = torch.full_like(p, 10.0)
    optim(set(vae.parameters()))
    # With SGD at lr 1 each parameter moves by exactly its clipped gradient.
    moves = [(p - b).norm().item() for p, b in zip(vae.parameters(), before)]
    assert all(abs(m - 0.5) < 1e-4 for m in moves), moves
    assert all(p.grad is None for p in vae.parameters()), "gradients are cleared after the step"


def test_parameters_from_outside_the_model_are_refused():
    _, vae = _twins()
    optim = JointOptim(torch.optim.Adam, vae, {"lr": 1e-3})
    with pytest.raises(ValueError, match="outside the model"):
        optim({torch.nn.Parameter(torch.zeros(2))})


def test_fit_trains_every_parameter(fmnist_small):
    config = Config(z_dim=4, hidden=(32,), prior="mog", prior_components=3, data_shape=(28, 28))
    pyro.set_rng_seed(0)
    initial = VAE.from_config(config).state_dict()
    vae, _ = fit(config, data=fmnist_small, epochs=1, progress=False)
    unchanged = [k for k, v in vae.state_dict().items() if torch.equal(v, initial[k])]
    assert unchanged == []
