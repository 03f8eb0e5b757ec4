"""The planted distilled-only concept (the gated connective) and its pre-registered checks.

The organism's teacher writes " Next" or " Then" after every operation but the last, chosen by
``world.gate_bit`` (parity of the result XOR parity of the question's first number). Only a model that
continues traces needs that bit, so it is the known answer for "a latent that belongs to the distilled
model". Five checks, fixed here before any model was trained on it, say whether the organism delivers it:

(a) ``gate_audit`` -- labels only, no model: an additive (logistic) model of one-hot visible features cannot
    predict the bit (held-out AUROC <= ``audit_max_auroc``), and the same model given the parity interaction
    can (>= ``audit_min_interaction_auroc``), so the audit is able to see a giveaway;
(b) ``behaviour_verdict`` -- the distilled model predicts the connective teacher-forced on held-out traces;
(c) ``probe_gap_verdict`` -- a dense probe reads the bit from the distilled model at the hook layer, not from
    the base at any layer, with a bootstrap CI (over problems) on the gap;
(d) ``control_verdict`` -- a model fine-tuned on the same traces with the connective drawn by a coin does not
    represent the bit (the representation follows the need, not SFT on traces as such);
(e) ``shared_verdict`` -- the parity of the result alone, which both models read, is read by both probes.
"""
from __future__ import annotations

import random

import numpy as np

from . import world

# Pre-registered thresholds (issue 26); tests pin them.
GATE_CHECKS = {
    "audit_max_auroc": 0.55,               # (a) visible features alone
    "audit_min_interaction_auroc": 0.95,   # (a) with the parity interaction added: the audit can see a giveaway
    "behaviour_min_accuracy": 0.95,        # (b) teacher-forced connective accuracy of the distilled model
    "probe_distilled_min": 0.90,           # (c) distilled dense probe AUROC at the hook layer
    "probe_base_max": 0.60,                # (c) base dense probe AUROC at the hook layer and every other layer
    "probe_gap_ci_low_min": 0.25,          # (c) lower end of the 95 % CI of distilled - base at the hook layer
    "control_probe_max": 0.60,             # (d) coin-flip control's probe AUROC at the hook layer
    "shared_probe_min": 0.90,              # (e) both models' probes of the result's parity
}
AUDIT_PROBLEMS = {"train": 4000, "eval": 500}  # problems the audit is fitted / scored on


def _visible(p: world.Problem, i: int, spans_before: int) -> dict:
    """Every visible quantity at step ``i``'s closing ".", as categorical features."""
    f = {"family": p.family, "step": i, "op": p.steps[i][1], "tag": p.refs[i], "result": p.steps[i][3],
         "position": spans_before}
    for j, n in enumerate(world._NUMBER.findall(p.question)):
        f[f"question_{j}"] = int(n)
    for j in range(i + 1):
        a, op, b, _ = p.steps[j]
        f[f"operand_{j}_a"], f[f"operand_{j}_op"], f[f"operand_{j}_b"] = a, op, b
        if j < i:
            f[f"result_{j}"] = p.steps[j][3]
    return {k: str(v) for k, v in f.items()}


def gate_rows(problems, seed: int = 0, cfg: world.TeacherConfig | None = None):
    """One row per scored step of one seeded teacher trace per problem: (features, bit, parity, problem index).

    ``position`` is the index of the step's span in its trace (moves before it shift it at random)."""
    cfg = cfg or world.TeacherConfig()
    rng = random.Random(f"audit-{seed}")
    feats, bits, parity, pid = [], [], [], []
    for k, p in enumerate(problems):
        spans = world.teacher_document(p, rng, cfg)
        step = 0
        for n, s in enumerate(spans):
            if s.step_end is None:
                continue
            if s.gate is not None:
                feats.append(_visible(p, step, n))
                bits.append(s.gate)
                parity.append(s.parity)
                pid.append(k)
            step += 1
    return feats, np.array(bits), np.array(parity), np.array(pid)


def gate_audit(train_problems=None, eval_problems=None, rules: dict | None = None) -> dict:
    """(a): can the gate bit be read off the visible tokens without computing it?

    A logistic regression on one-hot visible features (every number of the question, every operand and result
    so far, the step's tag, operator, family, step index and position) is fitted on training problems and scored
    (AUROC) on held-out problems; then again with one extra feature, parity(result) * parity(first number),
    with which an additive model can express the XOR. ``verdict``: "no giveaway" (visible <= max and
    interaction >= min), "giveaway" (visible > max), or "audit blind" (the interaction did not reach min:
    the audit could not have seen a giveaway either)."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    r = {**GATE_CHECKS, **(rules or {})}
    if train_problems is None:
        train_problems = world.problem_split(0, AUDIT_PROBLEMS["train"], "train")
    if eval_problems is None:
        eval_problems = world.problem_split(0, AUDIT_PROBLEMS["eval"], "eval")
    xtr, ytr, _, _ = gate_rows(train_problems, seed=0)
    xev, yev, _, _ = gate_rows(eval_problems, seed=1)
    if len(set(ytr)) < 2 or len(set(yev)) < 2:
        raise ValueError("gate audit: the scored steps carry one bit value only; no AUROC can be computed")

    def fit(rows_tr, rows_ev) -> float:
        vec = DictVectorizer()
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(vec.fit_transform(rows_tr), ytr)
        return float(roc_auc_score(yev, clf.predict_proba(vec.transform(rows_ev))[:, 1]))

    def with_interaction(rows):
        return [{**f, "parity_product": str((int(f["result"]) % 2) * (int(f["question_0"]) % 2))} for f in rows]

    visible = fit(xtr, xev)
    interaction = fit(with_interaction(xtr), with_interaction(xev))
    verdict = ("giveaway" if visible > r["audit_max_auroc"] else
               "audit blind" if interaction < r["audit_min_interaction_auroc"] else "no giveaway")
    return {"auroc_visible": visible, "auroc_with_interaction": interaction, "n_train": len(ytr), "n_eval": len(yev),
            "bit_rate": float(np.mean(np.concatenate([ytr, yev]))), "verdict": verdict}
