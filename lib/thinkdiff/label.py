"""Finding and labelling reasoning features: which latents belong to which model, and what they mean.

Inputs everywhere: a crosscoder ``cc`` (W_enc [2, d, F], W_dec [F, 2, d], b_enc [F], b_dec [2, d];
``encode(x [B, 2, d] raw) -> f [B, F]``, ``decode(f) -> [B, 2, d]`` raw; normalisation folded in) and an
activation store (``n_tokens``, ``acts(idx) -> [n, 2, d]``, ``meta`` dict of 1-D arrays over all tokens).
Model index 0 = base, 1 = distilled. Per-token masks and labels are always given over *all* store tokens.

Every latent analysis runs off one pass over the store (``encode_store``), kept as a sparse matrix:
ReLU codes are sparse, so counts, windowed means, exact AUROCs and top activations all come from it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .lexicon import CATEGORIES, Lexicon, runs_from_meta

MODELS = ("base", "distilled")


# ---------------------------------------------------------------------------------------------------------
# Decoder geometry: relative norm, the science-of-finetuning converter, cosine
# ---------------------------------------------------------------------------------------------------------
def _norm_scale(cc) -> list[float]:
    """Per-model scale folded into a crosscoder (raw -> training units); [1, 1] when none is recorded."""
    cfg = getattr(cc, "config", None)
    s = getattr(cfg, "norm_scale", None)
    return [float(v) for v in s] if s is not None else [1.0, 1.0]


def _w_dec(W_dec) -> torch.Tensor:
    """[F, 2, d] float64 decoder in *training* units. Pass the crosscoder itself (not ``cc.W_dec`` of a
    folded model) so its folded scale is undone, as the paper's relative norm is taken in training units."""
    if hasattr(W_dec, "W_dec"):
        s = torch.tensor(_norm_scale(W_dec), dtype=torch.float64)
        W = W_dec.W_dec.detach().double().cpu() * s[None, :, None]
    else:
        W = W_dec.detach() if isinstance(W_dec, torch.Tensor) else torch.as_tensor(np.asarray(W_dec))
    if W.ndim != 3 or W.shape[1] != 2:
        raise ValueError(f"W_dec must be [F, 2, d] (model 0 = base, 1 = distilled), got {tuple(W.shape)}")
    return W.double().cpu()


def decoder_norms(W_dec, p: float = 2) -> np.ndarray:
    """[F, 2] per-model decoder norms ``||W_dec[i, m]||_p`` (training units; ``W_dec`` may be the crosscoder)."""
    return torch.linalg.vector_norm(_w_dec(W_dec), ord=p, dim=-1).numpy()


def relative_norm(W_dec, p: float = 2) -> np.ndarray:
    """[F] ``||d_distilled||_p / (||d_base||_p + ||d_distilled||_p)``: 1 distilled-only, 0.5 shared, 0 base-only.

    ``p=2`` by default (the training penalty's norm); ``p=1`` is the paper's variant. Both norms 0 -> nan.
    """
    n = decoder_norms(W_dec, p)
    tot = n.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, n[:, 1] / tot, np.nan)


def dec_norm_diff(W_dec, p: float = 2) -> np.ndarray:
    """science-of-finetuning's ``dec_norm_diff`` (prior-art §1.5), for comparison only: 0 = fine-tune-only."""
    n = decoder_norms(W_dec, p)
    mx = n.max(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mx > 0, 0.5 * ((n[:, 0] - n[:, 1]) / mx + 1), np.nan)


def relative_norm_from_dec_norm_diff(delta) -> np.ndarray:
    """Convert ``dec_norm_diff`` values to our relative norm (a different function, not ``1 - delta``).

    With q = min/max norm ratio: delta >= 0.5 means base >= distilled and q = 2(1 - delta), r = q/(1+q);
    delta < 0.5 means distilled larger, q = 2 delta, r = 1/(1+q).
    """
    d = np.asarray(delta, dtype=float)
    if np.any((d < 0) | (d > 1)):
        raise ValueError("dec_norm_diff values must lie in [0, 1]")
    q_base_big, q_dist_big = 2 * (1 - d), 2 * d
    return np.where(d >= 0.5, q_base_big / (1 + q_base_big), 1 / (1 + q_dist_big))


def dec_norm_diff_from_relative_norm(r) -> np.ndarray:
    """Inverse of ``relative_norm_from_dec_norm_diff``."""
    r = np.asarray(r, dtype=float)
    if np.any((r < 0) | (r > 1)):
        raise ValueError("relative norms must lie in [0, 1]")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r <= 0.5, 1 - r / (1 - r) / 2, (1 - r) / r / 2)


