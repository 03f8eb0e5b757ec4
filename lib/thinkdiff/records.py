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

from . import adl, claims, pairs, report
from .label import CATEGORIES, distilled_only_counts, scaling_counts
from .lexicon import PAPER_MARKERS
from .norms import BASE_SPECIFIC, DISTILLED_SPECIFIC


# ----------------------------------------------------------------------------------------------- 00_evaluate

def evaluation_numbers(task, results: dict, acceptance: dict, trend: dict, teacher_rates: dict | None,
                       extra: dict | None, n_eval: int, tested: bool) -> dict:
    """The run report's record of ``00``: per (label, role) in ``results`` its accuracy and think rate (and, with a
    teacher, well-formedness, teacher-forced CE, per-family accuracy and sampled marker rates); per label in
    ``acceptance`` (label -> the task's acceptance row) the gain and McNemar p (and, with a teacher, the marker
    ratio and the verdict, "not tested" on a smoke run); the gain trend; the extra check."""
    numbers = {}
    if extra is not None:
        numbers["base opens a trace (fresh sample: n, greedy share, sampled share, verdict)"] = [
            extra["n"], extra["greedy opened share"], extra["sampled opened share"], extra["verdict"]]
    for (s, r), v in results.items():
        numbers[f"{s} {r} accuracy"] = v["accuracy"]
        numbers[f"{s} {r} think rate"] = v["think_rate"]
        if task.has_teacher:
            numbers[f"{s} {r} well-formed"] = v["well_formed"]
            numbers[f"{s} {r} accuracy, well-formed outputs only"] = v["accuracy_well_formed"]
            numbers[f"{s} {r} teacher-forced CE"] = v.get("ce", float("nan"))
            numbers[f"{s} {r} accuracy per family"] = v["family_accuracy"]
            numbers[f"{s} {r} sampled marker rate per 1k"] = v["sampled_marker_rate_per_1k"]
    for s, a in acceptance.items():
        numbers[f"{s} accuracy gain (distilled - base)"] = a["gain"]
        numbers[f"{s} McNemar p"] = a["McNemar p"]
        if task.has_teacher:
            numbers[f"{s} distilled marker rate / teacher"] = a["marker rate / teacher"]
            numbers[f"{s} {task.acceptance_label}"] = a["verdict"] if tested else "not tested"
        if "distilled checks" in a:
            numbers[f"{s} distilled checks written"] = a["distilled checks"]
            numbers[f"{s} share of true checks"] = a["true check share"]
    numbers["gain with size"] = trend["verdict"]
    if task.has_teacher:
        numbers["teacher marker rate per 1k"] = teacher_rates
    numbers["n_eval"] = n_eval
    return numbers


def record_evaluation(run, results: dict, acceptance: dict, trend: dict, teacher_rates: dict | None,
                      extra: dict | None, n_eval: int, figures) -> Path:
    """Write 00's record (``evaluation_numbers`` for the run's task); returns its path."""
    numbers = evaluation_numbers(run.task, results, acceptance, trend, teacher_rates, extra, n_eval, run.tested)
    return report.record("00_evaluate", run, run.key("evaluate"), numbers, figures=figures)


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
    and L0, judged only at the paper's settings (``claims.paper_settings``; an imported crosscoder's are not known);
    the evidence names the scheme."""
    main = run.config.schemes[0]
    q = quality[main]
    trained_as = None if main in run.config.imports else run.train_config(main)
    v9 = claims.claim9_verdict(q["EV base"], q["EV distilled"], q["L0"],
                               *claims.paper_settings(trained_as, run.config.preset, pairs.paper_pairs()))
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


# ----------------------------------------------------------------------------------------------- 03d_adl
def adl_words(run) -> dict:
    """category -> the words whose tokens the ADL's logit lens is ranked on: the words the pair's task plants
    (``Task.planted_words``) where the run has planted labels, else the paper's single-token markers."""
    if not run.has_labels:
        return dict(PAPER_MARKERS)
    if run.task.planted_words is None:
        raise ValueError(f"run {run.name!r}: its store carries planted labels but its task {run.task.name!r} names "
                         "no planted words (Task.planted_words)")
    return dict(run.task.planted_words)


