"""Is the variational posterior right? Checks with ArviZ, after Yao, Vehtari, Simpson & Gelman
(2018), "Yes, but did it work?".

- **Pareto k̂.** For each image, the importance weights log p(x, z_s) − log q(z_s|x) of S draws
  from the guide are fitted with a generalised Pareto tail by PSIS (``arviz.psislw``). k̂ < 0.5:
  q is a good proposal for p(z|x); 0.5–0.7: usable; > 0.7: the importance-sampled estimates, and
  q as an approximation, are unreliable for that image.
- **Reference posterior.** For a few images, p(z|x) ∝ p(z) p(x|z) with the trained decoder fixed
  is sampled with ``pyro.infer.MCMC`` and ``NUTS`` on the model itself, several chains started
  from draws of q; R-hat and ESS (``arviz.summary``) say whether NUTS converged, and the guide's
  means and standard deviations are set beside NUTS's.
- **InferenceData.** Posterior draws of z from q for N images, prior draws, posterior-predictive
  images, pointwise log-likelihoods and the observed images, in one ``arviz.InferenceData``.

A conditional model is checked on its continuous latent given the condition: q(z|x, y) against
p(z|x, y), y the images' labels or covariates; the semi-supervised model's y is its
classifier's most probable class for each image. A hierarchical model's importance weights
(k̂) are over every layer; NUTS samples every layer, and z_1 is compared with q(z_1|x).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch
from matplotlib.figure import Figure
from pyro.infer import MCMC, NUTS

from ..config import data_unit
from ..errors import ConfigError
from ..io.files import atomic_write_bytes, staged_folder, write_json
from ..devices import resolve_device
from ..io.checkpoint import load_run
from ..io.data import eval_data
from ..model import VAE
from ..plots import save_figure
from .evaluate import log_importance_weights

with warnings.catch_warnings():  # ArviZ announces its 1.0 refactor on import; we pin < 1.0
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

#: Yao et al. (2018): k̂ below 0.5 is good, 0.5–0.7 usable, above 0.7 unreliable.
KHAT_GOOD, KHAT_BAD = 0.5, 0.7


def check_diagnosable(vae: VAE) -> None:
    """Raise :class:`ConfigError` for models whose posterior these checks cannot address."""
    if not vae.family.has_density:
        raise ConfigError(
            f"a point-mass guide (--guide {vae.family.name}) has no density, so neither Pareto k̂ "
            "nor a comparison of spreads with NUTS is defined; diagnose a model with a "
            "stochastic guide"
        )
    if not vae.prior.proper:
        raise ConfigError(
            f"under the flat prior (--prior {vae.prior.name}) p(z|x) need not be a proper "
            "distribution; diagnose a model with a proper prior"
        )


#: Images per pass through the decoder in these checks.
_BATCH = 50
#: Fewer importance weights than this give no usable Pareto fit.
MIN_PSIS_DRAWS = 100


def _batched(fn, x: torch.Tensor, dim: int, y: torch.Tensor | None = None):
    """``fn(xb, yb)`` over batches of images of ``x`` and their conditions ``y`` (None
    throughout without), outputs concatenated along ``dim``."""
    outs = [fn(x[i : i + _BATCH], y[i : i + _BATCH] if y is not None else None)
            for i in range(0, x.shape[0], _BATCH)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts, dim=dim) for parts in zip(*outs))
    return torch.cat(outs, dim=dim)


@torch.no_grad()
def inference_data(vae: VAE, x: torch.Tensor, draws: int = 100,
                   y: torch.Tensor | None = None) -> az.InferenceData:
    """q(z|x), p(z), p(x̃|z) and log p(x|z) for the images ``x`` (N, D) as InferenceData (for
    a conditional model given the conditions ``y``, as :meth:`VAE.given` decides).

    Groups and dimensions: ``posterior.z`` (chain, draw, image, latent) from the guide;
    ``prior.z`` the same shape from p(z); ``posterior_predictive.x`` (chain, draw, image,
    pixel), draws x̃ ~ p(x|z) in the likelihood's units (uint8 for discrete likelihoods);
    ``log_likelihood.x`` (chain, draw, image), log p(x|z) in nats; ``observed_data.x`` (image,
    pixel). One chain of ``draws``; images go through the decoder in batches.
    """
    vae.eval()

    def per_batch(xb, yb):
        _, log_lik, z = log_importance_weights(vae, xb, draws, y=yb)  # (S, B), (S, B, z_dim)
        params = vae.decoder_params(z, vae.condition_vector(yb))
        predicted = vae.observation(params, xb).sample()  # (S, B, D), data units
        if vae.likelihood.discrete:
            predicted = predicted.to(torch.int64 if vae.likelihood.counts else torch.uint8)
        return log_lik, z, predicted

    y = vae.given(x, y)
    log_lik, z, predicted = _batched(per_batch, x, dim=1, y=y)
    prior = vae.prior_draws((draws, x.shape[0]))
    coords = {"image": np.arange(x.shape[0]), "latent": np.arange(vae.z_dim),
              "pixel": np.arange(x.shape[1])}

    def group(name, value, dims, chain=True):
        array = value.cpu().numpy()
        return az.dict_to_dataset({name: array[None] if chain else array}, coords=coords,
                                  dims={name: dims}, library=pyro, default_dims=[] if not chain
                                  else None)

    # One chain of independent draws is right here; ArviZ logs that it expects MCMC chains.
    arviz_log = logging.getLogger("arviz")
    level, arviz_log.level = arviz_log.level, logging.ERROR
    try:
        return az.InferenceData(
            posterior=group("z", z, ["image", "latent"]),
            prior=group("z", prior, ["image", "latent"]),
            posterior_predictive=group("x", predicted, ["image", "pixel"]),
            log_likelihood=group("x", log_lik, ["image"]),
            observed_data=group("x", vae.likelihood.to_obs(x), ["image", "pixel"], chain=False),
        )
    finally:
        arviz_log.setLevel(level)


@torch.no_grad()
def pareto_khat(vae: VAE, x: torch.Tensor, draws: int = 1000, chunk: int = 250,
                y: torch.Tensor | None = None) -> np.ndarray:
    """PSIS k̂ of the importance weights p(x, z)/q(z|x), z ~ q(z|x), per image: (N,); for a
    conditional model of p(x, z|y)/q(z|x, y), y as :meth:`VAE.given` decides.

    Yao et al. (2018), §2.1, with ``arviz.psislw`` on ``draws`` weights per image, computed in
    batches of images and chunks of draws.

    Raises
    ------
    ConfigError
        For fewer than :data:`MIN_PSIS_DRAWS` draws, too few to fit a Pareto tail.
    """
    if draws < MIN_PSIS_DRAWS:
        raise ConfigError(f"Pareto k̂ needs at least {MIN_PSIS_DRAWS} draws per image, got {draws}")

    def per_batch(xb, yb):
        return torch.cat([log_importance_weights(vae, xb, min(chunk, draws - k), y=yb)[0]
                          for k in range(0, draws, chunk)])  # (draws, B)

    log_w = _batched(per_batch, x, dim=1, y=vae.given(x, y))
    _, khat = az.psislw(log_w.T.cpu().numpy())
    return np.asarray(khat)


@torch.no_grad()
def guide_draws(vae: VAE, x: torch.Tensor, draws: int = 1000, y: torch.Tensor | None = None
                ) -> torch.Tensor:
    """``draws`` samples of z ~ q(z|x) (q(z|x, y)) for each image of ``x`` (N, D):
    (draws, N, z_dim)."""
    vae.eval()
    return _batched(lambda xb, yb: vae.posterior(xb, yb).sample((draws,)), x, dim=1,
                    y=vae.given(x, y))


def nuts_reference(
    vae: VAE,
    x: torch.Tensor,
    chains: int = 4,
    warmup: int = 400,
    samples: int = 800,
    progress: bool = True,
    y: torch.Tensor | None = None,
) -> az.InferenceData:
    """Draws from p(z|x) ∝ p(z) p(x|z), decoder fixed, by NUTS (Hoffman & Gelman 2014); for a
    conditional model from p(z|x, y), y as :meth:`VAE.given` decides.

    Runs ``pyro.infer.MCMC`` with ``NUTS`` on the model itself for the images ``x`` (M, D)
    jointly (their posteriors are independent), ``chains`` ≥ 2 chains each started from an
    overdispersed draw of q(z|x), its deviation from q's location doubled, so that R-hat can
    notice posterior mass that q misses (Gelman & Rubin 1992). Returns InferenceData with
    ``posterior.z`` (chain, draw, image, latent) and NUTS's ``sample_stats``.

    Raises
    ------
    ConfigError
        For fewer than two chains, with which R-hat is not defined.
    """
    if chains < 2:
        raise ConfigError("the NUTS reference needs at least 2 chains for R-hat; use --chains 4")
    vae.eval()
    with torch.no_grad():
        y = vae.given(x, y)
        centre = vae.encode(x, y)[0]
        start = {"z": centre + 2.0 * (vae.posterior(x, y).sample((chains,)) - centre)}
        if vae.hierarchical:  # the layers above from the guide, given the overdispersed z_1
            start.update(vae.upper_draws(start["z"]))
    kernel = NUTS(vae.model, jit_compile=True, ignore_jit_warnings=True)
    with warnings.catch_warnings():  # on few cores Pyro runs the chains one after another
        warnings.filterwarnings("ignore", message="num_chains=")
        mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, num_chains=chains,
                    initial_params=start, disable_progbar=not (progress and sys.stderr.isatty()))
    with _frozen(vae), warnings.catch_warnings():
        # Pyro's jit_compile uses torch.jit.trace, which torch now marks as deprecated.
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.*", category=FutureWarning)
        mcmc.run(x, *(() if y is None else (None, y)))
    return az.from_pyro(mcmc, log_likelihood=False, dims={"z": ["image", "latent"]},
                        coords={"image": np.arange(x.shape[0]), "latent": np.arange(vae.z_dim)})


@contextlib.contextmanager
def _frozen(vae: VAE):
    """The networks as constants: NUTS needs gradients with respect to z only."""
    flags = [p.requires_grad for p in vae.parameters()]
    for p in vae.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(vae.parameters(), flags):
            p.requires_grad_(flag)


def compare_with_nuts(nuts: az.InferenceData, summary, q_mean: np.ndarray, q_std: np.ndarray):
    """Guide against NUTS per image and latent unit; ``summary`` is ``arviz.summary`` of
    ``nuts`` with ``kind="all"``.

    Returns rows (dicts) with NUTS's and the guide's mean and sd, the standardised difference
    (μ_q − μ_NUTS)/σ_NUTS and the ratio σ_q/σ_NUTS (below 1: the guide is too narrow, the usual
    failure of KL(q‖p) fits, Blei et al. 2017 §5), plus NUTS's R-hat and bulk ESS.
    """
    draws = nuts.posterior["z"].values  # chain, draw, image, latent
    flat = draws.reshape(-1, *draws.shape[2:])
    nuts_mean, nuts_std = flat.mean(0), flat.std(0)
    rows = []
    for i in range(nuts_mean.shape[0]):
        for u in range(nuts_mean.shape[1]):
            stats = summary.loc[f"z[{i}, {u}]"]
            rows.append({
                "image": i, "latent": u,
                "nuts_mean": float(nuts_mean[i, u]), "nuts_sd": float(nuts_std[i, u]),
                "guide_mean": float(q_mean[i, u]), "guide_sd": float(q_std[i, u]),
                "std_diff": float((q_mean[i, u] - nuts_mean[i, u]) / nuts_std[i, u]),
                "sd_ratio": float(q_std[i, u] / nuts_std[i, u]),
                "r_hat": float(stats["r_hat"]), "ess_bulk": float(stats["ess_bulk"]),
            })
    return rows


def verdict(khat: np.ndarray, rows: list[dict] | None, unit: str = "image") -> tuple[bool, str]:
    """Whether the variational posterior can be trusted, and why, in words (about the data
    points, ``unit``s)."""
    # A k̂ that could not be estimated (NaN) counts as bad, not as good.
    bad, usable = float(np.mean(~(khat <= KHAT_BAD))), float(np.mean(~(khat <= KHAT_GOOD)))
    reasons = []
    trusted = bad <= 0.1
    if bad > 0.1:
        reasons.append(f"k̂ > 0.7 for {bad:.0%} of the {unit}s: for them q(z|x) misses mass that "
                       "p(z|x) has, and importance-sampled log-likelihoods are unreliable")
    elif usable > 0.1:
        reasons.append(f"k̂ is between 0.5 and 0.7 for {usable - bad:.0%} of the {unit}s and above "
                       f"0.7 for {bad:.0%}: usable, with noisier importance-sampled estimates")
    else:
        reasons.append(f"k̂ < 0.5 for {1 - usable:.0%} of the {unit}s: q(z|x) is a good "
                       "importance proposal for p(z|x)")
    if rows:
        rhat = max(r["r_hat"] if np.isfinite(r["r_hat"]) else np.inf for r in rows)
        shift = float(np.mean([abs(r["std_diff"]) for r in rows]))
        ratio = float(np.median([r["sd_ratio"] for r in rows]))
        if not rhat <= 1.01:
            reasons.append(f"NUTS did not converge (max R-hat {rhat:.3f} > 1.01), so the "
                           "comparison with it is not conclusive; run more --nuts-samples")
        else:
            reasons.append(f"against NUTS (max R-hat {rhat:.3f}) the guide's means are off by "
                           f"{shift:.2f} posterior sds on average and its sds are {ratio:.2f}× "
                           "NUTS's (median)")
            if shift > 0.5 or not 0.5 <= ratio <= 2.0:
                trusted = False
    return trusted, "; ".join(reasons) + "."


def save_khat_histogram(khat: np.ndarray, path) -> None:
    """Histogram of k̂ with the 0.5 and 0.7 thresholds marked, as a PNG."""
    fig = Figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(khat, bins=30, color="tab:blue", alpha=0.8)
    for threshold, style in ((KHAT_GOOD, "--"), (KHAT_BAD, ":")):
        ax.axvline(threshold, color="black", linestyle=style, label=f"k̂ = {threshold}")
    ax.set_xlabel("Pareto k̂ of the importance weights")
    ax.set_ylabel("images")
    ax.legend()
    save_figure(fig, path, dpi=110)


def save_pair_plot(nuts: az.InferenceData, q_draws: np.ndarray, image: int, path,
                   units: int = 4) -> None:
    """Pairs of the first ``units`` latent units of one image: NUTS (grey) over q (orange)."""
    ref = nuts.posterior["z"].values[:, :, image].reshape(-1, nuts.posterior["z"].shape[-1])
    units = min(units, ref.shape[1])
    fig = Figure(figsize=(2.2 * units, 2.2 * units), layout="constrained")
    axes = fig.subplots(units, units, squeeze=False)
    for a in range(units):
        for b in range(units):
            ax = axes[a][b]
            if a == b:
                ax.hist(ref[:, a], bins=30, density=True, color="grey", alpha=0.6)
                ax.hist(q_draws[:, a], bins=30, density=True, color="tab:orange", alpha=0.5)
            else:
                ax.scatter(ref[:, b], ref[:, a], s=2, color="grey", alpha=0.4)
                ax.scatter(q_draws[:, b], q_draws[:, a], s=2, color="tab:orange", alpha=0.3)
            if a == units - 1:
                ax.set_xlabel(f"z[{b}]")
            if b == 0:
                ax.set_ylabel(f"z[{a}]")
    fig.suptitle(f"image {image}: NUTS (grey) and the guide q(z|x) (orange)")
    save_figure(fig, path, dpi=110)


def diagnose(
    vae: VAE,
    x: torch.Tensor,
    out_dir,
    source: str = "",
    draws: int = 100,
    psis_draws: int = 1000,
    nuts_images: int = 4,
    chains: int = 4,
    warmup: int = 400,
    nuts_samples: int = 800,
    progress: bool = True,
    y: torch.Tensor | None = None,
) -> dict:
    """Run every check on the images ``x`` (N, D) and write the results into ``out_dir``; a
    conditional model is checked given the conditions ``y`` (see the module's notes).

    Writes ``posterior.nc`` (:func:`inference_data`), ``khat.csv`` and ``khat.png``
    (:func:`pareto_khat`), and for the first ``nuts_images`` images ``nuts.nc``,
    ``nuts_summary.csv`` (``arviz.summary``: R-hat, ESS), ``guide_vs_nuts.csv``
    (:func:`compare_with_nuts`) and ``pairs_image{i}.png``; then ``diagnostics.json`` and a
    Markdown ``report.md`` that states whether the variational posterior can be trusted.

    Returns
    -------
    dict
        The contents of ``diagnostics.json``: k̂ fractions, NUTS convergence, the comparison's
        averages and the verdict.

    Raises
    ------
    ConfigError
        For point-mass guides and flat priors (:func:`check_diagnosable`).
    """
    check_diagnosable(vae)
    out = Path(out_dir)
    y = vae.given(x, y)
    idata = inference_data(vae, x, draws, y)
    _save_netcdf(idata, out / "posterior.nc")
    khat = pareto_khat(vae, x, psis_draws, y=y)
    table = "image,khat\n" + "".join(f"{i},{k:.4f}\n" for i, k in enumerate(khat))
    atomic_write_bytes(out / "khat.csv", table.encode())
    save_khat_histogram(khat, out / "khat.png")
    unit = data_unit(vae.data_shape)
    summary = {
        "num_images": int(x.shape[0]),
        "unit": unit,
        "psis_draws": psis_draws,
        "khat_median": float(np.median(khat)),
        "khat_max": float(np.max(khat)),
        "frac_khat_above_0.5": float(np.mean(khat > KHAT_GOOD)),
        "frac_khat_above_0.7": float(np.mean(khat > KHAT_BAD)),
    }
    rows = None
    if nuts_images > 0:
        rows = _nuts_comparison(vae, x[:nuts_images], out, chains, warmup, nuts_samples,
                                progress, summary, y[:nuts_images] if y is not None else None)
    trusted, reasons = verdict(khat, rows, unit)
    summary.update({"trusted": trusted, "verdict": reasons})
    write_json(out / "diagnostics.json", summary)
    atomic_write_bytes(out / "report.md", _report(vae, source, summary, rows).encode())
    return summary


def _nuts_comparison(vae: VAE, xs: torch.Tensor, out: Path, chains: int, warmup: int,
                     nuts_samples: int, progress: bool, summary: dict,
                     ys: torch.Tensor | None = None) -> list[dict]:
    """The NUTS reference for the images ``xs`` (and conditions ``ys``), its files, and the
    guide beside it; adds the comparison's figures to ``summary`` and returns its rows."""
    nuts = nuts_reference(vae, xs, chains, warmup, nuts_samples, progress, ys)
    _save_netcdf(nuts, out / "nuts.nc")
    table = az.summary(nuts, var_names=["z"], kind="all", round_to="none")
    buffer = io.StringIO()
    table.to_csv(buffer)
    atomic_write_bytes(out / "nuts_summary.csv", buffer.getvalue().encode())
    q_draws = guide_draws(vae, xs, y=ys).cpu().numpy()  # (1000, M, z_dim)
    rows = compare_with_nuts(nuts, table, q_draws.mean(0), q_draws.std(0))
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(f"{r[h]:.6g}" for h in header) for r in rows]
    atomic_write_bytes(out / "guide_vs_nuts.csv", ("\n".join(lines) + "\n").encode())
    for i in range(xs.shape[0]):
        save_pair_plot(nuts, q_draws[:, i], i, out / f"pairs_image{i}.png")
    summary.update({
        "nuts_images": int(xs.shape[0]),
        "nuts_chains": chains,
        "nuts_draws_per_chain": nuts_samples,
        "nuts_max_r_hat": float(np.max([r["r_hat"] for r in rows])),
        "nuts_min_ess_bulk": min(r["ess_bulk"] for r in rows),
        "nuts_divergences": int(nuts.sample_stats["diverging"].sum()),
        "mean_abs_std_diff": float(np.mean([abs(r["std_diff"]) for r in rows])),
        "median_sd_ratio": float(np.median([r["sd_ratio"] for r in rows])),
    })
    return rows


