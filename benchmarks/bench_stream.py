"""Peak memory and throughput of ``pyro-vae fit`` on a 2 GB uint8 ``.npy``: streamed through a
memory map (``--stream``) against read into memory (``--no-stream``), side by side.

    uv run python benchmarks/bench_stream.py       # about 12 minutes on 2 CPU cores, 2.1 GB disk

Makes once, in ``--folder``, a uint8 (N, 64, 64, 3) array of at least ``--gigabytes`` GB: 64×64
crops at random places of the colour photographs that scikit-image ships (a dev dependency), so
the pixel statistics are those of photographs. Then trains one epoch on it with each path, each
in a fresh process, and reads that process's peak resident memory (``VmHWM`` in
``/proc/self/status``, which counts the file's pages while they are mapped) and the epoch's
training time from the run's ``metrics.csv`` (the SVI steps only). The network is a small MLP
(``--hidden 64``) so that reading the data, not the arithmetic, dominates: the throughput ratio
is a worst case. The likelihood is ``normal`` (fixed scale), which scores the levels as they
are and costs little; a last streamed run with ``bernoulli`` adds the dynamic binarisation
(drawn batch by batch when streamed, for the whole set before the epoch's steps in memory, so
its epoch times do not compare) and the binarised test set, which is held in memory.

Target (issue 11): the streamed peak stays under 1.5 GB for a file of at least 2 GB.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIDE = 64
CHILD = """
import sys
from pyro_vae.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
else:
    code = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("PEAK_KB", line.split()[1], file=sys.stderr)
sys.exit(code)
"""


def make_file(path: Path, gigabytes: float, seed: int = 0) -> int:
    """Write the uint8 (N, 64, 64, 3) crops to ``path`` (unless there) and return N."""
    import skimage.data as photos

    n = int(np.ceil(gigabytes * 1e9 / (SIDE * SIDE * 3)))
    if path.exists() and np.load(path, mmap_mode="r").shape == (n, SIDE, SIDE, 3):
        return n
    images = [photos.astronaut(), photos.coffee(), photos.chelsea(), photos.rocket()]
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.uint8,
                                    shape=(n, SIDE, SIDE, 3))
    for start in range(0, n, 10_000):
        for i in range(start, min(n, start + 10_000)):
            photo = images[rng.integers(len(images))]
            top = rng.integers(photo.shape[0] - SIDE)
            left = rng.integers(photo.shape[1] - SIDE)
            out[i] = photo[top : top + SIDE, left : left + SIDE]
        out.flush()
    del out
    path.with_suffix(".tmp.npy").rename(path)
    return n


def run_fit(data: Path, stream: bool, out: Path, hidden: int, likelihood: str) -> dict:
    """One epoch of ``pyro-vae fit`` in a fresh process: peak memory, epoch time, wall time."""
    args = ["fit", "--dataset", str(data), "--stream" if stream else "--no-stream",
            "--epochs", "1", "--hidden", str(hidden), "--likelihood", likelihood,
            "--out", str(out), "--overwrite"]
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True,
                            text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    peak = next(int(line.split()[1]) for line in result.stderr.splitlines()
                if line.startswith("PEAK_KB"))
    with open(out / "metrics.csv") as file:
        row = next(csv.DictReader(file))
    return {"peak_gb": peak * 1024 / 1e9, "epoch_s": float(row["train_seconds"]),
            "wall_s": wall, "test_neg_elbo": float(row["test_neg_elbo"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path,
                        default=Path(tempfile.gettempdir()) / "pyro_vae_bench")
    parser.add_argument("--gigabytes", type=float, default=2.1)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    data = args.folder / f"photos_{args.gigabytes:g}gb.npy"
    n = make_file(data, args.gigabytes)
    size = data.stat().st_size / 1e9
    train = n - int(np.ceil(0.1 * n))
    print(f"{data}: {n} images of 64×64×3, {size:.2f} GB; {train} train one epoch")
    results = {}
    runs = [("streamed", True, "normal"), ("in memory", False, "normal"),
            ("streamed", True, "bernoulli")]
    print(f"{'path':<10} {'likelihood':<10} {'peak memory':>12} {'epoch':>9} {'images/s':>9} "
          f"{'whole fit':>10} {'test -ELBO':>11}")
    for i, (name, stream, likelihood) in enumerate(runs):
        r = run_fit(data, stream, args.folder / f"run_{i}", args.hidden, likelihood)
        results.setdefault(name, r)
        print(f"{name:<10} {likelihood:<10} {r['peak_gb']:>9.2f} GB {r['epoch_s']:>7.1f} s "
              f"{train / r['epoch_s']:>9.0f} {r['wall_s']:>8.1f} s {r['test_neg_elbo']:>11.1f}",
              flush=True)
    ratio = results["in memory"]["epoch_s"] / results["streamed"]["epoch_s"]
    print(f"streamed throughput / in memory: {ratio:.2f}; streamed peak "
          f"{results['streamed']['peak_gb']:.2f} GB for a {size:.2f} GB file (target < 1.5 GB)")


if __name__ == "__main__":
    main()
