"""The command line answers its help and usage errors without importing torch, Pyro,
matplotlib or ArviZ (the time it takes is measured in benchmarks/bench_cli.py)."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "pyro", "matplotlib", "arviz", "torchvision")
PROBE = """
import sys
from pyro_vae.cli import main
try:
    main({args!r}, standalone_mode=False)
except Exception as err:
    print("raised", type(err).__name__)
print("loaded", sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["no-such-command"],
                                  ["sample", "--help"], ["evaluate", "--help"]])
def test_help_and_usage_errors_import_no_heavy_library(args):
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)],
                          capture_output=True, text=True, timeout=60)
    assert "loaded []" in proc.stdout, proc.stdout + proc.stderr


def test_fit_help_lists_the_declared_options():
    proc = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "fit", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--prior-df", "--flows", "--obs-scale", "--hidden", "--kl-warmup", "--jit"):
        assert flag in proc.stdout
    assert "2 for --guide iaf and --prior flow" in " ".join(proc.stdout.split())
