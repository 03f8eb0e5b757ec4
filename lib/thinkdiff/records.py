"""What each stage records for the run report: its headline numbers and claim verdicts, built from the stage's
results, and the one call that writes them (``report.record``).

Per stage, ``<stage>_numbers`` returns the numbers dict (names are the report's row labels, so a name never
changes without the report changing with it) and ``record_<stage>`` writes the record. Claims reach a record
through ``claims.recorded``: judged (a smoke run records "not tested"), with the rule that decided each. The rules
themselves live in ``claims``; nothing here decides a verdict.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import claims, pairs, report
from .label import CATEGORIES, distilled_only_counts, scaling_counts
from .norms import BASE_SPECIFIC, DISTILLED_SPECIFIC


# ----------------------------------------------------------------------------------------------- 01_harvest
def harvest_numbers(store, distinct_served: int) -> dict:
    """The harvest's numbers: the store's size and split, disk use (MiB), layer, width, mean raw norm per model,
    the pairing check, the exclusions, throughput (tokens/s), and ``distinct_served``: distinct training rows one
    epoch of the loader served (``store.ServeCounter``)."""
    man = store.manifest
    return {"tokens": store.n_tokens, "train tokens": man["n_tokens_split"]["train"],
            "held-out tokens": man["n_tokens_split"]["heldout"], "disk MiB": store.disk_bytes / 2**20,
            "layer": store.layer, "d_model": store.d_model, "mean raw norm (base, distilled)": list(store.mean_norm),
            "pairing ids identical": man["pairing"]["ids_identical"],
            "distinct tokens served per epoch": distinct_served, "harvest tokens/s": man["run"]["tokens_per_s"],
            "excluded: first position": man["exclusions"]["n_dropped_first"],
            "excluded: outliers": man["exclusions"]["n_dropped_outlier"]}


def record_harvest(run, store, distinct_served: int, figures) -> Path:
    """Write 01_harvest's record (``harvest_numbers``, the notebook's ``figures``); returns its path."""
    return report.record("01_harvest", run, run.key("harvest"), harvest_numbers(store, distinct_served),
                         figures=figures)


# ----------------------------------------------------------------------------------------------- 02_train
def train_numbers(quality: pd.DataFrame, spliced: pd.DataFrame) -> dict:
    """Per scheme: every held-out quantity of ``quality`` (``metrics.quality_table``), then the CE recovered and KL
    of each model with the reconstruction spliced in (``spliced``: ``metrics.spliced_table``)."""
    numbers = {}
    for s in quality.columns:
        for k, v in quality[s].items():
            numbers[f"{s} {k}"] = v
        for m in ("base", "distilled"):
            numbers[f"{s} CE recovered {m}"] = spliced.loc[(s, m), "ce_recovered"]
            numbers[f"{s} KL spliced {m}"] = spliced.loc[(s, m), "kl_spliced"]
    return numbers


def train_claims(run, quality: pd.DataFrame) -> dict:
    """Claim 9 as 02_train records it: ``claims.claim9_verdict`` on the main scheme's held-out explained variance
    and L0, judged only at the paper's settings (``claims.paper_settings``); the evidence names the scheme."""
    main = run.config.schemes[0]
    q = quality[main]
    v9 = claims.claim9_verdict(q["EV base"], q["EV distilled"], q["L0"],
                               *claims.paper_settings(run.train_config(main), run.config.preset, pairs.paper_pairs()))
    return claims.recorded({"9": v9}, run.tested, run.name, evidence_prefix=f"{main}: ")


def record_train(run, quality: pd.DataFrame, spliced: pd.DataFrame, figures) -> dict:
    """Write 02_train's record (``train_numbers``, claim 9 by ``train_claims``); returns the claims as recorded."""
    recorded = train_claims(run, quality)
    report.record("02_train", run, run.key("train"), train_numbers(quality, spliced), figures=figures,
                  claims=recorded)
    return recorded


