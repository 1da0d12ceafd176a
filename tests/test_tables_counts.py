"""Tables (CSV, Parquet), counts and real-valued vectors: read, trained and scored in the data's
own units, on the tables that statsmodels ships and on Fashion-MNIST's 8-bit levels."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pyro
import pytest
import scipy.stats as st
import torch

from pyro_vae import Config, Data, fit
from pyro_vae.config import DataConfig
from pyro_vae.evaluation.evaluate import evaluate
from pyro_vae.io.checkpoint import load_run
from pyro_vae.io.data import read_data, read_table
from pyro_vae.registry import LIKELIHOODS

from conftest import cli


def statsmodels_table(name: str) -> pd.DataFrame:
    import statsmodels.datasets as datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(datasets, name).load_pandas().data


@pytest.fixture(scope="module")
def macro(tmp_path_factory):
    """statsmodels' US macroeconomic table (203 quarters × 14 numeric columns) as a CSV, and
    the same table with three columns in other units (× 1000) as Parquet."""
    folder = tmp_path_factory.mktemp("tables")
    table = statsmodels_table("macrodata")
    table.to_csv(folder / "macro.csv", index=False)
    rescaled = table.copy()
    for column in ("realgdp", "realcons", "m1"):
        rescaled[column] *= 1000.0
    rescaled.to_parquet(folder / "macro_units.parquet")
    return folder


@pytest.fixture(scope="module")
def visits(tmp_path_factory):
    """The integer columns of statsmodels' RAND health insurance table (20,190 people):
    doctor visits (over-dispersed: mean 2.9, variance 20) and four 0/1 indicators."""
    table = statsmodels_table("randhie")[["mdvis", "idp", "hlthg", "hlthf", "hlthp"]]
    path = tmp_path_factory.mktemp("counts") / "visits.csv"
    table.astype(np.int64).to_csv(path, index=False)
    return path


TABLE_OPTIONS = ("--likelihood", "normal-learned", "--z-dim", "2", "--batch-size", "32",
                 "--quiet")


def test_tables_train_standardised_and_score_in_the_data_units(macro, tmp_path):
    runs = {}
    for name, source in (("csv", macro / "macro.csv"), ("parquet", macro / "macro_units.parquet")):
        result = cli("fit", "--dataset", source, "--out", tmp_path / name, "--epochs", 5,
                     *TABLE_OPTIONS)
        assert result.exit_code == 0, result.output
        runs[name] = json.loads((tmp_path / name / "config.json").read_text())
        assert runs[name]["model"]["standardize"] is True
        assert runs[name]["model"]["data_shape"] == [14]
    # Standardised, the two tables are the same data, so the model trains the same way, and
    # its log-likelihoods differ by the log-Jacobian of the change of units: 3 log 1000 nats.
    shift = 3 * math.log(1000.0)
    rows = {name: pd.read_csv(tmp_path / name / "metrics.csv") for name in runs}
    for column in ("train_neg_elbo", "test_neg_elbo"):
        gap = (rows["parquet"][column] - rows["csv"][column]).to_numpy()
        assert gap == pytest.approx(np.full(5, shift), abs=0.05), gap
    nll = {}
    for name in runs:
        vae, config = load_run(tmp_path / name)
        x = read_data(config.data).test
        pyro.set_rng_seed(0)
        nll[name] = evaluate(vae, x, iwae_samples=200, progress=False)["nll"]
        # Samples and reconstructions come back in the data's own units.
        recon, gdp = vae.reconstruct(x)[:, 2].numpy(), x[:, 2].numpy()
        assert abs(recon.mean() - gdp.mean()) < 0.5 * gdp.std()
        assert np.corrcoef(recon, gdp)[0, 1] > 0.9
    assert nll["parquet"] - nll["csv"] == pytest.approx(shift, abs=0.05)


def test_table_label_column_and_encodings(macro, tmp_path):
    out = tmp_path / "run"
    assert cli("fit", "--dataset", macro / "macro.csv", "--label-column", "quarter", "--out", out,
               *TABLE_OPTIONS, "--epochs", "2").exit_code == 0
    assert json.loads((out / "config.json").read_text())["model"]["data_shape"] == [13]
    result = cli("encode", out, "--data", macro / "macro.csv", "--out", tmp_path / "codes.npz")
    assert result.exit_code == 0, result.output
    assert "wrote codes of 203 rows" in result.output
    codes = np.load(tmp_path / "codes.npz")
    assert codes["loc"].shape == (203, 2)
    result = cli("evaluate", out, "--iwae-samples", 10)
    assert result.exit_code == 0, result.output
    assert "rows              21 (the test set of" in result.output  # table rows, not images
    assert "nats/row" in result.output and "nats/image" not in result.output
    assert sorted(set(codes["labels"].tolist())) == [0, 1, 2, 3]  # quarters 1-4, as codes


def test_test_tables_are_read_by_column_and_class_name(tmp_path):
    """statsmodels' Grunfeld investment table (11 firms × 20 years): a test table with its
    columns in another order and only some firms is read as the training table was."""
    table = statsmodels_table("grunfeld")
    table.to_csv(tmp_path / "grunfeld.csv", index=False)
    out = tmp_path / "run"
    result = cli("fit", "--dataset", tmp_path / "grunfeld.csv", "--label-column", "firm",
                 "--out", out, *TABLE_OPTIONS, "--epochs", "2")
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "config.json").read_text())["data"]
    assert stored["columns"] == ["invest", "value", "capital", "year"]
    assert stored["classes"] == sorted(table["firm"].unique())

    some = table[table["firm"].isin(["US Steel", "IBM", "Westinghouse"])]
    some[["year", "firm", "capital", "invest", "value"]].to_csv(tmp_path / "mixed.csv",
                                                                index=False)
    some.to_csv(tmp_path / "same.csv", index=False)
    codes = {}
    for name in ("mixed", "same"):
        result = cli("encode", out, "--data", tmp_path / f"{name}.csv", "--out",
                     tmp_path / f"{name}.npz")
        assert result.exit_code == 0, result.output
        codes[name] = np.load(tmp_path / f"{name}.npz")
    np.testing.assert_array_equal(codes["mixed"]["loc"], codes["same"]["loc"])
    expected = [stored["classes"].index(firm) for firm in some["firm"]]
    assert codes["mixed"]["labels"].tolist() == expected  # the training codes, not 0, 1, 2

    table.drop(columns="value").to_csv(tmp_path / "short.csv", index=False)
    other = table.copy()
    other.loc[0, "firm"] = "Ford"
    other.to_csv(tmp_path / "ford.csv", index=False)
    for name, message in (("short", "lacks value the training table's feature columns"),
                          ("ford", "holds classes Ford that the training table does not have")):
        result = cli("encode", out, "--data", tmp_path / f"{name}.csv", "--out",
                     tmp_path / "x.npz")
        assert result.exit_code == 1 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_a_table_smaller_than_a_batch_trains_with_the_defaults(tmp_path):
    """statsmodels' Longley table (16 years × 7 economic series): 14 training rows, fewer
    than the default batch of 128, train in batches of all 14; an explicit larger
    --batch-size is still refused."""
    statsmodels_table("longley").to_csv(tmp_path / "longley.csv", index=False)
    config = Config(dataset=str(tmp_path / "longley.csv"), likelihood="normal-learned")
    assert config.for_data((7,), 14).train.batch_size == 14
    assert config.for_data((7,), 14).train.epochs == 400  # about 3000 steps, capped at 400
    result = cli("fit", "--dataset", tmp_path / "longley.csv", "--out", tmp_path / "run",
                 "--likelihood", "normal-learned", "--z-dim", "2", "--epochs", 10, "--quiet")
    assert result.exit_code == 0, result.output
    training = json.loads((tmp_path / "run" / "config.json").read_text())["training"]
    assert training["batch_size"] == 14
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert len(metrics) == 10 and np.isfinite(metrics["test_neg_elbo"]).all()
    result = cli("fit", "--dataset", tmp_path / "longley.csv", "--out", tmp_path / "big",
                 "--likelihood", "normal-learned", "--batch-size", 32)
    assert result.exit_code == 1 and "only 14 training rows but --batch-size is 32" in (
        result.output)


def test_bad_tables_are_refused_in_one_line_and_nothing_is_written(macro, tmp_path):
    table = pd.read_csv(macro / "macro.csv")
    table.insert(0, "country", "US")
    table.to_csv(tmp_path / "words.csv", index=False)
    holes = pd.read_csv(macro / "macro.csv")
    holes.loc[[3, 7], "cpi"] = np.nan
    holes.to_parquet(tmp_path / "holes.parquet")
    cases = {
        "words.csv": ("non-numeric columns country", ()),
        "holes.parquet": ("2 missing values (2 in column 'cpi')", ()),
        "macro.csv": ("no column 'region'", ("--label-column", "region")),
    }
    for name, (message, extra) in cases.items():
        source = macro / name if name == "macro.csv" else tmp_path / name
        result = cli("fit", "--dataset", source, "--out", tmp_path / "run", *extra)
        assert result.exit_code == 1 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / "run").exists()
    result = cli("fit", "--dataset", tmp_path / "words.csv", "--drop-non-numeric", "--out",
                 tmp_path / "run", *TABLE_OPTIONS, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert read_table(str(tmp_path / "words.csv"), drop_non_numeric=True)["x_train"].shape == (
        203, 14)


def test_count_likelihoods_fit_doctor_visits_in_count_units(visits):
    data = read_data(DataConfig(dataset=str(visits)), counts=True)
    assert data.train.max() == 77  # counts kept as they are, not read as grey levels
    x = data.test.numpy()
    # The baseline: independent Poissons with each feature's mean.
    baseline = -st.poisson.logpmf(x, data.train.numpy().mean(0)).sum(1).mean()
    for likelihood in ("poisson", "negbinomial", "zinb"):
        vae, rows = fit(dataset=str(visits), likelihood=likelihood, library="none", z_dim=2,
                        epochs=3, progress=False)
        assert rows[-1]["test_bits_per_dim"] is not None  # a mass function: bits/dim
        pyro.set_rng_seed(0)
        nll = evaluate(vae, data.test, iwae_samples=100, progress=False)["nll"]
        assert nll < baseline - 0.8, (likelihood, nll, baseline)
        # Draws x ~ p(x|z), z ~ p(z) reproduce the visits' mean (2.9) and share of zeros (31%).
        visits_drawn = vae.sample(5000)[:, 0]
        assert float(visits_drawn.mean()) == pytest.approx(float(x[:, 0].mean()), rel=0.15)
        assert float((visits_drawn == 0).float().mean()) == pytest.approx(
            float((x[:, 0] == 0).mean()), abs=0.04)
        if likelihood != "poisson":  # every feature's dispersion was trained
            assert float(vae.likelihood.log_theta.detach().abs().min()) > 1e-3


def test_count_likelihoods_match_the_closed_forms():
    torch.manual_seed(0)
    x = torch.tensor([[0.0, 3.0, 12.0], [5.0, 0.0, 1.0]])
    params = torch.randn(2, 3, 2)
    for name in ("poisson", "negbinomial", "zinb"):
        part = LIKELIHOODS[name](library="observed")
        part.prepare(3)
        if name != "poisson":
            part.log_theta.data = torch.tensor([-0.5, 0.3, 1.2])
        theta = part.log_theta.exp().detach().numpy() if name != "poisson" else None
        k = part.params_per_dim
        logp = part(params[..., :k], x=x).log_prob(x).detach().numpy()
        # μ = ℓ softmax(f): the observed library size times the decoder's proportions.
        mu = (x.sum(-1, keepdim=True) * params[..., 0].softmax(-1)).numpy()
        if name == "poisson":
            expected = st.poisson.logpmf(x.numpy(), mu)
        else:
            nb = st.nbinom.pmf(x.numpy(), theta, theta / (theta + mu))
            if name == "zinb":
                pi = torch.sigmoid(params[..., 1]).numpy()
                nb = pi * (x.numpy() == 0) + (1 - pi) * nb
            expected = np.log(nb)
        assert logp == pytest.approx(expected.sum(-1), rel=1e-4), name
        kept = 1 - torch.sigmoid(params[..., 1]).numpy() if name == "zinb" else 1.0
        assert part.mean(params[..., :k], x=x).numpy() == pytest.approx(mu * kept, rel=1e-4)
    binomial = LIKELIHOODS["binomial"](trials=255)
    levels = torch.tensor([[0.0, 128.0, 255.0]])
    logits = torch.randn(1, 3, 1)
    expected = st.binom.logpmf(levels.numpy(), 255, torch.sigmoid(logits[..., 0]).numpy()).sum()
    assert float(binomial(logits).log_prob(levels)) == pytest.approx(expected, rel=1e-5)


def test_bad_counts_are_refused_in_one_line(tmp_path):
    cases = {
        "negative.npy": (np.array([[1, -2], [3, 4]] * 10), "poisson", "9 negative values"),
        "floats.npy": (np.full((20, 3), 0.5, dtype=np.float32), "negbinomial",
                       "not whole numbers"),
        "big.npy": (np.full((20, 3), 300, dtype=np.int64), "normal", "count likelihood"),
        "over.npy": (np.full((20, 3), 300, dtype=np.int64), "binomial", "--binomial-trials"),
    }
    for name, (array, likelihood, message) in cases.items():
        np.save(tmp_path / name, array)
        result = cli("fit", "--dataset", tmp_path / name, "--likelihood", likelihood,
                     "--batch-size", "4", "--out", tmp_path / "run")
        assert result.exit_code == 1 and message in result.output, (name, result.output)
        assert not (tmp_path / "run").exists()
    assert "--standardize maps the data to the real line" in cli(
        "fit", "--likelihood", "poisson", "--standardize", "--out", tmp_path / "run").output
    assert not (tmp_path / "run").exists()


def test_binomial_scores_8bit_levels_with_bits_per_dim(fmnist_npz, tmp_path):
    out = tmp_path / "run"
    result = cli("fit", "--dataset", fmnist_npz, "--likelihood", "binomial", "--epochs", "2",
                 "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "metrics.csv")
    # bits/dim = NLL / (784 ln 2), and training lowers it. (Binomial(255, p) is far too peaked
    # for photographs' levels, which is why the categorical likelihood exists.)
    bits = rows["test_bits_per_dim"]
    assert bits.iloc[-1] < bits.iloc[0]
    assert bits.iloc[-1] == pytest.approx(rows["test_neg_elbo"].iloc[-1] / (784 * math.log(2)),
                                          rel=1e-4)
    vae, config = load_run(out)
    x = read_data(config.data, counts=True).test[:16]
    assert x.max() == 255  # levels, not grey levels in [0, 1]
    recon = vae.reconstruct(x)
    assert 0 <= float(recon.min()) and float(recon.max()) <= 255
    assert (out / "reconstructions.png").is_file() and (out / "samples.png").is_file()


def test_standardised_nll_matches_the_closed_form_in_data_units():
    # With x' = (x − m)/s and x' | z ~ N(Wz + b, c²I): p(x) = N(m + s⊙b, S (WWᵀ + c²I) S),
    # S = diag(s), which includes the log-Jacobian −Σ log s_d of the standardisation.
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 2)) * np.array([[1.0], [3.0], [10.0], [0.2], [50.0], [1.0]])
    x = rng.normal(size=(1200, 2)) @ w.T + 5.0 + rng.normal(size=(1200, 6))
    x = torch.tensor(x, dtype=torch.float32)
    vae, _ = fit(data=Data(x[:1000], x[1000:], (6,)), arch="linear", likelihood="normal",
                 standardize=True, obs_scale=0.5, z_dim=2, epochs=5, progress=False)
    wd, b = vae.decoder.net.weight.detach(), vae.decoder.net.bias.detach()
    m, s = vae.scaling.loc, vae.scaling.scale
    cov = torch.diag(s) @ (wd @ wd.T + 0.25 * torch.eye(6)) @ torch.diag(s)
    exact = -torch.distributions.MultivariateNormal(m + s * b, cov).log_prob(x[1000:])
    pyro.set_rng_seed(0)
    result = evaluate(vae, x[1000:], iwae_samples=500, progress=False)
    assert abs(result["nll"] - exact.mean().item()) < 3 * result["nll_stderr"] + 0.02


def _linear_gaussian(seed: int = 0):
    """x = μ + A z + ε, ε ~ N(0, ¼ I): probabilistic PCA with D = 20, q = 3, features whose
    scales run from about 0.5 to 4 and means ±1 (the case of issue 11)."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(20, 3)) * np.linspace(0.5, 4.0, 20)[:, None] * 0.5
    mean = rng.choice([-1.0, 1.0], size=20)

    def draw(n):
        return (mean + rng.normal(size=(n, 3)) @ loadings.T + 0.5 * rng.normal(size=(n, 20)))

    return draw(10000).astype(np.float32), draw(2000).astype(np.float32)