def adl_lens_table(tokens: dict, logits: dict, features: pd.DataFrame, meta=None, decode=None) -> pd.DataFrame:
    """What each lens found, per category, without a verdict. ``tokens``: category -> token ids (``adl_words``);
    ``logits``: model name -> [vocab] ADL logit lens; ``features``: the run's features table (``label.run_features``:
    relative norm, frequency, label, per-category ``auroc_*`` or ``score_*``); ``meta`` (a store's, with planted
    labels: the organism) adds the planted truth; ``decode`` (a tokenizer's) names the tokens ranked. Columns: the crosscoder's distilled-only latents
    (``claims.distilled_only_mask``) labelled with the category and their best score (held-out ground-truth AUROC
    where there are planted labels, else ReasonScore); per model the best rank of the category's tokens among the
    ADL's promoted tokens (0 = the most promoted); the store's tokens inside the category's planted moves and the
    occurrences of the ranked tokens."""
    d = features[claims.distilled_only_mask(features["relative_norm"], features["frequency"])]
    rows = []
    for cat, ids in tokens.items():
        col = next((c for c in (f"auroc_{cat}", f"score_{cat}") if c in d.columns), None)
        row = {"category": cat, "crosscoder: distilled-only latents labelled so": int((d["label"] == cat).sum()),
               "crosscoder: best score (distilled-only)": float(d[col].max()) if col and len(d) else np.nan,
               "crosscoder: score": "" if col is None else col.split("_")[0]}
        if decode is not None:
            row["ADL: tokens ranked"] = " ".join(repr(decode([i])) for i in ids)
        for model, lg in logits.items():
            row[f"ADL: rank in {model} lens"] = int(adl.token_ranks(lg, ids).min()) if ids else np.nan
        if meta is not None:
            row["planted: tokens in its moves"] = (int((meta["label"] == CATEGORIES.index(cat) + 1).sum())
                                                   if cat in CATEGORIES else np.nan)
            row["store: occurrences of the ranked tokens"] = int(np.isin(meta["token_id"], ids).sum())
        rows.append(row)
    return pd.DataFrame(rows).set_index("category")


def adl_numbers(run, diff: dict, lens: dict, table: pd.DataFrame, close: dict | None, n_d_only: int,
                verdict: tuple[str, str], concept: dict | None = None,
                concept_verdict: tuple[str, str] | None = None) -> dict:
    """03d_adl's numbers: the settings and texts used, the ADL direction's norm, per model its top promoted and
    suppressed tokens, the lens table, and the closeness to the distilled-only latents against random directions
    with its rule's verdict (a smoke run: "not tested"). ``lens``: model -> {"promoted": [...], "suppressed":
    [...]} token texts. ``concept`` (a pair with a planted distilled-only concept): ``adl.closeness`` against the
    concept's direction plus ``n_steps``, ``layer`` and ``auroc`` (``planted.gate_direction``), judged by
    ``concept_verdict`` (``claims.adl_concept_verdict``; "not tested" where nothing is planted)."""
    v, e = claims.judged({"adl": verdict}, run.tested, run.name)["adl"]
    numbers = {**{k: run.config.adl[k] for k in ("first_tokens", "n_texts", "n_random")},
               "texts used": diff["n_texts"], "tokens averaged": diff["n_tokens"],
               "ADL norm": round(float(np.linalg.norm(diff["delta"])), 5), "distilled-only latents": n_d_only}
    for model, t in lens.items():
        numbers[f"{model} lens promoted"], numbers[f"{model} lens suppressed"] = t["promoted"], t["suppressed"]
    numbers["lens table"] = {str(c): {k: None if pd.isna(x) else round(x, 4) if isinstance(x, float) else x
                                      for k, x in r.items()} for c, r in table.iterrows()}
    if close is not None:
        numbers["mean |cos| with distilled-only latents"] = round(close["stat"], 4)
        numbers["random directions at or above"] = close["n_higher"]
        numbers["permutation p"] = round(close["p"], 4)
    numbers["closer than random"] = {"verdict": v, "evidence": e, "rule": "thinkdiff.claims.adl_closeness_verdict"}
    if concept is not None:
        numbers["planted concept: |cos| with the ADL direction"] = round(concept["stat"], 4)
        numbers["planted concept: random directions at or above"] = concept["n_higher"]
        numbers["planted concept: permutation p"] = round(concept["p"], 4)
        numbers["planted concept: layer, scored steps"] = [concept["layer"], concept["n_steps"]]
        numbers["planted concept: training AUROC of its direction"] = round(concept["auroc"], 4)
    v, e = claims.judged({"concept": concept_verdict or claims.adl_concept_verdict(concept)}, run.tested,
                         run.name)["concept"]
    numbers["closer to the planted concept than random"] = {"verdict": v, "evidence": e,
                                                             "rule": "thinkdiff.claims.adl_concept_verdict"}
    return numbers