def decoder_cosine(W_dec) -> np.ndarray:
    """[F] cosine between the base and distilled decoder vectors of each latent (nan if either is 0)."""
    W = _w_dec(W_dec)
    n = torch.linalg.vector_norm(W, dim=-1)
    dot = (W[:, 0] * W[:, 1]).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n > 0).all(1).numpy(), (dot / (n[:, 0] * n[:, 1])).numpy(), np.nan)


def _norm_name(p) -> str:
    return {1: "L1", 2: "L2"}.get(p, f"L{p}")


def plot_relative_norms(nrn, p: float = 2, bins: int = 50, title: str | None = None):
    """Histogram of relative norms with log counts; the norm used is printed on the figure."""
    import matplotlib.pyplot as plt

    nrn = np.asarray(nrn, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(nrn[np.isfinite(nrn)], bins=bins, range=(0, 1), log=True, color="tab:purple")
    ax.set_xlabel("relative decoder norm (0 = base-only, 0.5 = shared, 1 = distilled-only)")
    ax.set_ylabel("latents (log scale)")
    ax.set_title(title or f"Relative decoder norm, {_norm_name(p)} (p={p}), {np.isfinite(nrn).sum()} latents")
    return fig


def plot_decoder_cosine(cos, nrn, shared=(0.3, 0.7), bins: int = 50, p: float = 2):
    """Histogram (log counts) of the base/distilled decoder cosine for shared latents (nrn in ``shared``)."""
    import matplotlib.pyplot as plt

    cos, nrn = np.asarray(cos, float), np.asarray(nrn, float)
    sel = np.isfinite(cos) & (nrn >= shared[0]) & (nrn <= shared[1])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(cos[sel], bins=bins, range=(-1, 1), log=True, color="tab:green")
    ax.set_xlabel("cosine(d_base, d_distilled)")
    ax.set_ylabel("latents (log scale)")
    ax.set_title(f"Decoder cosine of shared latents ({sel.sum()}, {_norm_name(p)} relative norm in "
                 f"[{shared[0]}, {shared[1]}])")
    return fig


def top_latents(nrn, n: int = 100, side: str = "distilled") -> np.ndarray:
    """Indices of the ``n`` most distilled-specific (highest nrn) or base-specific (lowest) latents."""
    nrn = np.asarray(nrn, float)
    if side not in ("distilled", "base"):
        raise ValueError("side must be 'distilled' or 'base'")
    key = np.where(np.isfinite(nrn), nrn, -np.inf if side == "distilled" else np.inf)
    order = np.argsort(-key if side == "distilled" else key, kind="stable")
    return order[:n]


# ---------------------------------------------------------------------------------------------------------
# One pass over the store
# ---------------------------------------------------------------------------------------------------------
def _check_inputs(cc, store):
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "encode", "decode"):
        if not hasattr(cc, name):
            raise TypeError(f"crosscoder lacks {name!r}")
    _w_dec(cc.W_dec)
    for name in ("n_tokens", "acts", "meta"):
        if not hasattr(store, name):
            raise TypeError(f"activation store lacks {name!r}")


def _device(cc):
    return cc.W_dec.device


@contextlib.contextmanager
def _eval_mode(cc):
    """BatchTopK codes depend on the batch in training mode; analyse in eval mode, then restore."""
    was = getattr(cc, "training", False)
    if hasattr(cc, "train"):
        cc.train(False)
    try:
        with torch.no_grad():
            yield
    finally:
        if hasattr(cc, "train"):
            cc.train(was)


def _global_mask(mask, n_tokens: int, what: str = "mask") -> np.ndarray:
    if mask is None:
        return np.ones(n_tokens, dtype=bool)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n_tokens,):
        raise ValueError(f"{what} must be a bool array over all {n_tokens} store tokens, got {mask.dtype} {mask.shape}")
    return mask


def _chunks(idx: np.ndarray, chunk: int, desc: str):
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    for s in tqdm(range(0, len(idx), chunk), desc=desc, leave=False):
        yield idx[s: s + chunk]


def _load(store, idx, cc) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(store.acts(idx), dtype=np.float32))
    if x.ndim != 3 or x.shape[1] != 2 or x.shape[0] != len(idx):
        raise ValueError(f"store.acts returned {tuple(x.shape)}, expected [{len(idx)}, 2, d]")
    return x.to(_device(cc), cc.W_dec.dtype)


