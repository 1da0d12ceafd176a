"""Sparse codes from a Laplace prior: the sparse autoencoder as a Pyro program.

    uv run python examples/sparse_codes.py            # about 20 s on 2 CPU cores

With a point-mass guide q(h|x) = δ(h − f(x)) the ELBO is log p(x|h) + log p(h) at h = f(x). A
Laplace prior makes −log p(h) = λΣ|hᵢ| + const, the L1 penalty of the sparse autoencoder; a
standard Normal prior gives the L2 penalty ½Σhᵢ² instead. Both are trained on Fashion-MNIST with
the same networks, and the script prints, on test images, how many code units end up near zero
(|hᵢ| below a tenth of that image's largest |hⱼ|: a measure that does not change when the
decoder absorbs a rescaling of h), the Hoyer sparsity (√n − ‖h‖₁/‖h‖₂)/(√n − 1) of the codes
(0 for equal magnitudes, 1 for a single non-zero; Hoyer 2004), their RMS, and how well each
model reconstructs the images (Bernoulli −log p(x|h), nats per image).
"""

import argparse
import math

import torch

import pyro_vae
from pyro_vae.io.data import binarize_fixed

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--limit", type=int, default=20000, help="training images")
parser.add_argument("--z-dim", type=int, default=32)
parser.add_argument("--threshold", type=float, default=0.1,
                    help="near zero: |hᵢ| below this fraction of the image's largest |hⱼ|")
args = parser.parse_args()

data = pyro_vae.load_data(pyro_vae.Config(limit=args.limit))
test = binarize_fixed(data.test[:2000])

print(f"{'prior':8} {'penalty':8} {'near-zero units':>16} {'Hoyer':>6} {'RMS':>6} "
      f"{'reconstruction (nats)':>22}")
for prior, penalty in (("laplace", "L1"), ("normal", "L2")):
    vae, _ = pyro_vae.fit(data=data, guide="delta", prior=prior, z_dim=args.z_dim,
                          epochs=args.epochs, progress=False)
    codes, _ = vae.encode(test)  # (2000, z_dim): h = f(x)
    magnitude = codes.abs()
    near_zero = (magnitude < args.threshold * magnitude.amax(1, keepdim=True)).float().mean()
    root_n = math.sqrt(codes.shape[1])
    hoyer = ((root_n - magnitude.sum(1) / codes.norm(dim=1)) / (root_n - 1)).mean()
    rms = codes.pow(2).mean().sqrt()
    with torch.no_grad():
        nll = -vae.likelihood(vae.decoder(codes)).log_prob(test).mean().item()
    print(f"{prior:8} {penalty:8} {near_zero.item():>15.1%} {hoyer.item():>6.2f} "
          f"{rms.item():>6.2f} {nll:>22.1f}")
