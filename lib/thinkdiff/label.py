"""What latents mean: latent scaling, the reasoning lexicon and ReasonScore, marker-token latents, ground-truth
AUROC against planted labels, and the features table. (Which model a latent belongs to: ``norms``; the codes
over a store: ``codes``; the claim verdicts: ``claims``.)

Inputs everywhere: a crosscoder ``cc`` (W_enc [2, d, F], W_dec [F, 2, d], b_enc [F], b_dec [2, d];
``encode(x [B, 2, d] raw) -> f [B, F]``, ``decode(f) -> [B, 2, d]`` raw; normalisation folded in) and an
activation store (``n_tokens``, ``acts(idx) -> [n, 2, d]``, ``meta`` dict of 1-D arrays over all tokens).
Model index 0 = base, 1 = distilled. Per-token masks and labels are always given over *all* store tokens.

Every analysis here runs off one pass over the store (``codes.encode_store``), kept as a sparse matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import paths
from .claims import MIN_FREQUENCY, claim10_properties, claim1_verdict, claim3_verdict, exclusive_counts
from .codes import (SparseActs, check_inputs, chunk_indices, device_of, encode_store, eval_mode, global_mask,
                    load_rows, restrict, restrict_rows)
from .lexicon import CATEGORIES, Lexicon, marker_token_ids, runs_from_meta
from .norms import (DISTILLED_SPECIFIC, decoder_cosine, decoder_norms, norm_name, norm_scale_of, relative_norm,
                    top_latents, training_decoder)

MODELS = ("base", "distilled")

def _check_folded(cc):
    """decode must equal f @ W_dec + b_dec (raw units); otherwise decoder rows are not raw directions."""
    F = cc.W_dec.shape[0]
    g = torch.Generator().manual_seed(0)
    f = torch.rand(3, F, generator=g).to(device_of(cc), cc.W_dec.dtype)
    with torch.no_grad():
        got = cc.decode(f)
        want = torch.einsum("bf,fmd->bmd", f, cc.W_dec) + cc.b_dec
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max().clamp_min(1))):
        raise ValueError("crosscoder.decode(f) != f @ W_dec + b_dec: fold the activation normalisation into the "
                         "weights before labelling (decoder rows must be raw-unit directions)")


def latent_scaling(cc, store, latents, mask=None, chunk: int = 4096, nu_error_max: float = 0.3,
                   nu_reconstruction_max: float = 0.3) -> pd.DataFrame:
    """Closed-form latent scaling betas and ratios for ``latents`` over the ``mask`` tokens (held-out split).

    For latent j the direction is the distilled decoder d_j = W_dec[j, 1]; for a target y,
    ``beta_j = d_j . sum_x f_j y / (||d_j||^2 sum_x f_j^2)``. Error target of model m:
    ``x^m - (xhat^m - f_j d_j^m)``; reconstruction target: ``xhat^m``. ``nu_error = beta_err_base /
    beta_err_distilled`` (high: Complete Shrinkage), ``nu_reconstruction`` likewise (high: Latent
    Decoupling). Betas are reported in the crosscoder's training units (its folded ``norm_scale`` undone).
    Streams over token chunks; all requested latents are handled at once per chunk.
    Returns one row per latent with the betas, ratios, ``n_active`` and a ``flag``
    ("genuine", "shrinkage", "decoupling", "shrinkage+decoupling", "inactive").
    """
    check_inputs(cc, store)
    _check_folded(cc)
    J = np.asarray(latents, dtype=np.int64).ravel()
    F = cc.W_dec.shape[0]
    if len(J) == 0 or J.min() < 0 or J.max() >= F:
        raise ValueError(f"latents must be a non-empty set of indices in [0, {F})")
    idx = np.nonzero(global_mask(mask, store.n_tokens))[0]
    if len(idx) == 0:
        raise ValueError("the token mask selects no tokens")
    dev = device_of(cc)
    Jt = torch.as_tensor(J, device=dev)
    Wd = cc.W_dec.detach()[Jt].double()         # [J, 2, d]
    D = Wd[:, 1]                                # [J, d] the distilled direction
    a_err = torch.zeros(2, len(J), dtype=torch.float64, device=dev)
    a_rec = torch.zeros_like(a_err)
    S = torch.zeros(len(J), dtype=torch.float64, device=dev)
    n_active = torch.zeros(len(J), dtype=torch.long, device=dev)
    with eval_mode(cc):
        for part in chunk_indices(idx, chunk, "latent scaling"):
            x = load_rows(store, part, cc)
            f = cc.encode(x)
            xh = cc.decode(f)
            fJ = f[:, Jt].double()
            err = (x - xh).double()
            for m in range(2):
                a_err[m] += ((fJ.T @ err[:, m]) * D).sum(-1)
                a_rec[m] += ((fJ.T @ xh[:, m].double()) * D).sum(-1)
            S += (fJ ** 2).sum(0)
            n_active += (fJ > 0).sum(0)
    dd = (D * D).sum(-1)
    denom = dd * S
    own = torch.stack([(D * Wd[:, m]).sum(-1) for m in range(2)])  # d_j . d_j^m, latent j's own term added back
    with np.errstate(invalid="ignore", divide="ignore"):
        # Raw -> training units (as in Minder et al., whose crosscoders see normalised activations):
        # beta^m scales by s_m / s_distilled, so the ratios do not reflect the models' raw norm ratio.
        s = np.asarray(norm_scale_of(cc))
        unit = (s / s[1])[:, None]
        b_err = ((a_err + S * own) / denom).cpu().numpy() * unit
        b_rec = (a_rec / denom).cpu().numpy() * unit
        nu_e = b_err[0] / b_err[1]
        nu_r = b_rec[0] / b_rec[1]
    shrink, decouple = nu_e > nu_error_max, nu_r > nu_reconstruction_max
    flag = np.where(shrink & decouple, "shrinkage+decoupling",
                    np.where(shrink, "shrinkage", np.where(decouple, "decoupling", "genuine")))
    active = n_active.cpu().numpy()
    flag = np.where(active == 0, "inactive", flag)
    return pd.DataFrame({
        "latent": J, "n_active": active,
        "beta_err_base": b_err[0], "beta_err_distilled": b_err[1],
        "beta_rec_base": b_rec[0], "beta_rec_distilled": b_rec[1],
        "nu_error": nu_e, "nu_reconstruction": nu_r, "flag": flag,
    })


def scaling_latents(nrn, alive, n: int, min_relative_norm: float | None = None) -> list[int]:
    """The latents latent scaling checks: the ``n`` most distilled-specific (highest relative norm ``nrn`` [F])
    among the live ones (``alive`` [F] bool), keeping only those at ``min_relative_norm`` or above when given (the
    distilled-only ones, for claim 10)."""
    nrn, alive = np.asarray(nrn, float), np.asarray(alive, bool)
    return [int(j) for j in top_latents(np.where(alive, nrn, np.nan), n)
            if alive[j] and (min_relative_norm is None or nrn[j] >= min_relative_norm)]


def scaling_counts(scaling: pd.DataFrame) -> tuple[int, int]:
    """(genuine, checked) of a ``latent_scaling`` table: latents flagged "genuine", of those active on its tokens."""
    flag = scaling["flag"]
    return int((flag == "genuine").sum()), int((flag != "inactive").sum())


def genuine_mask(cc, store, nrn, frequency, min_frequency: float = MIN_FREQUENCY) -> np.ndarray:
    """[F] True where a distilled-only latent (relative norm >= ``DISTILLED_SPECIFIC``, firing on at least
    ``min_frequency`` of the store's tokens) survives latent scaling on ``store``'s held-out tokens (claim 1)."""
    nrn, frequency = np.asarray(nrn, float), np.asarray(frequency, float)
    cand = np.nonzero((nrn >= DISTILLED_SPECIFIC) & (frequency >= min_frequency))[0]
    out = np.zeros(len(nrn), bool)
    if len(cand):
        sc = latent_scaling(cc, store, cand, mask=store.meta["split"] == 1)
        out[sc.latent[sc.flag == "genuine"].to_numpy()] = True
    return out


def claim1_null(run, scheme: str) -> tuple[list[dict], list[np.ndarray]]:
    """Claim 1's null for ``scheme``: ``claims.exclusive_counts`` (with the distilled-only latents that survive
    latent scaling) of each of ``run``'s null crosscoders (the base paired with its control fine-tune, one per
    seed), and each one's live relative norms [n_live] (firing on at least ``MIN_FREQUENCY`` of tokens)."""
    counts, live = [], []
    for c in run.null_crosscoders(scheme):
        r, f = relative_norm(c), encode_store(c, run.null_store).frequency()
        counts.append(exclusive_counts(r, f, genuine=genuine_mask(c, run.null_store, r, f)))
        live.append(r[f >= MIN_FREQUENCY])
    return counts, live


