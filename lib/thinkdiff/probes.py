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


def _fit_score(X_tr, y_tr, X_te, y_te, C: float = 1.0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, class_weight="balanced"))
    clf.fit(X_tr, y_tr)
    return float(roc_auc_score(y_te, clf.decision_function(X_te)))


def probe_ceiling(store, targets: dict, max_train: int = 40_000, max_test: int = 40_000, seed: int = 0) -> pd.DataFrame:
    """Held-out AUROC of a dense linear probe per target and model.

    ``targets``: name -> [n_tokens] bool (or float with nan = excluded). Returns one row per target with
    columns ``base``, ``distilled`` (held-out AUROC, nan where a split has < ``MIN_CLASS`` of a class),
    ``n_train_pos``, ``n_test_pos``. Training rows are subsampled to ``max_train`` (all positives kept).
    """
    split = np.asarray(store.meta["split"])
    rows = []
    for name, y in targets.items():
        y, valid = _target(y, store.n_tokens, name)
        tr = _subsample(np.nonzero(valid & (split == 0))[0], y, max_train, seed)
        te = _subsample(np.nonzero(valid & (split == 1))[0], y, max_test, seed + 1)
        row = {"target": name, "n_train_pos": int(y[tr].sum()), "n_test_pos": int(y[te].sum())}
        if _scorable(y[tr]) and _scorable(y[te]):
            X_tr, X_te = np.asarray(store.acts(tr), np.float32), np.asarray(store.acts(te), np.float32)
            for m, model in enumerate(("base", "distilled")):
                row[model] = _fit_score(X_tr[:, m], y[tr], X_te[:, m], y[te])
        else:
            row.update(base=np.nan, distilled=np.nan)
        rows.append(row)
    return pd.DataFrame(rows).set_index("target")


def _dense_columns(acts: SparseActs, latents) -> np.ndarray:
    return np.stack([acts.column(int(j)) for j in latents], 1)


def latent_recovery(acts: SparseActs, split, targets: dict, nrn, ks=(1, 5),
                    exclusive: float = TARGETS["concept_nrn"], seed: int = 0) -> pd.DataFrame:
    """Train-selected latents scored on held-out tokens, per target.

    ``acts``: latent activations of the evaluated store tokens; ``split`` [n_tokens] (0 train, 1 held out);
    ``nrn`` [F] relative decoder norms. Per target: ``best_latent`` (highest training AUROC) with its
    ``train_auroc``, held-out ``auroc`` and ``relative_norm``; ``best_specific_latent`` / ``specific_auroc``
    the same among latents with relative norm >= ``exclusive``; ``sparse_probe_k{k}`` the held-out AUROC of a
    logistic regression on the k latents with the highest training AUROC.
    """
    split = np.asarray(split)
    nrn = np.asarray(nrn, float)
    n_all = len(split)
    train, test = restrict(acts, split == 0), restrict(acts, split == 1)
    rows = []
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
        spec = np.nonzero(nrn >= exclusive)[0]
        if len(spec):
            js = int(spec[np.argmax(a_tr[spec])])
            row.update(best_specific_latent=js, specific_train_auroc=a_tr[js], specific_auroc=a_te[js])
        order = np.argsort(-a_tr)
        for k in ks:
            top = order[:k]
            row[f"sparse_probe_k{k}"] = _fit_score(_dense_columns(tr, top), y_tr, _dense_columns(te, top), y_te)
        rows.append(row)
    return pd.DataFrame(rows).set_index("target")


def organism_targets(meta: dict, step_end, categories) -> dict:
    """The planted targets of an organism store: per category its move spans and its marker tokens, and the
    distilled-only quantity ("last operation", scored among operation ends only).

    ``meta``: the store's ``label`` (category id, -1 unlabelled) and ``marker`` arrays; ``step_end`` [n] from
    ``organism.step_end_labels``.
    """
    label, marker = np.asarray(meta["label"]), np.asarray(meta["marker"], bool)
    out = {}
    for i, c in enumerate(categories):
        out[f"span: {c}"] = np.where(label >= 0, label == i + 1, np.nan)
        out[f"marker: {c}"] = marker & (label == i + 1)
    step_end = np.asarray(step_end)
    out["last operation"] = np.where(step_end >= 0, step_end == 1, np.nan)
    return out


def ground_truth_verdicts(ceiling: pd.DataFrame, recovery: pd.DataFrame, tested: bool = True,
                          targets: dict | None = None) -> pd.DataFrame:
    """One verdict per planted target, from ``probe_ceiling`` and ``latent_recovery`` tables (same index).

    * ``marker: …``: met when the train-selected latent's held-out AUROC >= ``marker_auroc``.
    * ``span: …``: met when the k-sparse latent probe is within ``sparse_gap`` of the better model's dense probe.
    * the planted distilled-only quantity (any other target): first the probes must confirm it is distilled-only
      (distilled probe >= ``concept_probe`` and base probe at least ``concept_probe_gap`` lower; otherwise "not
      planted"), then met when the train-selected distilled-specific latent (relative norm >= ``concept_nrn``)
      reaches held-out AUROC >= ``concept_auroc``.

    ``verdict`` is "met", "missed" (with the measured ``reason``), "not planted", or "not tested" (a smoke run,
    ``tested=False``, or a target without enough held-out positives).
    """
    t = {**TARGETS, **(targets or {})}
    rows = []
    for name in ceiling.index:
        c, r = ceiling.loc[name], recovery.loc[name] if name in recovery.index else pd.Series(dtype=float)
        ceil = max((v for v in (c.get("base", np.nan), c.get("distilled", np.nan)) if np.isfinite(v)), default=np.nan)
        row = {"target": name, "probe base": c.get("base", np.nan), "probe distilled": c.get("distilled", np.nan),
               "best latent": r.get("best_latent", np.nan), "latent AUROC": r.get("auroc", np.nan),
               "latent relative norm": r.get("relative_norm", np.nan),
               f"{t['sparse_k']}-sparse probe": r.get(f"sparse_probe_k{t['sparse_k']}", np.nan),
               "specific latent": r.get("best_specific_latent", np.nan),
               "specific latent AUROC": r.get("specific_auroc", np.nan)}
        if not tested or not np.isfinite(ceil) or not np.isfinite(row["latent AUROC"]):
            verdict, reason = "not tested", ("smoke run" if not tested else "too few held-out positives")
        elif name.startswith("marker: "):
            ok = row["latent AUROC"] >= t["marker_auroc"]
            verdict = "met" if ok else "missed"
            reason = f"best latent {row['latent AUROC']:.3f} {'>=' if ok else '<'} {t['marker_auroc']}"
        elif name.startswith("span: "):
            gap = ceil - row[f"{t['sparse_k']}-sparse probe"]
            ok = gap <= t["sparse_gap"]
            verdict = "met" if ok else "missed"
            reason = f"{t['sparse_k']}-sparse probe {gap:.3f} below the dense ceiling {ceil:.3f}"
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
                reason = (f"distilled-specific latent {a:.3f} {'>=' if ok else '<'} {t['concept_auroc']}"
                          if np.isfinite(a) else "no live latent has relative norm >= "
                                                 f"{t['concept_nrn']}")
        rows.append({**row, "verdict": verdict, "reason": reason})
    return pd.DataFrame(rows).set_index("target")
