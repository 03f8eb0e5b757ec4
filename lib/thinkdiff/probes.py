"""Ground truth, scored honestly: supervised probe ceilings and train-selected latents, held-out AUROC.

For a planted target (a bool per store token, e.g. "this token is in a self-reflection move"):

* ``probe_ceiling``: a logistic-regression probe on each model's raw activations at the hook layer, fit on
  the store's training split and scored on its held-out split. It says how much of the target is *linearly
  present* in each model: the most any linear dictionary feature could recover, and (base vs distilled)
  whether the target is shared knowledge or distilled-only.
* ``latent_recovery``: the crosscoder's side. The best single latent (and the best distilled-specific one,
  relative norm >= 0.9) is **chosen on the training split** and **scored on the held-out split**; a k-sparse
  probe (k latents chosen on the training split by AUROC, then a logistic regression on those k) is compared
  with the dense ceiling, as in sparse probing (Gurnee et al.).

Targets may leave tokens out (``nan`` in a float target, or a ``valid`` mask): those tokens are neither
positive nor negative. Scikit-learn does the fitting and scoring.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .codes import SparseActs, restrict
from .label import auroc_per_latent
from .norms import DISTILLED_SPECIFIC

MIN_CLASS = 5  # a split needs this many positives and negatives for an AUROC

# Targets on the organism default, fixed before any crosscoder was scored:
TARGETS = {"marker_auroc": 0.95,        # (a) one latent finds the category's marker tokens
           "sparse_k": 5, "sparse_gap": 0.05,  # (b) a k-sparse latent probe within 0.05 of the dense ceiling
           "concept_auroc": 0.90, "concept_nrn": DISTILLED_SPECIFIC,  # (c) a distilled-specific latent finds the planted quantity
           "concept_probe": 0.95, "concept_probe_gap": 0.10}  # ...which the probes show is distilled-only


def _target(y, n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(y bool [n], valid bool [n]) from a bool target or a float target with nan = excluded."""
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"target {what!r} must be one value per store token [{n}], got shape {y.shape}")
    if y.dtype.kind == "f":
        valid = np.isfinite(y)
        return np.where(valid, y, 0) > 0.5, valid
    return y.astype(bool), np.ones(n, bool)


def _scorable(y: np.ndarray) -> bool:
    return int(y.sum()) >= MIN_CLASS and int((~y).sum()) >= MIN_CLASS


def _subsample(idx: np.ndarray, y: np.ndarray, max_n: int, seed: int) -> np.ndarray:
    """At most ``max_n`` of ``idx``, keeping every positive (targets are rare) and a random share of negatives."""
    if len(idx) <= max_n:
        return idx
    pos, neg = idx[y[idx]], idx[~y[idx]]
    keep = max(max_n - len(pos), min(len(neg), max_n // 2))
    neg = np.random.default_rng(seed).choice(neg, size=min(keep, len(neg)), replace=False)
    return np.sort(np.concatenate([pos, neg]))


def _fit_score(X_tr, y_tr, X_te, y_te, C: float = 1.0, return_scores: bool = False):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, class_weight="balanced"))
    clf.fit(X_tr, y_tr)
    sc = clf.decision_function(X_te)
    return (float(roc_auc_score(y_te, sc)), sc) if return_scores else float(roc_auc_score(y_te, sc))


