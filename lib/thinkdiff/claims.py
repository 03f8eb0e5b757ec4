"""Verdicts on the paper's claims about latents (claims 1, 3 and 4), each a fixed rule over measured numbers.

A verdict is "supports", "contradicts" or "mixed"; a smoke run reports "not tested" instead (the notebooks
decide that from the run config).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def verdict(holds) -> str:
    """"supports" if every check holds, "contradicts" if none does, "mixed" otherwise."""
    holds = list(holds)
    return "supports" if all(holds) else ("contradicts" if not any(holds) else "mixed")


def claim1_verdict(nrn, alive, lo: float = 0.1, hi: float = 0.9) -> tuple[str, str]:
    """Claim 1: live latents exist near relative norm 1 (>= ``hi``) and near 0 (<= ``lo``)."""
    nrn, alive = np.asarray(nrn, float), np.asarray(alive, bool)
    v = nrn[alive & np.isfinite(nrn)]
    n_d, n_b = int((v >= hi).sum()), int((v <= lo).sum())
    return verdict([n_d > 0, n_b > 0]), (f"{len(v)} live latents: {n_d} with relative norm >= {hi} (distilled-only), "
                                          f"{n_b} <= {lo} (base-only); mean {v.mean():.3f}, std {v.std():.3f} "
                                          f"(paper 1.5B/7B/14B means 0.504/0.492/0.540)")


def claim3_verdict(cat_latents: pd.DataFrame, shared=(0.3, 0.7), top: float = 0.95) -> tuple[str, str]:
    """Claim 3: per category, most marker-active latents are shared (relative norm within ``shared``)."""
    holds, parts = [], []
    for cat, g in cat_latents.groupby("category", sort=False):
        r = g["relative_norm"].to_numpy()
        frac = float(((r >= shared[0]) & (r <= shared[1])).mean()) if len(r) else float("nan")
        holds.append(frac > 0.5)
        parts.append(f"{cat}: {frac:.0%} of {len(r)} shared, {int((r >= top).sum())} in [{top}, 1]")
    return verdict(holds), "; ".join(parts)


def claim4_verdict(profile: pd.DataFrame, nrn, base_max: float = 0.3, min_purity: float = 0.8,
                   ratio=(0.5, 2.0)) -> tuple[str, str]:
    """Claim 4 on ``lexical_profile`` rows: are the base-side (relative norm <= ``base_max``) marker latents
    lexical, i.e. token purity >= ``min_purity`` and an unlabelled/labelled firing ratio within ``ratio``
    (they fire on the word whatever its role)? ``supports`` if all are, ``contradicts`` if none, else
    ``mixed``; ``not tested`` when no profiled latent is base-side."""
    nrn = np.asarray(nrn, float)
    p = profile.assign(relative_norm=nrn[profile["latent"]]).sort_values("relative_norm")
    n = f"(n = {profile.attrs.get('n_labelled', '?')} reasoning / {profile.attrs.get('n_unlabelled', '?')} ordinary uses)"
    base = p[p["relative_norm"] <= base_max]
    if base.empty:
        lo = f"; the most base-leaning has relative norm {p['relative_norm'].iloc[0]:.2f}" if len(p) else ""
        return "not tested", f"no marker latent is base-side (relative norm <= {base_max}) {n}{lo}"
    lex = (base["token_purity"] >= min_purity) & base["label_ratio"].between(*ratio)
    parts = [f"latent {int(r.latent)} (nrn {r.relative_norm:.2f}): purity {r.token_purity:.2f}, fires on "
             f"{r.fire_labelled:.0%} of reasoning / {r.fire_unlabelled:.0%} of ordinary uses" for r in base.head(3).itertuples()]
    return verdict(lex), f"{int(lex.sum())} of {len(base)} base-side marker latents are lexical {n}: " + "; ".join(parts)
