"""Verdicts on the paper's claims about latents (claims 1, 3 and 4), each a fixed rule over measured numbers.

A verdict is "supports", "contradicts" or "mixed"; a smoke run reports "not tested" instead (the notebooks
decide that from the run config).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .norms import BASE_SPECIFIC, DISTILLED_SPECIFIC, SHARED_BAND

MIN_FREQUENCY = 1e-4        # a latent counts only if it fires on at least this share of store tokens


def verdict(holds) -> str:
    """"supports" if every check holds, "contradicts" if none does, "mixed" otherwise."""
    holds = list(holds)
    return "supports" if all(holds) else ("contradicts" if not any(holds) else "mixed")


def exclusive_counts(nrn, frequency, lo: float = BASE_SPECIFIC, hi: float = DISTILLED_SPECIFIC,
                     genuine=None) -> dict:
    """Latents firing on at least ``MIN_FREQUENCY`` of tokens with relative norm >= ``hi`` / <= ``lo``.

    ``genuine`` [F] bool (optional): True where a latent survives latent scaling (``label.latent_scaling`` flag
    "genuine"; latents not checked are False). Then ``distilled_only_genuine`` counts the distilled-only latents
    that also survive it (latent scaling tests the distilled side only)."""
    nrn, freq = np.asarray(nrn, float), np.asarray(frequency, float)
    keep = (freq >= MIN_FREQUENCY) & np.isfinite(nrn)
    v = nrn[keep]
    out = {"live": int(len(v)), "distilled_only": int((v >= hi).sum()), "base_only": int((v <= lo).sum()),
           "mean": float(v.mean()) if len(v) else float("nan"), "std": float(v.std()) if len(v) else float("nan")}
    if genuine is not None:
        genuine = np.asarray(genuine, bool)
        if genuine.shape != nrn.shape:
            raise ValueError(f"genuine must be one bool per latent [{len(nrn)}], got shape {genuine.shape}")
        out["distilled_only_genuine"] = int((keep & (nrn >= hi) & genuine).sum())
    return out


def claim1_verdict(nrn, frequency, null: list, lo: float = BASE_SPECIFIC, hi: float = DISTILLED_SPECIFIC,
                   genuine=None) -> tuple[str, str]:
    """Claim 1: exclusive latents exist, beyond what a pair without distillation gives.

    ``nrn``, ``frequency`` [F] of the real crosscoder; ``null``: ``exclusive_counts`` of null crosscoders (the
    same training on the base paired with its control fine-tune: the same recipe on base text, no distillation),
    one per seed. A side (distilled-only, base-only) counts as shown when the real count exceeds the null's
    largest count plus its seed-to-seed spread (max - min). With ``genuine`` (``exclusive_counts``), the
    distilled side counts only latents that survive latent scaling, on the real pair and on the null alike
    (the null's counts must then carry ``distilled_only_genuine``). supports: both sides; contradicts: neither;
    mixed otherwise."""
    if not null:
        raise ValueError("claim 1 needs at least one null crosscoder (the base paired with its control fine-tune)")
    real = exclusive_counts(nrn, frequency, lo, hi, genuine)
    sides = ("distilled_only_genuine" if genuine is not None else "distilled_only", "base_only")
    if genuine is not None and any("distilled_only_genuine" not in n for n in null):
        raise ValueError("claim 1 with latent scaling: the null's counts lack distilled_only_genuine; measure latent "
                         "scaling on the null crosscoders the same way")
    holds, parts = [], []
    for side in sides:
        vals = [n[side] for n in null]
        bar = max(vals) + (max(vals) - min(vals))
        holds.append(real[side] > bar)
        name = {"distilled_only_genuine": "distilled-only surviving latent scaling"}.get(side, side.replace("_", "-"))
        parts.append(f"{real[side]} {name} (null {vals}, bar {bar})")
    return verdict(holds), (f"{real['live']} live latents (frequency >= {MIN_FREQUENCY}): " + ", ".join(parts)
                            + f" at relative norm >= {hi} / <= {lo}; mean {real['mean']:.3f}, std {real['std']:.3f} "
                            f"(paper 1.5B/7B/14B means 0.504/0.492/0.540)")


def claim3_verdict(cat_latents: pd.DataFrame, shared=SHARED_BAND, top: float = 0.95) -> tuple[str, str]:
    """Claim 3: per category, most marker-active latents are shared (relative norm within ``shared``)."""
    holds, parts = [], []
    for cat, g in cat_latents.groupby("category", sort=False):
        r = g["relative_norm"].to_numpy()
        frac = float(((r >= shared[0]) & (r <= shared[1])).mean()) if len(r) else float("nan")
        holds.append(frac > 0.5)
        parts.append(f"{cat}: {frac:.0%} of {len(r)} shared, {int((r >= top).sum())} in [{top}, 1]")
    return verdict(holds), "; ".join(parts)


def claim4_verdict(profile: pd.DataFrame, nrn, base_max: float = SHARED_BAND[0], min_purity: float = 0.8,
                   ratio=(0.5, 2.0)) -> tuple[str, str]:
    """Claim 4 on ``lexical_profile`` rows: are the base-side (relative norm <= ``base_max``) marker latents
    lexical, i.e. token purity >= ``min_purity`` and an unlabelled/labelled firing ratio within ``ratio``
    (they fire on the word whatever its role)? ``supports`` if all are, ``contradicts`` if none, else
    ``mixed``; ``not tested`` when no profiled latent is base-side, or when the corpus holds no ordinary
    (unlabelled) use of the marker words, so whether a latent fires on the word whatever its role is unmeasured."""
    nrn = np.asarray(nrn, float)
    p = profile.assign(relative_norm=nrn[profile["latent"]]).sort_values("relative_norm")
    n = f"(n = {profile.attrs.get('n_labelled', '?')} reasoning / {profile.attrs.get('n_unlabelled', '?')} ordinary uses)"
    base = p[p["relative_norm"] <= base_max]
    if base.empty:
        lo = f"; the most base-leaning has relative norm {p['relative_norm'].iloc[0]:.2f}" if len(p) else ""
        return "not tested", f"no marker latent is base-side (relative norm <= {base_max}) {n}{lo}"
    if profile.attrs.get("n_unlabelled") == 0 or base["label_ratio"].isna().all():
        return "not tested", (f"the corpus has no ordinary (unlabelled) use of the marker words {n}, so no firing "
                              f"ratio to test; {len(base)} base-side marker latent(s)")
    lex = (base["token_purity"] >= min_purity) & base["label_ratio"].between(*ratio)
    parts = [f"latent {int(r.latent)} (nrn {r.relative_norm:.2f}): purity {r.token_purity:.2f}, fires on "
             f"{r.fire_labelled:.0%} of reasoning / {r.fire_unlabelled:.0%} of ordinary uses" for r in base.head(3).itertuples()]
    return verdict(lex), f"{int(lex.sum())} of {len(base)} base-side marker latents are lexical {n}: " + "; ".join(parts)


def claim10_verdict(properties: dict) -> tuple[str, str]:
    """Claim 10: the findings survive the pitfall fixes, BatchTopK and latent scaling.

    ``properties``: ``{property: {scheme: holds}}``, each a substantive finding measured separately under every
    sparsity scheme (e.g. "exclusive latents exist", "marker latents are mostly shared"). A property survives
    only where it holds under **every** scheme (failing under both is not surviving). supports: every property
    survives; contradicts: none does; mixed otherwise."""
    if not properties:
        raise ValueError("claim 10 needs at least one property measured under the sparsity schemes")
    survives = {p: bool(by_scheme) and all(by_scheme.values()) for p, by_scheme in properties.items()}
    parts = [f"{p}: " + ", ".join(f"{s} {'yes' if ok else 'no'}" for s, ok in by_scheme.items())
             for p, by_scheme in properties.items()]
    return verdict(survives.values()), f"{sum(survives.values())} of {len(survives)} properties hold under every scheme (" \
        + "; ".join(parts) + ")"


PAPER_TOP = (100, 32_768)   # the paper inspected its top 100 distilled-specific latents of a 32,768-latent dictionary


def claim2_top_size(n_latents: int) -> int:
    """How many top distilled-specific latents to inspect: the paper's share of the dictionary (at least 3)."""
    return max(3, round(n_latents * PAPER_TOP[0] / PAPER_TOP[1]))


def claim2_verdict(nrn, frequency, is_reasoning, ground_truth: bool, alpha: float = 0.05) -> tuple[str, str]:
    """Claim 2: some distilled-specific latents are reasoning features.

    ``nrn``, ``frequency`` [F]; ``is_reasoning`` [F] bool: the latent detects a reasoning target (held-out
    ground-truth AUROC >= 0.9 on the organism; a ReasonScore top-20 label otherwise). Candidates are latents with
    relative norm >= ``DISTILLED_SPECIFIC`` firing on >= ``MIN_FREQUENCY`` of tokens; the top ``claim2_top_size(F)``
    by relative norm are compared with the null: the hit rate among all live latents (random live latents of the
    same count), by a one-sided exact binomial test. supports: the top set's hit rate exceeds the null at
    ``alpha`` and the evidence is ground truth; mixed: it exceeds the null by score evidence only, or has hits
    without beating the null; contradicts: no hit, or no distilled-specific latent at all."""
    from scipy.stats import binomtest

    nrn, freq, hit = (np.asarray(a) for a in (nrn, frequency, is_reasoning))
    live = freq >= MIN_FREQUENCY
    cand = np.nonzero(live & (nrn >= DISTILLED_SPECIFIC))[0]
    n_top = claim2_top_size(len(nrn))
    top = cand[np.argsort(-nrn[cand], kind="stable")][:n_top]
    null = float(hit[live].mean()) if live.any() else 0.0
    k = int(hit[top].sum())
    p = float(binomtest(k, len(top), null, alternative="greater").pvalue) if len(top) and 0 < null < 1 else (
        0.0 if len(top) and k and null == 0 else 1.0)
    kind = "ground truth" if ground_truth else "ReasonScore labels (no ground truth)"
    evidence = (f"{k} of the top {len(top)} distilled-specific live latents (relative norm >= {DISTILLED_SPECIFIC}, "
                f"frequency >= {MIN_FREQUENCY}; {len(cand)} candidates) are reasoning features by {kind}; null: "
                f"{null:.3f} of all {int(live.sum())} live latents; one-sided binomial p = {p:.3g}")
    if not len(top) or k == 0:
        return "contradicts", evidence
    if p < alpha and ground_truth:
        return "supports", evidence
    return "mixed", evidence


def claim7_verdict(sweep: pd.DataFrame, deductive: str, control: str, alpha: float, margin: float = 0.05,
                   n_boot: int = 2000, seed: int = 0, baseline: str = "unsteered") -> tuple[str, str]:
    """Claim 7 (incisive thinking): steering with ``deductive`` shortens the output beyond what an equal-norm random
    ``control`` does, without a loss of accuracy beyond ``margin``.

    ``sweep``: one row per generation (``steer.steering_sweep``: condition, alpha, prompt_idx, replicate, n_tokens,
    correct). Shortening is the difference in differences per prompt, (deductive - unsteered) - (control -
    unsteered) tokens, with a bootstrap CI over prompts; "same answer" is non-inferiority: the CI of the accuracy
    difference (deductive - unsteered) lies above -``margin``. supports: the DiD CI is below 0 and accuracy is
    non-inferior; contradicts: the DiD CI is not below 0 (no shortening beyond the control); mixed: it shortens but
    accuracy is not shown non-inferior."""
    from .stats import bootstrap_mean_ci

    key = ["prompt_idx", "replicate"]

    def at(cond, a):
        g = sweep[(sweep.condition == cond) & np.isclose(sweep.alpha, a)].set_index(key)
        if g.empty:
            raise ValueError(f"the sweep has no generations for {cond!r} at alpha {a}")
        return g

    base, ded, ctrl = sweep[sweep.condition == baseline].set_index(key), at(deductive, alpha), at(control, alpha)
    common = base.index.intersection(ded.index).intersection(ctrl.index)
    if len(common) < 2:
        raise ValueError("claim 7 needs at least two prompts run unsteered, deductive and control")
    tok = {n: g.loc[common, "n_tokens"].astype(float).to_numpy() for n, g in (("b", base), ("d", ded), ("c", ctrl))}
    did, did_lo, did_hi = bootstrap_mean_ci((tok["d"] - tok["b"]) - (tok["c"] - tok["b"]), n_boot, seed)
    acc = ded.loc[common, "correct"].astype(float).to_numpy() - base.loc[common, "correct"].astype(float).to_numpy()
    dacc, dacc_lo, dacc_hi = bootstrap_mean_ci(acc, n_boot, seed)
    unchanged = float(np.mean(ded.loc[common, "correct"].to_numpy() == base.loc[common, "correct"].to_numpy()))
    shorter, non_inferior = did_hi < 0, dacc_lo > -margin
    v = "contradicts" if not shorter else ("supports" if non_inferior else "mixed")
    return v, (f"alpha={alpha:g}, n={len(common)} prompts: (deductive - unsteered) - ({control} - unsteered) tokens "
               f"{did:+.3g} [{did_lo:+.3g}, {did_hi:+.3g}]; Δaccuracy {dacc:+.3g} [{dacc_lo:+.3g}, {dacc_hi:+.3g}] "
               f"(non-inferiority margin {margin}); correctness unchanged on {unchanged:.0%} of prompts")
