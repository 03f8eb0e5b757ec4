"""Representation geometry: the parallelogram test across sizes, and decoder-direction geometry.

Parallelogram loss (docs/paper-notes.md §10; Baek & Tegmark, and "Harmonic Loss" arXiv 2502.01628). For word
pairs (a_i -> b_i), (a_j -> b_j) of one relation, in a PCA space fitted per model and relation:

    loss_ij = ||a_i - b_i - a_j + b_j|| / sqrt(||a_i||^2 + ||b_i||^2 + ||a_j||^2 + ||b_j||^2)

0 is a perfect parallelogram. It is invariant to a global rotation or scale of all vectors and to
swapping the two pairs (it is not translation invariant, so PCA centring matters: coordinates are
centred on the relation's word mean, as the paper's PCA does).

Uncertainty, which the paper does not give:
- bootstrap over WORD PAIRS (not quadruples: quadruples sharing a pair are dependent). A draw
  reweights pairs by their bootstrap counts w and takes the weighted mean over i != j of
  ``w_i w_j loss_ij``, so duplicated pairs never form a degenerate (zero) quadruple with themselves.
  The PCA is held fixed (conditional on the fitted basis).
- permutation null: the b's are shuffled among the a's (same set of a's and b's, same PCA basis,
  new pairings): how much parallelogram structure a random pairing of these very words has.

Vectors are ``[n_models, n_pairs, d]`` with model 0 = base, 1 = distilled. Delta = base minus
distilled: positive means the distilled model is more parallelogram-like (the paper's claim 8 at size).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .crosscoder import decoder_weights
from .hooks import resid_hook, resid_module
from .norms import relative_norm
from .lexicon import CATEGORIES

MODEL_NAMES = ("base", "distilled")
CATEGORY_NAMES = ("none", *CATEGORIES)   # by label id: 0 none, then the four reasoning categories
SHARED = "shared basis (variant)"  # the label of the non-paper variant, everywhere it appears
PER_MODEL = "per model (paper)"


# ----------------------------------------------------------------------------- the loss

def parallelogram_loss(a_i, b_i, a_j, b_j):
    """Normalised parallelogram loss; inputs ``[..., k]`` (numpy or torch), output ``[...]``."""
    lib = torch if isinstance(a_i, torch.Tensor) else np
    num = lib.sqrt(((a_i - b_i - a_j + b_j) ** 2).sum(-1))
    den = lib.sqrt((a_i ** 2).sum(-1) + (b_i ** 2).sum(-1) + (a_j ** 2).sum(-1) + (b_j ** 2).sum(-1))
    return num / den


def pairwise_parallelogram_losses(A, B) -> np.ndarray:
    """Loss for every pair of pairs i < j, ``[n*(n-1)/2]`` in ``np.triu_indices(n, 1)`` order.

    A, B: ``[n, k]`` (a's and b's of n word pairs). Computed from explicit differences, so an exact
    parallelogram gives exactly 0.
    """
    A, B = _as2d(A, "A"), _as2d(B, "B")
    if A.shape != B.shape:
        raise ValueError(f"A and B must have the same shape, got {A.shape} and {B.shape}")
    i, j = np.triu_indices(len(A), 1)
    return parallelogram_loss(A[i], B[i], A[j], B[j])


def _as2d(X, name) -> np.ndarray:
    X = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X, dtype=np.float64)
    if X.ndim != 2 or len(X) < 2:
        raise ValueError(f"{name} must be [n >= 2, k], got shape {X.shape}")
    return X


def _loss_matrices(D: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Losses for all i, j from offsets ``D = A - B`` ``[..., n, k]`` and ``S = ||a||^2 + ||b||^2`` ``[..., n]``.

    Uses the Gram form (float64) so null and bootstrap stay fast; diagonal set to 0. ``[..., n, n]``.
    """
    G = D @ D.transpose(-1, -2)
    sq = torch.diagonal(G, dim1=-2, dim2=-1)
    num = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * G).clamp_min(0).sqrt()
    L = num / (S.unsqueeze(-1) + S.unsqueeze(-2)).sqrt()
    return L * (1 - torch.eye(L.shape[-1], dtype=L.dtype))


