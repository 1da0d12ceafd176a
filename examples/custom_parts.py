"""Your own networks and prior, trained by pyro_vae.fit on Fashion-MNIST.

    uv run python examples/custom_parts.py --epochs 3 --out runs/custom

Two ways to bring your own parts:

1. A whole model of your own: an ``nn.Module`` encoder that returns (loc, scale) of q(z|x), an
   ``nn.Module`` decoder that returns Bernoulli logits, and a prior given as a plain
   ``pyro.distributions`` distribution. ``pyro_vae.fit`` trains it with everything it has
   (progress, checkpoints, resume, metrics, pictures); ``pyro_vae.load(run, model=...)`` puts the
   weights back into the same model built again (no code is stored in the run).
2. A new prior with an option, registered under a name: it is then one more ``--prior`` choice
   for built-in models, validated, saved in ``config.json`` and rebuilt by ``pyro_vae.load``.
"""

import argparse

import pyro.distributions as dist
import torch
from torch import nn

import pyro_vae
from pyro_vae.evaluation.evaluate import evaluate

Z_DIM = 16


class Encoder(nn.Module):
    """x (batch, 784) → location and scale of q(z|x), each (batch, Z_DIM)."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, hidden), nn.ELU(), nn.Linear(hidden, 2 * Z_DIM))

    def forward(self, x):
        loc, log_scale = self.net(x).chunk(2, dim=-1)
        return loc, log_scale.exp()


class Decoder(nn.Module):
    """z (..., Z_DIM) → Bernoulli logits (..., 784)."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(Z_DIM, hidden), nn.ELU(), nn.Linear(hidden, 784))

    def forward(self, z):
        return self.net(z)


def build() -> pyro_vae.VAE:
    """The user's model: their networks, a Pyro prior, a likelihood by name."""
    prior = dist.Normal(torch.zeros(Z_DIM), 1.0).to_event(1)
    return pyro_vae.VAE(Encoder(), Decoder(), prior=prior, likelihood="bernoulli")


@pyro_vae.register_prior("cauchy")
class CauchyPrior(pyro_vae.Prior):
    """p(z) = ∏ᵢ Cauchy(zᵢ; 0, w): the heaviest-tailed prior here, with one option."""

    summary = "heavy-tailed, width --prior-width"
    width = pyro_vae.Option(float, 1.0, "Width w of the cauchy prior.",
                            check=lambda w: None if w > 0 else "must be positive")

    def __init__(self, z_dim, input_dim=None, width=1.0):
        super().__init__(z_dim)
        self.width = width

    def forward(self):
        return dist.Cauchy(self._zeros, self._ones * self.width).to_event(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=10000)
    parser.add_argument("--out", default="runs/custom")
    args = parser.parse_args()
    data = pyro_vae.load_data(pyro_vae.Config(limit=args.limit))
    x_test = data.test[:500].bernoulli(generator=torch.Generator().manual_seed(0))

    own, rows = pyro_vae.fit(build(), data=data, out=f"{args.out}/own", epochs=args.epochs,
                             progress=False)
    reloaded = pyro_vae.load(f"{args.out}/own", model=build())
    nll = evaluate(reloaded, x_test, iwae_samples=100, progress=False)["nll"]
    print(f"own networks and prior: test -ELBO {rows[-1]['test_neg_elbo']:.2f} nats/image, "
          f"reloaded NLL {nll:.2f} nats/image (K = 100, 500 test images)")

    _, rows = pyro_vae.fit(data=data, out=f"{args.out}/cauchy", prior="cauchy", prior_width=0.5,
                           z_dim=Z_DIM, epochs=args.epochs, progress=False)
    cauchy = pyro_vae.load(f"{args.out}/cauchy")
    print(f"registered cauchy prior (width {cauchy.prior.width}): test -ELBO "
          f"{rows[-1]['test_neg_elbo']:.2f} nats/image")


if __name__ == "__main__":
    main()