# ----------------------------------------------------------------------------------------------- 03_label
def label_numbers(run, scaling: pd.DataFrame, genuine: dict, null_counts: dict, d_only: pd.DataFrame | None = None,
                  gate_checks: dict | None = None, gate_layer: int | None = None, gate_cv_auroc=None,
                  gate_found: dict | None = None, ceiling: pd.DataFrame | None = None,
                  ground_truth: dict | None = None) -> dict:
    """03_label's numbers, from its results on ``run`` (the main scheme's relative norms and live latents are
    read from the run's cache):

    ``scaling``: the main scheme's ``label.latent_scaling`` table; ``genuine`` scheme -> ``label.genuine_mask``
    and ``null_counts`` scheme -> ``label.claim1_null`` counts (both empty without a null); ``d_only``:
    ``label.distilled_only_moves`` (planted labels only); the gated connective's ``gate_checks`` (name ->
    {"verdict", "reason"}), ``gate_layer`` (the analysis layer), ``gate_cv_auroc`` (the distilled probe's
    training CV AUROC per layer) and ``gate_found`` (scheme -> ``planted.finding_summary``); ``ceiling``
    (``probes.probe_ceiling``) and ``ground_truth`` (scheme -> ``probes.ground_truth_verdicts``)."""
    main = run.config.schemes[0]
    nrn, nrn_l1 = run.relative_norms(main), run.relative_norms(main, p=1)
    alive = run.codes(main).frequency() > 0
    numbers = {"live latents": int(alive.sum()), "mean relative norm L2 (live)": float(np.nanmean(nrn[alive])),
               "mean relative norm L1 (live)": float(np.nanmean(nrn_l1[alive])),
               "latents nrn >= 0.9": int((nrn[alive] >= DISTILLED_SPECIFIC).sum()),
               "latents nrn <= 0.1": int((nrn[alive] <= BASE_SPECIFIC).sum()),
               "latent scaling genuine / checked": list(scaling_counts(scaling))}
    if d_only is not None:
        numbers["distilled-only latents (live): reasoning features / others / others firing on base documents"] = (
            distilled_only_counts(d_only))
    for s in run.config.schemes:
        real = claims.exclusive_counts(run.relative_norms(s), run.codes(s).frequency(), genuine=genuine.get(s))
        numbers[f"{s} claim 1 real pair (distilled-only / surviving latent scaling / base-only)"] = [
            real["distilled_only"], real.get("distilled_only_genuine"), real["base_only"]]
        if s in null_counts:
            numbers[f"{s} claim 1 null, base vs control, per seed (distilled-only / surviving / base-only)"] = [
                [n["distilled_only"], n["distilled_only_genuine"], n["base_only"]] for n in null_counts[s]]
    gate_checks = gate_checks or {}
    for k, v in gate_checks.items():
        numbers[f"gated connective {k}"] = [v["verdict"], v["reason"]]
    if gate_checks:
        numbers["gated connective analysis layer (chosen on training problems) / hook layer"] = [gate_layer,
                                                                                                run.pair.layer]
        numbers["gated connective distilled probe training CV AUROC per layer"] = np.round(gate_cv_auroc, 3).tolist()
    for s, g in (gate_found or {}).items():
        numbers[f"{s} gated connective latent (layer / id / relative norm / held-out AUROC / flip rate / matched random "
                f"flip rate / difference CI / verdict)"] = [
            g["layer"], g["latent"], round(float(g["relative norm"]), 3), round(float(g["held-out AUROC"]), 4),
            round(float(g["flip rate"]), 4), round(float(g["matched random flip rate"]), 4), g["difference CI"],
            g["verdict"]]
    for name, r in (ceiling if ceiling is not None else pd.DataFrame()).iterrows():
        numbers[f"probe ceiling {name} (base / distilled / pair)"] = [round(float(r.base), 4),
                                                                      round(float(r.distilled), 4),
                                                                      round(float(r.pair), 4)]
    for s, v in (ground_truth or {}).items():
        for name, r in v.iterrows():
            numbers[f"{s} {name}: latent AUROC / nrn / 5-sparse / specific AUROC / CI of the judged quantity / "
                    "verdict"] = [
                round(float(r["latent AUROC"]), 4), round(float(r["latent relative norm"]), 3),
                round(float(r["5-sparse probe"]), 4), round(float(r["specific latent AUROC"]), 4),
                [round(float(r.ci_lo), 4), round(float(r.ci_hi), 4)], r.verdict]
    return numbers


