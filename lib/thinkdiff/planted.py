"""The planted distilled-only concept (the gated connective) and its pre-registered checks.

The organism's teacher writes " Next" or " Then" after every operation but the last, chosen by
``world.gate_bit`` (parity of the result XOR parity of the question's first number). Only a model that
continues traces needs that bit, so it is the known answer for "a latent that belongs to the distilled
model". Five checks, fixed here before any model was trained on it, say whether the organism delivers it:

(a) ``gate_audit`` -- labels only, no model: an additive (logistic) model of one-hot visible features cannot
    predict the bit (held-out AUROC <= ``audit_max_auroc``), and the same model given the parity interaction
    can (>= ``audit_min_interaction_auroc``), so the audit is able to see a giveaway;
(b) ``behaviour_verdict`` -- the distilled model predicts the connective teacher-forced on held-out traces;
(c) ``probe_gap_verdict`` -- a dense probe reads the bit from the distilled model at the analysis layer, not from
    the base at any layer, with a bootstrap CI (over problems) on the gap;
(d) ``control_verdict`` -- a model fine-tuned on the same traces with the connective drawn by a coin does not
    represent the bit (the representation follows the need, not SFT on traces as such);
(e) ``shared_verdict`` -- the parity of the result, on the result's own token (where both models hold the number),
    is read by both probes: a shared quantity at the same steps, for the crosscoder to place in the shared band.

Where in depth the distilled model computes the bit is not known in advance (on organism M it appears in the
last block only), so (c)-(e) and the crosscoder's test are judged at one *analysis layer* chosen on training
problems alone (``analysis_layer``: the shallowest layer whose cross-validated training probe reaches
``layer_cv_min``), then scored on held-out problems. The run's hook layer is reported beside it.
"""
from __future__ import annotations

import random

import numpy as np

from . import world
from .hooks import resid_hook
from .organism import tokenize_spans
from .probes import TARGETS, latent_recovery
from .stats import cluster_bootstrap_mean_ci, random_directions  # noqa: F401  (03_label calls it from here)

# Pre-registered thresholds (issue 26); tests pin them.
GATE_CHECKS = {
    "audit_max_auroc": 0.55,               # (a) visible features alone
    "audit_min_interaction_auroc": 0.95,   # (a) with the parity interaction added: the audit can see a giveaway
    "behaviour_min_accuracy": 0.95,        # (b) teacher-forced connective accuracy of the distilled model
    "probe_distilled_min": 0.90,           # (c) distilled dense probe AUROC at the analysis layer
    "probe_base_max": 0.60,                # (c) base dense probe AUROC at the analysis layer and every other layer
    "probe_gap_ci_low_min": 0.25,          # (c) lower end of the 95 % CI of distilled - base at the analysis layer
    "control_probe_max": 0.60,             # (d) coin-flip control's probe AUROC at the analysis layer
    "shared_probe_min": 0.90,              # (e) both models' probes of the result's parity (on the result token)
    "layer_cv_min": 0.90,                  # the analysis layer: shallowest whose distilled *training* CV AUROC >= this
}
LAYER_CV_FOLDS = 5                         # folds (grouped by problem) of the training-split probe that picks the layer
AUDIT_PROBLEMS = {"train": 4000, "eval": 500}  # problems the audit is fitted / scored on


def _visible(p: world.Problem, i: int, spans_before: int, connectives: list) -> dict:
    """Every visible quantity at step ``i``'s closing ".", as categorical features (``connectives``: the ones
    written after the earlier steps)."""
    f = {"family": p.family, "step": i, "op": p.steps[i][1], "tag": p.refs[i], "result": p.steps[i][3],
         "position": spans_before}
    for j, c in enumerate(connectives):
        f[f"connective_{j}"] = c
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
        step, written = 0, []
        for n, s in enumerate(spans):
            if s.text in world.CONNECTIVES:
                written.append(s.text)
            if s.step_end is None:
                continue
            if s.gate is not None:
                feats.append(_visible(p, step, n, written))
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


# ----------------------------------------------------------------------------- measurements on models
def gate_traces(problems, tokenizer, seed: int = 0, cfg: world.TeacherConfig | None = None):
    """Tokenised teacher traces (``organism.Document``) of ``problems``, one seeded trace each, with the gate
    bit and parity on every scored step's closing "." (``Document.gate`` / ``.parity``)."""
    rng = random.Random(f"gate-traces-{seed}")
    return [tokenize_spans(tokenizer, world.teacher_document(p, rng, cfg or world.TeacherConfig())) for p in problems]