def _ppca(train: np.ndarray, test: np.ndarray, q: int = 3):
    """Exact maximum-likelihood probabilistic PCA (Tipping & Bishop 1999, eqs. 7–8): the
    held-out NLL (nats per point) and the principal subspace (D, q)."""
    mean, cov = train.mean(0), np.cov(train.T, bias=True)
    eigenvalues, vectors = np.linalg.eigh(cov)
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
    noise = eigenvalues[q:].mean()
    w = vectors[:, :q] * np.sqrt(eigenvalues[:q] - noise)
    model = st.multivariate_normal(mean, w @ w.T + noise * np.eye(train.shape[1]))
    return -model.logpdf(test).mean(), vectors[:, :q]


@pytest.mark.slow
def test_defaults_reach_probabilistic_pca_on_a_linear_gaussian():
    import scipy.linalg

    train, test = _linear_gaussian()
    exact_nll, subspace = _ppca(train, test)
    data = Data(torch.from_numpy(train), torch.from_numpy(test), (20,))
    vae, rows = fit(data=data, arch="linear", likelihood="normal-learned", z_dim=3,
                    progress=False)
    assert vae.scaling is not None and len(rows) == 38  # standardised; ≈ 3000 steps
    pyro.set_rng_seed(0)
    nll = evaluate(vae, torch.from_numpy(test), iwae_samples=500, progress=False)["nll"]
    assert abs(nll - exact_nll) < 0.01 * abs(exact_nll), (nll, exact_nll)
    vae, _ = fit(data=data, arch="linear", likelihood="normal", z_dim=3, progress=False)
    assert vae.scaling is None  # a fixed --obs-scale keeps its meaning in data units
    loadings = vae.decoder.net.weight.detach().numpy()
    angles = np.degrees(scipy.linalg.subspace_angles(loadings, subspace))
    assert angles.max() < 5.0, angles


