"""Training throughput of pyro_vae's SVI step against a plain PyTorch loop, side by side.

    uv run python benchmarks/bench_train.py                 # about 3 minutes on 2 CPU cores

Both train the same 784-400-20 ReLU networks from the same initial weights with Adam 1e-3 on
the same dynamically binarised Fashion-MNIST batches. The plain loop computes the same
single-sample ELBO by hand: −[log p(x|z) + log p(z) − log q(z|x)] with z = μ + σε. They run in
one process, alternating, ``--repeats`` times; the table gives median images per second and
the ratio pyro_vae / plain (1.0 = as fast). A last line times one full epoch of the 60,000
training images at batch 128, once each.
"""

import argparse
import statistics
import time

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI
from torch import nn

import pyro_vae
from pyro_vae.data import binarize
from pyro_vae.objectives import build_elbo
from pyro_vae.optim import JointOptim


class PlainVAE(nn.Module):
    """The reference: the pytorch/examples VAE with pyro_vae's networks and estimator."""

    def __init__(self, vae: pyro_vae.VAE):
        super().__init__()
        self.body, self.head = vae.encoder.body, vae.encoder.head
        self.decoder = vae.decoder.net

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        loc, log_var = self.head(self.body(x)).chunk(2, dim=-1)
        scale = torch.exp(0.5 * log_var)
        z = loc + scale * torch.randn_like(loc)
        log_px = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1)
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_qz = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        return -(log_px + log_pz - log_qz).sum()


def make_pair(config: pyro_vae.Config):
    """A pyro_vae SVI step and a plain step on twin models with identical initial weights."""
    pyro.set_rng_seed(0)
    vae = pyro_vae.VAE.from_config(config)
    twin = pyro_vae.VAE.from_config(config)
    twin.load_state_dict(vae.state_dict())
    svi = SVI(vae.model, vae.guide, JointOptim(torch.optim.Adam, vae, {"lr": config.lr}),
              build_elbo(config))
    plain = PlainVAE(twin)
    optimizer = torch.optim.Adam(plain.parameters(), lr=config.lr)

    def plain_step(x):
        optimizer.zero_grad()
        loss = plain.loss(x)
        loss.backward()
        optimizer.step()
        return loss.item()

    vae.train()

    def pyro_step(x):  # as pyro_vae.fit runs it after an epoch's first, validated step
        with pyro.validation_enabled(False):
            return svi.step(x)

    return pyro_step, plain_step


def images_per_second(step, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    return sum(b.shape[0] for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--images", type=int, default=12800, help="images per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    data = pyro_vae.load_data(pyro_vae.Config())
    x = binarize(data.train).to(args.device)
    print(f"{'batch':>6} {'pyro_vae img/s':>15} {'plain img/s':>12} {'ratio':>6}")
    for batch_size in args.batch_sizes:
        config = pyro_vae.Config(batch_size=batch_size, data_shape=(28, 28))
        pyro_step, plain_step = make_pair(config)
        batches = list(x[: args.images].split(batch_size))
        for step in (pyro_step, plain_step):  # warm-up: allocator, first validated step
            images_per_second(step, batches[:10])
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(images_per_second(pyro_step, batches))
            theirs.append(images_per_second(plain_step, batches))
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{batch_size:>6} {a:>15.0f} {b:>12.0f} {a / b:>6.2f}", flush=True)

    pyro_step, plain_step = make_pair(pyro_vae.Config(batch_size=128, data_shape=(28, 28)))
    epoch = list(x.split(128))
    seconds = [x.shape[0] / images_per_second(step, epoch) for step in (pyro_step, plain_step)]
    print(f"one epoch of {x.shape[0]} images at batch 128: pyro_vae {seconds[0]:.1f} s, plain "
          f"{seconds[1]:.1f} s, ratio of speeds {seconds[1] / seconds[0]:.2f}")


if __name__ == "__main__":
    main()
