"""The command line answers its help and usage errors without importing torch, Pyro,
matplotlib or ArviZ (the time it takes is measured in benchmarks/bench_cli.py)."""

import json
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
                                  ["sample", "--help"], ["evaluate", "--help"],
                                  ["fit", "--help"], ["fit", "--prior", "no-such-prior"],
                                  ["fit", "--no-such-option"], ["fit", "--z-dim", "two"]])
def test_help_and_usage_errors_import_no_heavy_library(args):
    proc = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)],
                          capture_output=True, text=True, timeout=60)
    assert "loaded []" in proc.stdout, proc.stdout + proc.stderr


def test_fit_options_file_matches_the_declarations():
    """fit's options come from fit_options.json; it must say what the parts declare today
    (after adding or changing a part: python -m pyro_vae.catalogue)."""
    from pyro_vae import catalogue

    written = json.loads(catalogue.PATH.read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(catalogue.derive())), (
        "pyro_vae/fit_options.json is out of date: run python -m pyro_vae.catalogue")
    assert {"prior", "prior_df", "flows", "hidden", "kl_warmup"} <= {s["name"] for s in written}


def test_fit_help_lists_the_declared_options():
    proc = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "fit", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--prior-df", "--flows", "--obs-scale", "--hidden", "--kl-warmup", "--jit"):
        assert flag in proc.stdout
    assert "2 for --guide iaf and --prior flow" in " ".join(proc.stdout.split())