@dataclass
class SparseActs:
    """Latent activations of the evaluated tokens, as a sparse [N, F] matrix (entries > 0 only).

    ``token_index`` [N] are the store indices of the evaluated tokens (ascending); ``rows`` index into it.
    """
    token_index: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    n_latents: int

    @property
    def n_tokens(self) -> int:
        return len(self.token_index)

    @classmethod
    def from_dense(cls, f, token_index=None) -> "SparseActs":
        """From a dense [N, F] activation matrix (entries <= 0 dropped); ``token_index`` defaults to 0..N-1."""
        f = np.asarray(f, dtype=np.float32)
        r, c = np.nonzero(f > 0)
        ti = np.arange(len(f)) if token_index is None else np.asarray(token_index)
        return cls(ti, r.astype(np.int64), c.astype(np.int64), f[r, c], f.shape[1])

    def local(self, global_array) -> np.ndarray:
        """Restrict an array over all store tokens to the evaluated tokens."""
        return np.asarray(global_array)[self.token_index]

    def sums(self, weights) -> np.ndarray:
        """[K, F] ``sum_t weights[t, k] * f[t, j]`` for ``weights`` [N, K] over the evaluated tokens."""
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64).reshape(self.n_tokens, -1))
        A = torch.sparse_coo_tensor(np.stack([self.cols, self.rows]), torch.as_tensor(self.vals, dtype=torch.float64),
                                    (self.n_latents, self.n_tokens), check_invariants=False)
        return torch.sparse.mm(A, w).T.numpy()

    def counts(self, weights) -> np.ndarray:
        """[K, F] number of evaluated tokens with ``weights[t, k]`` set on which latent j fires."""
        w = np.asarray(weights, dtype=np.float64).reshape(self.n_tokens, -1)
        out = np.zeros((w.shape[1], self.n_latents))
        for k in range(w.shape[1]):
            out[k] = np.bincount(self.cols, weights=w[self.rows, k], minlength=self.n_latents)
        return out

    def frequency(self) -> np.ndarray:
        """[F] fraction of evaluated tokens on which each latent fires."""
        return np.bincount(self.cols, minlength=self.n_latents) / max(self.n_tokens, 1)

    def column(self, j: int) -> np.ndarray:
        """[N] dense activations of latent ``j``."""
        out = np.zeros(self.n_tokens, dtype=np.float32)
        sel = self.cols == j
        out[self.rows[sel]] = self.vals[sel]
        return out


def encode_store(cc, store, mask=None, chunk: int = 4096, max_entries: int = 100_000_000) -> SparseActs:
    """Encode the store's tokens (all, or ``mask`` [n_tokens] bool) with the crosscoder, keeping f > 0.

    Uses ``cc.encode`` on raw activations, i.e. the crosscoder's own folded normalisation. Raises before
    going on if the codes grow past ``max_entries`` non-zeros (pass a token mask to subsample).
    """
    _check_inputs(cc, store)
    idx = np.nonzero(_global_mask(mask, store.n_tokens))[0]
    if len(idx) == 0:
        raise ValueError("the token mask selects no tokens")
    rows, cols, vals, nnz = [], [], [], 0
    with _eval_mode(cc):
        for start, part in zip(range(0, len(idx), chunk), _chunks(idx, chunk, "encode store")):
            f = cc.encode(_load(store, part, cc))
            r, c = torch.nonzero(f > 0, as_tuple=True)
            nnz += len(r)
            if nnz > max_entries:
                raise MemoryError(f"more than {max_entries} non-zero latent activations after {start + len(part)} "
                                  f"of {len(idx)} tokens; pass a smaller token mask")
            rows.append((r + start).cpu().numpy())
            cols.append(c.cpu().numpy())
            vals.append(f[r, c].float().cpu().numpy())
    F = int(cc.W_dec.shape[0])
    return SparseActs(idx, np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64),
                      np.concatenate(vals).astype(np.float32), F)