def claim10_findings(run, masks: dict, scaling: pd.DataFrame, null_counts: dict, genuine: dict) -> dict:
    """Claim 10's properties (``claims.claim10_properties``), each measured again under every scheme of ``run``:
    claim 1 (against ``null_counts`` scheme -> ``claim1_null`` counts; absent: no null) with ``genuine`` scheme ->
    ``genuine_mask``, claim 3 on the latents firing at ``masks`` (``marker_masks``), and whether most of the
    scheme's top distilled-only latents (``scaling_latents``, the run's ``[label] n_scaling``) survive latent
    scaling on held-out tokens. ``scaling``: the main scheme's ``latent_scaling`` of ``scaling_latents`` without
    the relative-norm bar, reused rather than run again."""
    schemes, heldout = run.config.schemes, run.store.meta["split"] == 1
    claim1, claim3, survive = {}, {}, {}
    for s in schemes:
        nrn, acts = run.relative_norms(s), run.codes(s)
        freq = acts.frequency()
        claim1[s] = claim1_verdict(nrn, freq, null_counts.get(s), genuine=genuine.get(s), pair=run.config.preset,
                                   imported=bool(run.config.imports))[0]
        claim3[s] = claim3_verdict(category_latents(marker_counts(acts, masks), nrn), nrn, freq,
                                   categories=list(CATEGORIES))[0]
        top = scaling_latents(nrn, freq > 0, run.config.label["n_scaling"], min_relative_norm=DISTILLED_SPECIFIC)
        if not top:
            survive[s] = None
            continue
        sc = (scaling[scaling.latent.isin(top)] if s == schemes[0]
              else latent_scaling(run.crosscoder(s), run.store, top, mask=heldout))
        survive[s] = scaling_counts(sc)
    return claim10_properties(claim1, claim3, survive)


