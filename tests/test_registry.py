"""Parts declare themselves: a prior defined outside the package, with an option, registers
through the public function and is then a prior like the built-in ones."""

import json
import math

import pyro.distributions as dist
import pytest
import torch

import pyro_vae
from pyro_vae import Config, ConfigError, fit, load
from pyro_vae.config import part_option_flags
from pyro_vae.registry import PRIORS


class ScaledNormalPrior(pyro_vae.Prior):
    """p(z) = N(0, s² I) with the scale s as an option (a stand-in for any user prior)."""

    spread = pyro_vae.Option(float, 2.0, "Scale s of the prior.",
                             check=lambda s: None if s > 0 else "must be positive")

    def __init__(self, z_dim, input_dim=None, spread=2.0):
        super().__init__(z_dim)
        self.spread = spread

    def forward(self):
        return dist.Normal(self._zeros, self._ones * self.spread).to_event(1)


@pytest.fixture(autouse=True)
def registered():
    """Registered as a user would (``@pyro_vae.register_prior(...)`` on the class), and taken
    out again afterwards so that other tests see the built-in parts only."""
    pyro_vae.register_prior("test-scaled-normal")(ScaledNormalPrior)
    yield
    PRIORS.parts.pop("test-scaled-normal")


def test_a_registered_prior_is_validated_like_the_built_in_ones():
    assert "test-scaled-normal" in PRIORS
    assert part_option_flags()["prior_spread"] == [(ScaledNormalPrior, "spread")]
    config = Config(prior="test-scaled-normal", data_shape=(28, 28))
    assert config.prior_spread == 2.0  # the declared default
    assert Config(prior="test-scaled-normal", prior_spread=0.5).prior_spread == 0.5
    with pytest.raises(ConfigError, match="--prior-spread must be positive"):
        Config(prior="test-scaled-normal", prior_spread=-1.0)
    with pytest.raises(ConfigError, match="--prior-spread applies to --prior test-scaled-normal"):
        Config(prior_spread=0.5)
    # Capabilities come from the base class: a fixed proper prior works with a point mass.
    Config(prior="test-scaled-normal", guide="delta", data_shape=(28, 28))


def test_a_registered_prior_trains_through_fit_and_reloads(fmnist_small, tmp_path):
    vae, rows = fit(data=fmnist_small, out=tmp_path / "run", prior="test-scaled-normal",
                    prior_spread=0.7, epochs=2, z_dim=4, hidden=(64,), progress=False)
    assert rows[-1]["test_neg_elbo"] < rows[0]["test_neg_elbo"]
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["model"]["prior"] == {"name": "test-scaled-normal", "spread": 0.7}
    loaded = load(tmp_path / "run")
    assert isinstance(loaded.prior, ScaledNormalPrior) and loaded.prior.spread == 0.7
    z = torch.zeros(1, 4)
    expected = 4 * (-math.log(0.7) - 0.5 * math.log(2 * math.pi))
    assert math.isclose(loaded.prior().log_prob(z).item(),
                        expected, rel_tol=1e-6)
    x = fmnist_small.test[:64].bernoulli()
    torch.testing.assert_close(loaded.reconstruct(x), vae.reconstruct(x))


def test_registering_something_that_is_not_a_part_is_refused():
    with pytest.raises(ConfigError, match="needs a subclass"):
        pyro_vae.register_prior("broken")(dict)
