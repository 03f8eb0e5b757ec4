"""The paper's causal check (docs/paper-notes.md §8): zero marker-active distilled-leaning latents in the
crosscoder reconstruction spliced in at the hook layer, and measure the marker token's logit change.

For each category, the latents active at the category's marker tokens (``label.marker_counts``) are ranked by
firing count; the top fraction ``k`` of them with relative norm > 0.5 are zeroed. Controls: several sets of as
many random marker-active latents matched on firing frequency, a set of *shared* marker-active latents (relative
norm in ``shared_band``) matched on their contribution to the distilled model's reconstruction at the markers,
and the reconstruction with nothing zeroed ("recon", which isolates the reconstruction error). Both models
(index 0 = base, 1 = distilled) run on the prefix up to the marker; their resid_pre of block ``layer`` (output of
``model.model.layers[layer - 1]``) is replaced at positions ``splice_start..pos-1``.
Means come with bootstrap CIs over *documents* (occurrences of one document move together), the random sets
redrawn inside the bootstrap, at a level corrected for the number of categories judged (Bonferroni).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .codes import device_of, eval_mode
from .label import CATEGORIES, MODELS
from .hooks import resid_hook, resid_replaced
from .stats import cluster_bootstrap_mean_ci


def marker_occurrences(meta, marker_ids: dict, use_labels: bool = True, split: int | None = None,
                       min_pos: int = 2) -> dict[str, list[tuple[int, int]]]:
    """category -> list of (doc_id, pos) of its marker tokens in a store's ``meta``.

    ``marker_ids``: ``lexicon.marker_token_ids`` output. ``use_labels`` (organism) also requires the planted
    label to be the category (a " But" in a plain sentence is not a contrastive move); ``split`` (0 train,
    1 held-out) restricts to one split; ``min_pos`` drops markers with too short a prefix to splice.
    Positions index the *document's* token ids (``pos`` in the store), so the sequences fed to
    ``run_ablation`` must be the harvested documents' full ``input_ids`` indexed by ``doc_id``.
    """
    tok, doc, pos = (np.asarray(meta[k]) for k in ("token_id", "doc_id", "pos"))
    keep = pos >= min_pos
    if split is not None:
        keep &= np.asarray(meta["split"]) == split
    out = {}
    for cat, ids in marker_ids.items():
        if cat not in CATEGORIES:
            raise ValueError(f"unknown category {cat!r}; expected one of {CATEGORIES}")
        m = keep & np.isin(tok, np.asarray(ids))
        if use_labels:
            m &= np.asarray(meta["label"]) == CATEGORIES.index(cat) + 1
        out[cat] = [(int(d), int(p)) for d, p in zip(doc[m], pos[m])]
    return out


# ---------------------------------------------------------------------------------------------------------
# Latent selection, hooked forward, the experiment (pitfalls §12.7: resid_pre hook, raw units)
# ---------------------------------------------------------------------------------------------------------
MIN_HELDOUT = 20   # held-out marker occurrences a category needs to be ablated (fewer: not tested)


def testable_occurrences(occurrences: dict, n_occurrences: int, categories=CATEGORIES) -> tuple[dict, dict]:
    """(occurrences of the categories that can be tested, category -> why not for the others). A category needs
    ``min(n_occurrences, MIN_HELDOUT)`` held-out occurrences (``occurrences``: ``marker_occurrences`` with
    ``split=1``): its training markers chose the latents, so ablating there would score the selection on its own
    data."""
    need = min(n_occurrences, MIN_HELDOUT)
    untested = {c: f"{len(occurrences[c])} held-out marker occurrences, fewer than {need}" for c in categories
                if len(occurrences[c]) < need}
    return {c: occurrences[c] for c in categories if c not in untested}, untested


@dataclass
class AblationConfig:
    ks: tuple = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
    n_occurrences: int = 50      # per category, sampled at random across documents
    min_relative_norm: float = 0.5
    splice_start: int = 1        # first spliced position; the paper kept position 0 (the attention sink) clean
    n_boot: int = 1000
    seed: int = 0
    n_random_sets: int = 20      # matched random sets at ``k_verdict`` (one set per bootstrap replicate)
    curve_random_sets: int = 4   # matched random sets at every other k (the dose-response curve only)
    k_verdict: float | None = None  # the k claim 5 is judged at (None: the largest)
    shared_band: tuple = (0.3, 0.7)  # relative norms of the shared control's latents
    level: float = 0.95          # familywise over the categories: each category's CI is at 1 - (1 - level) / n

    def sets_at(self, k: float) -> int:
        """Random sets drawn at ``k``: ``n_random_sets`` where the claim is judged, ``curve_random_sets`` elsewhere."""
        judged = max(self.ks) if self.k_verdict is None else self.k_verdict
        return self.n_random_sets if math.isclose(k, judged) else self.curve_random_sets


def ablation_latents(counts, nrn, k: float, min_relative_norm: float = 0.5) -> np.ndarray:
    """Latents among the top ``k`` fraction (by firing count) of those active at the markers, with nrn > min."""
    counts, nrn = np.asarray(counts), np.asarray(nrn, float)
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    active = np.nonzero(counts > 0)[0]
    order = active[np.argsort(-counts[active], kind="stable")]
    top = order[: math.ceil(k * len(active))]
    return np.sort(top[nrn[top] > min_relative_norm])


def _forward(model, ids: torch.Tensor, layer: int, splice: torch.Tensor | None = None, start: int = 0,
             clean: torch.Tensor | None = None):
    """Forward ``ids`` [B, T]; return (logits at the last position [B, V], the hook-layer output [B, T, d]).

    With ``splice`` [B, T, d], positions ``start..T-1`` of resid_pre of block ``layer`` are replaced and positions
    ``0..start-1`` keep ``clean`` [T, d], this model's hook activation on the same ids from a clean forward: every
    position is then given, so the blocks below the hook are skipped (``hooks.resid_replaced``).
    """
    saved = {}
    if splice is not None:
        if clean is None:
            raise ValueError("a spliced forward needs the clean hook activation for the positions before start")
        full = splice.clone()
        full[:, :start] = clean[:start].to(full.dtype)
        with resid_replaced(model, layer, full):
            logits = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
        return logits, full

    def read(h):
        saved["h"] = h

    with resid_hook(model, layer, read):
        logits = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
    return logits, saved["h"]


@dataclass
class AblationResult:
    per_occurrence: pd.DataFrame  # one row per (category, occurrence, model, arm, k)
    summary: pd.DataFrame         # mean and 95% bootstrap CI per (category, model, arm, k)
    latents: dict                 # (category, k) -> ablated latent ids


NRN_BINS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0 + 1e-9)   # relative-norm bins a random control is matched within


def matched_random_latents(counts, targeted, rng, width: int = 5, nrn=None, decoder_norms=None) -> np.ndarray:
    """A random control set for ``targeted``: for each targeted latent, another latent firing about as often at the
    category's markers (``counts`` [F]: firings at the marker tokens), so the control removes as much marker
    activity and differs only in which latents. With ``nrn`` [F] the draw stays inside the target's
    relative-norm bin (``NRN_BINS``) where that bin has unused marker-active latents left, and with
    ``decoder_norms`` [F, 2] the distance also counts each model's log decoder norm, so the control carries
    decoders as large on each side (otherwise "base targeted - random" is mechanically > 0). Each draw is
    uniform among the ``width`` unused candidates nearest in that distance, never a targeted latent, without
    replacement (seeded by ``rng``)."""
    counts, targeted = np.asarray(counts, float), np.asarray(targeted, np.int64)
    pool = np.setdiff1d(np.nonzero(counts > 0)[0], targeted)
    if len(targeted) > len(pool):
        raise ValueError(f"{len(targeted)} targeted latents but only {len(pool)} other marker-active latents to match")
    bins = None if nrn is None else np.digitize(np.asarray(nrn, float), NRN_BINS)
    logdec = None if decoder_norms is None else np.log(np.maximum(np.asarray(decoder_norms, float), 1e-12))
    out = []
    for t in rng.permutation(targeted):
        cand = np.arange(len(pool))
        if bins is not None and (bins[pool] == bins[t]).any():
            cand = cand[bins[pool] == bins[t]]
        dist = np.abs(np.log(counts[pool[cand]]) - np.log(max(counts[t], 1.0)))
        if logdec is not None:
            dist = dist + np.abs(logdec[pool[cand]] - logdec[t]).sum(1)
        near = cand[np.argsort(dist, kind="stable")[:width]]
        j = int(rng.choice(near))
        out.append(int(pool[j]))
        pool = np.delete(pool, j)
    return np.sort(np.asarray(out, np.int64))


def matched_shared_latents(contribution, nrn, targeted, rng, band=(0.3, 0.7), width: int = 5) -> np.ndarray:
    """The shared control for ``targeted``: for each targeted latent, a *shared* latent (relative norm inside ``band``)
    whose contribution to the distilled model's reconstruction at the category's markers (``contribution`` [F]:
    ``label.marker_contributions``) is about the same, so the control removes as much distilled-side signal from
    latents both models use. Drawn like ``matched_random_latents`` (nearest ``width`` in log contribution, without
    replacement). Returns an empty array when there are fewer shared marker-active latents than targeted ones."""
    contribution, nrn = np.asarray(contribution, float), np.asarray(nrn, float)
    targeted = np.asarray(targeted, np.int64)
    pool = np.setdiff1d(np.nonzero((contribution > 0) & (nrn >= band[0]) & (nrn <= band[1]))[0], targeted)
    if len(targeted) == 0 or len(targeted) > len(pool):
        return np.zeros(0, np.int64)
    out = []
    for t in rng.permutation(targeted):
        dist = np.abs(np.log(contribution[pool]) - np.log(max(contribution[t], 1e-12)))
        j = int(rng.choice(np.argsort(dist, kind="stable")[:width]))
        out.append(int(pool[j]))
        pool = np.delete(pool, j)
    return np.sort(np.asarray(out, np.int64))


def run_ablation(base, distilled, cc, layer: int, sequences, occurrences: dict, counts: pd.DataFrame, nrn,
                 cfg: AblationConfig = AblationConfig(), contribution: pd.DataFrame | None = None) -> AblationResult:
    """The paper's causal check with reconstruct-only, frequency-matched random and shared-latent controls.

    ``sequences``: list of token-id lists; ``occurrences``: category -> list of (sequence index, marker
    position); ``counts``: ``marker_counts`` output (latents active at each category's markers);
    ``contribution``: ``label.marker_contributions`` output (same shape), which enables the shared control.
    For each sampled occurrence, both models run on the prefix ``ids[:pos]``; the crosscoder re-encodes both
    models' hook-layer activations and each model's residual at positions ``splice_start..pos-1`` is replaced
    by its reconstruction: nothing ablated ("recon"), the targeted latents zeroed, ``n_random_sets`` sets of as
    many random latents zeroed ("random", seeded, matched on firing count at the markers:
    ``matched_random_latents``; column ``draw``), or as many shared latents zeroed ("shared",
    ``matched_shared_latents``). The marker token's logit at the last position is compared with the clean run.
    Select the latents on training tokens (``counts``, ``contribution``) and ablate at held-out occurrences.
    """
    nrn = np.asarray(nrn, float)
    F = int(cc.W_dec.shape[0])
    if len(nrn) != F:
        raise ValueError(f"nrn has {len(nrn)} entries for {F} latents")
    missing = set(occurrences) - set(counts.columns)
    if missing:
        raise ValueError(f"no marker counts for categories {sorted(missing)}")
    if contribution is not None and set(occurrences) - set(contribution.columns):
        raise ValueError(f"no marker contributions for categories {sorted(set(occurrences) - set(contribution.columns))}")
    if not cfg.ks:
        raise ValueError("cfg.ks is empty")
    if cfg.n_random_sets < 1:
        raise ValueError(f"n_random_sets must be >= 1, got {cfg.n_random_sets}")
    for cat, occ in occurrences.items():
        if not occ:
            raise ValueError(f"{cat}: no marker occurrences to ablate; drop the category or use more documents")
        for s, p in occ:
            if not (0 <= s < len(sequences)) or not (cfg.splice_start < p < len(sequences[s])):
                raise ValueError(f"{cat}: occurrence (seq {s}, pos {p}) has no prefix to splice or is out of range")
    rng = np.random.default_rng(cfg.seed)
    models = (base, distilled)
    dev = device_of(cc)
    dec_norms = cc.W_dec.detach().float().norm(dim=-1).cpu().numpy()        # [F, 2] each model's decoder norm
    chosen, arms = {}, {}
    for cat in occurrences:
        arms[cat] = [("recon", float("nan"), -1, np.zeros(0, np.int64))]
        for k in cfg.ks:
            tgt = ablation_latents(counts[cat].to_numpy(), nrn, k, cfg.min_relative_norm)
            chosen[(cat, k)] = tgt
            if len(tgt):
                arms[cat].append(("targeted", k, -1, tgt))
            if not len(tgt):      # nothing to ablate at this k: no arm (claim 5 says "not tested" there)
                continue
            for j in range(cfg.sets_at(k)):
                arms[cat].append(("random", k, j, matched_random_latents(counts[cat].to_numpy(), tgt, rng, nrn=nrn,
                                                                         decoder_norms=dec_norms)))
            if contribution is not None and len(tgt):
                sh = matched_shared_latents(contribution[cat].to_numpy(), nrn, tgt, rng, cfg.shared_band)
                if len(sh):
                    arms[cat].append(("shared", k, -1, sh))
    rows = []
    with eval_mode(cc):
        for cat, occ in occurrences.items():
            pick = rng.permutation(len(occ))[: cfg.n_occurrences]
            cat_arms = arms[cat]
            for o in tqdm(pick, desc=f"ablation {cat}", leave=False):
                s, p = occ[o]
                ids = torch.as_tensor([list(sequences[s][:p])])
                tok = int(sequences[s][p])
                clean, acts = [], []
                for m in models:
                    lg, h = _forward(m, ids.to(m.device), layer)
                    clean.append(float(lg[0, tok]))
                    acts.append(h[0])
                x = torch.stack(acts, 1).to(dev, cc.W_dec.dtype)          # [T, 2, d]
                f = cc.encode(x)                                           # [T, F]
                fs = []
                for *_, lat in cat_arms:
                    g = f.clone()
                    g[:, torch.as_tensor(lat, dtype=torch.long, device=dev)] = 0
                    fs.append(g)
                recon = cc.decode(torch.cat(fs)).reshape(len(cat_arms), *x.shape)  # [R, T, 2, d]
                for mi, m in enumerate(models):
                    lg, _ = _forward(m, ids.to(m.device).expand(len(cat_arms), -1), layer,
                                     recon[:, :, mi].to(m.device), cfg.splice_start, clean=acts[mi])
                    for ai, (arm, k, draw, lat) in enumerate(cat_arms):
                        rows.append({"category": cat, "occurrence": int(o), "sequence": s, "position": p,
                                     "model": MODELS[mi], "arm": arm, "k": k, "draw": draw, "n_latents": len(lat),
                                     "clean_logit": clean[mi], "logit": float(lg[ai, tok]),
                                     "delta": float(lg[ai, tok]) - clean[mi]})
    per = pd.DataFrame(rows)
    return AblationResult(per, _summarise(per, cfg), chosen)


def _summarise(per: pd.DataFrame, cfg: AblationConfig) -> pd.DataFrame:
    """Mean and CI per (category, model, arm, k), plus the paired contrasts targeted - random and
    targeted - shared, bootstrapped over documents with the random draw resampled (``cluster_bootstrap_mean_ci``)."""
    n_cats = per["category"].nunique()
    level = 1 - (1 - cfg.level) / max(n_cats, 1)
    rows = []

    def add(cat, model, arm, k, n_lat, values, clusters):
        mean, lo, hi = cluster_bootstrap_mean_ci(values, clusters, cfg.n_boot, cfg.seed + 1, level)
        rows.append({"category": cat, "model": model, "arm": arm, "k": k, "n_latents": n_lat, "n": len(values),
                     "n_documents": len(np.unique(clusters)), "mean": mean, "ci_lo": lo, "ci_hi": hi,
                     "level": level})

    for (cat, model), g in per.groupby(["category", "model"], sort=False):
        r = g[g["arm"] == "recon"].sort_values("occurrence")
        add(cat, model, "recon", np.nan, 0, r["delta"].to_numpy(), r["sequence"].to_numpy())
        for k, gk in g[g["arm"] != "recon"].groupby("k", sort=True):
            t = gk[gk["arm"] == "targeted"].set_index("occurrence").sort_index()
            rnd = gk[gk["arm"] == "random"].pivot_table(index="occurrence", columns="draw", values="delta").loc[t.index]
            n_lat = int(t["n_latents"].max())
            add(cat, model, "targeted", k, n_lat, t["delta"].to_numpy(), t["sequence"].to_numpy())
            add(cat, model, "random", k, n_lat, rnd.to_numpy(), t["sequence"].to_numpy())
            add(cat, model, "targeted_minus_random", k, n_lat, t["delta"].to_numpy()[:, None] - rnd.to_numpy(),
                t["sequence"].to_numpy())
            if model == "base":      # paired per occurrence and set: how much more the base moves than the distilled
                other = per[(per.category == cat) & (per.model == "distilled") & np.isclose(per.k, k)]
                dt = other[other.arm == "targeted"].set_index("occurrence")["delta"].loc[t.index].to_numpy()
                dr = other[other.arm == "random"].pivot_table(index="occurrence", columns="draw",
                                                              values="delta").loc[t.index].to_numpy()
                add(cat, "base", "base_minus_distilled", k, n_lat,
                    (t["delta"].to_numpy()[:, None] - rnd.to_numpy()) - (dt[:, None] - dr), t["sequence"].to_numpy())
            sh = gk[gk["arm"] == "shared"].set_index("occurrence")
            if len(sh):
                sh = sh.loc[t.index]
                add(cat, model, "shared", k, n_lat, sh["delta"].to_numpy(), t["sequence"].to_numpy())
                add(cat, model, "targeted_minus_shared", k, n_lat, t["delta"].to_numpy() - sh["delta"].to_numpy(),
                    t["sequence"].to_numpy())
    return pd.DataFrame(rows)


def plot_ablation(result: AblationResult):
    """Logit change vs k per category: base/distilled x targeted/random with 95% CIs; dotted = recon only."""
    import matplotlib.pyplot as plt

    s = result.summary
    cats = list(dict.fromkeys(s["category"]))
    fig, axes = plt.subplots(1, len(cats), figsize=(3.6 * len(cats), 3.4), squeeze=False, sharey=True)
    colors = {"distilled": "tab:red", "base": "tab:blue"}
    for ax, cat in zip(axes[0], cats):
        for model, col in colors.items():
            for arm, ls in (("targeted", "-"), ("random", "--"), ("shared", "-.")):
                g = s[(s["category"] == cat) & (s["model"] == model) & (s["arm"] == arm)].sort_values("k")
                if not len(g):
                    continue
                ax.plot(g["k"], g["mean"], ls, marker="o", ms=3, color=col, label=f"{model} {arm}")
                ax.fill_between(g["k"], g["ci_lo"], g["ci_hi"], color=col, alpha=0.12)
            r = s[(s["category"] == cat) & (s["model"] == model) & (s["arm"] == "recon")]
            if len(r):
                ax.axhline(float(r["mean"].iloc[0]), color=col, ls=":", lw=1, label=f"{model} recon only")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xscale("log")
        ax.set_title(cat)
        ax.set_xlabel("k (top fraction of marker-active latents)")
        ax.set_ylabel("marker logit change")
    axes[0][0].legend(fontsize=6)
    level = float(s["level"].iloc[0]) if "level" in s and len(s) else 0.95
    fig.suptitle(f"Ablating marker-active distilled-leaning latents (mean, {100 * level:.1f}% CI over documents)")
    fig.tight_layout()
    return fig