def _save_netcdf(idata: az.InferenceData, path: Path) -> None:
    """``InferenceData.to_netcdf`` into a temporary name, then rename: never a partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    idata.to_netcdf(str(tmp))
    tmp.replace(path)


def _given(vae: VAE) -> str:
    """What the report says a conditional model was checked given."""
    if vae.condition is None:
        return ""
    if vae.semi_supervised:
        return (" Checked given the class y that the classifier q(y|x) finds most probable for "
                "each image: q(z|x, y) against p(z|x, y).")
    what = "labels" if vae.condition.labels else "covariates"
    return f" Checked given the images' {what} y: q(z|x, y) against p(z|x, y)."


def _report(vae: VAE, source: str, s: dict, rows: list[dict] | None) -> str:
    word = "can be trusted" if s["trusted"] else "should not be trusted"
    guide = vae.family.name or type(vae.family).__name__
    lines = [
        "# Posterior diagnostics",
        "",
        f"Model: prior `{vae.prior.name or type(vae.prior).__name__}`, guide `{guide}`, "
        f"likelihood `{vae.likelihood.name}`, z-dim {vae.z_dim}. Data: {s['num_images']} "
        f"{s['unit']}s, {source}.{_given(vae)}",
        "",
        f"**The variational posterior {word} for this model:** {s['verdict']}",
        "",
        "## Pareto k̂ of the importance weights",
        "",
        f"{s['psis_draws']} draws z ~ q(z|x) per image; weights p(x, z)/q(z|x), smoothed by PSIS "
        "(Yao, Vehtari, Simpson & Gelman 2018). k̂ < 0.5 good, 0.5–0.7 usable, > 0.7 unreliable.",
        "",
        f"- median k̂ {s['khat_median']:.2f}, largest {s['khat_max']:.2f}",
        f"- above 0.5: {s['frac_khat_above_0.5']:.1%} of images; above 0.7: "
        f"{s['frac_khat_above_0.7']:.1%}",
        "",
        "![k̂ histogram](khat.png)",
        "",
        "Per image: [khat.csv](khat.csv).",
    ]
    if rows:
        lines += _report_nuts(s, rows, vae.z_dim)
    lines += [
        "",
        "## Files",
        "",
        "- `posterior.nc`: `arviz.from_netcdf` opens it; groups posterior (z ~ q(z|x)), prior, "
        "posterior_predictive, log_likelihood, observed_data.",
        "- `nuts.nc`: the NUTS draws and sample statistics." if rows else "",
        "- `diagnostics.json`: the figures above.",
        "",
    ]
    return "\n".join(lines)


def _report_nuts(s: dict, rows: list[dict], z_dim: int) -> list[str]:
    """The report's section on the NUTS reference posterior."""
    lines = [
        "",
        "## Reference posterior by NUTS",
        "",
        f"p(z|x) ∝ p(z) p(x|z) with the trained decoder fixed, for {s['nuts_images']} "
        f"images: {s['nuts_chains']} chains × {s['nuts_draws_per_chain']} draws "
        f"(pyro.infer.MCMC + NUTS). Largest R-hat {s['nuts_max_r_hat']:.3f}, smallest bulk "
        f"ESS {s['nuts_min_ess_bulk']:.0f}, {s['nuts_divergences']} divergent transitions.",
        "",
        f"The guide's means differ from NUTS's by {s['mean_abs_std_diff']:.2f} posterior "
        f"standard deviations on average; its standard deviations are "
        f"{s['median_sd_ratio']:.2f}× NUTS's (median; below 1 means too narrow).",
        "",
        "| image | latent | NUTS mean | NUTS sd | guide mean | guide sd | R-hat | ESS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['image']} | {r['latent']} | {r['nuts_mean']:.3f} | {r['nuts_sd']:.3f} | "
        f"{r['guide_mean']:.3f} | {r['guide_sd']:.3f} | {r['r_hat']:.3f} | "
        f"{r['ess_bulk']:.0f} |"
        for r in rows[: min(len(rows), 2 * z_dim)]
    ]
    lines += ["", "All rows: [guide_vs_nuts.csv](guide_vs_nuts.csv); ArviZ summary: "
              "[nuts_summary.csv](nuts_summary.csv).", ""]
    lines += [f"![pairs, image {i}](pairs_image{i}.png)" for i in range(s["nuts_images"])]
    return lines