def plot_latent_scaling(scaling: pd.DataFrame, nu_error_max: float = 0.3, nu_reconstruction_max: float = 0.3):
    """Scatter of nu_reconstruction vs nu_error with the artefact thresholds."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for flag, grp in scaling.groupby("flag"):
        ax.scatter(grp["nu_error"], grp["nu_reconstruction"], s=12, label=f"{flag} ({len(grp)})")
    ax.axvline(nu_error_max, color="grey", ls="--")
    ax.axhline(nu_reconstruction_max, color="grey", ls="--")
    ax.set_xlabel("nu_error = beta_err_base / beta_err_distilled (shrinkage)")
    ax.set_ylabel("nu_reconstruction (decoupling)")
    ax.set_title(f"Latent scaling of {len(scaling)} latents")
    ax.legend(fontsize=7)
    return fig


# ---------------------------------------------------------------------------------------------------------
# Lexicon windows and ReasonScore (Galichin et al., docs/prior-art.md §2.1)
# ---------------------------------------------------------------------------------------------------------
def lexicon_groups(lexicon: Lexicon, meta, before: int = 1, after: int = 2) -> np.ndarray:
    """[n_tokens, n_entries] bool: store token lies in the (before, after) window of a match of entry j.

    Matches never span documents or gaps in ``pos`` (the store's flat order is split into runs).
    """
    ids = np.asarray(meta["token_id"])
    return lexicon.group_masks(ids, runs_from_meta(meta["doc_id"], meta["pos"]), before, after)


@dataclass
class ReasonScores:
    """Per-category ReasonScore and its parts; every frame is [F latents x categories]."""
    score: pd.DataFrame
    entropy: pd.DataFrame
    mu_plus: pd.DataFrame
    mu_minus: pd.DataFrame
    lexicon_share: pd.DataFrame   # share of the latent's total activation inside the category's windows
    n_groups: dict                # category -> number of lexicon groups present in the data (|R|)
    alpha: float

    def ranked(self, category: str, n: int = 20, nrn=None) -> pd.DataFrame:
        """Top-``n`` latents of ``category`` by score, with entropy, means and (optionally) relative norm."""
        df = pd.DataFrame({"latent": self.score.index, "score": self.score[category],
                           "entropy": self.entropy[category], "mu_plus": self.mu_plus[category],
                           "mu_minus": self.mu_minus[category], "lexicon_share": self.lexicon_share[category]})
        if nrn is not None:
            df["relative_norm"] = np.asarray(nrn)[df["latent"]]
        return df.sort_values("score", ascending=False).head(n).reset_index(drop=True)


def reason_scores_from_groups(acts: SparseActs, groups, group_category, categories=CATEGORIES,
                              special=None, alpha: float = 0.7, eps: float = 1e-12) -> ReasonScores:
    """ReasonScore per latent and category from window masks over the evaluated tokens.

    ``groups`` [N, G] bool (window of each lexicon group), ``group_category`` [G] category index,
    ``special`` [N] bool tokens left out of D-. For category c with groups r:
    ``score_i = mu+_i / sum_j mu+_j * H_i^alpha - mu-_i / sum_j mu-_j``, ``H_i`` the normalised entropy of
    ``p_ir = mu_ir / (sum_r mu_ir + eps)`` over the groups that occur (H = 1 when fewer than 2 occur).
    """
    groups = np.asarray(groups, dtype=bool)
    gc = np.asarray(group_category)
    if groups.shape != (acts.n_tokens, len(gc)):
        raise ValueError(f"groups must be [{acts.n_tokens}, {len(gc)}], got {groups.shape}")
    special = np.zeros(acts.n_tokens, bool) if special is None else np.asarray(special, bool)
    if alpha < 0:
        raise ValueError("alpha must be >= 0")
    F = acts.n_latents
    plus = np.stack([groups[:, gc == c].any(1) for c in range(len(categories))], 1)   # [N, C] D+
    minus = ~plus & ~special[:, None]                                                   # [N, C] D-
    sums = acts.sums(np.concatenate([groups, plus, minus, np.ones((acts.n_tokens, 1), bool)], 1))
    n_g = groups.sum(0)
    G, C = len(gc), len(categories)
    s_g, s_plus, s_minus, s_all = sums[:G], sums[G: G + C], sums[G + C: G + 2 * C], sums[-1]
    out = {k: np.full((F, C), np.nan) for k in ("score", "entropy", "mu_plus", "mu_minus", "share")}
    n_groups = {}
    for c, cat in enumerate(categories):
        present = np.nonzero((gc == c) & (n_g > 0))[0]
        n_groups[cat] = len(present)
        n_plus, n_minus = plus[:, c].sum(), minus[:, c].sum()
        mu_p = s_plus[c] / max(n_plus, 1)
        mu_m = s_minus[c] / max(n_minus, 1)
        if len(present) >= 2:
            mu_r = s_g[present] / n_g[present][:, None]                     # [R, F]
            p = mu_r / (mu_r.sum(0) + eps)
            with np.errstate(divide="ignore", invalid="ignore"):
                plogp = np.where(p > 0, p * np.log(p), 0.0)
            H = -plogp.sum(0) / math.log(len(present))
        else:
            H = np.ones(F)
        first = mu_p / mu_p.sum() if mu_p.sum() > 0 else np.zeros(F)
        second = mu_m / mu_m.sum() if mu_m.sum() > 0 else np.zeros(F)
        out["score"][:, c] = first * np.clip(H, 0, None) ** alpha - second
        out["entropy"][:, c], out["mu_plus"][:, c], out["mu_minus"][:, c] = H, mu_p, mu_m
        with np.errstate(divide="ignore", invalid="ignore"):
            out["share"][:, c] = np.where(s_all > 0, s_plus[c] / s_all, np.nan)
    frame = lambda a: pd.DataFrame(a, columns=list(categories), index=pd.RangeIndex(F, name="latent"))  # noqa: E731
    return ReasonScores(frame(out["score"]), frame(out["entropy"]), frame(out["mu_plus"]), frame(out["mu_minus"]),
                        frame(out["share"]), n_groups, alpha)


def reason_scores(acts: SparseActs, lexicon: Lexicon, meta, alpha: float = 0.7, before: int = 1, after: int = 2,
                  special_ids=(), eps: float = 1e-12) -> ReasonScores:
    """Per-category ReasonScore of every latent over the tokens in ``acts``.

    Lexicon matches are found over the whole store (so windows see their context) and restricted to the
    evaluated tokens. D- excludes ``special_ids`` (pass ``tokenizer.all_special_ids``).
    """
    groups = acts.local(lexicon_groups(lexicon, meta, before, after))
    special = np.isin(acts.local(meta["token_id"]), np.asarray(list(special_ids), dtype=np.int64))
    return reason_scores_from_groups(acts, groups, lexicon.entry_categories(), lexicon.categories,
                                     special, alpha, eps)


# ---------------------------------------------------------------------------------------------------------
# The paper's per-category view: latents active at marker tokens
# ---------------------------------------------------------------------------------------------------------
def marker_masks(meta, marker_ids: dict, use_labels: bool = False) -> dict[str, np.ndarray]:
    """category -> [n_tokens] bool: token is one of the category's marker ids (``lexicon.marker_token_ids``).

    ``use_labels=True`` (organism) additionally requires ``meta['label'] == category id``.
    """
    tok = np.asarray(meta["token_id"])
    out = {}
    for cat, ids in marker_ids.items():
        m = np.isin(tok, np.asarray(ids))
        if use_labels:
            m &= np.asarray(meta["label"]) == CATEGORIES.index(cat) + 1
        out[cat] = m
    return out


def marker_counts(acts: SparseActs, masks: dict) -> pd.DataFrame:
    """[F x categories] how many of the category's marker tokens each latent fires on (+ ``n_<cat>`` attrs)."""
    cats = list(masks)
    w = np.stack([acts.local(masks[c]) for c in cats], 1)
    df = pd.DataFrame(acts.counts(w).T.astype(np.int64), columns=cats,
                      index=pd.RangeIndex(acts.n_latents, name="latent"))
    df.attrs["n_markers"] = {c: int(w[:, i].sum()) for i, c in enumerate(cats)}
    return df


def marker_contributions(acts: SparseActs, masks: dict, W_dec, model: int = 1) -> pd.DataFrame:
    """[F x categories] each latent's contribution to ``model``'s reconstruction at the category's marker tokens:
    the sum of its activations there times the norm of its decoder row for that model (``W_dec`` [F, n_models,
    d_model] or the crosscoder; ``model`` 1 = distilled). The shared-latent control of the ablation is matched on it."""
    cats = list(masks)
    dec = decoder_norms(W_dec)[:, model]
    if len(dec) != acts.n_latents:
        raise ValueError(f"W_dec has {len(dec)} latents, the activations {acts.n_latents}")
    w = np.stack([acts.local(masks[c]) for c in cats], 1)
    return pd.DataFrame(acts.sums(w).T * dec[:, None], columns=cats, index=pd.RangeIndex(acts.n_latents, name="latent"))


def category_latents(counts: pd.DataFrame, nrn, min_fraction_of_max: float = 0.1) -> pd.DataFrame:
    """Long table (category, latent, count, relative_norm) of latents firing on more than
    ``min_fraction_of_max`` of the category's top count (the paper's histogram selection)."""
    nrn = np.asarray(nrn, float)
    rows = []
    for cat in counts.columns:
        c = counts[cat].to_numpy()
        sel = np.nonzero((c > 0) & (c > min_fraction_of_max * c.max()))[0]
        rows.append(pd.DataFrame({"category": cat, "latent": sel, "count": c[sel], "relative_norm": nrn[sel]}))
    return pd.concat(rows, ignore_index=True).sort_values(["category", "count"], ascending=[True, False])


def plot_category_relative_norms(cat_latents: pd.DataFrame, p: float = 2, bins: int = 20):
    """The paper's per-category figure: relative norms of marker-active latents, log counts,
    extreme bins ([0, 1/bins) and [1 - 1/bins, 1]) in red."""
    import matplotlib.pyplot as plt

    cats = list(dict.fromkeys(cat_latents["category"]))
    fig, axes = plt.subplots(1, len(cats), figsize=(3.2 * len(cats), 3), squeeze=False)
    for ax, cat in zip(axes[0], cats):
        v = cat_latents.loc[cat_latents["category"] == cat, "relative_norm"].dropna().to_numpy()
        _, _, patches = ax.hist(v, bins=bins, range=(0, 1), log=True, color="tab:blue")
        for i in (0, len(patches) - 1):
            patches[i].set_facecolor("tab:red")
        ax.set_title(f"{cat} ({len(v)} latents)")
        ax.set_xlabel(f"relative norm ({norm_name(p)})")
        ax.set_ylabel("latents (log scale)")
    fig.suptitle("Latents active at each category's marker tokens")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------
# Ground truth (organism labels): AUROC and lexicon validation
# ---------------------------------------------------------------------------------------------------------
def auroc_per_latent(acts: SparseActs, y) -> np.ndarray:
    """Exact AUROC of each latent's activation against bool target(s) ``y`` [N] or [N, C] (evaluated tokens).

    Rank-based (Mann-Whitney, ties get mid-ranks); zeros are one tied block, so only the non-zeros are
    sorted, once for all targets. Latents that never fire score 0.5; a target with no positives or no
    negatives gives nan. Returns [F] (or [F, C]).
    """
    y = np.asarray(y, dtype=bool)
    single = y.ndim == 1
    Y = y[:, None] if single else y
    if Y.ndim != 2 or Y.shape[0] != acts.n_tokens:
        raise ValueError(f"y must be [{acts.n_tokens}] or [{acts.n_tokens}, C] bool, got {y.shape}")
    N, F = acts.n_tokens, acts.n_latents
    order = np.lexsort((acts.vals, acts.cols))
    cols, vals, rows = acts.cols[order], acts.vals[order], acts.rows[order]
    nnz = np.bincount(cols, minlength=F)
    col_start = np.concatenate([[0], np.cumsum(nnz)[:-1]])
    rank_in_col = np.arange(len(cols)) - col_start[cols] + 1.0          # 1-based rank among non-zeros
    new_run = np.ones(len(cols), dtype=bool)
    new_run[1:] = (cols[1:] != cols[:-1]) | (vals[1:] != vals[:-1])
    run = np.cumsum(new_run) - 1
    mid = np.bincount(run, weights=rank_in_col) / np.bincount(run)       # average rank of tied values
    z = N - nnz                                                          # zeros per latent
    rank = z[cols] + mid[run]
    out = np.full((F, Y.shape[1]), np.nan)
    for c in range(Y.shape[1]):
        n_pos = int(Y[:, c].sum())
        n_neg = N - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        pos = Y[rows, c]
        pos_nz = np.bincount(cols, weights=pos.astype(float), minlength=F)
        r_pos = np.bincount(cols, weights=np.where(pos, rank, 0.0), minlength=F) + (n_pos - pos_nz) * (z + 1) / 2
        out[:, c] = (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out[:, 0] if single else out


@dataclass
class GroundTruth:
    best: pd.DataFrame    # one row per category
    auroc: pd.DataFrame   # [F x categories]


def ground_truth_auroc(acts: SparseActs, labels, nrn, categories=CATEGORIES, exclusive: float = DISTILLED_SPECIFIC,
                       target: float = 0.95) -> GroundTruth:
    """AUROC of every latent vs ``labels == category id`` (ids 1..4; tokens labelled -1 are skipped).

    ``best`` reports per category: the best latent, its AUROC and relative norm, whether it is
    distilled-specific (nrn >= ``exclusive``), whether both hit the target, and the best distilled-specific
    latent for comparison.
    """
    lab = acts.local(labels)
    valid = lab >= 0
    if not valid.any():
        raise ValueError("no evaluated token carries a planted label (all -1)")
    sub = acts if valid.all() else restrict_rows(acts, valid)
    lab = lab[valid]
    nrn = np.asarray(nrn, float)
    au = auroc_per_latent(sub, np.stack([lab == i + 1 for i in range(len(categories))], 1))
    auroc = pd.DataFrame(au, columns=list(categories), index=pd.RangeIndex(acts.n_latents, name="latent"))
    rows = []
    for i, cat in enumerate(categories):
        a = np.where(np.isfinite(au[:, i]), au[:, i], -np.inf)
        j = int(np.argmax(a))
        excl = np.nonzero(nrn >= exclusive)[0]
        je = int(excl[np.argmax(a[excl])]) if len(excl) else -1
        rows.append({"category": cat, "n_positive": int((lab == i + 1).sum()), "best_latent": j,
                     "auroc": au[j, i], "relative_norm": nrn[j], "distilled_specific": bool(nrn[j] >= exclusive),
                     "meets_target": bool(au[j, i] >= target and nrn[j] >= exclusive),
                     "best_specific_latent": je, "best_specific_auroc": au[je, i] if je >= 0 else np.nan})
    return GroundTruth(pd.DataFrame(rows), auroc)


def lexicon_validation(lexicon: Lexicon, meta, mask=None) -> pd.DataFrame:
    """Precision/recall of the lexicon matcher against planted labels, per entry and per category.

    A matched token counts as correct when its planted label is the entry's category. ``recall`` is over
    all tokens with that label; ``marker_recall`` over planted marker tokens (``meta['marker']``) of it.
    ``mask`` (e.g. held-out tokens) restricts the tokens that are counted; matching sees all tokens.
    """
    n = len(meta["token_id"])
    mask = global_mask(mask, n)
    labels = np.asarray(meta["label"])
    marker = np.asarray(meta["marker"], bool) if "marker" in meta else np.zeros(n, bool)
    g = lexicon_groups(lexicon, meta, 0, 0) & mask[:, None]
    cats = lexicon.entry_categories()
    rows = []

    def row(cat_idx, matched, entry, tier):
        truth = (labels == cat_idx + 1) & mask
        tp = int((matched & truth).sum())
        n_m = int(matched.sum())
        n_mark = int((truth & marker).sum())
        return {"category": lexicon.categories[cat_idx], "entry": entry, "tier": tier, "n_matched_tokens": n_m,
                "precision": tp / n_m if n_m else np.nan, "recall": tp / truth.sum() if truth.sum() else np.nan,
                "marker_recall": (matched & truth & marker).sum() / n_mark if n_mark else np.nan}

    for j, e in enumerate(lexicon.entries):
        rows.append(row(cats[j], g[:, j], e.text, e.tier))
    for c in range(len(lexicon.categories)):
        for tier in dict.fromkeys(e.tier for e in lexicon.entries):
            sel = (cats == c) & np.array([e.tier == tier for e in lexicon.entries])
            if sel.any():
                rows.append(row(c, g[:, sel].any(1), "*", tier))
        rows.append(row(c, g[:, cats == c].any(1), "*", "*"))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# The features table
# ---------------------------------------------------------------------------------------------------------
def features_table(W_dec, acts: SparseActs | None = None, scaling: pd.DataFrame | None = None,
                   scores: ReasonScores | None = None, counts: pd.DataFrame | None = None,
                   truth: GroundTruth | None = None, truth_min_auroc: float = 0.9, score_top: int = 20,
                   lexicon_min_share: float = 0.5) -> pd.DataFrame:
    """One row per latent with every number computed above, and a label with its provenance.

    Labels: ``label_ground_truth`` = category of the best AUROC if >= ``truth_min_auroc``; ``label_score`` =
    category in whose ReasonScore top ``score_top`` (score > 0) the latent ranks highest; ``label_lexicon`` =
    category holding >= ``lexicon_min_share`` of the latent's activation in its lexicon windows.
    ``label`` / ``label_source`` take the first present of ground truth, score, lexicon ("" / "none").
    """
    F = training_decoder(W_dec).shape[0]
    nb = decoder_norms(W_dec, 2)
    df = pd.DataFrame({"latent": np.arange(F), "relative_norm": relative_norm(W_dec, 2),
                       "relative_norm_l1": relative_norm(W_dec, 1), "dec_norm_base": nb[:, 0],
                       "dec_norm_distilled": nb[:, 1], "decoder_cosine": decoder_cosine(W_dec)})
    if acts is not None:
        if acts.n_latents != F:
            raise ValueError("acts and W_dec disagree on the number of latents")
        cnt = np.bincount(acts.cols, minlength=F)
        tot = np.bincount(acts.cols, weights=acts.vals, minlength=F)
        df["frequency"] = cnt / max(acts.n_tokens, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            df["mean_active"] = np.where(cnt > 0, tot / cnt, np.nan)
        df["max_activation"] = acts.max_activation()
    if scaling is not None:
        s = scaling.set_index("latent")[["nu_error", "nu_reconstruction", "flag"]].rename(columns={"flag": "scaling_flag"})
        df = df.join(s, on="latent")
    for label_col in ("label_ground_truth", "label_score", "label_lexicon"):
        df[label_col] = ""
    if counts is not None:
        for cat in counts.columns:
            df[f"marker_count_{cat}"] = counts[cat].to_numpy()
    if scores is not None:
        best_rank = np.full(F, np.inf)
        for cat in scores.score.columns:
            sc = scores.score[cat].to_numpy()
            df[f"score_{cat}"] = sc
            df[f"lexicon_share_{cat}"] = scores.lexicon_share[cat].to_numpy()
            order = np.argsort(-np.nan_to_num(sc, nan=-np.inf), kind="stable")
            rank = np.empty(F)
            rank[order] = np.arange(F)
            hit = (rank < score_top) & (sc > 0) & (rank < best_rank)
            df.loc[hit, "label_score"] = cat
            best_rank = np.where(hit, rank, best_rank)
        share = scores.lexicon_share.to_numpy()
        arg = np.nanargmax(np.where(np.isfinite(share), share, -1), 1)
        ok = np.nan_to_num(share[np.arange(F), arg], nan=0) >= lexicon_min_share
        df.loc[ok, "label_lexicon"] = np.asarray(scores.lexicon_share.columns)[arg[ok]]
    if truth is not None:
        au = truth.auroc.to_numpy()
        for i, cat in enumerate(truth.auroc.columns):
            df[f"auroc_{cat}"] = au[:, i]
        safe = np.where(np.isfinite(au), au, -1)
        arg = safe.argmax(1)
        ok = safe[np.arange(F), arg] >= truth_min_auroc
        df.loc[ok, "label_ground_truth"] = np.asarray(truth.auroc.columns)[arg[ok]]
    df["label"], df["label_source"] = "", "none"
    for col, src in (("label_lexicon", "lexicon"), ("label_score", "score"), ("label_ground_truth", "ground_truth")):
        hit = df[col] != ""
        df.loc[hit, "label"] = df.loc[hit, col]
        df.loc[hit, "label_source"] = src
    return df


@dataclass
class LabelParts:
    """What the features table is built from (``run_features``): each computed with the run's ``[label]`` settings."""
    scaling: pd.DataFrame         # latent scaling of the top distilled-only live latents, held-out tokens
    scores: ReasonScores          # per-category ReasonScore over the default lexicon tiers
    counts: pd.DataFrame          # [F x categories] firings at each category's marker tokens
    truth: GroundTruth | None     # held-out ground-truth AUROC (planted labels only)


def label_parts(run, scheme: str | None = None) -> LabelParts:
    """The parts of ``run``'s features table for ``scheme`` (default: the main one), from its ``[label]`` settings."""
    cc, acts, nrn = run.crosscoder(scheme), run.codes(scheme), run.relative_norms(scheme)
    store, tok, L = run.store, run.pair.tokenizer, run.config.label
    meta = store.meta
    scaling = latent_scaling(cc, store, scaling_latents(nrn, acts.frequency() > 0, L["n_scaling"]),
                             mask=meta["split"] == 1)
    scores = reason_scores(acts, Lexicon(tok), meta, alpha=L["reasonscore_alpha"], before=L["window"][0],
                           after=L["window"][1], special_ids=tok.all_special_ids)
    counts = marker_counts(acts, marker_masks(meta, marker_token_ids(tok), use_labels=run.has_labels))
    truth = None
    if run.has_labels:
        gt = ground_truth_auroc(restrict(acts, meta["split"] == 1), meta["label"], nrn)
        truth = GroundTruth(gt.best, gt.auroc)
    return LabelParts(scaling, scores, counts, truth)


def run_features(run, scheme: str | None = None, parts: LabelParts | None = None) -> pd.DataFrame:
    """The features table of ``run``'s crosscoder ``scheme`` (default: the main one), cached next to the run's
    other labelling outputs (``runs/label/<run.key_hash("label")>/features-<scheme>.parquet``): built once, from
    ``parts`` when given (computed with the run's settings, as ``label_parts`` does) or by ``label_parts``."""
    scheme = scheme or run.config.schemes[0]
    folder = paths.artifact_dir("label", run.key("label"))
    path = folder / f"features-{scheme}.parquet"
    if path.exists():
        return pd.read_parquet(path)
    parts = parts or label_parts(run, scheme)
    table = features_table(run.crosscoder(scheme), acts=run.codes(scheme), scaling=parts.scaling,
                           scores=parts.scores, counts=parts.counts, truth=parts.truth)
    save_features_table(table, folder, f"features-{scheme}")
    return table


def save_features_table(df: pd.DataFrame, folder, name: str = "features", fmt: str = "parquet") -> Path:
    """Write ``df`` to ``folder/name.parquet`` (or ``.csv``) atomically; returns the path."""
    if fmt not in ("parquet", "csv"):
        raise ValueError("fmt must be 'parquet' or 'csv'")
    folder = paths.ensure_writable(Path(folder))
    out = folder / f"{name}.{fmt}"
    tmp = folder / f".{name}.tmp.{fmt}"
    try:
        df.to_parquet(tmp, index=False) if fmt == "parquet" else df.to_csv(tmp, index=False)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------------------------------------------------
# Lexical detectors and the paper's claims 1-4 as verdicts computed from the numbers (docs/paper-notes.md §11)
# ---------------------------------------------------------------------------------------------------------
def lexical_profile(acts: SparseActs, meta, latents, token_ids, category: str) -> pd.DataFrame:
    """Is each latent a token detector or a reasoning-move detector? (claim 4)

    For the marker ``token_ids`` of ``category``: ``fire_labelled`` = share of marker tokens inside a planted
    ``category`` span the latent fires on, ``fire_unlabelled`` = share of the same tokens used in an ordinary
    role (planted label not the category), ``token_purity`` = share of all its firings that are on these tokens.
    A lexical detector has high purity and fires on both uses alike (``label_ratio`` = unlabelled / labelled ~ 1).
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}")
    tok = acts.local(meta["token_id"])
    lab = acts.local(meta["label"])
    is_tok = np.isin(tok, np.asarray(token_ids))
    labelled = is_tok & (lab == CATEGORIES.index(category) + 1)
    unlabelled = is_tok & (lab >= 0) & ~labelled
    cnt = acts.counts(np.stack([labelled, unlabelled, is_tok, np.ones_like(is_tok)], 1))
    rows = []
    for j in np.asarray(latents, dtype=np.int64).ravel():
        rows.append({"latent": int(j), "fire_labelled": cnt[0, j] / max(labelled.sum(), 1),
                     "fire_unlabelled": cnt[1, j] / max(unlabelled.sum(), 1) if unlabelled.any() else np.nan,
                     "token_purity": cnt[2, j] / cnt[3, j] if cnt[3, j] else np.nan, "n_fires": int(cnt[3, j])})
    df = pd.DataFrame(rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        df["label_ratio"] = df["fire_unlabelled"] / df["fire_labelled"]
    df.attrs.update(n_labelled=int(labelled.sum()), n_unlabelled=int(unlabelled.sum()))
    return df


# ---------------------------------------------------------------------------------------------------------
# Reasoning features by move precision (claim 2)
# ---------------------------------------------------------------------------------------------------------
MOVE_PRECISION_MIN = 0.9    # held-out share of a latent's top firings inside its category's moves
LEXICAL_RATIO = 0.5         # mean activation on ordinary uses of its token / on in-move uses, at or above: lexical
MIN_ORDINARY_USES = 10      # fewer ordinary uses of the token: whether it is lexical is unmeasured


def _top_firings(acts: SparseActs, latents, rows_mask, n_top: int) -> dict:
    """latent -> local row indices of its ``n_top`` largest activations among rows where ``rows_mask`` holds."""
    keep = np.asarray(rows_mask, bool)[acts.rows] & np.isin(acts.cols, np.asarray(latents))
    cols, rows, vals = acts.cols[keep], acts.rows[keep], acts.vals[keep]
    order = np.lexsort((-vals, cols))
    cols, rows = cols[order], rows[order]
    starts = np.searchsorted(cols, latents)
    ends = np.searchsorted(cols, latents, side="right")
    return {int(j): rows[s:min(e, s + n_top)] for j, s, e in zip(latents, starts, ends)}


def move_precision(acts: SparseActs, meta, latents, doc_kind=None, n_top: int = 200) -> pd.DataFrame:
    """Is each latent a reasoning feature of one move category? (claim 2)

    The category is chosen on the **training** split: the one holding the largest share of the latent's
    ``n_top`` largest training activations inside its planted moves (``meta["label"]`` = category index + 1).
    On the **held-out** split: ``precision`` = the share of its ``n_top`` largest activations inside that
    category's moves; and a lexical check on the token it fires on most inside those moves (chosen on training
    tokens): the mean activation on that token's ordinary uses (outside the category's moves, any document) over
    its mean activation on the in-move uses. ``lexical`` is True at or above ``LEXICAL_RATIO``, False below,
    None with fewer than ``MIN_ORDINARY_USES`` ordinary uses (unmeasured: say so). ``reasoning`` = precision >=
    ``MOVE_PRECISION_MIN`` and not lexical. ``doc_kind`` [n_store_tokens] (e.g. "teacher" / "base"), if given,
    adds ``base_doc_share``: the share of the held-out top firings on base documents."""
    latents = np.unique(np.asarray(latents, np.int64))
    lab, tok, split = (acts.local(meta[k]) for k in ("label", "token_id", "split"))
    kind = None if doc_kind is None else acts.local(np.asarray(doc_kind))
    train, held = _top_firings(acts, latents, split == 0, n_top), _top_firings(acts, latents, split == 1, n_top)
    rows = []
    for j in latents:
        tr, he = train[int(j)], held[int(j)]
        row = {"latent": int(j), "category": None, "train_precision": np.nan, "precision": np.nan, "token_id": -1,
               "in_move_mean": np.nan, "ordinary_mean": np.nan, "n_ordinary": 0, "lexical": None, "reasoning": False,
               "n_heldout_firings": len(he),
               "base_doc_share": float(np.mean(kind[he] == "base")) if kind is not None and len(he) else np.nan}
        if len(tr) and len(he):
            shares = [np.mean(lab[tr] == c + 1) for c in range(len(CATEGORIES))]
            c = int(np.argmax(shares))
            row.update(category=CATEGORIES[c], train_precision=float(shares[c]),
                       precision=float(np.mean(lab[he] == c + 1)))
            in_move = tr[lab[tr] == c + 1]
            if len(in_move):
                t = int(np.bincount(tok[in_move]).argmax())
                col = acts.column(int(j))
                on_tok = (tok == t) & (split == 1)
                ins, ordn = on_tok & (lab == c + 1), on_tok & (lab != c + 1)
                row.update(token_id=t, in_move_mean=float(col[ins].mean()) if ins.any() else np.nan,
                           ordinary_mean=float(col[ordn].mean()) if ordn.any() else np.nan, n_ordinary=int(ordn.sum()))
                if row["n_ordinary"] >= MIN_ORDINARY_USES and ins.any():
                    row["lexical"] = bool(row["ordinary_mean"] >= LEXICAL_RATIO * row["in_move_mean"])
            row["reasoning"] = bool(row["precision"] >= MOVE_PRECISION_MIN and row["lexical"] is not True)
        rows.append(row)
    return pd.DataFrame(rows)


BASE_DOC_SHARE = 0.1   # a latent whose held-out top firings lie on base documents more than this fires on them too


def reasoning_features(table: pd.DataFrame, moves: pd.DataFrame | None = None) -> np.ndarray:
    """[F] bool, claim 2's reasoning features: with planted labels (``moves``, ``move_precision`` rows) the
    latents whose ``reasoning`` is True; without, the latents the features ``table`` labels by ReasonScore."""
    if moves is None:
        return (table["label_score"] != "").to_numpy()
    out = np.zeros(len(table), bool)
    out[moves["latent"].to_numpy()] = moves["reasoning"].to_numpy(bool)
    return out


def distilled_only_moves(moves: pd.DataFrame, nrn, tokenizer) -> pd.DataFrame:
    """The ``move_precision`` rows of the distilled-only latents (relative norm >= ``DISTILLED_SPECIFIC``), with
    their ``relative_norm`` and the text of the ``token`` each fires on most inside its moves."""
    nrn = np.asarray(nrn, float)
    return moves[nrn[moves["latent"]] >= DISTILLED_SPECIFIC].assign(
        relative_norm=lambda d: nrn[d["latent"]],
        token=lambda d: [tokenizer.decode([t]) if t >= 0 else "" for t in d["token_id"]])


def distilled_only_counts(d_only: pd.DataFrame) -> list[int]:
    """[reasoning features, others, others firing on base documents too] among ``distilled_only_moves`` rows: what
    the distilled-only latents are (an "other" fires on base documents when more than ``BASE_DOC_SHARE`` of its
    held-out top activations lie there)."""
    reasoning = d_only["reasoning"].to_numpy(bool)
    on_base = d_only["base_doc_share"].to_numpy(float) > BASE_DOC_SHARE
    return [int(reasoning.sum()), int((~reasoning).sum()), int((~reasoning & on_base).sum())]


def context_latents(verdicts: pd.DataFrame | None, scores: ReasonScores) -> pd.Series:
    """name -> latent to show with its max-activating contexts: the train-selected best latent of each planted
    target but the move spans (``verdicts``: ``probes.ground_truth_verdicts``), or without planted labels
    (``verdicts`` None) the top ReasonScore latent of each category."""
    if verdicts is None:
        return pd.Series({f"ReasonScore top: {c}": int(scores.ranked(c, 1)["latent"][0]) for c in scores.score.columns},
                         dtype=int)
    best = verdicts["best latent"].dropna()
    return best[~best.index.astype(str).str.startswith("span: ")].astype(int)
