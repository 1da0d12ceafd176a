"""Run directories written by the first release (config.json format 1) load, evaluate and
resume with exactly the numbers that release produced.

The fixtures were written by the first release with
``pyro-vae fit --limit 256 --hidden 8 --z-dim 2 --epochs 1 --batch-size 64`` (and ``--guide iaf
--flows 1 --prior mog --prior-components 2 --likelihood normal-learned`` for the second); the
expected figures below were measured with that release.
"""

import json
import shutil
from pathlib import Path

import pyro
import pytest

from pyro_vae import fit, load
from pyro_vae.io.checkpoint import load_run
from pyro_vae.io.data import load_eval_data
from pyro_vae.training.plan import neg_elbo
from conftest import snapshot

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = {
    "run-format1": (561.0639672851562, {"epoch": 2, "train_neg_elbo": 561.1759,
                                        "test_neg_elbo": 558.4404, "test_bits_per_dim": 1.02763}),
    "run-format1-iaf-mog": (715.1466998291015, {"epoch": 2, "train_neg_elbo": 691.408,
                                                "test_neg_elbo": 680.8728}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_format1_run_loads_with_the_same_numbers_and_is_left_as_it_was(name, fashion_mnist):
    before = snapshot(FIXTURES / name)
    vae, config = load_run(FIXTURES / name)
    offset = getattr(vae.likelihood, "offset", None)  # written before the data-mean start
    assert offset is None or (offset.shape == (784,) and not offset.any())
    x, _, _ = load_eval_data(config, None, 200)
    pyro.set_rng_seed(0)
    assert neg_elbo(vae, x) == pytest.approx(EXPECTED[name][0], rel=1e-6)
    assert snapshot(FIXTURES / name) == before


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_format1_run_resumes_exactly_and_is_written_as_format2(name, tmp_path, fashion_mnist):
    shutil.copytree(FIXTURES / name, tmp_path / "run")
    _, rows = fit(resume=tmp_path / "run", epochs=2, progress=False)
    row = {k: v for k, v in rows[-1].items() if k != "train_seconds"}
    new = {"test_mi", "test_tc", "test_dim_kl", "lr"}  # reported since; not by the stored epoch
    assert {k: v for k, v in row.items() if k not in new} == EXPECTED[name][1]
    metrics = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    # The first epoch's row, written before them, leaves those columns empty.
    assert (new & set(row)) <= set(metrics[0].split(",")) and len(metrics) == 3
    assert json.loads((tmp_path / "run" / "config.json").read_text())["format_version"] == 2
    load(tmp_path / "run")  # the upgraded run loads too