def diagnose_run(run_dir, out, dataset: str | None = None, num_images: int = 100,
                 draws: int = 100, psis_draws: int = 1000, nuts_images: int = 4,
                 chains: int = 4, warmup: int = 400, nuts_samples: int = 800, seed: int = 0,
                 device: str = "auto", progress: bool = True, model: VAE | None = None) -> dict:
    """:func:`diagnose` the run in ``run_dir`` on ``num_images`` test images (or ``dataset``)
    into the new or empty folder ``out``, which receives every file at once: a failed or
    interrupted run leaves nothing there.

    Raises
    ------
    ConfigError
        For counts out of range (``nuts_images`` above ``num_images``, fewer than
        :data:`MIN_PSIS_DRAWS` PSIS draws, fewer than 2 chains), an ``out`` that is a file,
        not empty or not creatable, or a model these checks cannot address.
    RunDirError, CheckpointError, DataError
        As :func:`pyro_vae.load` and :func:`pyro_vae.io.data.eval_data`.
    """

    _check_counts(nuts_images, num_images, psis_draws, chains)
    folder = Path(out)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder; choose a new one")
    parent = folder.absolute().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot create --out {out}: {parent} is missing or not writable")
    device = resolve_device(device)
    vae, config = load_run(run_dir, device, model)
    check_diagnosable(vae)
    held = eval_data(config, dataset, num_images)
    y = None if vae.semi_supervised else held.conditions(config.model.condition)
    pyro.set_rng_seed(seed)
    with staged_folder(folder) as staging:
        return diagnose(vae, held.x.to(device), staging, source=held.source, draws=draws,
                        psis_draws=psis_draws, nuts_images=nuts_images, chains=chains,
                        warmup=warmup, nuts_samples=nuts_samples, progress=progress,
                        y=y.to(device) if y is not None else None)


def _check_counts(nuts_images: int, num_images: int, psis_draws: int, chains: int) -> None:
    if nuts_images < 0 or nuts_images > num_images:
        raise ConfigError("--nuts-images must be between 0 and --num-images")
    if psis_draws < MIN_PSIS_DRAWS:
        raise ConfigError(f"--psis-draws must be at least {MIN_PSIS_DRAWS} to fit a Pareto tail")
    if chains < 2:
        raise ConfigError("--chains must be at least 2, or R-hat is not defined")