# ---------------------------------------------------------------------------------------------------------
# Latent scaling (Minder et al., prior-art §1.5)
# ---------------------------------------------------------------------------------------------------------
def _check_folded(cc):
    """decode must equal f @ W_dec + b_dec (raw units); otherwise decoder rows are not raw directions."""
    F = cc.W_dec.shape[0]
    g = torch.Generator().manual_seed(0)
    f = torch.rand(3, F, generator=g).to(_device(cc), cc.W_dec.dtype)
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
    _check_inputs(cc, store)
    _check_folded(cc)
    J = np.asarray(latents, dtype=np.int64).ravel()
    F = cc.W_dec.shape[0]
    if len(J) == 0 or J.min() < 0 or J.max() >= F:
        raise ValueError(f"latents must be a non-empty set of indices in [0, {F})")
    idx = np.nonzero(_global_mask(mask, store.n_tokens))[0]
    if len(idx) == 0:
        raise ValueError("the token mask selects no tokens")
    dev = _device(cc)
    Jt = torch.as_tensor(J, device=dev)
    Wd = cc.W_dec.detach()[Jt].double()         # [J, 2, d]
    D = Wd[:, 1]                                # [J, d] the distilled direction
    a_err = torch.zeros(2, len(J), dtype=torch.float64, device=dev)
    a_rec = torch.zeros_like(a_err)
    S = torch.zeros(len(J), dtype=torch.float64, device=dev)
    n_active = torch.zeros(len(J), dtype=torch.long, device=dev)
    with _eval_mode(cc):
        for part in _chunks(idx, chunk, "latent scaling"):
            x = _load(store, part, cc)
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
        s = np.asarray(_norm_scale(cc))
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
# Lexicon windows and ReasonScore (Galichin et al., prior-art §2.1)
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
        ax.set_xlabel(f"relative norm ({_norm_name(p)})")
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


def ground_truth_auroc(acts: SparseActs, labels, nrn, categories=CATEGORIES, exclusive: float = 0.9,
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
    sub = acts if valid.all() else _restrict(acts, valid)
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


def restrict(acts: SparseActs, mask) -> SparseActs:
    """The evaluated tokens of ``acts`` that ``mask`` (bool over *all* store tokens, e.g. held-out) keeps."""
    return _restrict(acts, acts.local(np.asarray(mask, bool)))


def _restrict(acts: SparseActs, keep) -> SparseActs:
    keep = np.asarray(keep, bool)
    new_row = np.cumsum(keep) - 1
    sel = keep[acts.rows]
    return SparseActs(acts.token_index[keep], new_row[acts.rows[sel]], acts.cols[sel], acts.vals[sel], acts.n_latents)


def lexicon_validation(lexicon: Lexicon, meta, mask=None) -> pd.DataFrame:
    """Precision/recall of the lexicon matcher against planted labels, per entry and per category.

    A matched token counts as correct when its planted label is the entry's category. ``recall`` is over
    all tokens with that label; ``marker_recall`` over planted marker tokens (``meta['marker']``) of it.
    ``mask`` (e.g. held-out tokens) restricts the tokens that are counted; matching sees all tokens.
    """
    n = len(meta["token_id"])
    mask = _global_mask(mask, n)
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
    F = _w_dec(W_dec).shape[0]
    nb = decoder_norms(W_dec, 2)
    df = pd.DataFrame({"latent": np.arange(F), "relative_norm": relative_norm(W_dec, 2),
                       "relative_norm_l1": relative_norm(W_dec, 1), "dec_norm_base": nb[:, 0],
                       "dec_norm_distilled": nb[:, 1], "decoder_cosine": decoder_cosine(W_dec)})
    if acts is not None:
        if acts.n_latents != F:
            raise ValueError("acts and W_dec disagree on the number of latents")
        cnt = np.bincount(acts.cols, minlength=F)
        tot = np.bincount(acts.cols, weights=acts.vals, minlength=F)
        mx = np.zeros(F)
        np.maximum.at(mx, acts.cols, acts.vals)
        df["frequency"] = cnt / max(acts.n_tokens, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            df["mean_active"] = np.where(cnt > 0, tot / cnt, np.nan)
        df["max_activation"] = mx
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


def save_features_table(df: pd.DataFrame, folder, name: str = "features", fmt: str = "parquet") -> Path:
    """Write ``df`` to ``folder/name.parquet`` (or ``.csv``) atomically; returns the path."""
    from . import paths

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
# Lexical detectors and the paper's claims 1-4 as verdicts computed from the numbers (paper-notes §11)
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


def _verdict(holds) -> str:
    holds = list(holds)
    return "supports" if all(holds) else ("contradicts" if not any(holds) else "mixed")


def claim1_verdict(nrn, alive, lo: float = 0.1, hi: float = 0.9) -> tuple[str, str]:
    """Claim 1: live latents exist near relative norm 1 (>= ``hi``) and near 0 (<= ``lo``)."""
    nrn, alive = np.asarray(nrn, float), np.asarray(alive, bool)
    v = nrn[alive & np.isfinite(nrn)]
    n_d, n_b = int((v >= hi).sum()), int((v <= lo).sum())
    return _verdict([n_d > 0, n_b > 0]), (f"{len(v)} live latents: {n_d} with relative norm >= {hi} (distilled-only), "
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
    return _verdict(holds), "; ".join(parts)


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
    return _verdict(lex), f"{int(lex.sum())} of {len(base)} base-side marker latents are lexical {n}: " + "; ".join(parts)