def record_label(run, claim_verdicts: dict, figures, **results) -> dict:
    """Write 03_label's record: ``label_numbers(run, **results)`` and ``claim_verdicts`` (claim -> (verdict,
    evidence) from the ``claims`` rules); returns the claims as recorded (a smoke run: "not tested")."""
    recorded = claims.recorded(claim_verdicts, run.tested, run.name)
    report.record("03_label", run, run.key("label"), label_numbers(run, **results), figures=figures,
                  claims=recorded)
    return recorded


# ----------------------------------------------------------------------------------------------- 03b_ablation
ABLATION_ARMS = ("targeted", "random", "shared", "targeted_minus_random", "targeted_minus_shared",
                 "base_minus_distilled")   # the arms a record keeps, each as [mean, CI low, CI high]


def ablation_numbers(result, k: float, occurrences: dict) -> dict:
    """The ablation's numbers at the judged ``k``: held-out ``occurrences`` per category ablated, and each arm's
    mean marker-logit change with its CI per (category, model) from ``result`` (``ablation.AblationResult``, None
    when no category could be ablated)."""
    numbers = {"k judged": k, "occurrences per category": {c: len(v) for c, v in occurrences.items()}}
    if result is None:
        return numbers
    sm = result.summary
    for r in sm[(sm.k == k) & sm.arm.isin(ABLATION_ARMS)].itertuples():
        numbers[f"ablation k={k} {r.category} {r.model} {r.arm}"] = [round(r.mean, 3), round(r.ci_lo, 3),
                                                                      round(r.ci_hi, 3)]
    return numbers


def ablation_claims(run, result, untested: dict) -> dict:
    """Claim 5 as 03b_ablation records it: ``claims.claim5_verdict`` at the run's ``[label] k_verdict`` and
    ``ablation_base_margin``, with the categories not tested and why (``ablation.testable_occurrences``)."""
    L = run.config.label
    v5 = claims.claim5_verdict(result, k=L["k_verdict"], base_margin=L["ablation_base_margin"], untested=untested,
                               categories=list(CATEGORIES))
    return claims.recorded({"5": v5}, run.tested, run.name)


def record_ablation(run, result, occurrences: dict, untested: dict, figures) -> dict:
    """Write 03b_ablation's record (``ablation_numbers``, claim 5 by ``ablation_claims``); returns the claims as
    recorded."""
    recorded = ablation_claims(run, result, untested)
    report.record("03b_ablation", run, run.key("label"),
                  ablation_numbers(result, run.config.label["k_verdict"], occurrences), figures=figures,
                  claims=recorded)
    return recorded


# ----------------------------------------------------------------------------------------------- 03c_browser
def browser_numbers(cards_path, table_path, n_cards: int) -> dict:
    """Where the static feature cards and the features table were written, and how many cards."""
    return {"feature cards": str(cards_path), "cards": n_cards, "features table": str(table_path)}


def record_browser(run, cards_path, table_path, n_cards: int) -> Path:
    """Write 03c_browser's record (``browser_numbers``), linking the static feature cards; returns its path."""
    return report.record("03c_browser", run, run.key("label"), browser_numbers(cards_path, table_path, n_cards),
                         links={"feature cards": cards_path})