def _scored_positions(docs, field: str = "gate"):
    """(doc index, position, label) of every token of ``docs`` labelled in ``field``: "gate" (the closing "." of a
    scored step) or "parity" (the result token of the same steps)."""
    rows = [(k, t, v) for k, d in enumerate(docs) for t, v in enumerate(getattr(d, field)) if v >= 0]
    if not rows:
        raise ValueError("no scored step in these traces: the problems have no step the gate is scored on")
    return tuple(np.array(c) for c in zip(*rows))


def _batches(docs, keys, batch: int):
    """Right-padded (keys, ids [B, T], mask [B, T]) over the documents ``keys``."""
    import torch

    for s in range(0, len(keys), batch):
        ks = keys[s:s + batch]
        width = max(len(docs[k].input_ids) for k in ks)
        ids = torch.zeros((len(ks), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, k in enumerate(ks):
            n = len(docs[k].input_ids)
            ids[r, :n], mask[r, :n] = torch.tensor(docs[k].input_ids), 1
        yield ks, ids, mask


def gate_activations(model, docs, field: str = "gate", batch: int = 16, progress: bool = True) -> dict:
    """The residual stream entering every block at each token of ``docs`` labelled in ``field`` ("gate": the
    scored "."; "parity": the result token of the same steps).

    Returns ``acts`` [n_layers, n, d_model] (index L-1 = resid_pre of block L, L = 1..n_layers), ``y`` [n] the
    label and ``doc`` [n] (the trace, one per problem: the bootstrap unit)."""
    import torch
    from tqdm.auto import tqdm

    doc, pos, y = _scored_positions(docs, field)
    n_layers = model.config.num_hidden_layers
    out = np.zeros((n_layers, len(doc), model.config.hidden_size), np.float32)
    keys = sorted(set(doc.tolist()))
    with torch.no_grad():
        for ks, ids, mask in tqdm(_batches(docs, keys, batch), total=-(-len(keys) // batch), leave=False,
                                  desc=f"{field} activations", disable=not progress):
            hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            for r, k in enumerate(ks):
                rows = np.nonzero(doc == k)[0]
                for layer in range(1, n_layers + 1):
                    out[layer - 1, rows] = hs[layer][r, pos[rows]].float().numpy()
    return {"acts": out, "y": y, "doc": doc}


def connective_accuracy(model, tokenizer, docs, batch: int = 16) -> dict:
    """(b): teacher-forced, at each scored "." of ``docs``: does the model's top next token start the right
    connective? ``accuracy`` over the whole vocabulary, ``choice_accuracy`` between the two connectives' first
    tokens only, ``n`` scored steps."""
    import torch

    first = [tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in world.CONNECTIVES]
    if first[0] == first[1]:
        raise ValueError(f"the connectives {world.CONNECTIVES} start with the same token: the choice is not made at '.'")
    doc, pos, bit = _scored_positions(docs)
    top, choice = np.zeros(len(doc), bool), np.zeros(len(doc), bool)
    with torch.no_grad():
        for ks, ids, mask in _batches(docs, sorted(set(doc.tolist())), batch):
            logits = model(input_ids=ids, attention_mask=mask).logits
            for r, k in enumerate(ks):
                rows = np.nonzero(doc == k)[0]
                lg = logits[r, pos[rows]]
                want = torch.tensor([first[b] for b in bit[rows]])
                other = torch.tensor([first[1 - b] for b in bit[rows]])
                top[rows] = (lg.argmax(-1) == want).numpy()
                choice[rows] = (lg.gather(1, want[:, None]) > lg.gather(1, other[:, None]))[:, 0].numpy()
    return {"accuracy": float(top.mean()), "choice_accuracy": float(choice.mean()), "n": int(len(doc))}


def layer_probes(train: dict, test: dict) -> dict:
    """Dense logistic probes of the label ``y``, one per layer, fitted on ``train`` and scored on ``test``
    (``gate_activations`` outputs of different problems). Returns ``auroc`` [n_layers] and ``scores``
    [n_layers, n_test] (the held-out decision values, for ``gap_ci``), and ``cv_auroc`` [n_layers]: the same
    probe's AUROC cross-validated within ``train`` (``LAYER_CV_FOLDS`` folds grouped by problem), which sees
    no held-out problem and so may choose the analysis layer (``analysis_layer``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_tr, y_te = train["y"].astype(bool), test["y"].astype(bool)
    folds = GroupKFold(n_splits=min(LAYER_CV_FOLDS, len(np.unique(train["doc"]))))
    auroc, scores, cv = [], [], []
    for layer in range(train["acts"].shape[0]):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        cv.append(float(np.mean(cross_val_score(clf, train["acts"][layer], y_tr, groups=train["doc"], cv=folds,
                                                scoring="roc_auc"))))
        clf.fit(train["acts"][layer], y_tr)
        sc = clf.decision_function(test["acts"][layer])
        scores.append(sc)
        auroc.append(float(roc_auc_score(y_te, sc)))
    return {"auroc": np.array(auroc), "scores": np.array(scores), "cv_auroc": np.array(cv)}


def analysis_layer(cv_auroc, rules: dict | None = None) -> int | None:
    """The layer (1..n_layers, resid_pre of that block) where the gate is analysed: the shallowest whose
    distilled probe's training CV AUROC (``layer_probes``' ``cv_auroc``, index L-1) reaches ``layer_cv_min``.
    None when no layer does (then (c) says "not represented" at every layer)."""
    r = {**GATE_CHECKS, **(rules or {})}
    ok = np.nonzero(np.asarray(cv_auroc, float) >= r["layer_cv_min"])[0]
    return int(ok[0]) + 1 if len(ok) else None


def chosen_layer(cv_auroc, fixed: int | None, hook_layer: int, rules: dict | None = None) -> int:
    """The gate's analysis layer: ``fixed`` when the run config fixes one (``[label] gate_layer``, checked against
    the model's depth), else ``analysis_layer`` on training problems, else the run's hook layer."""
    n_layers = len(cv_auroc)
    if fixed is not None:
        if not 1 <= fixed <= n_layers:
            raise ValueError(f"[label] gate_layer = {fixed} is outside this model's layers 1..{n_layers}")
        return int(fixed)
    return analysis_layer(cv_auroc, rules) or int(hook_layer)


def gap_ci(y, score_a, score_b, unit, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(gap, low, high): AUROC(score_a) - AUROC(score_b) on the same held-out tokens ``y``, with a 95 % percentile
    CI from resampling whole ``unit``s (problems) with replacement."""
    from sklearn.metrics import roc_auc_score

    y, unit = np.asarray(y, bool), np.asarray(unit)
    gap = roc_auc_score(y, score_a) - roc_auc_score(y, score_b)
    units = np.unique(unit)
    rows = {u: np.nonzero(unit == u)[0] for u in units}
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([rows[u] for u in rng.choice(units, len(units))])
        if y[idx].all() or not y[idx].any():
            continue
        boots.append(roc_auc_score(y[idx], score_a[idx]) - roc_auc_score(y[idx], score_b[idx]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(gap), float(lo), float(hi)


# ----------------------------------------------------------------------------- the rules
def audit_verdict(audit: dict) -> dict:
    """(a) as a check: ``gate_audit``'s verdict and the AUROCs it rests on. The audit reads no model, so a smoke run
    judges it too."""
    return {"verdict": audit["verdict"],
            "reason": f"visible features {audit['auroc_visible']:.3f}, with the interaction "
                      f"{audit['auroc_with_interaction']:.3f} ({audit['n_eval']} held-out steps)"}


def behaviour_verdict(accuracy: float, n: int, tested: bool = True, rules: dict | None = None) -> dict:
    """(b): "learned" when the distilled model's teacher-forced connective accuracy >= ``behaviour_min_accuracy``,
    else "not learned" (more SFT or a simpler gate is the next step); "not tested" on a smoke run."""
    r = {**GATE_CHECKS, **(rules or {})}
    if not tested or n == 0:
        return {"verdict": "not tested", "reason": "smoke run" if not tested else "no scored step"}
    ok = accuracy >= r["behaviour_min_accuracy"]
    return {"verdict": "learned" if ok else "not learned",
            "reason": f"teacher-forced accuracy {accuracy:.3f} {'>=' if ok else '<'} {r['behaviour_min_accuracy']} "
                      f"on {n} held-out steps"}


def probe_gap_verdict(distilled_at: float, base_layers, gap_low: float, tested: bool = True,
                      rules: dict | None = None) -> dict:
    """(c): "distilled-only" when the distilled probe at the analysis layer >= ``probe_distilled_min``, the base probe
    <= ``probe_base_max`` at *every* layer (``base_layers``), and the CI of the gap there starts at or above
    ``probe_gap_ci_low_min``; "shared" when the base reads it above that bar at some layer; "not represented" when
    the distilled probe falls short; "not distilled-only" when only the CI fails."""
    r = {**GATE_CHECKS, **(rules or {})}
    if not tested:
        return {"verdict": "not tested", "reason": "smoke run"}
    base_max = float(np.max(base_layers))
    if distilled_at < r["probe_distilled_min"]:
        return {"verdict": "not represented",
                "reason": f"distilled probe {distilled_at:.3f} < {r['probe_distilled_min']} at the analysis layer"}
    if base_max > r["probe_base_max"]:
        layer = int(np.argmax(base_layers)) + 1
        return {"verdict": "shared", "reason": f"base probe {base_max:.3f} > {r['probe_base_max']} at layer {layer}"}
    if gap_low < r["probe_gap_ci_low_min"]:
        return {"verdict": "not distilled-only",
                "reason": f"gap CI low end {gap_low:.3f} < {r['probe_gap_ci_low_min']}"}
    return {"verdict": "distilled-only",
            "reason": f"distilled {distilled_at:.3f} >= {r['probe_distilled_min']}, base <= {base_max:.3f} at every "
                      f"layer, gap CI low end {gap_low:.3f} >= {r['probe_gap_ci_low_min']}"}


def control_verdict(control_at: float | None, tested: bool = True, rules: dict | None = None) -> dict:
    """(d): "follows the need" when the coin-flip control's probe at the analysis layer <= ``control_probe_max``;
    "follows the traces" otherwise (fine-tuning on traces alone made the representation); "not tested" when the
    pair has no coin-flip control (``control_at`` None: ``organism.COIN_CONTROL_SIZES``)."""
    r = {**GATE_CHECKS, **(rules or {})}
    if not tested:
        return {"verdict": "not tested", "reason": "smoke run"}
    if control_at is None:
        return {"verdict": "not tested", "reason": "this organism size ships no coin-flip control"}
    ok = control_at <= r["control_probe_max"]
    return {"verdict": "follows the need" if ok else "follows the traces",
            "reason": f"coin-flip control probe {control_at:.3f} {'<=' if ok else '>'} {r['control_probe_max']}"}


def shared_verdict(base_at: float, distilled_at: float, tested: bool = True, rules: dict | None = None) -> dict:
    """(e): "read by both" when both models' parity probes at the analysis layer >= ``shared_probe_min``; else
    "not read by both" (the positive control failed, so a missing gate latent says nothing)."""
    r = {**GATE_CHECKS, **(rules or {})}
    if not tested:
        return {"verdict": "not tested", "reason": "smoke run"}
    ok = min(base_at, distilled_at) >= r["shared_probe_min"]
    return {"verdict": "read by both" if ok else "not read by both",
            "reason": f"parity probes base {base_at:.3f} / distilled {distilled_at:.3f} "
                      f"{'>=' if ok else 'not both >='} {r['shared_probe_min']}"}


# ----------------------------------------------------------------------------- does the crosscoder's latent cause it?
def matched_latents(frequency, decoder_norm, target: int, n: int, rng, pool: int = 40) -> np.ndarray:
    """``n`` live latents drawn from the ``pool`` nearest to ``target`` in (log firing frequency, log distilled
    decoder norm): controls that fire as often and write as strongly, but are not the chosen latent."""
    freq, dn = np.asarray(frequency, float), np.asarray(decoder_norm, float)
    live = np.nonzero((freq > 0) & (dn > 0))[0]
    live = live[live != target]
    if len(live) < n:
        raise ValueError(f"only {len(live)} other live latents: cannot draw {n} matched controls")
    dist = np.abs(np.log(freq[live] / freq[target])) + np.abs(np.log(dn[live] / dn[target]))
    near = live[np.argsort(dist)[:max(pool, n)]]
    return rng.choice(near, size=n, replace=False)


def _margins(model, layer: int, docs, tokenizer, edits: list, batch: int = 16, context=None) -> np.ndarray:
    """The model's connective choice at each scored "." of ``docs`` -- logit(right connective's first token) -
    logit(the other's) -- clean (row 0) and with each edit of ``edits`` applied to the resid_pre of block ``layer``
    at every position (row 1 + i). An edit maps (h [B, T, d], ctx) to the edited h; ``context(ids, mask)`` computes
    ``ctx`` once per batch. Returns [1 + len(edits), n_scored]."""
    import torch

    first = [tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in world.CONNECTIVES]
    doc, pos, bit = _scored_positions(docs)
    out = np.zeros((1 + len(edits), len(doc)))
    with torch.no_grad():
        for ks, ids, mask in _batches(docs, sorted(set(doc.tolist())), batch):
            ctx = context(ids, mask) if context else None
            for a, edit in enumerate([None] + list(edits)):
                if edit is None:
                    logits = model(input_ids=ids, attention_mask=mask).logits
                else:
                    with resid_hook(model, layer, lambda h, edit=edit: edit(h, ctx)):
                        logits = model(input_ids=ids, attention_mask=mask).logits
                for r, k in enumerate(ks):
                    rows = np.nonzero(doc == k)[0]
                    lg = logits[r, pos[rows]].float()
                    want = torch.tensor([first[b] for b in bit[rows]])
                    other = torch.tensor([first[1 - b] for b in bit[rows]])
                    out[a, rows] = (lg.gather(1, want[:, None]) - lg.gather(1, other[:, None]))[:, 0].numpy()
    return out


def connective_margins(base, distilled, cc, layer: int, docs, ablate: list, tokenizer, batch: int = 16) -> np.ndarray:
    """The distilled model's connective choice at each scored "." of ``docs`` (``_margins``), clean and with each
    latent set of ``ablate`` removed from its residual stream at the hook (at every position: the crosscoder
    encodes both models' resid_pre of block ``layer`` and the set's contribution ``sum_j f_j W_dec[j, distilled]``
    is subtracted; raw units). Returns [1 + len(ablate), n_scored] (row 0 clean)."""
    import torch

    W = cc.W_dec.detach()

    def base_resid(ids, mask):
        seen = {}
        with resid_hook(base, layer, lambda h: seen.__setitem__("base", h.detach()) or None):
            base(input_ids=ids, attention_mask=mask)
        return seen["base"]

    def remover(latents):
        def remove(h, base_h):
            x = torch.stack([base_h, h], dim=2).float()                  # [B, T, 2, d]
            f = cc.encode(x.reshape(-1, 2, x.shape[-1]))[:, latents]      # [B*T, J]
            return h - (f @ W[latents, 1].float()).reshape(h.shape).to(h.dtype)
        return remove

    return _margins(distilled, layer, docs, tokenizer, [remover(np.asarray(j)) for j in ablate], batch, base_resid)


def mean_difference_direction(train: dict, layer: int) -> np.ndarray:
    """The unit direction [d_model] (raw residual units) from the mean activation of bit-0 steps to that of bit-1
    steps at resid_pre of block ``layer``, on training problems (``train``: a ``gate_activations`` output): the
    direction along which the stream's two classes differ, the usual choice for directional ablation. A
    classifier's weight vector is not: it leans on low-variance dimensions, and projecting it out removes
    little of what the model reads."""
    X, y = train["acts"][layer - 1], train["y"].astype(bool)
    w = X[y].mean(0) - X[~y].mean(0)
    return w / np.linalg.norm(w)


def gate_direction(model, tokenizer, n_problems: int, layer: int, seed: int = 0, progress: bool = True) -> dict:
    """The planted concept's direction in ``model`` at resid_pre of block ``layer``: ``mean_difference_direction``
    of the gate bit over one seeded teacher trace of each of the first ``n_problems`` training problems (the
    problems 03_label's probes train on; ``[label] gate_problems``' first number). Returns ``direction``
    [d_model] (unit, raw residual units), ``n_steps`` (the scored steps averaged) and ``auroc``: how well the
    projection on the direction separates the two bits on those same steps (0.5: the layer barely holds the bit,
    and the direction is mostly noise)."""
    from sklearn.metrics import roc_auc_score

    if not 1 <= layer <= model.config.num_hidden_layers:
        raise ValueError(f"layer {layer} is outside this model's layers 1..{model.config.num_hidden_layers}")
    docs = gate_traces(world.problem_split(0, n_problems, "train"), tokenizer, seed=seed)
    acts = gate_activations(model, docs, "gate", progress=progress)
    if len(set(acts["y"].tolist())) < 2:
        raise ValueError(f"the gate traces of {n_problems} training problems carry one bit value only: no direction")
    direction = mean_difference_direction(acts, layer)
    return {"direction": direction, "n_steps": int(len(acts["y"])),
            "auroc": float(roc_auc_score(acts["y"], acts["acts"][layer - 1] @ direction))}


def direction_margins(model, layer: int, docs, directions, tokenizer, batch: int = 16) -> np.ndarray:
    """The ablation's positive control: the model's connective margins (``_margins``) clean and with each unit
    direction of ``directions`` [n, d_model] projected out of its resid_pre of block ``layer`` at every position
    (h - (h . u) u). Returns [1 + n, n_scored]."""
    import torch

    def projector(u):
        u = torch.tensor(u, dtype=torch.float32)
        return lambda h, _: (h.float() - (h.float() @ u)[..., None] * u).to(h.dtype)

    return _margins(model, layer, docs, tokenizer, [projector(u) for u in np.atleast_2d(directions)], batch)


def ablation_effect(margins: np.ndarray, n_random: int, unit, n_boot: int = 2000, seed: int = 0) -> dict:
    """From ``connective_margins`` rows [clean, target, random_1 .. random_n]: the share of scored steps whose
    connective choice flips (margin changes sign) when the target latent is removed, the same for the random
    sets, and a CI over problems (``unit``) of the difference target - random (``stats.cluster_bootstrap_mean_ci``,
    the random sets redrawn inside the bootstrap)."""
    clean = np.sign(margins[0])
    flips = np.sign(margins[1:]) != clean          # [1 + n_random, n_scored]
    diff = flips[0][:, None].astype(float) - flips[1:1 + n_random].T.astype(float)   # [n_scored, n_random]
    mean, lo, hi = cluster_bootstrap_mean_ci(diff, unit, n_boot, seed)
    return {"target_flip_rate": float(flips[0].mean()), "random_flip_rate": float(flips[1:].mean()),
            "difference": mean, "ci": (lo, hi), "n": int(margins.shape[1])}


def crosscoder_finding(codes, relative_norms, split, gate_y, cc, base, distilled, layer: int, eval_docs, tokenizer,
                       n_random: int, unit, control: dict | None = None, tested: bool = True, seed: int = 0) -> dict:
    """Item 2 for one crosscoder trained on a store harvested at ``layer``: the distilled-specific latent
    (relative norm >= 0.9) with the best *training* AUROC for the gate bit on the store's tokens (``gate_y``
    [n_tokens], -1 where unscored; ``split`` [n_tokens] 0 train / 1 held out), its held-out AUROC, and the
    effect of removing it from the distilled model on ``eval_docs`` against ``n_random`` latents matched on
    firing frequency and decoder norm (``ablation_effect``, CI over ``unit``), judged by ``finding_verdict``."""
    gate_y = np.asarray(gate_y)
    rec = latent_recovery(codes, split, {"gate": np.where(gate_y >= 0, gate_y == 1, np.nan)}, relative_norms, ks=(1,))
    g = rec.loc["gate"]
    j, effect, margins = g.get("best_specific_latent", np.nan), None, None
    if np.isfinite(j):
        j = int(j)
        dec_norm = cc.W_dec.detach()[:, 1].norm(dim=-1).numpy()
        controls = matched_latents(codes.frequency(), dec_norm, j, n_random, np.random.default_rng(seed))
        margins = connective_margins(base, distilled, cc, layer, eval_docs, [np.array([j])] +
                                     [np.array([c]) for c in controls], tokenizer)
        effect = ablation_effect(margins, n_random, unit)
    nrn = float(np.asarray(relative_norms)[j]) if np.isfinite(j) else np.nan
    auroc = float(g.get("specific_auroc", np.nan))
    return {"latent": j, "relative_norm": nrn, "heldout_auroc": auroc, "effect": effect, "margins": margins,
            "verdict": finding_verdict(nrn, auroc, effect, tested, control=control)}


def finding_summary(finding: dict, layer: int, parity) -> dict:
    """One row of what a crosscoder found for the gate at ``layer``: ``crosscoder_finding``'s latent, held-out
    AUROC, flip rates against its matched random latents (difference CI rounded to 3 places, mean connective
    margins clean / latent removed to 2) and verdict, beside ``parity`` (``probes.latent_recovery``'s row for the
    result's parity, the shared control): its best latent, that latent's relative norm and held-out AUROC."""
    e, m = finding["effect"], finding["margins"]
    return {"layer": layer, "latent": finding["latent"], "relative norm": finding["relative_norm"],
            "held-out AUROC": finding["heldout_auroc"],
            "flip rate": e["target_flip_rate"] if e else np.nan,
            "matched random flip rate": e["random_flip_rate"] if e else np.nan,
            "difference CI": tuple(round(v, 3) for v in e["ci"]) if e else None,
            "mean margin clean / latent out": (round(m[0].mean(), 2), round(m[1].mean(), 2)) if e else None,
            "verdict": finding["verdict"]["verdict"], "reason": finding["verdict"]["reason"],
            "parity latent": parity.get("best_latent", np.nan),
            "parity latent relative norm": parity.get("relative_norm", np.nan),
            "parity latent AUROC": parity.get("auroc", np.nan)}


def causal_control_verdict(effect: dict | None, tested: bool = True) -> dict:
    """Can the ablation metric see a cause at all? Projecting the training probe's direction out of the distilled
    model (``direction_margins``) must flip more connective choices than random directions do (CI of the
    difference above 0), else a latent's "not causal" says nothing about the latent."""
    if not tested:
        return {"verdict": "not tested", "reason": "smoke run"}
    if effect is None:
        return {"verdict": "not tested", "reason": "no direction was measured"}
    lo, hi = effect["ci"]
    what = (f"projecting out the mean-difference direction flips {effect['target_flip_rate']:.1%} of choices vs "
            f"{effect['random_flip_rate']:.1%} for random directions (difference CI [{lo:.3f}, {hi:.3f}])")
    return {"verdict": "sees a cause" if lo > 0 else "blind", "reason": what}


def finding_verdict(relative_norm: float, heldout_auroc: float, effect: dict | None, tested: bool = True,
                    rules: dict | None = None, control: dict | None = None) -> dict:
    """Item 2: "found" when the latent chosen on training tokens has relative norm >= ``concept_nrn`` (0.9) and
    held-out AUROC >= ``concept_auroc`` (0.90), and removing it flips the distilled model's connective more often
    than matched random latents (CI of the difference above 0); "found, not causal" when only the ablation fails
    and the positive control (``causal_control_verdict``, given as ``control``) shows the metric can see a cause;
    "found, ablation blind" when it cannot; "missed" otherwise."""
    r = {**TARGETS, **(rules or {})}
    if not tested:
        return {"verdict": "not tested", "reason": "smoke run"}
    if not (np.isfinite(relative_norm) and np.isfinite(heldout_auroc)):
        return {"verdict": "missed", "reason": "no live distilled-specific latent was chosen"}
    ok = relative_norm >= r["concept_nrn"] and heldout_auroc >= r["concept_auroc"]
    what = f"relative norm {relative_norm:.3f}, held-out AUROC {heldout_auroc:.3f}"
    if not ok:
        return {"verdict": "missed", "reason": f"{what} (needs >= {r['concept_nrn']} and >= {r['concept_auroc']})"}
    if effect is None or not effect["ci"][0] > 0:
        ci = "no ablation" if effect is None else f"flip difference CI [{effect['ci'][0]:.3f}, {effect['ci'][1]:.3f}]"
        if control is not None and control["verdict"] == "blind":
            return {"verdict": "found, ablation blind",
                    "reason": f"{what}; {ci}, but the positive control is blind too ({control['reason']})"}
        return {"verdict": "found, not causal", "reason": f"{what}; {ci} does not exceed matched random latents"}
    return {"verdict": "found", "reason": f"{what}; removing it flips {effect['target_flip_rate']:.1%} of choices vs "
                                          f"{effect['random_flip_rate']:.1%} for matched random latents (difference "
                                          f"CI [{effect['ci'][0]:.3f}, {effect['ci'][1]:.3f}])"}
