"""Train a VAE on Fashion-MNIST with an explicit Pyro SVI loop, through the pyro_vae API.

    uv run python examples/svi_loop.py --epochs 5 --out runs/svi-loop

`pyro-vae fit` runs this same loop with progress bars, metrics and pictures; writing it out shows
that a pyro_vae model is an ordinary Pyro program: `vae.model` and `vae.guide` go straight into
`pyro.infer.SVI`.
"""

import argparse

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import pyro_vae
from pyro_vae.io.data import binarize, binarize_fixed
from pyro_vae.training.plan import neg_elbo

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--limit", type=int, default=None, help="use the first N training images")
parser.add_argument("--out", default=None, help="save the trained model to this run directory")
args = parser.parse_args()

config = pyro_vae.Config(z_dim=20, hidden=(400,), epochs=args.epochs, limit=args.limit)
data = pyro_vae.load_data(config)  # grey levels in [0, 1], (N, 784)
# The data shape, and the defaults that the data decide (learning rate, epochs) where unset.
config = config.for_data(data.data_shape, data.train.shape[0])

pyro.set_rng_seed(config.seed)
vae = pyro_vae.VAE.from_config(config)
vae.adapt(data.train)  # data-dependent start (standardisation, count offsets), as fit does
svi = SVI(vae.model, vae.guide, Adam({"lr": config.lr}), Trace_ELBO())
test = binarize_fixed(data.test)  # the same binary test set in every run

print(f"epoch 0: test -ELBO {neg_elbo(vae, test):.2f} nats/image")
for epoch in range(1, config.epochs + 1):
    train = binarize(data.train)  # dynamic binarisation: a fresh draw every epoch
    for batch in train[torch.randperm(train.shape[0])].split(config.batch_size):
        svi.step(batch)
    print(f"epoch {epoch}: test -ELBO {neg_elbo(vae, test):.2f} nats/image")

if args.out:
    pyro_vae.save(vae, args.out)
    print(f"saved to {args.out}; try: pyro-vae sample {args.out} --out samples.png")
