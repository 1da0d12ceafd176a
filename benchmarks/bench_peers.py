"""pyro_vae's ``fit`` against the VAEs that users would otherwise run, on the same data,
architecture and batch, alternated, each run in a fresh interpreter.

    uv run python benchmarks/bench_peers.py            # about 9 minutes on 2 CPU cores
    uv run python benchmarks/bench_peers.py --pythae ENV/bin/python --rounds 10 --out peers.json

where ENV is an environment with pythae, e.g. ``uv venv -p 3.11 ENV && uv pip install -p
ENV/bin/python pythae==0.1.2 torch``.

The peers:

- **Pyro's example** (``examples/vae/vae.py`` of the Pyro repository), written out below in
  its design: an encoder 784-400-(loc, exp scale) and a decoder 400-784 with sigmoid pixel
  probabilities as plain ``nn.Module``s registered with ``pyro.module``, the model and guide
  over ``pyro.plate``, ``pyro.optim.Adam`` (one torch Adam per parameter), ``SVI.step`` over a
  torch ``DataLoader`` (shuffled, batches of 128); with ``Trace_ELBO`` and with
  ``JitTrace_ELBO`` (the example's ``--jit``). Changed to match pyro_vae's default model: ReLU
  instead of Softplus, z = 20 instead of 50, and each batch binarised afresh (``bernoulli(x)``),
  as pyro_vae's dynamic binarisation does.
- **pythae** (``pythae.models.VAE`` with its ``BaseTrainer``), where an interpreter with pythae
  is given (``--pythae``; it is never a dependency of pyro_vae): the same 784-400-20 ReLU
  networks, batch 128, Adam 1e-3, on the training images binarised once (pythae's trainer
  cannot redraw them per epoch), against pyro_vae with ``--binarize static``.

pyro_vae runs twice against each peer: with its default compiled objective (Pyro's
``JitTrace_ELBO``, TorchScript) and with ``--compiler inductor`` (the ELBO recorded by
``make_fx`` and compiled by ``torch.compile``).

Images per second are over epochs 2 … E of each run (the first epoch includes compiling), by
the wall time of the whole epoch: for pyro_vae ``train_seconds``, which counts the epoch's
binarisation draw and permutation as well as its steps, for the example the loop over its
DataLoader with the binarisation inside. Test −ELBO: the single-sample −ELBO of the 10,000
test images after the last epoch, binarised with one fixed draw. Medians over ``--rounds``
rounds, each of which runs every setup once, in turn. Every run is its own Python process
(this script with ``--setup NAME``), so no run inherits another's TorchScript caches, thread
pools or allocator state; loading the data is outside the timed epochs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pyro_vae
from pyro_vae.io.data import TEST_BINARIZE_SEED, binarize_rows

HIDDEN, Z_DIM, BATCH, LR = 400, 20, 128, 1e-3


class ExampleEncoder(nn.Module):
    """q(z|x): 784 → 400 → (loc, exp(·)) as in Pyro's example, ReLU."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = (nn.Linear(784, HIDDEN), nn.Linear(HIDDEN, Z_DIM),
                                          nn.Linear(HIDDEN, Z_DIM))

    def forward(self, x):
        hidden = torch.relu(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class ExampleDecoder(nn.Module):
    """p(x|z): 20 → 400 → 784 sigmoid probabilities, ReLU."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21 = nn.Linear(Z_DIM, HIDDEN), nn.Linear(HIDDEN, 784)

    def forward(self, z):
        return torch.sigmoid(self.fc21(torch.relu(self.fc1(z))))


class ExampleVAE(nn.Module):
    """The model and guide of Pyro's VAE example."""

    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = ExampleEncoder(), ExampleDecoder()

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0], Z_DIM),
                                                  x.new_ones(x.shape[0], Z_DIM)).to_event(1))
            probs = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(probs, validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(loc, scale).to_event(1))


