"""Semi-supervised M2 against a classifier trained on the labelled images alone, side by side.

    uv run python benchmarks/bench_semisupervised.py     # about 2 hours on 2 CPU cores
    uv run python benchmarks/bench_semisupervised.py --labels 100 --seeds 1 --epochs 2  # a try
    uv run python benchmarks/bench_semisupervised.py --labels 100 --epochs 3 --arch conv \
        --json benchmarks/results/semisupervised-conv.json     # the conv row, about 50 minutes
    uv run python benchmarks/bench_semisupervised.py --labels 100 --labelled-passes 100 \
        --json benchmarks/results/semisupervised-passes.json   # Pyro-like schedule, 15 minutes

For each number of labels N and seed s, in one process:

- **M2**: ``pyro_vae.fit(labelled=N, seed=s)`` on Fashion-MNIST, every option at its default
  (with the default ``--arch mlp``, 784-400-20 ReLU networks; dynamic binarisation, batch 128,
  Adam 10⁻³, 10 epochs); its test accuracy is that of its classifier q(y|x) after the last
  epoch (``metrics.csv``), on the 10,000 test images binarised as ``fit`` scores them.
- **Baseline**: the same network as q(y|x) (:meth:`pyro_vae.parts.networks.Network.classifier`
  of the run's architecture, 784-400-10), fresh weights, trained in plain PyTorch with
  cross-entropy and Adam 10⁻³ in batches of up to 128 on the same N labelled images, dynamically
  binarised as M2's classifier sees them. Early stopping: trained on 80% of the N images with
  the other 20% held out, for up to 20,000 steps (at least 50 epochs), stopping once the
  held-out accuracy has not improved for 500 steps (at least 5 epochs); then trained afresh on
  all N for the best number of epochs. Scored on the same binarised test images.
- **What the unlabelled images can teach** (:func:`generative_classifier`): the accuracy of
  M2's generative model as a classifier, argmax_y ELBO(x, y), on the first 2000 test images,
  and how often it picks the class that q(y|x) picks.

``--arch conv`` gives M2 and the baseline pyro_vae's convolutional networks instead of the
fully connected ones (the baseline: the conv encoder and a dense layer to the ten classes).

The labelled images are the same for both: :func:`pyro_vae.io.data.hide_labels` with the
seed, N/K of each class. ``--labels all`` compares M2 trained with every label against the
baseline on every label (early-stopped on 10% of them); there the two are classifiers of the
same images, and M2 trains as many epochs as the baseline's early stopping chose on its
held-out labels (``--all-epochs baseline``, never chosen on the test set; or a number), the
seed varying the initial weights and the order of the batches. Prints one line per run and a
table of mean ± standard deviation over seeds; ``--json`` writes every run's figures.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import pyro
import torch
import torch.nn.functional as F

import pyro_vae
from pyro_vae import Config
from pyro_vae.config import DEFAULT_BATCH
from pyro_vae.evaluation.evaluate import importance_terms
from pyro_vae.io.data import binarize, binarize_fixed, hide_labels, load_data

#: Test images and samples of z per class of :func:`generative_classifier`.
GENERATIVE_IMAGES, GENERATIVE_SAMPLES = 2000, 10


def baseline(data, labels: torch.Tensor, seed: int, network) -> tuple[float, int]:
    """Test accuracy of the classifier trained on the images with labels ≥ 0, and the number
    of epochs early stopping chose."""
    known = torch.nonzero(labels >= 0).flatten()
    generator = torch.Generator().manual_seed(seed)
    order = known[torch.randperm(known.numel(), generator=generator)]
    held_out = max(10, order.numel() // (5 if order.numel() < 60000 else 10))
    valid, train = order[:held_out], order[held_out:]
    x, y = data.train, data.train_labels
    valid_x = binarize_fixed(x[valid])
    steps = math.ceil(train.numel() / 128)  # per epoch
    max_epochs, patience = max(50, 20000 // steps), max(5, math.ceil(500 / steps))
    _, epochs = _train(x, y, train, seed, network, max_epochs, patience, (valid_x, y[valid]))
    net, _ = _train(x, y, known, seed, network, epochs)
    with torch.no_grad():
        predicted = torch.cat([net(b).argmax(-1) for b in binarize_fixed(data.test).split(1000)])
    return float((predicted == data.test_labels).float().mean()), epochs


@torch.no_grad()
def generative_classifier(vae, x: torch.Tensor, labels: torch.Tensor,
                          samples: int = GENERATIVE_SAMPLES) -> tuple[float, float]:
    """What the unlabelled images can teach q(y|x). For an unlabelled image M2's bound is
    Σ_y q(y|x) ELBO(x, y) + H(q(y|x)) (Kingma et al. 2014, eq. 7), whose gradient moves q(y|x)
    towards the classes of high ELBO(x, y): towards the generative model's own classifier,
    argmax_y [log p(y) + log p(x|y)], with ELBO(x, y) in place of log p(x|y) (p(y) uniform).

    ``x`` (N, D) binary test images, ``labels`` (N,), on any device (moved to the model's).
    Returns the accuracy of argmax_y ELBO(x, y), each ELBO the mean of ``samples`` draws of
    q(z|x, y) (an estimate: its noise lowers both figures a little), and the share of images on
    which it picks the class q(y|x) picks. Where the two agree, the unlabelled term has little
    to teach the classifier that it does not already predict."""
    vae.eval()
    device = next(vae.parameters()).device
    x, labels = x.to(device), labels.to(device)
    generative, discriminative = [], []
    for xb in x.split(500):
        with pyro.validation_enabled(False):
            elbos = [importance_terms(vae, xb, samples, None, torch.full(
                (xb.shape[0],), k, dtype=torch.int64, device=device))[0].mean(0)
                for k in range(vae.num_classes)]
        generative.append(torch.stack(elbos, -1).argmax(-1))
        discriminative.append(vae.classify(xb).argmax(-1))
    generative, discriminative = torch.cat(generative), torch.cat(discriminative)
    return (float((generative == labels).float().mean()),
            float((generative == discriminative).float().mean()))


def _train(x, y, rows, seed, network, epochs, patience=None, valid=None):
    torch.manual_seed(seed)
    net = network()
    optim = torch.optim.Adam(net.parameters(), lr=1e-3)
    best, best_epoch, since = -1.0, epochs, 0
    for epoch in range(1, epochs + 1):
        for batch in rows[torch.randperm(rows.numel())].split(128):
            loss = F.cross_entropy(net(binarize(x[batch])), y[batch])
            optim.zero_grad()
            loss.backward()
            optim.step()
        if valid is None:
            continue
        with torch.no_grad():
            accuracy = float((net(valid[0]).argmax(-1) == valid[1]).float().mean())
        if accuracy > best:
            best, best_epoch, since = accuracy, epoch, 0
        else:
            since += 1
            if since >= patience:
                break
    return net, best_epoch


def _epochs(text: str) -> str | int:
    """--all-epochs: 'baseline' or a positive number of epochs."""
    if text == "baseline":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'baseline' nor a positive number")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", nargs="+", default=["100", "600", "1000", "3000", "all"])
    parser.add_argument("--seeds", type=int, default=5,
                        help="S seeds (label draws; with every label, the initial weights and "
                             "batch order).")
    parser.add_argument("--first-seed", type=int, default=1,
                        help="The first seed: seeds F … F+S−1 (to add draws to a run).")
    parser.add_argument("--epochs", type=int, default=10, help="M2's training epochs.")
    parser.add_argument("--all-epochs", default="baseline", type=_epochs,
                        help="M2's epochs with every label: 'baseline' (as many as the "
                             "baseline's early stopping chose for that seed) or a number.")
    parser.add_argument("--arch", default="mlp", choices=("mlp", "conv"),
                        help="M2's networks, and the baseline's (the classifier q(y|x)).")
    parser.add_argument("--labelled-passes", type=int, metavar="P",
                        help="M2's --labelled-passes: the labelled images P times an epoch, "
                             "spread among the unlabelled batches (default: a labelled batch "
                             "beside every unlabelled one).")
    parser.add_argument("--json", help="Write every run's figures to this file.")
    parser.add_argument("--table", nargs="+", metavar="JSON",
                        help="Train nothing: print the table of the runs in these --json files.")
    args = parser.parse_args()
    if args.table:
        runs = [run for path in args.table for run in json.load(open(path))]
        labels = list(dict.fromkeys(run["labels"] for run in runs))
        _print_table(runs, labels)
        return
    data = load_data(Config())
    if args.labelled_passes is not None:  # refused now, not hours in
        train = data.train_rows.shape[0]
        for count in args.labels:
            n = train if count == "all" else int(count)
            steps = math.ceil((train - n) / DEFAULT_BATCH) if n < train else 0
            if math.ceil(args.labelled_passes * n / min(DEFAULT_BATCH, n)) > steps:
                parser.error(f"--labelled-passes {args.labelled_passes} does not fit {count} "
                             f"labels ({steps} unlabelled batches an epoch); give --labels "
                             "counts it fits")
    config = Config(labelled="all", arch=args.arch)
    config = config.for_data(data.data_shape, data.train_rows.shape[0])
    arch = config.model.arch.build()

    def network():
        return arch.classifier(data.data_shape, 10)

    # The generative classifier's test images, binarised once as fit scores them.
    test_x = binarize_fixed(data.test[:GENERATIVE_IMAGES]).float()
    test_labels = data.test_labels[:GENERATIVE_IMAGES]
    runs = []
    for count in args.labels:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            keep = None if count == "all" else int(count)
            labels = hide_labels(data, keep, seed, 10).train_labels
            started = time.perf_counter()
            accuracy, epochs = baseline(data, labels, seed, network)
            baseline_seconds = time.perf_counter() - started
            # With every label both are classifiers trained on the same images: M2 gets the
            # baseline's training length, which its early stopping chose on held-out labels.
            m2_epochs = args.epochs
            if count == "all":
                m2_epochs = epochs if args.all_epochs == "baseline" else args.all_epochs
            started = time.perf_counter()
            result = pyro_vae.fit(data=data, labelled=count, seed=seed, epochs=m2_epochs,
                                  arch=args.arch, labelled_passes=args.labelled_passes,
                                  progress=False)
            m2_seconds = time.perf_counter() - started
            generative, agreement = generative_classifier(result.model, test_x, test_labels)
            pyro.clear_param_store()
            run = {"labels": count, "seed": seed, "arch": args.arch,
                   "labelled_passes": args.labelled_passes,
                   "m2": result.metrics[-1]["test_accuracy"],
                   "m2_test_neg_elbo": result.metrics[-1]["test_neg_elbo"],
                   "m2_epochs": m2_epochs, "m2_seconds": round(m2_seconds),
                   "m2_generative": generative, "m2_agreement": agreement,
                   "baseline": accuracy, "baseline_epochs": epochs,
                   "baseline_seconds": round(baseline_seconds)}
            runs.append(run)
            print(json.dumps(run), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    _print_table(runs, args.labels)


def _print_table(runs: list[dict], labels: list[str]) -> None:
    """Mean ± standard deviation over seeds per label count, network, labelled passes and M2
    epochs (with every label, the epochs vary with the seed), with the generative classifier's
    accuracy and agreement where the runs measured them (the count of runs measured where not
    all were)."""

    def key(run: dict) -> tuple:
        # Runs saved before the script recorded their epochs trained its default then, 10.
        epochs = "per seed" if run["labels"] == "all" else run.get("m2_epochs", 10)
        return run["labels"], run.get("arch", "mlp"), run.get("labelled_passes"), epochs

    groups = list(dict.fromkeys(key(r) for r in runs if r["labels"] in labels))
    print("\n| labels | networks | labelled passes | M2 epochs | M2 | baseline | "
          "M2 − baseline | argmax ELBO(x, y) | agrees with q(y|x) | runs |\n" + "|---" * 10 +
          "|")
    for group in groups:
        mine = [r for r in runs if key(r) == group]
        m2, base = [r["m2"] for r in mine], [r["baseline"] for r in mine]
        gap = [a - b for a, b in zip(m2, base)]
        measured = [r for r in mine if "m2_generative" in r]
        generative = _spread([r["m2_generative"] for r in measured]) if measured else "—"
        agreement = _spread([r["m2_agreement"] for r in measured]) if measured else "—"
        if measured and len(measured) < len(mine):
            generative += f" ({len(measured)} runs)"
            agreement += f" ({len(measured)} runs)"
        count, arch, passes, epochs = group
        passes = "every step" if passes is None else passes
        print(f"| {count} | {arch} | {passes} | {epochs} | {_spread(m2)} | {_spread(base)} | "
              f"{_spread(gap, sign=True)} | {generative} | {agreement} | {len(mine)} |")


def _spread(values: list[float], sign: bool = False) -> str:
    mean = 100 * statistics.mean(values)
    sd = 100 * statistics.stdev(values) if len(values) > 1 else math.nan
    text = f"{mean:+.1f}" if sign else f"{mean:.1f}"
    return text + (f" ± {sd:.1f}" if len(values) > 1 else "")


if __name__ == "__main__":
    main()