def record_adl(run, numbers: dict, figures) -> Path:
    """Write 03d_adl's record (``adl_numbers``)."""
    return report.record("03d_adl", run, run.key("adl"), numbers, figures=figures)


# ----------------------------------------------------------------------------------------------- 04_steer
def steer_claims(run, sweep: pd.DataFrame, steered: dict, untested: dict, n_boot: int) -> tuple[dict, pd.DataFrame]:
    """Claims 6 and 7 as 04_steer records them, and the verdict at every strength run for all directions.

    ``steered``: claim -> (the steered latent's condition, its matched control's condition) for each claim whose
    latent was found (``steer.CLAIM_ROLES``); ``untested``: claim -> (verdict, evidence) for the others. Each rule
    (``claims.claim6_verdict`` / ``claim7_verdict``) runs at every strength common to ``[steer] alphas`` and
    ``control_alphas`` with the run's non-inferiority margin and minimum prompts; the recorded verdict is the one
    at ``claim_alpha``, its evidence followed by the verdict at each strength. Returns (claims as recorded,
    per-strength verdicts [claim x alpha])."""
    S = run.config.steer
    rules = {"6": claims.claim6_verdict, "7": claims.claim7_verdict}

    def verdict_at(k, alpha):
        latent, control = steered[k]
        return rules[k](sweep, latent, control, alpha, margin=S["noninferiority_margin"],
                        min_prompts=S["min_prompts"], n_boot=n_boot, seed=S["seed"])

    common = [a for a in S["alphas"] if a in S["control_alphas"]]
    per_alpha = pd.DataFrame({a: {f"claim {k}": verdict_at(k, a)[0] for k in steered} for a in common})
    verdicts = {}
    for k in steered:
        v, e = verdict_at(k, S["claim_alpha"])
        verdicts[k] = (v, e + "; verdict by alpha: " + ", ".join(f"{a:+g}: {per_alpha.loc[f'claim {k}', a]}"
                                                                  for a in common))
    verdicts = dict(sorted({**verdicts, **untested}.items()))
    return claims.recorded(verdicts, run.tested, run.name, rule_detail=f" at alpha = {S['claim_alpha']}"), per_alpha


def steer_numbers(run, summary: pd.DataFrame, chosen: pd.DataFrame, candidates: pd.DataFrame, score_name: str,
                  bench: dict, sweep_seconds: float, per_alpha: pd.DataFrame, grids: dict) -> dict:
    """04_steer's numbers: the settings, the steered latents (relative norm, score), the unsteered baseline, the
    hook's overhead and throughput (tokens/s), the verdict per strength (a smoke run: "not tested"), and per
    steered condition and strength the change in tokens, self-reflection rate and accuracy against the unsteered
    run ([mean, lo, hi], BH-adjusted CIs from ``steer.summarize``)."""
    S = run.config.steer

    def cell(cond, alpha, metric):
        r = summary[(summary.condition == cond) & np.isclose(summary.alpha, alpha) & (summary.metric == metric)].iloc[0]
        return [round(float(r["diff"]), 4), round(float(r["diff_lo"]), 4), round(float(r["diff_hi"]), 4)]

    unst = summary[(summary.condition == "unsteered")].set_index("metric")["mean"]
    common = list(per_alpha.columns)
    numbers = {"n_prompts": S["n_prompts"], "max_new_tokens": S["max_new_tokens"], "positions": S["positions"],
               "unit": "alpha x max activation x decoder row (raw units)",
               "latents": {r["role"]: int(r["latent"]) for _, r in chosen.iterrows()},
               "latent relative norms": {r["role"]: round(r["relative_norm"], 3) for _, r in chosen.iterrows()},
               f"latent {score_name}s": {r["role"]: round(r["score"], 3) for _, r in chosen.iterrows()},
               "unsteered tokens": float(unst["n_tokens"]), "unsteered accuracy": float(unst["correct"]),
               "unsteered self-reflection rate/1k": float(unst["rate_self_reflection"]),
               "hook overhead": bench["overhead"], "unsteered tok/s": bench["unsteered_tok_s"],
               "steered tok/s": bench["steered_tok_s"], "sweep seconds": sweep_seconds, "claim alpha": S["claim_alpha"],
               "latents not found": {r["role"]: r["missing"] for _, r in candidates[~candidates.found].iterrows()},
               "verdicts by alpha": ({f"{a:+g}": {row.split()[1]: per_alpha.loc[row, a] for row in per_alpha.index}
                                      for a in common} if run.tested else "not tested (smoke run)"),
               "comparisons behind the claims (BH over steered conditions x strengths)":
                   int(summary[summary.metric == "n_tokens"].n_comparisons.max())}
    for cond, grid in grids.items():
        for a in grid:
            for m in ("n_tokens", "rate_self_reflection", "correct"):
                numbers[f"Δ{m} {cond} α={a:+g} [mean, lo, hi]"] = cell(cond, a, m)
    return numbers


