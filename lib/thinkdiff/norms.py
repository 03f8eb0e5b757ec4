"""Which latents belong to which model: decoder norms, the relative norm, decoder cosines.

The relative norm ``||d_distilled|| / (||d_base|| + ||d_distilled||)`` per latent (1 = distilled-only,
0.5 = shared, 0 = base-only) is taken in *training* units (each model's activations at mean norm sqrt(d)), as in
the paper: pass the crosscoder itself, so its folded scale is undone (``crosscoder.decoder_weights``).
"""
from __future__ import annotations

import numpy as np
import torch

from .crosscoder import decoder_weights

# One definition of which model a latent belongs to, used by every claim, target and selection.
DISTILLED_SPECIFIC = 0.9    # relative norm at or above which a latent is distilled-specific
BASE_SPECIFIC = 0.1         # ... at or below which it is base-specific
SHARED_BAND = (0.3, 0.7)    # ... inside which (inclusive) it is shared

# ---------------------------------------------------------------------------------------------------------
# Decoder geometry: relative norm, the science-of-finetuning converter, cosine
# ---------------------------------------------------------------------------------------------------------
def norm_scale_of(cc) -> list[float]:
    """Per-model scale folded into a crosscoder (raw -> training units); [1, 1] when none is recorded."""
    cfg = getattr(cc, "config", None)
    s = getattr(cfg, "norm_scale", None)
    return [float(v) for v in s] if s is not None else [1.0, 1.0]


def training_decoder(W_dec) -> torch.Tensor:
    """[F, 2, d] float64 decoder in *training* units. Pass the crosscoder itself (not ``cc.W_dec`` of a
    folded model) so its folded scale is undone, as the paper's relative norm is taken in training units."""
    W = decoder_weights(W_dec if hasattr(W_dec, "W_dec") or isinstance(W_dec, torch.Tensor)
                        else torch.as_tensor(np.asarray(W_dec)), "training")
    if W.shape[1] != 2:
        raise ValueError(f"W_dec must be [F, 2, d] (model 0 = base, 1 = distilled), got {tuple(W.shape)}")
    return W


def decoder_norms(W_dec, p: float = 2) -> np.ndarray:
    """[F, 2] per-model decoder norms ``||W_dec[i, m]||_p`` (training units; ``W_dec`` may be the crosscoder)."""
    return torch.linalg.vector_norm(training_decoder(W_dec), ord=p, dim=-1).numpy()


def relative_norm(W_dec, p: float = 2) -> np.ndarray:
    """[F] ``||d_distilled||_p / (||d_base||_p + ||d_distilled||_p)``: 1 distilled-only, 0.5 shared, 0 base-only.

    ``p=2`` by default (the training penalty's norm); ``p=1`` is the paper's variant. Both norms 0 -> nan.
    """
    n = decoder_norms(W_dec, p)
    tot = n.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, n[:, 1] / tot, np.nan)


def dec_norm_diff(W_dec, p: float = 2) -> np.ndarray:
    """science-of-finetuning's ``dec_norm_diff`` (docs/prior-art.md §1.5), for comparison only: 0 = fine-tune-only."""
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
    W = training_decoder(W_dec)
    n = torch.linalg.vector_norm(W, dim=-1)
    dot = (W[:, 0] * W[:, 1]).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n > 0).all(1).numpy(), (dot / (n[:, 0] * n[:, 1])).numpy(), np.nan)


def norm_name(p) -> str:
    return {1: "L1", 2: "L2"}.get(p, f"L{p}")


def plot_relative_norms(nrn, p: float = 2, bins: int = 50, title: str | None = None):
    """Histogram of relative norms with log counts; the norm used is printed on the figure."""
    import matplotlib.pyplot as plt

    nrn = np.asarray(nrn, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(nrn[np.isfinite(nrn)], bins=bins, range=(0, 1), log=True, color="tab:purple")
    ax.set_xlabel("relative decoder norm (0 = base-only, 0.5 = shared, 1 = distilled-only)")
    ax.set_ylabel("latents (log scale)")
    ax.set_title(title or f"Relative decoder norm, {norm_name(p)} (p={p}), {np.isfinite(nrn).sum()} latents")
    return fig


def plot_decoder_cosine(cos, nrn, shared=SHARED_BAND, bins: int = 50, p: float = 2):
    """Histogram (log counts) of the base/distilled decoder cosine for shared latents (nrn in ``shared``)."""
    import matplotlib.pyplot as plt

    cos, nrn = np.asarray(cos, float), np.asarray(nrn, float)
    sel = np.isfinite(cos) & (nrn >= shared[0]) & (nrn <= shared[1])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(cos[sel], bins=bins, range=(-1, 1), log=True, color="tab:green")
    ax.set_xlabel("cosine(d_base, d_distilled)")
    ax.set_ylabel("latents (log scale)")
    ax.set_title(f"Decoder cosine of shared latents ({sel.sum()}, {norm_name(p)} relative norm in "
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