def auroc_ci(parts, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of ``sum(sign * AUROC(y, score))`` over ``parts`` = [(sign, y, score, doc), ...], resampling
    whole documents (the same draw for every part, so a difference of AUROCs on different token samples of the
    same documents is bootstrapped jointly). Draws where a part has one class only are skipped."""
    from sklearn.metrics import roc_auc_score

    docs = np.unique(np.concatenate([np.asarray(d) for *_, d in parts]))
    index = [{u: np.nonzero(np.asarray(d) == u)[0] for u in np.unique(d)} for *_, d in parts]
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        pick = rng.choice(docs, len(docs))
        total, ok = 0.0, True
        for (sign, y, score, _), idx in zip(parts, index):
            rows = np.concatenate([idx[u] for u in pick if u in idx] or [np.zeros(0, int)])
            yy = np.asarray(y, bool)[rows]
            if yy.all() or not yy.any():
                ok = False
                break
            total += sign * roc_auc_score(yy, np.asarray(score)[rows])
        if ok:
            reps.append(total)
    if len(reps) < n_boot // 2:
        return float("nan"), float("nan")
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def probe_ceiling(store, targets: dict, max_train: int = 40_000, max_test: int = 40_000, seed: int = 0) -> pd.DataFrame:
    """Held-out AUROC of a dense linear probe per target and model.

    ``targets``: name -> [n_tokens] bool (or float with nan = excluded). Returns one row per target with
    columns ``base``, ``distilled`` and ``pair`` (held-out AUROC of a probe on one model's activations, and on
    both concatenated: a crosscoder latent reads both models, so the pair's probe is the upper bound to compare
    it with; nan where a split has < ``MIN_CLASS`` of a class), ``n_train_pos``, ``n_test_pos``. Training rows
    are subsampled to ``max_train`` (all positives kept). ``attrs["scores"][target]`` keeps each probe's
    held-out decision values with their labels and documents (``y``, ``doc``), for ``auroc_ci``.
    """
    split = np.asarray(store.meta["split"])
    doc = np.asarray(store.meta["doc_id"]) if "doc_id" in store.meta else None
    rows, scores = [], {}
    for name, y in targets.items():
        y, valid = _target(y, store.n_tokens, name)
        tr = _subsample(np.nonzero(valid & (split == 0))[0], y, max_train, seed)
        te = _subsample(np.nonzero(valid & (split == 1))[0], y, max_test, seed + 1)
        row = {"target": name, "n_train_pos": int(y[tr].sum()), "n_test_pos": int(y[te].sum())}
        if _scorable(y[tr]) and _scorable(y[te]):
            X_tr, X_te = np.asarray(store.acts(tr), np.float32), np.asarray(store.acts(te), np.float32)
            sc = {"y": y[te], "doc": None if doc is None else doc[te]}
            for model, cols in (("base", [0]), ("distilled", [1]), ("pair", [0, 1])):
                row[model], sc[model] = _fit_score(X_tr[:, cols].reshape(len(tr), -1), y[tr],
                                                   X_te[:, cols].reshape(len(te), -1), y[te], return_scores=True)
            scores[name] = sc
        else:
            row.update(base=np.nan, distilled=np.nan, pair=np.nan)
        rows.append(row)
    out = pd.DataFrame(rows).set_index("target")
    out.attrs["scores"] = scores
    return out


def _dense_columns(acts: SparseActs, latents) -> np.ndarray:
    return np.stack([acts.column(int(j)) for j in latents], 1)


def latent_recovery(acts: SparseActs, split, targets: dict, nrn, ks=(1, 5),
                    exclusive: float = TARGETS["concept_nrn"], seed: int = 0, doc=None) -> pd.DataFrame:
    """Train-selected latents scored on held-out tokens, per target.

    ``acts``: latent activations of the evaluated store tokens; ``split`` [n_tokens] (0 train, 1 held out);
    ``nrn`` [F] relative decoder norms. Per target: ``best_latent`` (highest training AUROC) with its
    ``train_auroc``, held-out ``auroc`` and ``relative_norm``; ``best_specific_latent`` / ``specific_auroc``
    the same among latents with relative norm >= ``exclusive``; ``sparse_probe_k{k}`` the held-out AUROC of a
    logistic regression on the k latents with the highest training AUROC. With ``doc`` [n_tokens] (the store's
    document ids), ``attrs["scores"][target]`` keeps the held-out scores of the chosen latents and probes
    (``latent``, ``specific``, ``sparse_k{k}``) with ``y`` and ``doc``, for ``auroc_ci``.
    """
    split = np.asarray(split)
    nrn = np.asarray(nrn, float)
    n_all = len(split)
    train, test = restrict(acts, split == 0), restrict(acts, split == 1)
    rows, scores = [], {}
    for name, y in targets.items():
        y, valid = _target(y, n_all, name)
        tr, te = restrict(train, valid), restrict(test, valid)
        y_tr, y_te = tr.local(y), te.local(y)
        row = {"target": name, "n_test_pos": int(y_te.sum())}
        if not (_scorable(y_tr) and _scorable(y_te)):
            rows.append(row)
            continue
        a_tr = np.nan_to_num(auroc_per_latent(tr, y_tr), nan=0.5)
        a_te = auroc_per_latent(te, y_te)
        j = int(np.argmax(a_tr))
        row.update(best_latent=j, train_auroc=a_tr[j], auroc=a_te[j], relative_norm=nrn[j])
        sc = {"y": y_te, "doc": None if doc is None else te.local(np.asarray(doc)), "latent": te.column(j)}
        spec = np.nonzero(nrn >= exclusive)[0]
        if len(spec):
            js = int(spec[np.argmax(a_tr[spec])])
            row.update(best_specific_latent=js, specific_train_auroc=a_tr[js], specific_auroc=a_te[js])
            sc["specific"] = te.column(js)
        order = np.argsort(-a_tr)
        for k in ks:
            top = order[:k]
            row[f"sparse_probe_k{k}"], sc[f"sparse_k{k}"] = _fit_score(
                _dense_columns(tr, top), y_tr, _dense_columns(te, top), y_te, return_scores=True)
        if doc is not None:
            scores[name] = sc
        rows.append(row)
    out = pd.DataFrame(rows).set_index("target")
    out.attrs["scores"] = scores
    return out


def think_mask(meta: dict, open_ids, close_ids) -> np.ndarray:
    """[n] True for tokens inside a ``<think>`` block: after an opening token (any of ``open_ids``) of the same
    document and not after its closing token (``close_ids``); the tags themselves are outside."""
    doc, pos, tok = (np.asarray(meta[k]) for k in ("doc_id", "pos", "token_id"))
    order = np.lexsort((pos, doc))
    d, t = doc[order], tok[order]
    opened = np.isin(t, np.asarray(open_ids)).astype(np.int64)
    closed = np.isin(t, np.asarray(close_ids)).astype(np.int64)
    start = np.r_[True, d[1:] != d[:-1]]
    seg = np.cumsum(start) - 1
    def per_doc_cumsum(x):
        c = np.cumsum(x)
        return c - np.r_[0, c][np.nonzero(start)[0]][seg]
    inside = (per_doc_cumsum(opened) - opened > 0) & (per_doc_cumsum(closed) == 0)
    out = np.zeros(len(doc), bool)
    out[order] = inside
    return out


def organism_targets(meta: dict, step_end, categories, in_think=None) -> dict:
    """The planted targets of an organism store: per category its move spans and its marker tokens, and the
    distilled-only quantity ("last operation", scored among operation ends only).

    ``meta``: the store's ``label`` (category id, -1 unlabelled) and ``marker`` arrays; ``step_end`` [n] from
    ``organism.step_end_labels``; ``in_think`` [n] (``think_mask``): spans are then scored among tokens inside
    ``<think>`` blocks only, since every base-corpus token is an easy negative that inflates the AUROC.
    """
    label, marker = np.asarray(meta["label"]), np.asarray(meta["marker"], bool)
    among = label >= 0 if in_think is None else np.asarray(in_think, bool)
    out = {}
    for i, c in enumerate(categories):
        out[f"span: {c}"] = np.where(among, label == i + 1, np.nan)
        out[f"marker: {c}"] = marker & (label == i + 1)
    step_end = np.asarray(step_end)
    out["last operation"] = np.where(step_end >= 0, step_end == 1, np.nan)
    return out


def ground_truth_verdicts(ceiling: pd.DataFrame, recovery: pd.DataFrame, tested: bool = True,
                          targets: dict | None = None, n_boot: int = 200) -> pd.DataFrame:
    """One verdict per planted target, from ``probe_ceiling`` and ``latent_recovery`` tables (same index).

    * ``marker: …``: met when the train-selected latent's held-out AUROC >= ``marker_auroc``.
    * ``span: …``: met when the k-sparse latent probe is within ``sparse_gap`` of the better model's dense probe.
    * the planted distilled-only quantity (any other target): first the probes must confirm it is distilled-only
      (distilled probe >= ``concept_probe`` and base probe at least ``concept_probe_gap`` lower; otherwise "not
      planted"), then met when the train-selected distilled-specific latent (relative norm >= ``concept_nrn``)
      reaches held-out AUROC >= ``concept_auroc``.

    The ceiling is the best of the base, distilled and pair probes (``probe_ceiling``). Where both tables kept
    their held-out scores, the quantity each verdict compares with its threshold (the latent's AUROC, the gap
    to the ceiling) gets a 95 % CI over documents (``auroc_ci``, columns ``ci_lo`` / ``ci_hi``), and the reason
    says when the threshold lies inside it (the verdict is then not decisive).

    ``verdict`` is "met", "missed" (with the measured ``reason``), "not planted", or "not tested" (a smoke run,
    ``tested=False``, or a target without enough held-out positives).
    """
    t = {**TARGETS, **(targets or {})}
    c_scores, r_scores = ceiling.attrs.get("scores", {}), recovery.attrs.get("scores", {})

    def ci(name, parts, threshold):
        """(lo, hi, note) for sum of signed AUROCs of (source, key) parts; empty note if not computable."""
        cs, rs = c_scores.get(name), r_scores.get(name)
        got = []
        for sign, src, key in parts:
            sc = cs if src == "ceiling" else rs
            if sc is None or key not in sc or sc.get("doc") is None:
                return np.nan, np.nan, ""
            got.append((sign, sc["y"], sc[key], sc["doc"]))
        lo, hi = auroc_ci(got, n_boot)
        inside = np.isfinite(lo) and lo <= threshold <= hi
        return lo, hi, (f"; 95% CI [{lo:.3f}, {hi:.3f}]" + (f", threshold {threshold} inside it: not decisive"
                                                             if inside else ""))

    rows = []
    for name in ceiling.index:
        c, r = ceiling.loc[name], recovery.loc[name] if name in recovery.index else pd.Series(dtype=float)
        probes_ = {m: c.get(m, np.nan) for m in ("base", "distilled", "pair")}
        finite = {m: v for m, v in probes_.items() if np.isfinite(v)}
        ceil_model = max(finite, key=finite.get) if finite else None
        ceil = finite[ceil_model] if finite else np.nan
        row = {"target": name, "probe base": c.get("base", np.nan), "probe distilled": c.get("distilled", np.nan),
               "probe pair": c.get("pair", np.nan),
               "best latent": r.get("best_latent", np.nan), "latent AUROC": r.get("auroc", np.nan),
               "latent relative norm": r.get("relative_norm", np.nan),
               f"{t['sparse_k']}-sparse probe": r.get(f"sparse_probe_k{t['sparse_k']}", np.nan),
               "specific latent": r.get("best_specific_latent", np.nan),
               "specific latent AUROC": r.get("specific_auroc", np.nan)}
        lo = hi = np.nan
        if not tested or not np.isfinite(ceil) or not np.isfinite(row["latent AUROC"]):
            verdict, reason = "not tested", ("smoke run" if not tested else "too few held-out positives")
        elif name.startswith("marker: "):
            ok = row["latent AUROC"] >= t["marker_auroc"]
            verdict = "met" if ok else "missed"
            lo, hi, note = ci(name, [(1, "recovery", "latent")], t["marker_auroc"])
            reason = f"best latent {row['latent AUROC']:.3f} {'>=' if ok else '<'} {t['marker_auroc']}{note}"
        elif name.startswith("span: "):
            gap = ceil - row[f"{t['sparse_k']}-sparse probe"]
            ok = gap <= t["sparse_gap"]
            verdict = "met" if ok else "missed"
            lo, hi, note = ci(name, [(1, "ceiling", ceil_model), (-1, "recovery", f"sparse_k{t['sparse_k']}")],
                              t["sparse_gap"])
            reason = (f"{t['sparse_k']}-sparse probe {gap:.3f} below the dense ceiling {ceil:.3f} "
                      f"({ceil_model} probe){note}")
        else:
            planted = (row["probe distilled"] >= t["concept_probe"]
                       and row["probe base"] <= row["probe distilled"] - t["concept_probe_gap"])
            a = row["specific latent AUROC"]
            if not planted:
                verdict = "not planted"
                reason = (f"probes base {row['probe base']:.3f} / distilled {row['probe distilled']:.3f}: "
                          "not distilled-only")
            else:
                ok = bool(np.isfinite(a) and a >= t["concept_auroc"])
                verdict = "met" if ok else "missed"
                lo, hi, note = ci(name, [(1, "recovery", "specific")], t["concept_auroc"]) if np.isfinite(a) else (
                    np.nan, np.nan, "")
                reason = (f"distilled-specific latent {a:.3f} {'>=' if ok else '<'} {t['concept_auroc']}{note}"
                          if np.isfinite(a) else "no live latent has relative norm >= "
                                                 f"{t['concept_nrn']}")
        rows.append({**row, "verdict": verdict, "reason": reason, "ci_lo": lo, "ci_hi": hi})
    return pd.DataFrame(rows).set_index("target")
