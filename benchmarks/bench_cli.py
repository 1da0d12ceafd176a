"""Start-up time of the command line: ``pyro-vae --help`` against a bare ``python -c pass``.

    uv run python benchmarks/bench_cli.py

``pyro-vae --help`` imports click and the package's torch-free declarations only, so it should
answer within about 0.5 s on a 2-core machine. Each figure is the median of 15 alternated runs
of fresh interpreters, measured side by side, with ``fit --help`` (which reads the parts'
declarations from ``fit_options.json``, also without torch). Run it alone: anything else on
the machine skews it.
"""

import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "pyro-vae --help": [sys.executable, "-m", "pyro_vae.cli", "--help"],
    "pyro-vae fit --help": [sys.executable, "-m", "pyro_vae.cli", "fit", "--help"],
}


def main(rounds: int = 15) -> None:
    times = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["python -c pass"])
    print(f"{'command':<22} {'median s':>9} {'over python':>12}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<22} {median:>9.3f} {median - base:>12.3f}")
    for name in ("pyro-vae --help", "pyro-vae fit --help"):
        took = statistics.median(times[name])
        print(f"{name} answers in {took:.2f} s "
              f"({'within' if took < 0.5 else 'above'} the 0.5 s target)")


if __name__ == "__main__":
    main()
