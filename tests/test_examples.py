import re
import subprocess
import sys
from pathlib import Path

import pyro_vae

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_svi_loop_example_learns_and_saves_a_loadable_model(tmp_path):
    proc = subprocess.run(
        [sys.executable, EXAMPLES / "svi_loop.py", "--epochs", "2", "--limit", "3000",
         "--out", tmp_path / "run"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    losses = [float(v) for v in re.findall(r"test -ELBO ([\d.]+)", proc.stdout)]
    assert len(losses) == 3 and losses[0] - losses[-1] > 100, proc.stdout
    assert pyro_vae.load(tmp_path / "run").config.z_dim == 20