def run_example(train: torch.Tensor, test_binary: torch.Tensor, epochs: int, jit: bool) -> dict:
    """Pyro's example loop for ``epochs`` epochs; seconds per epoch and the test −ELBO."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = ExampleVAE()
    elbo = JitTrace_ELBO() if jit else Trace_ELBO()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}), loss=elbo)
    loader = DataLoader(TensorDataset(train), batch_size=BATCH, shuffle=True)
    seconds = []
    with pyro.validation_enabled(False):
        for _ in range(epochs):
            start = time.perf_counter()
            for (x,) in loader:
                svi.step(torch.bernoulli(x))
            seconds.append(time.perf_counter() - start)
        test = sum(svi.evaluate_loss(test_binary[i : i + 1000])
                   for i in range(0, test_binary.shape[0], 1000)) / test_binary.shape[0]
    return {"seconds": seconds, "test_neg_elbo": test}


def run_pyro_vae(data: pyro_vae.Data, epochs: int, binarize: str,
                 compiler: str = "torchscript") -> dict:
    """``fit`` with the default model (784-400-20 ReLU) at batch 128, its objective compiled
    by ``compiler`` (``--compiler``)."""
    pyro.clear_param_store()
    _, rows = pyro_vae.fit(data=data, epochs=epochs, batch_size=BATCH, hidden=(HIDDEN,),
                           z_dim=Z_DIM, lr=LR, binarize=binarize, compiler=compiler,
                           progress=False)
    return {"seconds": [r["train_seconds"] for r in rows],
            "test_neg_elbo": rows[-1]["test_neg_elbo"]}


PYTHAE_SCRIPT = r'''
import json, sys, time
import numpy as np, torch
from torch import nn
from pythae.data.datasets import BaseDataset
from pythae.models import VAE, VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseEncoder, BaseDecoder
from pythae.trainers import BaseTrainer, BaseTrainerConfig
from pythae.trainers.training_callbacks import TrainingCallback

folder, epochs = sys.argv[1], int(sys.argv[2])
train = torch.from_numpy(np.load(folder + "/train.npy"))
test = torch.from_numpy(np.load(folder + "/test.npy"))

class Encoder(BaseEncoder):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(784, 400), nn.ReLU())
        self.loc, self.log_var = nn.Linear(400, 20), nn.Linear(400, 20)
    def forward(self, x):
        h = self.body(x.reshape(x.shape[0], -1))
        return ModelOutput(embedding=self.loc(h), log_covariance=self.log_var(h))

class Decoder(BaseDecoder):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784), nn.Sigmoid())
    def forward(self, z):
        return ModelOutput(reconstruction=self.net(z).reshape(z.shape[0], 1, 28, 28))

class Timer(TrainingCallback):
    def __init__(self):
        self.seconds, self.start = [], None
    def on_epoch_begin(self, training_config, **kwargs):
        self.start = time.perf_counter()
    def on_epoch_end(self, training_config, **kwargs):
        self.seconds.append(time.perf_counter() - self.start)

torch.manual_seed(0)
model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=20, reconstruction_loss="bce"),
            encoder=Encoder(), decoder=Decoder())
config = BaseTrainerConfig(output_dir=folder + "/out", num_epochs=epochs, learning_rate=1e-3,
                           per_device_train_batch_size=128, per_device_eval_batch_size=1000,
                           steps_saving=None, no_cuda=True)
timer = Timer()
dataset = BaseDataset(train.reshape(-1, 1, 28, 28), torch.zeros(train.shape[0]))
trainer = BaseTrainer(model=model, train_dataset=dataset,
                      training_config=config, callbacks=[timer])
trainer.train()
model.eval()
with torch.no_grad():
    total = 0.0
    for i in range(0, test.shape[0], 1000):
        x = test[i:i + 1000].reshape(-1, 1, 28, 28)
        total += float(model({"data": x}).loss) * x.shape[0]
print(json.dumps({"seconds": timer.seconds, "test_neg_elbo": total / test.shape[0]}))
'''


def run_pythae(python: str, train_binary: torch.Tensor, test_binary: torch.Tensor,
               epochs: int) -> dict:
    """pythae's VAE trainer in its own interpreter, on the same binary images."""
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "train.npy", train_binary.numpy())
        np.save(Path(folder) / "test.npy", test_binary.numpy())
        (Path(folder) / "run.py").write_text(PYTHAE_SCRIPT)
        done = subprocess.run([python, str(Path(folder) / "run.py"), folder, str(epochs)],
                              capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def images_per_second(result: dict, n: int) -> float:
    later = result["seconds"][1:] or result["seconds"]
    return n * len(later) / sum(later)


SETUPS = ("Pyro example, Trace_ELBO", "Pyro example, JitTrace_ELBO", "pyro_vae fit",
          "pyro_vae fit --compiler inductor", "pythae VAE, static binarisation",
          "pyro_vae fit --binarize static", "pyro_vae fit --binarize static --compiler inductor")
PYTHAE = ("pythae VAE, static binarisation", "pyro_vae fit --binarize static",
          "pyro_vae fit --binarize static --compiler inductor")


def run_setup(name: str, epochs: int, pythae: str | None) -> dict:
    """Run one setup in this process (the child side of ``--setup``)."""
    data = pyro_vae.io.data.load_data(pyro_vae.Config())
    test_binary = binarize_rows(data.test_rows,
                                torch.Generator().manual_seed(TEST_BINARIZE_SEED)).float()
    if name.startswith("Pyro example"):
        return run_example(data.train.clone(), test_binary, epochs, jit="Jit" in name)
    if name.startswith("pythae"):
        train_static = binarize_rows(data.train_rows, torch.Generator().manual_seed(0)).float()
        return run_pythae(pythae, train_static, test_binary, epochs)
    return run_pyro_vae(data, epochs, "static" if "static" in name else "dynamic",
                        "inductor" if name.endswith("inductor") else "torchscript")


def run_in_child(name: str, epochs: int, pythae: str | None) -> dict:
    """This script with ``--setup name`` in a fresh interpreter; its JSON result."""
    command = [sys.executable, __file__, "--setup", name, "--epochs", str(epochs)]
    if pythae:
        command += ["--pythae", pythae]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"setup {name!r} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pythae", help="a Python interpreter with pythae installed")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--setup", choices=SETUPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup:
        print(json.dumps(run_setup(args.setup, args.epochs, args.pythae)))
        return
    n = pyro_vae.io.data.load_data(pyro_vae.Config()).train.shape[0]
    names = SETUPS if args.pythae else [name for name in SETUPS if name not in PYTHAE]
    setups = {name: (lambda name=name: run_in_child(name, args.epochs, args.pythae))
              for name in names}
    results = {name: [] for name in setups}
    for r in range(args.rounds):
        for name, setup in setups.items():
            result = setup()
            results[name].append(result)
            print(f"round {r + 1}/{args.rounds} {name}: {images_per_second(result, n):.0f} img/s, "
                  f"test -ELBO {result['test_neg_elbo']:.2f}", flush=True)

    def median_rate(name):
        return statistics.median(images_per_second(x, n) for x in results[name])

    def ratios(ours, peer):
        return [images_per_second(a, n) / images_per_second(b, n)
                for a, b in zip(results[ours], results[peer])]

    print(f"\nFashion-MNIST, 784-400-20 ReLU, batch {BATCH}, {args.epochs} epochs, images per "
          f"second over epochs 2-{args.epochs}, median of {args.rounds} rounds\n")
    print("| run | img/s | test -ELBO | pyro_vae (torchscript) ÷ run (range) | "
          "pyro_vae --compiler inductor ÷ run (range) |")
    print("|---|---|---|---|---|")
    table = {}
    for name in setups:
        # Each peer against the pyro_vae runs on its data: pythae's static draw, or the
        # example's binarisation afresh at every batch.
        ours = "pyro_vae fit --binarize static" if name.startswith("pythae") else "pyro_vae fit"
        cells = {}
        for compiler, mine in (("torchscript", ours), ("inductor", f"{ours} --compiler inductor")):
            cells[compiler] = "—"
            if not name.startswith("pyro_vae") and mine in setups:
                values = ratios(mine, name)
                cells[compiler] = (f"{statistics.median(values):.2f} "
                                   f"({min(values):.2f}–{max(values):.2f})")
        test = statistics.median(x["test_neg_elbo"] for x in results[name])
        table[name] = {"images_per_second": median_rate(name), "test_neg_elbo": test,
                       "ratio": cells["torchscript"], "ratio_inductor": cells["inductor"]}
        print(f"| {name} | {median_rate(name):,.0f} | {test:.2f} | {cells['torchscript']} | "
              f"{cells['inductor']} |")
    if args.out:
        args.out.write_text(json.dumps({"table": table, "rounds": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
