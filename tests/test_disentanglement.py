"""The shapes dataset (every combination of five known factors once) and the mutual
information gap (Chen et al. 2018): near 1 for codes that are the factors, near 0 for random
codes, lower when one code holds two factors; reported by `pyro-vae evaluate` on shapes runs."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pyro_vae import Config, load_data
from pyro_vae.cli import main
from pyro_vae.evaluation.disentanglement import mutual_information_gap
from pyro_vae.io import shapes
from pyro_vae.io.data import class_names, known_factors


@pytest.fixture(scope="module")
def split():
    return shapes.split()


def test_every_combination_of_the_factors_appears_once(split):
    factors = torch.cat([split["train_factors"], split["test_factors"]])
    sizes = (3, 6, 10, 16, 16)
    assert factors.shape == (46080, 5) and len(split["test"]) == 4608
    assert len({tuple(row) for row in factors.tolist()}) == 46080
    assert [int(factors[:, k].max()) + 1 for k in range(5)] == list(sizes)
    again = shapes.split()
    assert torch.equal(again["test_factors"], split["test_factors"])


def test_images_follow_their_factors(split):
    x, f = split["train"].float(), split["train_factors"]
    rows = torch.arange(32.0)
    mass = x.sum((1, 2))
    assert mass.min() > 0 and x[:, [0, -1], :].sum() == 0 and x[:, :, [0, -1]].sum() == 0
    centre_x = (x.sum(1) * rows).sum(1) / mass  # columns
    centre_y = (x.sum(2) * rows).sum(1) / mass  # rows
    for k, centre in ((3, centre_x), (4, centre_y)):
        means = [float(centre[f[:, k] == i].mean()) for i in range(16)]
        assert all(a < b for a, b in zip(means, means[1:]))  # the position moves the shape
    sizes = [float(mass[f[:, 1] == i].mean()) for i in range(6)]
    assert all(a < b for a, b in zip(sizes, sizes[1:]))  # larger scale, more pixels
    # Orientation turns a square: the share of its pixels on the axes' rows changes.
    squares = x[(f[:, 0] == 0) & (f[:, 1] == 5) & (f[:, 3] == 8) & (f[:, 4] == 8)]
    assert len({tuple(img.flatten().tolist()) for img in squares}) > 2


def test_load_data_reads_shapes_with_the_shape_as_label(split):
    data = load_data(Config(dataset="shapes"))
    assert data.data_shape == (32, 32) and data.train_rows.shape == (41472, 1024)
    assert torch.equal(data.test_labels, split["test_factors"][:, 0])
    assert class_names("shapes") == ["square", "ellipse", "triangle"]
    values, names = known_factors("shapes")
    assert names == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert known_factors("fashion-mnist") is None


def test_mig_is_near_one_for_the_factors_and_near_zero_for_noise(split):
    f = split["test_factors"]
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(len(f), 5))
    exact = np.concatenate([f.numpy() + 0.01 * rng.normal(size=f.shape), noise], 1)
    assert mutual_information_gap(torch.tensor(exact), f)["mig"] > 0.9
    assert mutual_information_gap(torch.tensor(rng.normal(size=(len(f), 10))), f)["mig"] < 0.05
    # The two positions rotated by 45°: each is spread over two codes, so its gap shrinks.
    mixed = exact.copy()
    mixed[:, 3] = exact[:, 3] + exact[:, 4]
    mixed[:, 4] = exact[:, 3] - exact[:, 4]
    result = mutual_information_gap(torch.tensor(mixed), f)
    assert result["per_factor"][3] < 0.6 and result["per_factor"][4] < 0.6
    assert result["mig"] < 0.8
    with pytest.raises(ValueError, match="MIG needs codes"):
        mutual_information_gap(torch.zeros(5, 1), f[:5])


def test_evaluate_reports_mig_and_the_kl_terms_for_a_shapes_run(tmp_path):
    out = tmp_path / "run"
    fit = CliRunner().invoke(main, ["fit", "--dataset", "shapes", "--limit", "3000", "--epochs",
                                    "2", "--z-dim", "4", "--hidden", "64", "--out", str(out),
                                    "--quiet"])
    assert fit.exit_code == 0, fit.output
    result = CliRunner().invoke(main, ["evaluate", str(out), "--iwae-samples", "5", "--limit",
                                       "600", "--json", str(tmp_path / "e.json"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "MIG " in result.output and "pos_x" in result.output
    assert "KL terms          MI" in result.output
    figures = json.load(open(tmp_path / "e.json"))
    assert 0 <= figures["mig"] <= 1 and set(figures["mig_per_factor"]) == set(shapes.FACTORS)
    terms = figures["kl_terms"]
    assert terms["mi"] + terms["tc"] + terms["dim_kl"] == pytest.approx(figures["kl"], rel=0.2)
    # One image: no MIG and no KL terms to estimate, and no error either.
    one = CliRunner().invoke(main, ["evaluate", str(out), "--iwae-samples", "5", "--limit", "1",
                                    "--quiet"])
    assert one.exit_code == 0, one.output
    assert "MIG" not in one.output and "KL terms" not in one.output