def test_config_defaults_for_real_vectors_are_stored():
    config = Config(arch="linear", likelihood="normal-learned", data_shape=(20,))
    assert config.model.standardizes and config.train.lr is None and config.train.epochs is None
    assert config.train.for_data(True, 10000) == {"lr": 1e-2, "epochs": 38}
    assert config.train.for_data(False, 60000) == {"lr": 1e-3, "epochs": 10}
    assert Config(likelihood="normal", data_shape=(20,)).model.standardizes is False
    assert Config(data_shape=(28, 28), likelihood="normal-learned").model.standardizes is False


def _own_count_model():
    """A user-built model of the 5 visit features: own networks, the zinb likelihood."""
    from pyro_vae import VAE

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(5, 4)

        def forward(self, x):
            loc, log_scale = self.net(x).chunk(2, dim=-1)
            return loc, log_scale.exp()

    pyro.set_rng_seed(0)
    prior = pyro.distributions.Normal(torch.zeros(2), 1.0).to_event(1)
    return VAE(Encoder(), torch.nn.Linear(2, 10), prior, likelihood="zinb")


def test_own_count_model_trains_reloads_and_evaluates_the_same(visits, tmp_path):
    from pyro_vae import load

    vae, _ = fit(_own_count_model(), dataset=str(visits), epochs=1, out=tmp_path / "run",
                 progress=False)
    assert vae.adapted and float(vae.likelihood.library_size) > 1  # the mean library size
    again = load(tmp_path / "run", model=_own_count_model())
    assert torch.equal(again.likelihood.log_theta, vae.likelihood.log_theta)
    x = read_data(DataConfig(dataset=str(visits)), counts=True).test[:200]
    figures = []
    for model in (vae, again):
        pyro.set_rng_seed(0)
        figures.append(evaluate(model, x, iwae_samples=20, progress=False)["nll"])
    assert figures[0] == pytest.approx(figures[1], rel=1e-6)


def test_denoising_counts_and_diagnostics_stay_in_count_units(visits, tmp_path):
    # Gaussian corruption acts on what the encoder reads, log(1 + x), so it cannot take the
    # log of a negative count; the posterior predictive draws are counts of the data's range.
    from pyro_vae.evaluation.diagnostics import inference_data

    vae, rows = fit(dataset=str(visits), likelihood="negbinomial", library="none",
                    corrupt="gaussian:0.5", z_dim=2, epochs=1, progress=False)
    assert math.isfinite(rows[-1]["train_neg_elbo"])
    x = read_data(DataConfig(dataset=str(visits)), counts=True).test[:50]
    predicted = inference_data(vae, x, draws=20).posterior_predictive["x"].values
    assert predicted.dtype == np.int64 and predicted.min() >= 0 and predicted.max() > 5


def test_table_options_apply_to_tables_only():
    with pytest.raises(Exception, match="--label-column applies to tables"):
        Config(dataset="mine.npz", label_column="species")