def _pair_mean(L: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over i != j of ``L`` ``[..., n, n]``, optionally weighted by ``w_i w_j`` with W ``[b, n]``."""
    n = L.shape[-1]
    if W is None:
        return L.sum((-1, -2)) / (n * (n - 1))
    num = ((W @ L) * W).sum(-1)
    return num / (W.sum(-1) ** 2 - (W ** 2).sum(-1))


def permutation_null(A, B, n_perm: int = 200, seed: int = 0, return_perms: bool = False):
    """Mean loss under ``n_perm`` random re-pairings of the same a's and b's (b's shuffled).

    A, B: ``[n, k]``. Returns null means ``[n_perm]`` (and the permutations ``[n_perm, n]``).
    """
    A, B = torch.as_tensor(_as2d(A, "A")), torch.as_tensor(_as2d(B, "B"))
    if n_perm < 1:
        raise ValueError("n_perm must be >= 1")
    g = torch.Generator().manual_seed(int(seed))
    perms = torch.stack([torch.randperm(len(A), generator=g) for _ in range(n_perm)])
    sa, sb = (A ** 2).sum(-1), (B ** 2).sum(-1)
    out = []
    for chunk in perms.split(32):  # [c, n]: bounded memory c * n^2
        Bp = B[chunk]
        out.append(_pair_mean(_loss_matrices(A - Bp, sa + sb[chunk])))
    means = torch.cat(out).numpy()
    return (means, perms.numpy()) if return_perms else means


# ----------------------------------------------------------------------------- word vectors

def filter_single_token(pairs: Sequence[tuple[str, str]], tokenizer) -> tuple[list[tuple[str, str]], int]:
    """Keep pairs whose two words are each exactly one token (no specials added). Returns (kept, n_dropped)."""
    kept = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"each pair must be (a, b), got {pair!r}")
        if all(len(tokenizer.encode(w, add_special_tokens=False)) == 1 for w in pair):
            kept.append((pair[0], pair[1]))
    return kept, len(pairs) - len(kept)


@torch.no_grad()
def word_vectors(model, tokenizer, words: Sequence[str], layer: int, template: str | None = None,
                 batch_size: int = 256) -> torch.Tensor:
    """Residual stream at resid_pre of block ``layer`` for each word, ``[n, d_model]`` float32 on CPU.

    ``template=None`` (paper): each word is fed ALONE, one token, read at position 0 (no specials added;
    a word that is not a single token raises). ``template="The word {}"`` (variant): the text up to and
    including the word is fed and read at its last token, which also avoids position 0 (an attention
    sink with outsized norms in real Qwen models).
    """
    resid_module(model, layer)   # a clear error for a layer outside the model
    if not words:
        raise ValueError("words is empty")
    if template is None:
        seqs = []
        for w in words:
            ids = tokenizer.encode(w, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"word {w!r} is {len(ids)} tokens; run filter_single_token first or pass a template")
            seqs.append(ids)
    else:
        if template.count("{}") != 1:
            raise ValueError(f"template must contain exactly one '{{}}', got {template!r}")
        prefix = template.split("{}")[0]  # causal model: text after the word cannot change its vector
        seqs = [tokenizer.encode(prefix + w, add_special_tokens=False) for w in words]
    dev = next(model.parameters()).device
    cap = {}
    out = [None] * len(seqs)
    with resid_hook(model, layer, lambda h: cap.__setitem__("h", h)):
        by_len: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            by_len.setdefault(len(s), []).append(i)  # equal lengths: no padding, no position shifts
        for length, idx in by_len.items():
            for k in range(0, len(idx), batch_size):
                rows = idx[k:k + batch_size]
                ids = torch.tensor([seqs[i] for i in rows], device=dev)
                model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
                vec = cap["h"][:, -1].float().cpu()
                for r, i in enumerate(rows):
                    out[i] = vec[r]
    return torch.stack(out)


def pair_vectors(models: Sequence, tokenizer, pairs: Sequence[tuple[str, str]], layer: int,
                 template: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B), each ``[n_models, n_pairs, d]``: word vectors of the a's and b's for each model (base first)."""
    if not pairs:
        raise ValueError("no pairs: after filter_single_token nothing may have survived")
    a = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    A = torch.stack([word_vectors(m, tokenizer, a, layer, template) for m in models])
    B = torch.stack([word_vectors(m, tokenizer, b, layer, template) for m in models])
    return A, B


# ----------------------------------------------------------------------------- PCA and relation analysis

def pca_fit(X, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean ``[d]``, components ``[d, k']``) of rows X ``[m, d]``, ``k' = min(k, m - 1, d)``."""
    X = torch.as_tensor(np.asarray(X, dtype=np.float64) if not isinstance(X, torch.Tensor) else X).double()
    mu = X.mean(0)
    _, _, Vh = torch.linalg.svd(X - mu, full_matrices=False)
    k = min(int(k), X.shape[0] - 1, X.shape[1])
    return mu, Vh[:k].T


@dataclass
class RelationResult:
    """Everything ``relation_losses`` measured for one relation (and one size).

    table: per (basis, dim, model): mean with bootstrap CI, permutation-null mean / 2.5, 50, 97.5 %
    quantiles and ``p_null`` (share of re-pairings at least as structured as the real pairing).
    delta: per (basis, dim): base minus distilled mean loss with bootstrap CI and the share of quadruples
    where distilled is lower. losses / null_losses: per (basis, dim, model) all quadruple losses of the
    real pairing / of one re-pairing (for ECDFs). delta_boot: per (basis, dim) the bootstrap draws.
    """
    relation: str
    n_pairs: int
    table: pd.DataFrame
    delta: pd.DataFrame
    losses: dict = field(repr=False)
    null_losses: dict = field(repr=False)
    delta_boot: dict = field(repr=False)


def relation_losses(A, B, relation: str = "relation", dims: Sequence[int] = (2, 5, 10, 20), n_boot: int = 1000,
                    n_perm: int = 200, seed: int = 0, ci: float = 0.95, shared_basis: bool = True) -> RelationResult:
    """Parallelogram analysis of one relation for both models.

    A, B: ``[n_models, n_pairs, d]`` raw word vectors (``pair_vectors``). PCA is fitted per model on
    that model's a's and b's together (the paper), dims capped at ``2 n_pairs - 1``; with
    ``shared_basis`` a variant fitted on both models' vectors at once is added, labelled SHARED.
    The same bootstrap draws (word pairs) serve both models, so the delta CI is paired.
    """
    A = torch.as_tensor(A).double()
    B = torch.as_tensor(B).double()
    if A.ndim != 3 or A.shape != B.shape:
        raise ValueError(f"A and B must both be [n_models, n_pairs, d], got {tuple(A.shape)} and {tuple(B.shape)}")
    n_models, n, d = A.shape
    if n_models != 2:
        raise ValueError(f"need exactly 2 models (base, distilled), got {n_models}")
    if n < 3:
        raise ValueError(f"relation {relation!r} has {n} pairs; need at least 3 for pairs of pairs and a null")
    if not dims or any(int(k) < 1 for k in dims):
        raise ValueError(f"dims must be positive integers, got {dims}")
    if not torch.isfinite(A).all() or not torch.isfinite(B).all():
        raise ValueError("word vectors contain non-finite values")
    rng = np.random.default_rng(seed)
    W = torch.as_tensor(rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)).double()  # [n_boot, n] pair counts
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    iu = np.triu_indices(n, 1)
    bases = [PER_MODEL] + ([SHARED] if shared_basis else [])
    rows, drows, losses, nulls, dboot = [], [], {}, {}, {}
    for basis in bases:
        for k in dims:
            if basis == SHARED:
                mu, V = pca_fit(torch.cat([A.reshape(-1, d), B.reshape(-1, d)]), k)
                fits = [(mu, V)] * n_models
            else:
                fits = [pca_fit(torch.cat([A[m], B[m]]), k) for m in range(n_models)]
            boots = []
            for m, (mu, V) in enumerate(fits):
                a, b = (A[m] - mu) @ V, (B[m] - mu) @ V
                L = _loss_matrices(a - b, (a ** 2).sum(-1) + (b ** 2).sum(-1))
                key = (basis, int(k), MODEL_NAMES[m])
                losses[key] = L.numpy()[iu]
                boot = _pair_mean(L, W).numpy()
                boots.append(boot)
                null, perms = permutation_null(a, b, n_perm, seed + 1 + m, return_perms=True)
                p0 = torch.as_tensor(perms[0])
                nulls[key] = pairwise_parallelogram_losses(a, b[p0])
                mean = float(losses[key].mean())
                rows.append(dict(relation=relation, basis=basis, dim=int(k), dim_used=V.shape[1], model=MODEL_NAMES[m],
                                 n_pairs=n, mean=mean, mean_lo=np.percentile(boot, lo_q), mean_hi=np.percentile(boot, hi_q),
                                 null_mean=float(null.mean()), null_q025=np.percentile(null, 2.5),
                                 null_q50=np.percentile(null, 50), null_q975=np.percentile(null, 97.5),
                                 p_null=(1 + int((null <= mean).sum())) / (1 + n_perm)))
            db = boots[0] - boots[1]
            dboot[(basis, int(k))] = db
            lb, ld = losses[(basis, int(k), "base")], losses[(basis, int(k), "distilled")]
            drows.append(dict(relation=relation, basis=basis, dim=int(k), n_pairs=n, delta=float(lb.mean() - ld.mean()),
                              delta_lo=np.percentile(db, lo_q), delta_hi=np.percentile(db, hi_q),
                              frac_distilled_lower=float((ld < lb).mean())))
    return RelationResult(relation, n, pd.DataFrame(rows), pd.DataFrame(drows), losses, nulls, dboot)


def adjust_null_pvalues(table: pd.DataFrame, by: Sequence[str] = ("size",)) -> pd.DataFrame:
    """``table`` (rows of ``RelationResult.table``, concatenated) with ``q_null``: the permutation p values
    Benjamini-Hochberg adjusted over the whole grid (relations x bases x PCA dims x models) within each group
    of ``by`` (``scipy.stats.false_discovery_control``), and ``n_comparisons``, the size of that grid."""
    from scipy.stats import false_discovery_control

    out = table.copy()
    keys = [k for k in by if k in out.columns]
    groups = out.groupby(keys[0] if len(keys) == 1 else keys, sort=False).groups.values() if keys else [out.index]
    out["q_null"], out["n_comparisons"] = np.nan, 0
    for idx in groups:
        out.loc[idx, "q_null"] = false_discovery_control(out.loc[idx, "p_null"].to_numpy(float), method="bh")
        out.loc[idx, "n_comparisons"] = len(idx)
    return out


def analyse_relations(models: Sequence, tokenizer, relations: dict, layer: int, template: str | None = None,
                      **kwargs) -> tuple[list[RelationResult], pd.DataFrame]:
    """One call per size: filter each relation to single-token pairs, take word vectors from both models,
    run ``relation_losses`` (kwargs pass through). Returns (results, survival table with kept / dropped).

    relations: ``{name: [(a, b), ...]}``. Without a template only single-token pairs are kept (the paper);
    with one, words may span several tokens (read at the last). A relation with fewer than 3 surviving
    pairs is reported in the survival table and skipped.
    """
    if len(models) != 2:
        raise ValueError("models must be (base, distilled)")
    results, surv = [], []
    for name, pairs in tqdm(relations.items(), desc="relations"):
        kept, dropped = filter_single_token(pairs, tokenizer) if template is None else (list(pairs), 0)
        surv.append(dict(relation=name, n_given=len(pairs), n_kept=len(kept), n_dropped=dropped,
                         analysed=len(kept) >= 3))
        if len(kept) < 3:
            continue
        A, B = pair_vectors(models, tokenizer, kept, layer, template)
        results.append(relation_losses(A, B, relation=name, **kwargs))
    return results, pd.DataFrame(surv)


def size_table(results: dict, performance: dict, dim: int = 2, basis: str = PER_MODEL, ci: float = 0.95) -> pd.DataFrame:
    """Delta loss (base - distilled) per size and relation, plus each size pooled over relations, next to
    distillation performance.

    results: ``{size: [RelationResult, ...]}``; performance: ``{size: evaluate.accuracy_gain dict or a float}``.
    The pooled row averages the relations' deltas; its CI averages their (independent) bootstrap draws.
    """
    if set(results) != set(performance):
        raise ValueError(f"sizes differ: results {sorted(results)} vs performance {sorted(performance)}")
    lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    rows = []
    for size, rels in results.items():
        if not rels:
            raise ValueError(f"size {size!r} has no relation results")
        perf = performance[size]
        perf = perf if isinstance(perf, dict) else dict(gain=float(perf), lo=np.nan, hi=np.nan)
        draws = []
        for r in rels:
            drow = r.delta[(r.delta.basis == basis) & (r.delta.dim == dim)]
            if drow.empty:
                raise ValueError(f"{r.relation}: no result for basis {basis!r}, dim {dim}")
            t = r.table[(r.table.basis == basis) & (r.table.dim == dim)].set_index("model")
            drow = drow.iloc[0]
            draws.append(r.delta_boot[(basis, dim)])
            rows.append(dict(size=size, relation=r.relation, n_pairs=r.n_pairs, base_mean=t.loc["base", "mean"],
                             distilled_mean=t.loc["distilled", "mean"], null_mean_base=t.loc["base", "null_mean"],
                             null_mean_distilled=t.loc["distilled", "null_mean"], delta=drow["delta"],
                             delta_lo=drow["delta_lo"], delta_hi=drow["delta_hi"], perf_gain=perf["gain"],
                             perf_lo=perf["lo"], perf_hi=perf["hi"]))
        if len({len(x) for x in draws}) != 1:
            raise ValueError("relations of one size must share n_boot to pool their bootstrap draws")
        pooled = np.mean(draws, 0)
        sub = [r for r in rows if r["size"] == size]
        rows.append(dict(size=size, relation="all relations", n_pairs=sum(r["n_pairs"] for r in sub),
                         base_mean=np.mean([r["base_mean"] for r in sub]),
                         distilled_mean=np.mean([r["distilled_mean"] for r in sub]),
                         null_mean_base=np.mean([r["null_mean_base"] for r in sub]),
                         null_mean_distilled=np.mean([r["null_mean_distilled"] for r in sub]),
                         delta=np.mean([r["delta"] for r in sub]), delta_lo=np.percentile(pooled, lo_q),
                         delta_hi=np.percentile(pooled, hi_q), perf_gain=perf["gain"], perf_lo=perf["lo"],
                         perf_hi=perf["hi"]))
    out = pd.DataFrame(rows)
    out["ci_excludes_zero"] = (out["delta_lo"] > 0) | (out["delta_hi"] < 0)
    return out


def deltas_by_size(results: dict, basis: str = PER_MODEL, dim: int = 2) -> dict:
    """size -> {relation: (Δ base - distilled, its bootstrap draws over word pairs)} at ``basis`` and PCA ``dim``:
    the input of ``claims.claim8_verdict``."""
    out = {}
    for size, rels in results.items():
        out[size] = {}
        for r in rels:
            drow = r.delta[(r.delta.basis == basis) & (r.delta.dim == dim)]
            if drow.empty:
                raise ValueError(f"{r.relation}: no result for basis {basis!r}, dim {dim}")
            out[size][r.relation] = (float(drow["delta"].iloc[0]), np.asarray(r.delta_boot[(basis, dim)]))
    return out


# ----------------------------------------------------------------------------- decoder geometry

def _W(crosscoder) -> torch.Tensor:
    return decoder_weights(crosscoder, "raw")


def _latents(W, latents):
    latents = list(range(W.shape[0])) if latents is None else [int(x) for x in latents]
    if not latents or min(latents) < 0 or max(latents) >= W.shape[0]:
        raise ValueError(f"latents must be non-empty indices in [0, {W.shape[0]})")
    return latents


def decoder_cosines(crosscoder, latents: Sequence[int], model_index: int = 1) -> pd.DataFrame:
    """Cosine similarity between the decoder directions of ``latents`` for one model, ``[k, k]`` (0 for zero rows)."""
    W = _W(crosscoder)
    latents = _latents(W, latents)
    D = W[latents, model_index]
    U = D / D.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return pd.DataFrame((U @ U.T).numpy(), index=latents, columns=latents)


def side_alignment(crosscoder, latents: Sequence[int] | None = None) -> pd.DataFrame:
    """Per latent: cosine between its base-side and distilled-side decoder directions, both norms (raw units),
    and the relative norm (``norms.relative_norm``, training units)."""
    W = _W(crosscoder)
    latents = _latents(W, latents)
    db, dd = W[latents, 0], W[latents, 1]
    nb, nd = db.norm(dim=-1), dd.norm(dim=-1)
    cos = (db * dd).sum(-1) / (nb * nd).clamp_min(1e-30)
    return pd.DataFrame(dict(latent=latents, cos_base_distilled=cos.numpy(), norm_base=nb.numpy(),
                             norm_distilled=nd.numpy(), rel_norm=relative_norm(crosscoder)[latents]))


def decoder_map(crosscoder, latents: Sequence[int], categories=None, model_index: int = 1) -> pd.DataFrame:
    """2-D PCA map of the unit decoder directions of ``latents`` for one model.

    Columns: latent, pc1, pc2, rel_norm, category (names; ints are read as label ids 0-4). A latent
    whose decoder row is zero for this model (exclusive to the other one) sits at the origin of the
    unit vectors before centring.
    """
    W = _W(crosscoder)
    latents = _latents(W, latents)
    if len(latents) < 3:
        raise ValueError("need at least 3 latents for a 2-D map")
    D = W[latents, model_index]
    U = D / D.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    mu, V = pca_fit(U, 2)
    xy = ((U - mu) @ V).numpy()
    if xy.shape[1] < 2:
        xy = np.c_[xy, np.zeros(len(xy))]
    if categories is None:
        cats = ["none"] * len(latents)
    else:
        if len(categories) != len(latents):
            raise ValueError(f"{len(categories)} categories for {len(latents)} latents")
        cats = [CATEGORY_NAMES[int(c)] if isinstance(c, (int, np.integer)) else str(c) for c in categories]
    return pd.DataFrame(dict(latent=latents, pc1=xy[:, 0], pc2=xy[:, 1],
                             rel_norm=relative_norm(crosscoder)[latents], category=cats))


# ----------------------------------------------------------------------------- plots

def _colorbar(fig, mappable, ax, label: str, short: str):
    """A colorbar whose axis is labelled on both sides, as ``plots.savefig`` requires of every axis with data."""
    cb = fig.colorbar(mappable, ax=ax)
    cb.ax.set_ylabel(label)
    cb.ax.set_xlabel(short)
    return cb


def plot_ecdf_grid(results: dict, dim: int = 2, basis: str = PER_MODEL, show_null: bool = True):
    """ECDF of quadruple losses, base vs distilled (and one re-pairing as the null), sizes x relations."""
    import matplotlib.pyplot as plt

    sizes = list(results)
    rels = sorted({r.relation for rs in results.values() for r in rs})
    if not rels:
        raise ValueError("no relation results to plot")
    fig, axes = plt.subplots(len(sizes), len(rels), figsize=(3.0 * len(rels), 2.6 * len(sizes)), squeeze=False)
    for s, size in enumerate(sizes):
        by = {r.relation: r for r in results[size]}
        for c, rel in enumerate(rels):
            ax = axes[s][c]
            if rel not in by:
                ax.set_visible(False)
                continue
            r = by[rel]
            for model, col in zip(MODEL_NAMES, ("tab:blue", "tab:red")):
                x = np.sort(r.losses[(basis, dim, model)])
                ax.plot(x, np.arange(1, len(x) + 1) / len(x), color=col, label=model)
                if show_null:
                    xn = np.sort(r.null_losses[(basis, dim, model)])
                    ax.plot(xn, np.arange(1, len(xn) + 1) / len(xn), color=col, ls=":", lw=1, label=f"{model} re-paired")
            ax.set_title(f"{size}: {rel} (n={r.n_pairs})", fontsize=9)
            ax.set_xlabel("parallelogram loss")
            ax.set_ylabel("ECDF")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"Parallelogram loss ECDF, PCA dim {dim}, {basis}")
    fig.tight_layout()
    return fig


def plot_delta_vs_performance(table: pd.DataFrame, title: str = "Geometry vs distillation performance",
                              xlabel: str = "distillation performance (accuracy gain, distilled - base)", ax=None):
    """Delta loss (base - distilled, 95% CI) against a per-size x value (a ``size_table``'s ``perf_gain``:
    distillation performance with its 95% CI, or log10 parameters without one), one point per size and
    relation; the pooled row in black with its sizes annotated. Draws on ``ax`` when given."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4)) if ax is None else (ax.figure, ax)
    for rel, g in table.groupby("relation", sort=False):
        pooled = rel == "all relations"
        xerr = None if g["perf_lo"].isna().all() else [g["perf_gain"] - g["perf_lo"], g["perf_hi"] - g["perf_gain"]]
        ax.errorbar(g["perf_gain"], g["delta"], yerr=[g["delta"] - g["delta_lo"], g["delta_hi"] - g["delta"]],
                    xerr=xerr, fmt="s-" if pooled else "o", color="black" if pooled else None,
                    ms=6 if pooled else 4, capsize=2, alpha=1 if pooled else 0.6, label=rel)
        if pooled:
            for _, r in g.iterrows():
                ax.annotate(str(r["size"]), (r["perf_gain"], r["delta"]), textcoords="offset points", xytext=(5, 5))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Δ parallelogram loss (base - distilled)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_cosine_matrix(cos: pd.DataFrame, title: str = "Decoder cosine similarity", labels: Sequence[str] | None = None,
                       ax=None):
    """Heatmap of a ``decoder_cosines`` matrix (labels, e.g. "4975 self_reflection", default the latent ids).
    Draws on ``ax`` when given."""
    import matplotlib.pyplot as plt

    k = len(cos)
    fig, ax = plt.subplots(figsize=(1.2 + 0.35 * k, 1.0 + 0.35 * k)) if ax is None else (ax.figure, ax)
    im = ax.imshow(cos.to_numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    lab = list(labels) if labels is not None else [str(x) for x in cos.index]
    fs = 7 if k <= 24 else 6
    ax.set_xticks(range(k), lab, rotation=90, fontsize=fs)
    ax.set_yticks(range(k), lab, fontsize=fs)
    ax.set_xlabel("latent")
    ax.set_ylabel("latent")
    ax.set_title(title)
    _colorbar(fig, im, ax, "cosine similarity", "cos")
    fig.tight_layout()
    return fig


def plot_decoder_map(df: pd.DataFrame, title: str = "Decoder directions (PCA)"):
    """Two panels of the same ``decoder_map``: coloured by relative norm, and by reasoning category."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    sc = a1.scatter(df["pc1"], df["pc2"], c=df["rel_norm"], cmap="coolwarm", vmin=0, vmax=1, s=14)
    _colorbar(fig, sc, a1, "relative norm (1 = distilled-only)", "NRN")
    for cat, g in df.groupby("category", sort=False):
        a2.scatter(g["pc1"], g["pc2"], s=14, label=cat)
    a2.legend(fontsize=7)
    for ax, sub in ((a1, "by relative norm"), (a2, "by category")):
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title(sub)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