def record_steer(run, numbers: dict, recorded: dict, figures) -> Path:
    """Write 04_steer's record (``steer_numbers``, claims 6 and 7 as ``steer_claims`` recorded them)."""
    return report.record("04_steer", run, run.key("steer"), numbers, figures=figures, claims=recorded)


# ----------------------------------------------------------------------------------------------- 05_geometry
def geometry_claims(run, verdict8: tuple[str, str], claim_dim: int) -> dict:
    """Claim 8 as 05_geometry records it (``claims.claim8_verdict`` at PCA ``claim_dim``, log10 parameters)."""
    v, e = verdict8
    return claims.recorded({"8": (v, f"PCA {claim_dim}, per-model basis: {e}")}, run.tested, run.name,
                           rule_detail=f" (log10 parameters, PCA {claim_dim})")


def geometry_numbers(run, sizes: list, n_boot: int, n_perm: int, size_acc: pd.DataFrame, perf_acc: dict,
                     perf_ce: dict, per_model: pd.DataFrame, within: dict, shared_band_cos: float,
                     qwen_kept: dict | None) -> dict:
    """05_geometry's numbers: per size and relation the Δ loss (base - distilled) at the claim's PCA dimension
    ([mean, lo, hi]); per size the accuracy gain and, where the task has a teacher, the CE reduction ([mean, lo,
    hi]) and how many relations beat their re-pairing null; the feature cosines; the Qwen single-token counts."""
    claim_dim = run.config.geometry["claim_dim"]
    numbers = {"sizes": sizes, "claim dim": claim_dim, "n_boot": n_boot, "n_perm": n_perm,
               "n_eval": run.config.evaluate["n_eval"]}
    for _, r in size_acc.iterrows():
        numbers[f"{r['size']} {r['relation']} Δloss [mean, lo, hi]"] = [round(r["delta"], 5), round(r["delta_lo"], 5),
                                                                         round(r["delta_hi"], 5)]
    for size in sizes:
        numbers[f"{size} accuracy gain [mean, lo, hi]"] = [round(perf_acc[size][k], 4) for k in ("gain", "lo", "hi")]
        if size in perf_ce:
            numbers[f"{size} CE reduction [mean, lo, hi]"] = [round(perf_ce[size][k], 4) for k in ("gain", "lo", "hi")]
        t = per_model[(per_model["size"] == size) & (per_model.dim == claim_dim)]
        numbers[f"{size} relations below null (BH q < 0.05 over {int(t.n_comparisons.max())} comparisons)"] = \
            int((t.q_null < 0.05).sum())
    numbers["feature cos within/across category"] = {k: [round(w, 3), round(a, 3)] for k, (w, a) in within.items()}
    numbers["median cos(base, distilled) shared latents"] = shared_band_cos
    if qwen_kept is not None:
        numbers["Qwen single-token pairs kept"] = qwen_kept
    return numbers


def record_geometry(run, numbers: dict, recorded: dict, figures) -> Path:
    """Write 05_geometry's record (``geometry_numbers``, claim 8 as ``geometry_claims`` recorded it)."""
    return report.record("05_geometry", run, run.key("geometry"), numbers, figures=figures, claims=recorded)
