"""Small statistics helpers shared by the notebooks: intervals for proportions and means."""
from __future__ import annotations

import math

import numpy as np


def wilson_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well behaved at 0 and 1; ``scipy.stats.binomtest``)."""
    from scipy.stats import binomtest

    if n <= 0:
        raise ValueError("wilson_ci needs n > 0")
    ci = binomtest(int(successes), int(n)).proportion_ci(level, method="wilson")
    return float(ci.low), float(ci.high)


def paired_proportion_diff_ci(x, y, level: float = 0.95) -> tuple[float, float, float]:
    """(difference, low, high): mean(x) - mean(y) for paired binary outcomes ``x``, ``y`` [n] (e.g. steered vs
    unsteered correctness on the same prompts), with Newcombe's (1998) hybrid score interval for paired data
    ("method 10", the square-and-add interval: Wilson intervals of the two proportions combined with the
    continuity-corrected phi correlation of the pairs; Fagerland, Lydersen & Laake 2017, ch. 8).

    Unlike a percentile bootstrap, which gives [0, 0] when no pair is discordant, its width reflects n: with every
    pair concordant it is about +-1.96 / sqrt(n) wide at n = 20 (ask a non-inferiority rule for a minimum n too)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"paired_proportion_diff_ci needs two equal-length non-empty 1-d arrays, got {x.shape}, {y.shape}")
    if not (np.isin(x, (0, 1)).all() and np.isin(y, (0, 1)).all()):
        raise ValueError("paired_proportion_diff_ci needs binary outcomes (0/1 or bool)")
    x, y, n = x.astype(bool), y.astype(bool), x.size
    a, b, c, d = (int(np.sum(x & y)), int(np.sum(x & ~y)), int(np.sum(~x & y)), int(np.sum(~x & ~y)))
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_ci(a + b, n, level)
    l2, u2 = wilson_ci(a + c, n, level)
    # phi: the correlation of the pairs, continuity-corrected as Newcombe has it (0 for 0 <= ad - bc <= n / 2)
    denom, cross = (a + b) * (c + d) * (a + c) * (b + d), a * d - b * c
    phi = 0.0 if denom == 0 else (cross - n / 2 if cross > n / 2 else min(cross, 0)) / math.sqrt(denom)
    diff = p1 - p2
    lo = diff - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = diff + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return float(diff), max(-1.0, lo), min(1.0, hi)


def bootstrap_mean_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap CI of the mean of ``values`` [n] (``scipy.stats.bootstrap``, seeded).

    The one bootstrap of thinkdiff: every CI over items (problems, occurrences, generations) comes from here.
    A single value has no CI (nan, nan)."""
    from scipy.stats import bootstrap

    v = np.asarray(values, dtype=float).reshape(-1)
    if v.size == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    if v.size < 2:
        return float(v.mean()), float("nan"), float("nan")
    res = bootstrap((v,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                    rng=np.random.default_rng(seed), vectorized=True, axis=-1)
    return float(v.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_ratio_ci(num, den, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(sum(num) / sum(den), low, high): a ratio of sums (e.g. nats over tokens) with a percentile bootstrap CI
    that resamples the items [n] (``scipy.stats.bootstrap``, paired)."""
    from scipy.stats import bootstrap

    a, b = (np.asarray(v, dtype=float).reshape(-1) for v in (num, den))
    if a.shape != b.shape or a.size == 0 or not b.sum() > 0:
        raise ValueError(f"bootstrap_ratio_ci needs equal-length, non-empty num and den with a positive sum, got "
                         f"{a.shape} and {b.shape}")
    est = float(a.sum() / b.sum())
    if a.size < 2:
        return est, float("nan"), float("nan")
    res = bootstrap((a, b), lambda x, y, axis=-1: x.sum(axis) / y.sum(axis), n_resamples=n_boot, paired=True,
                    confidence_level=level, method="percentile", rng=np.random.default_rng(seed), vectorized=True)
    return est, float(res.confidence_interval.low), float(res.confidence_interval.high)


def mcnemar(correct_a, correct_b) -> dict:
    """Exact McNemar test of paired outcomes ``correct_a`` vs ``correct_b`` [n] bool (same items, two systems).

    Returns ``a_only`` / ``b_only`` (discordant counts: only A right / only B right) and the two-sided
    exact p value: a binomial test of ``b_only`` among the discordant pairs at 1/2 (``scipy.stats.binomtest``).
    """
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"mcnemar needs two equal-length, non-empty [n] outcome vectors, got {a.shape} and {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
    p = 1.0 if a_only + b_only == 0 else float(binomtest(b_only, a_only + b_only, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p": p}


def cluster_bootstrap_mean_ci(values, clusters, n_boot: int = 2000, seed: int = 0,
                              level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap CI of a mean whose items come in clusters.

    ``values`` [n] or [n, R]; ``clusters`` [n] (e.g. the document each occurrence comes from). Each replicate
    resamples whole clusters with replacement, so occurrences from one document count as one unit of evidence.
    With ``R`` columns (exchangeable redraws of a random control, e.g. R random latent sets), each replicate
    also draws one column (one set) for all its items, so the interval includes the whole set-to-set spread
    (drawing a column per item would average it away, shrinking that variance by about 1/n).
    The point estimate is the mean over all items and columns. Fewer than two clusters: no CI (nan, nan).
    (``scipy.stats.bootstrap`` resamples items, not clusters, hence this small loop.)"""
    v = np.asarray(values, dtype=float)
    v = v[:, None] if v.ndim == 1 else v
    c = np.asarray(clusters).reshape(-1)
    if v.ndim != 2 or len(v) != len(c) or v.size == 0:
        raise ValueError(f"cluster_bootstrap_mean_ci needs values [n] or [n, R] and clusters [n], got {v.shape} "
                         f"and {c.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    est = float(v.mean())
    _, inv = np.unique(c, return_inverse=True)
    members = [np.nonzero(inv == k)[0] for k in range(inv.max() + 1)]
    if len(members) < 2:
        return est, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
        reps[b] = v[idx, rng.integers(0, v.shape[1])].mean()
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return est, float(lo), float(hi)


def random_directions(d: int, n: int, seed: int = 0) -> np.ndarray:
    """[n, d] unit vectors uniform on the sphere (normalised Gaussians), seeded: the null of "closer than a random
    direction" (``adl.closeness``) and the controls of a directional ablation (``planted.direction_margins``)."""
    g = np.random.default_rng(seed).standard_normal((n, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True)
