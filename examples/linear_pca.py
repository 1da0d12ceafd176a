"""The linear Gaussian VAE is probabilistic PCA: its decoder spans the principal subspace.

    uv run python examples/linear_pca.py          # about 15 s on 2 CPU cores

With ``arch="linear"`` the decoder is z ↦ Wz + b and the likelihood N(Wz + b, σ²I) makes the
model probabilistic PCA (Tipping & Bishop 1999), whose maximum-likelihood W spans the top
principal components of the data. The script trains it on Fashion-MNIST grey levels and prints
the principal angles between the column space of W and the top-k PCA subspace (0° = identical).
"""

import argparse

import numpy as np

import pyro_vae

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--k", type=int, default=10, help="latent dimension = number of components")
parser.add_argument("--epochs", type=int, default=15)
parser.add_argument("--limit", type=int, default=20000, help="training images")
args = parser.parse_args()

config = pyro_vae.Config(arch="linear", likelihood="normal", obs_scale=0.1, z_dim=args.k,
                         epochs=args.epochs, lr=3e-3, limit=args.limit)
data = pyro_vae.load_data(config)
vae, _ = pyro_vae.fit(config, data=data, progress=False)

x = data.train.numpy()
pcs = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][: args.k].T  # (784, k)
w = vae.decoder.net.weight.detach().numpy()  # (784, k)
q_w, _ = np.linalg.qr(w)
q_pcs, _ = np.linalg.qr(pcs)
cosines = np.clip(np.linalg.svd(q_w.T @ q_pcs, compute_uv=False), -1, 1)
angles = np.degrees(np.arccos(cosines))
print(f"principal angles between W and the top-{args.k} PCA subspace (degrees):")
print(" ".join(f"{a:.1f}" for a in angles))
print(f"largest: {angles.max():.1f}°")
