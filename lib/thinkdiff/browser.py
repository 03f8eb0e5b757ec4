"""Max-activating contexts, feature cards, a static HTML export and an ipywidgets browser.

A card shows one latent the way the field's dashboards (Neuronpedia, SAEDashboard) do: a header with the
latent id, its label and where the label came from; where its relative norm sits on the pair's relative-norm
histogram; each model's decoder norm and their cosine; how often it fires and how strongly; per-category
ground-truth AUROC and ReasonScore as small bars; latent scaling in words; its top activating contexts (text
on both sides of the firing token, every token shaded) for each model and each corpus kind; the tokens each
model's decoder direction promotes and suppresses through that model's unembedding; and links to the most
similar latents (decoder cosine) and to the best-matching latent of the other sparsity scheme. A value that
was not computed says "not measured" and why.

``CardMaker`` builds cards from a run's pieces, ``export_cards_html`` writes them into one self-contained HTML
file (inline CSS and SVG, no scripts, no network), and ``FeatureBrowser`` is the interactive browser. Every
CSS rule is scoped under ``.thinkdiff-card`` / ``.thinkdiff-browser`` so nothing leaks into the page.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import paths
from .codes import SparseActs, eval_mode, load_rows
from .label import MODELS, save_features_table
from .lexicon import CATEGORIES, runs_from_meta
from .norms import BASE_SPECIFIC, DISTILLED_SPECIFIC, SHARED_BAND, training_decoder

CATEGORY_NAMES = {"self_reflection": "self-reflection", "deductive": "deductive", "alternative": "alternative",
                  "contrastive": "contrastive"}
SOURCE_NAMES = {"ground_truth": "ground truth (held-out AUROC against the planted labels)",
                "score": "ReasonScore (among its category's top latents)",
                "lexicon": "lexicon (most of its activation sits in the category's word windows)",
                "none": "none of the rules: no ground-truth AUROC >= 0.9, not among a category's top ReasonScores, "
                        "no lexicon majority"}
SCALING_WORDS = {
    "genuine": "genuine: the base model does not carry this direction, so the latent is distilled-specific",
    "shrinkage": "complete shrinkage: the base model carries this direction, the L1 penalty pushed its base "
                 "decoder to zero",
    "decoupling": "latent decoupling: other latents rebuild this direction in the base model",
    "shrinkage+decoupling": "complete shrinkage and latent decoupling: the base carries the direction and other "
                            "latents rebuild it",
    "inactive": "not measured: the latent never fires on held-out tokens",
}
# Readable names of the features table's numeric columns (sort keys of the browser).
COLUMN_NAMES = {"relative_norm": "relative norm (L2)", "relative_norm_l1": "relative norm (L1)",
                "decoder_cosine": "decoder cosine", "frequency": "firing frequency",
                "mean_active": "mean activation when firing", "max_activation": "max activation",
                "dec_norm_base": "decoder norm, base", "dec_norm_distilled": "decoder norm, distilled",
                "nu_error": "latent scaling nu (error)", "nu_reconstruction": "latent scaling nu (reconstruction)"}
for _c in CATEGORIES:
    COLUMN_NAMES[f"score_{_c}"] = f"ReasonScore: {CATEGORY_NAMES[_c]}"
    COLUMN_NAMES[f"auroc_{_c}"] = f"AUROC: {CATEGORY_NAMES[_c]}"


def category_name(cat: str) -> str:
    return CATEGORY_NAMES.get(cat, str(cat).replace("_", " "))


def side_in_words(nrn: float) -> str:
    """Where a relative norm puts a latent: distilled-specific, shared, base-specific or in between."""
    if not np.isfinite(nrn):
        return "undefined (both decoder vectors are zero)"
    if nrn >= DISTILLED_SPECIFIC:
        return "distilled-specific"
    if nrn <= BASE_SPECIFIC:
        return "base-specific"
    if SHARED_BAND[0] <= nrn <= SHARED_BAND[1]:
        return "shared"
    return "leans distilled" if nrn > 0.5 else "leans base"


# ---------------------------------------------------------------------------------------------------------
# Max-activating contexts
# ---------------------------------------------------------------------------------------------------------
def _encoder_contrib(cc, store, tokens: np.ndarray, lat: np.ndarray, chunk: int):
    """For store ``tokens`` [T]: (activations [T, J] of latents ``lat``, per-model pre-activation shares
    [T, 2, J] ``x_m . W_enc[m][:, j]``)."""
    acts_out = np.zeros((len(tokens), len(lat)), dtype=np.float32)
    contrib = np.zeros((len(tokens), 2, len(lat)), dtype=np.float32)
    lat_t = torch.as_tensor(lat)
    with eval_mode(cc):
        W = cc.W_enc.detach()[:, :, lat_t.to(cc.W_enc.device)]           # [2, d, J]
        for s in range(0, len(tokens), chunk):
            part = tokens[s: s + chunk]
            x = load_rows(store, part, cc)
            acts_out[s: s + len(part)] = cc.encode(x)[:, lat_t.to(x.device)].float().cpu().numpy()
            contrib[s: s + len(part)] = torch.einsum("bmd,mdj->bmj", x, W).float().cpu().numpy()
    return acts_out, contrib


def max_activating_contexts(cc, store, acts: SparseActs, latents, k: int = 10, context: int = 20,
                            group=None, chunk: int = 4096, right: int = 0, by: str = "activation") -> pd.DataFrame:
    """Top-``k`` activating tokens of each latent (per value of ``group`` if given), with their context.

    ``by="activation"`` ranks by the actual post-ReLU activation from ``cc.encode`` on raw activations (the
    crosscoder's own normalisation), as stored in ``acts``; rows have ``model == "both"``. ``by="model"`` ranks,
    for each model separately (``model`` = "base" / "distilled"), the tokens where the latent fires by that
    model's share ``x_m . W_enc[m][:, j]`` of the pre-activation: where each model's residual stream drives it.
    ``group`` is an array over all store tokens (e.g. document kind). ``context`` tokens before and ``right``
    tokens after the firing token are kept, never crossing a document.

    Rows: latent, group, model, rank, token_index, doc_id, pos, activation, ``contrib_base`` /
    ``contrib_distilled`` (each model's share at the firing token), ``fire_offset`` (the firing token's place in
    the context), and per context token the lists ``context_index``, ``context_ids``, ``context_acts`` (this
    latent's activation), ``context_contrib_base`` and ``context_contrib_distilled``.
    """
    if by not in ("activation", "model"):
        raise ValueError(f"by must be 'activation' or 'model', got {by!r}")
    lat = np.unique(np.asarray(latents, dtype=np.int64).ravel())
    if len(lat) == 0 or lat.min() < 0 or lat.max() >= acts.n_latents:
        raise ValueError(f"latents must be indices in [0, {acts.n_latents})")
    if k < 1 or context < 0 or right < 0:
        raise ValueError("k must be >= 1, context and right >= 0")
    meta = store.meta
    grp = np.zeros(acts.n_tokens, dtype=object) if group is None else np.asarray(group, dtype=object)[acts.token_index]
    col_of = {j: i for i, j in enumerate(lat)}
    sel = np.isin(acts.cols, lat)
    rows_, cols_, vals_ = acts.rows[sel], acts.cols[sel], acts.vals[sel]
    if by == "activation":
        cand = [("both", rows_, cols_, vals_, vals_)]
    else:   # each model's share of the pre-activation on every token where the latent fires
        toks = np.unique(acts.token_index[rows_])
        _, c_all = _encoder_contrib(cc, store, toks, lat, chunk)
        where = np.searchsorted(toks, acts.token_index[rows_])
        jc = np.array([col_of[j] for j in cols_], dtype=np.int64)
        cand = [(MODELS[m], rows_, cols_, vals_, c_all[where, m, jc]) for m in (0, 1)]
    parts = []
    for model, r_, c_, v_, key_ in cand:
        g = grp[r_]
        g_codes, g_names = pd.factorize(pd.Series(g, dtype=object), sort=True)
        order = np.lexsort((-key_, g_codes, c_))
        r_, c_, v_, g_codes = r_[order], c_[order], v_[order], g_codes[order]
        key = c_ * (len(g_names) + 1) + g_codes
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        start = np.maximum.accumulate(np.where(first, np.arange(len(key)), 0))
        rank = np.arange(len(key)) - start
        keep = rank < k
        parts.append(pd.DataFrame({
            "latent": c_[keep], "group": np.asarray(g_names, dtype=object)[g_codes[keep]] if len(g_names) else [],
            "model": model, "rank": rank[keep], "token_index": acts.token_index[r_[keep]], "activation": v_[keep]}))
    top = pd.concat(parts, ignore_index=True)
    if group is None:
        top["group"] = "all"
    # Context: tokens of the same document run on both sides (store order is document-contiguous).
    brk = runs_from_meta(meta["doc_id"], meta["pos"])
    n_all = len(brk)
    run_lo = np.maximum.accumulate(np.where(brk, np.arange(n_all), 0))
    nxt = np.where(np.r_[brk[1:], True], np.arange(n_all), n_all)
    run_hi = np.minimum.accumulate(nxt[::-1])[::-1]
    t = top["token_index"].to_numpy()
    lo = np.maximum(t - context, run_lo[t])
    hi = np.minimum(t + right, run_hi[t])
    ctx = [np.arange(a, b + 1) for a, b in zip(lo, hi)]
    need = np.unique(np.concatenate(ctx)) if ctx else np.zeros(0, np.int64)
    acts_need, contrib = _encoder_contrib(cc, store, need, lat, chunk)
    pos_lists = [np.searchsorted(need, c) for c in ctx]
    jcol = np.array([col_of[j] for j in top["latent"]], dtype=np.int64)
    fire = np.searchsorted(need, t) if len(t) else np.zeros(0, np.int64)
    top["doc_id"] = np.asarray(meta["doc_id"])[t]
    top["pos"] = np.asarray(meta["pos"])[t]
    top["contrib_base"] = contrib[fire, 0, jcol] if len(t) else []
    top["contrib_distilled"] = contrib[fire, 1, jcol] if len(t) else []
    top["fire_offset"] = (t - lo).astype(np.int64)
    top["context_index"] = [c.tolist() for c in ctx]
    top["context_ids"] = [np.asarray(meta["token_id"])[c].tolist() for c in ctx]
    top["context_acts"] = [acts_need[p, j].tolist() for p, j in zip(pos_lists, jcol)]
    top["context_contrib_base"] = [contrib[p, 0, j].tolist() for p, j in zip(pos_lists, jcol)]
    top["context_contrib_distilled"] = [contrib[p, 1, j].tolist() for p, j in zip(pos_lists, jcol)]
    top = top.sort_values(["latent", "model", "group", "rank"], kind="stable")
    return top[["latent", "group", "model", "rank", "token_index", "doc_id", "pos", "activation", "contrib_base",
                "contrib_distilled", "fire_offset", "context_index", "context_ids", "context_acts",
                "context_contrib_base", "context_contrib_distilled"]].reset_index(drop=True)


def _tok_text(tokenizer, i: int) -> str:
    t = tokenizer.decode([int(i)])
    return t.replace("\n", "\u23ce")


def contexts_html(contexts: pd.DataFrame, tokenizer, max_rows: int | None = None, shade: str = "context_acts") -> str:
    """HTML for context rows: each token shaded by ``shade`` (``context_acts``: this latent's activation, or
    ``context_contrib_base`` / ``context_contrib_distilled``: one model's share, negative shares unshaded), the
    firing token boxed, values in tooltips and the firing token's activation at the end of the line."""
    out = []
    rows = contexts if max_rows is None else contexts.head(max_rows)
    for _, r in rows.iterrows():
        a = np.asarray(r[shade], dtype=float)
        fire = int(r["fire_offset"]) if "fire_offset" in r else len(a) - 1
        top = max(float(np.max(a)) if len(a) else 0.0, 1e-12)
        spans = []
        for n, (tid, v) in enumerate(zip(r["context_ids"], a)):
            style = f"background: rgba(220, 60, 30, {min(max(v, 0.0) / top, 1):.2f});"
            if n == fire:
                style += " border: 1.5px solid black; font-weight: bold;"
            spans.append(f'<span class="tok" style="{style}" title="{v:.3g}">{html.escape(_tok_text(tokenizer, tid))}</span>')
        out.append(f'<div class="ctx">{"".join(spans)} <span class="val">{float(r["activation"]):.3g}</span></div>')
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------
# Promoted tokens, related latents
# ---------------------------------------------------------------------------------------------------------
def unembedding(model) -> torch.Tensor:
    """[vocab, d] ``lm_head.weight`` with the final RMSNorm gain folded in (the per-token RMS factor is
    positive, so it does not change which tokens a direction promotes)."""
    W = model.lm_head.weight.detach().float()
    norm = getattr(getattr(model, "model", None), "norm", None)
    if norm is not None and getattr(norm, "weight", None) is not None:
        W = W * norm.weight.detach().float()[None, :]
    return W


def promoted_tokens(cc, latent: int, unembed: dict, tokenizer, k: int = 10) -> pd.DataFrame:
    """The ``k`` tokens most promoted and the ``k`` most suppressed by latent ``latent``'s raw-unit decoder row
    through each model's unembedding. ``unembed``: model index -> [vocab, d] (see ``unembedding``).
    Rows: model, direction ("promoted" / "suppressed"), rank, token_id, token, logit."""
    rows = []
    for m, U in unembed.items():
        if m not in (0, 1):
            raise ValueError("unembed keys are model indices: 0 = base, 1 = distilled")
        d = cc.W_dec.detach()[latent, m].float().to(U.device)
        if U.shape[-1] != d.shape[0]:
            raise ValueError(f"unembedding of model {m} is {tuple(U.shape)}, decoder rows have d={d.shape[0]}")
        logits = U.float() @ d
        for direction, sign in (("promoted", 1.0), ("suppressed", -1.0)):
            val, idx = torch.topk(sign * logits, min(k, len(logits)))
            for r, (v, i) in enumerate(zip(val.tolist(), idx.tolist())):
                rows.append({"model": MODELS[m], "direction": direction, "rank": r, "token_id": i,
                             "token": tokenizer.decode([i]), "logit": sign * v})
    return pd.DataFrame(rows)


def _unit_decoders(W_dec) -> torch.Tensor:
    """[F, 2d] each latent's decoder vectors of both models (training units), concatenated and unit-normed."""
    W = training_decoder(W_dec).flatten(1)
    n = torch.linalg.vector_norm(W, dim=1, keepdim=True)
    return W / torch.where(n > 0, n, torch.ones_like(n))


def similar_latents(W_dec, latent: int, k: int = 5, among=None) -> list[tuple[int, float]]:
    """The ``k`` latents whose decoder (both models' vectors, concatenated) has the highest cosine with
    ``latent``'s, as (latent, cosine), best first; ``among``: optional [F] bool mask of candidates."""
    U = _unit_decoders(W_dec)
    cos = (U @ U[latent]).numpy()
    cos[latent] = -np.inf
    if among is not None:
        cos = np.where(np.asarray(among, dtype=bool), cos, -np.inf)
    best = np.argsort(-cos, kind="stable")[:k]
    return [(int(j), float(cos[j])) for j in best if np.isfinite(cos[j])]


def best_match(W_dec, W_dec_other, latent: int, among=None) -> tuple[int, float]:
    """The latent of another crosscoder (``W_dec_other``, same pair and layer) whose decoder is closest in
    cosine to ``latent``'s: (latent, cosine). ``among``: optional bool mask over the other's latents."""
    U, V = _unit_decoders(W_dec), _unit_decoders(W_dec_other)
    if U.shape[1] != V.shape[1]:
        raise ValueError("the two crosscoders' decoders have different widths: not the same pair and layer")
    cos = (V @ U[latent]).numpy()
    if among is not None:
        cos = np.where(np.asarray(among, dtype=bool), cos, -np.inf)
    j = int(np.argmax(cos))
    return j, float(cos[j])


# ---------------------------------------------------------------------------------------------------------
# Cards
# ---------------------------------------------------------------------------------------------------------
@dataclass
class FeatureCard:
    """Everything one card shows. ``numbers``: the latent's row of ``label.features_table``; ``contexts``: its
    ``max_activating_contexts`` rows; ``nrn_counts`` / ``nrn_edges``: the relative-norm histogram of the live
    latents it is placed on; ``score_scale``: category -> largest |ReasonScore| in the table (bar lengths);
    ``similar``: [(latent, decoder cosine)]; ``other_scheme``: (scheme, latent, cosine) or None."""
    latent: int
    numbers: dict
    hist_counts: np.ndarray             # histogram of its non-zero activations
    hist_edges: np.ndarray
    contexts: pd.DataFrame
    promoted: pd.DataFrame = field(default_factory=pd.DataFrame)
    nrn_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    nrn_edges: np.ndarray = field(default_factory=lambda: np.zeros(0))
    score_scale: dict = field(default_factory=dict)
    similar: list = field(default_factory=list)
    other_scheme: tuple | None = None
    scheme: str = ""
    n_tokens: int = 0


def feature_card(latent: int, table: pd.DataFrame, acts: SparseActs, contexts: pd.DataFrame, cc=None,
                 unembed: dict | None = None, tokenizer=None, bins: int = 30, k_promoted: int = 10,
                 similar: list | None = None, other_scheme: tuple | None = None, scheme: str = "") -> FeatureCard:
    """Collect everything a card shows for ``latent`` (``table`` = ``label.features_table``)."""
    if latent not in set(table["latent"]):
        raise ValueError(f"latent {latent} is not in the features table")
    numbers = table.loc[table["latent"] == latent].iloc[0].to_dict()
    v = acts.vals[acts.cols == latent]
    counts, edges = np.histogram(v, bins=bins) if len(v) else (np.zeros(0, int), np.zeros(0))
    promoted = pd.DataFrame()
    if unembed is not None:
        if cc is None or tokenizer is None:
            raise ValueError("promoted tokens need cc and tokenizer as well as unembed")
        promoted = promoted_tokens(cc, latent, unembed, tokenizer, k_promoted)
    ctx = contexts[contexts["latent"] == latent] if len(contexts) else contexts
    live = table["frequency"].to_numpy() > 0 if "frequency" in table else np.ones(len(table), bool)
    rn = table["relative_norm"].to_numpy()[live]
    rn = rn[np.isfinite(rn)]
    nrn_counts, nrn_edges = np.histogram(rn, bins=40, range=(0, 1))
    scale = {c[len("score_"):]: float(np.nanmax(np.abs(table[c].to_numpy()))) for c in table.columns
             if c.startswith("score_") and np.isfinite(table[c].to_numpy()).any()}
    return FeatureCard(int(latent), numbers, counts, edges, ctx, promoted, nrn_counts, nrn_edges, scale,
                       list(similar or []), other_scheme, scheme, int(acts.n_tokens))


class CardMaker:
    """Builds the cards of one crosscoder of a run: ``maker(latent) -> FeatureCard`` (one card, contexts computed
    for that latent) and ``maker.cards(latents)`` (many, contexts in one pass).

    ``table``: ``label.features_table`` of ``cc``; ``acts``: its ``SparseActs`` over ``store``; ``group``: [n_tokens]
    corpus kind per store token (or None); ``unembed``: model index -> [vocab, d]; ``others``: scheme -> another
    crosscoder of the same run (its best-matching latent is linked). Contexts: the top ``k`` per model and corpus
    kind, ``left`` tokens before and ``right`` after the firing token."""

    def __init__(self, table: pd.DataFrame, acts: SparseActs, cc, store, tokenizer, unembed: dict | None = None,
                 group=None, scheme: str = "", others: dict | None = None, k: int = 5, left: int = 12,
                 right: int = 6, k_similar: int = 5):
        self.table, self.acts, self.cc, self.store, self.tokenizer = table, acts, cc, store, tokenizer
        self.unembed, self.group, self.scheme, self.others = unembed, group, scheme, dict(others or {})
        self.k, self.left, self.right, self.k_similar = k, left, right, k_similar
        self.live = acts.frequency() > 0

    def contexts(self, latents) -> pd.DataFrame:
        return max_activating_contexts(self.cc, self.store, self.acts, latents, k=self.k, context=self.left,
                                       right=self.right, group=self.group, by="model")

    def _card(self, j: int, ctx: pd.DataFrame) -> FeatureCard:
        sim = similar_latents(self.cc, j, self.k_similar, among=self.live)
        other = None
        for name, occ in self.others.items():
            m, c = best_match(self.cc, occ, j)
            other = (name, m, c)
        return feature_card(j, self.table, self.acts, ctx, self.cc, self.unembed, self.tokenizer, similar=sim,
                            other_scheme=other, scheme=self.scheme)

    def __call__(self, latent: int) -> FeatureCard:
        j = int(latent)
        if not 0 <= j < self.acts.n_latents:
            raise ValueError(f"latent {j} is not in [0, {self.acts.n_latents})")
        ctx = self.contexts([j]) if self.live[j] else pd.DataFrame()
        return self._card(j, ctx)

    def cards(self, latents) -> list[FeatureCard]:
        latents = [int(j) for j in latents]
        fired = [j for j in latents if self.live[j]]
        ctx = self.contexts(fired) if fired else pd.DataFrame()
        return [self._card(j, ctx) for j in latents]


def export_picks(table: pd.DataFrame, per_category: int = 1, n_extremes: int = 6) -> dict:
    """Which latents the static export shows: section title -> latents. Per category, the best ground-truth
    latents (held-out AUROC, where the run has planted labels) and the top ReasonScore latents; then the
    ``n_extremes`` most distilled-specific live latents. A latent appears once, in its first section."""
    live = table[table["frequency"] > 0] if "frequency" in table else table
    seen, out = set(), {}

    def add(title, latents):
        new = [int(j) for j in latents if int(j) not in seen]
        seen.update(new)
        if new:
            out.setdefault(title, []).extend(new)

    for c in CATEGORIES:
        for col, what in ((f"auroc_{c}", "ground truth"), (f"score_{c}", "ReasonScore")):
            if col in live and live[col].notna().any():
                add(f"Top latents: {category_name(c)}", live.sort_values(col, ascending=False)["latent"].head(per_category))
    add("Distilled-only extremes", live.sort_values("relative_norm", ascending=False)["latent"].head(n_extremes))
    return out


# ------------------------------------------------------------------------------------------- card HTML
def _hist_svg(counts, edges, title: str, xlabel: str, w: int = 300, h: int = 120, mark: float | None = None,
              color: str = "#c0392b") -> str:
    """A log-count histogram as inline SVG with title and axis labels, and an optional marker line at ``mark``."""
    pad_l, pad_b, pad_t = 30, 26, (28 if mark is not None else 16)    # room for the marker's value under the title
    if len(counts) == 0:
        return f'<svg width="{w}" height="40" font-size="11"><text x="4" y="20">{html.escape(title)}: never fires</text></svg>'
    logc = np.log10(np.asarray(counts) + 1)
    top = max(float(logc.max()), 1e-9)
    bw = (w - pad_l - 6) / len(counts)
    ih = h - pad_b - pad_t
    bars = "".join(
        f'<rect x="{pad_l + i * bw:.1f}" y="{h - pad_b - (c / top) * ih:.1f}" width="{max(bw - 1, 1):.1f}" '
        f'height="{(c / top) * ih:.1f}" fill="{color}"><title>{int(n)}</title></rect>'
        for i, (c, n) in enumerate(zip(logc, counts)))
    marker = ""
    if mark is not None and np.isfinite(mark):
        x = pad_l + (mark - edges[0]) / max(edges[-1] - edges[0], 1e-12) * (w - pad_l - 6)
        anchor = "end" if x > w - 30 else "start" if x < pad_l + 20 else "middle"
        marker = (f'<line x1="{x:.1f}" y1="{pad_t - 2}" x2="{x:.1f}" y2="{h - pad_b}" stroke="#111" stroke-width="2"/>'
                  f'<text x="{x:.1f}" y="{pad_t - 4}" text-anchor="{anchor}" font-weight="bold">{mark:.2f}</text>')
    yl = (h - pad_b + pad_t) / 2
    return (f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" font-size="10">'
            f'<text x="{pad_l}" y="10">{html.escape(title)}</text>{bars}{marker}'
            f'<line x1="{pad_l}" y1="{h - pad_b}" x2="{w - 6}" y2="{h - pad_b}" stroke="#333"/>'
            f'<text x="{pad_l}" y="{h - pad_b + 11}">{edges[0]:.3g}</text>'
            f'<text x="{w - 6}" y="{h - pad_b + 11}" text-anchor="end">{edges[-1]:.3g}</text>'
            f'<text x="{(w + pad_l) / 2}" y="{h - 3}" text-anchor="middle">{html.escape(xlabel)}</text>'
            f'<text x="10" y="{yl}" transform="rotate(-90 10 {yl})" text-anchor="middle">log10(n+1)</text></svg>')


def _finite(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))


def _num(v, digits: int = 3) -> str:
    return f"{float(v):.{digits}g}"


def _kv(name: str, value: str) -> str:
    return f'<div class="kv"><span class="k">{html.escape(name)}</span><span class="v">{value}</span></div>'


def _missing(why: str) -> str:
    return f'<span class="nm">not measured: {html.escape(why)}</span>'


def _bar(value, lo: float, hi: float, text: str, missing: str) -> str:
    """A small horizontal bar for ``value`` on [lo, hi] (a centre line at 0 when lo < 0), or the reason it is missing."""
    if not _finite(value):
        return _missing(missing)
    v = float(value)
    frac = (min(max(v, lo), hi) - lo) / (hi - lo)
    zero = (0 - lo) / (hi - lo) if lo < 0 else 0.0
    left, width = (min(frac, zero), abs(frac - zero))
    color = "#2e86c1" if v >= 0 or lo >= 0 else "#aaa"
    return (f'<span class="bar"><span class="fill" style="left:{left * 100:.1f}%;width:{max(width * 100, 0.5):.1f}%;'
            f'background:{color}"></span></span> <span class="bv">{html.escape(text)}</span>')


def _latent_link(j: int, exported: set | None) -> str:
    if exported is not None and j not in exported:
        return f'<span class="lat">latent {j}</span>'
    return f'<a class="lat" href="#latent-{j}" data-latent="{j}">latent {j}</a>'


def _header(card: FeatureCard) -> str:
    n = card.numbers
    label = str(n.get("label") or "")
    src = str(n.get("label_source") or "none")
    name = category_name(label) if label else "unlabelled"
    prov = SOURCE_NAMES.get(src, src)
    if src == "ground_truth" and _finite(n.get(f"auroc_{label}")):
        prov = f"ground truth: held-out AUROC {_num(n[f'auroc_{label}'])} against the planted {name} labels"
    scheme = f' <span class="scheme">{html.escape(card.scheme)} crosscoder</span>' if card.scheme else ""
    prov_line = f"label from {prov}" if src != "none" else f"unlabelled: {prov}"
    return (f'<div class="head"><span class="id">Latent {card.latent}</span> <span class="label">{html.escape(name)}'
            f'</span>{scheme}<div class="prov">{html.escape(prov_line)}</div></div>')


def _geometry_section(card: FeatureCard) -> str:
    n = card.numbers
    nrn = n.get("relative_norm", float("nan"))
    hist = _hist_svg(card.nrn_counts, card.nrn_edges, "relative norm of every live latent", "0 base-only  ·  1 distilled-only",
                     mark=nrn if _finite(nrn) else None, color="#8e44ad") if len(card.nrn_counts) else ""
    rows = [_kv("relative norm (L2)", f"{_num(nrn)} &middot; {html.escape(side_in_words(float(nrn)))}" if _finite(nrn)
                else _missing("both decoder vectors are zero"))]
    if "relative_norm_l1" in n:
        rows.append(_kv("relative norm (L1, paper)", _num(n["relative_norm_l1"]) if _finite(n["relative_norm_l1"])
                        else _missing("both decoder vectors are zero")))
    for key, name in (("dec_norm_base", "decoder norm, base"), ("dec_norm_distilled", "decoder norm, distilled")):
        if key in n:
            rows.append(_kv(name, _num(n[key])))
    if "decoder_cosine" in n:
        c = n["decoder_cosine"]
        rows.append(_kv("decoder cosine (base vs distilled)",
                        _bar(c, -1, 1, _num(c), "one model's decoder vector is zero, so no direction to compare")))
    return f'<div class="sec"><h4>Where it sits</h4><div class="row">{hist}<div class="kvs">{"".join(rows)}</div></div></div>'


def _activity_section(card: FeatureCard) -> str:
    n = card.numbers
    rows = []
    f = n.get("frequency")
    if _finite(f):
        fired = int(round(float(f) * card.n_tokens)) if card.n_tokens else None
        rows.append(_kv("activation density", f"{float(f) * 100:.3g} % of tokens"
                        + (f" ({fired:,} of {card.n_tokens:,})" if fired is not None else "")))
    else:
        rows.append(_kv("activation density", _missing("no codes were computed for this table")))
    for key, name in (("mean_active", "mean activation when firing"), ("max_activation", "max activation")):
        if key in n:
            rows.append(_kv(name, _num(n[key]) if _finite(n[key]) and (key != "max_activation" or n[key] > 0)
                            else _missing("the latent never fires")))
    hist = _hist_svg(card.hist_counts, card.hist_edges, "activations when firing", "activation")
    return f'<div class="sec"><h4>Activity</h4><div class="row">{hist}<div class="kvs">{"".join(rows)}</div></div></div>'


def _meaning_section(card: FeatureCard) -> str:
    n = card.numbers
    cats = [c for c in CATEGORIES if any(f"{p}_{c}" in n for p in ("auroc", "score", "marker_count"))]
    if not cats:
        return (f'<div class="sec"><h4>What it means</h4>{_missing("this table has no category scores (run the labelling of 03_label)")}'
                "</div>")
    head = "<tr><th>category</th><th>ground-truth AUROC (held out)</th><th>ReasonScore</th><th>fires on markers</th></tr>"
    body = []
    for c in cats:
        au = n.get(f"auroc_{c}")
        au_cell = (_bar(au, 0.5, 1.0, _num(au), "the latent never fires on held-out tokens") if f"auroc_{c}" in n
                   else _missing("no planted labels in this run (the organism has them)"))
        sc = n.get(f"score_{c}")
        s = card.score_scale.get(c, 0) or 1.0
        sc_cell = (_bar(sc, -s, s, _num(sc), "no activation in or outside the category's lexicon windows")
                   if f"score_{c}" in n else _missing("no lexicon scores in this table"))
        mc = n.get(f"marker_count_{c}")
        mc_cell = f"{int(mc)}" if _finite(mc) else _missing("no marker counts in this table")
        body.append(f"<tr><td>{html.escape(category_name(c))}</td><td>{au_cell}</td><td>{sc_cell}</td><td>{mc_cell}</td></tr>")
    sc_flag = n.get("scaling_flag")
    if isinstance(sc_flag, str) and sc_flag:
        scaling = html.escape(SCALING_WORDS.get(sc_flag, sc_flag))
        if _finite(n.get("nu_error")) and _finite(n.get("nu_reconstruction")):
            scaling += (f" (&nu;<sub>error</sub> = {_num(n['nu_error'])}, "
                        f"&nu;<sub>reconstruction</sub> = {_num(n['nu_reconstruction'])})")
    else:
        scaling = _missing("latent scaling is run on the most distilled-specific live latents only")
    return (f'<div class="sec"><h4>What it means</h4><table class="cats">{head}{"".join(body)}</table>'
            f'{_kv("latent scaling", scaling)}</div>')


def _contexts_section(card: FeatureCard, tokenizer, max_contexts: int) -> str:
    ctx = card.contexts
    if not len(ctx):
        return f'<div class="sec"><h4>Top activating contexts</h4>{_missing("the latent never fires")}</div>'
    parts = ['<div class="sec"><h4>Top activating contexts</h4><p class="note">Ranked, for each model, by that '
             "model's share of the latent's pre-activation; each token is shaded by that share, the firing token is "
             "boxed and its activation is at the end of the line.</p>"]
    for grp, g in ctx.groupby("group", sort=True):
        cols = []
        for model in MODELS:
            gm = g[g["model"] == model].sort_values("rank")
            if len(gm):
                body = contexts_html(gm, tokenizer, max_contexts, shade=f"context_contrib_{model}")
                cols.append(f'<div class="col"><h5>{html.escape(model)} model</h5>{body}</div>')
        if not cols:   # contexts ranked by the joint activation (model "both")
            cols.append(f'<div class="col">{contexts_html(g.sort_values("rank"), tokenizer, max_contexts)}</div>')
        parts.append(f'<h5 class="grp">{html.escape(str(grp))} documents</h5><div class="cols">{"".join(cols)}</div>')
    parts.append("</div>")
    return "".join(parts)


def _tokens_section(card: FeatureCard) -> str:
    p = card.promoted
    if not len(p):
        return ('<div class="sec"><h4>Tokens it promotes and suppresses</h4>'
                f'{_missing("no unembedding was given to the card maker")}</div>')
    cols = []
    for model, g in p.groupby("model", sort=False):
        lines = []
        for direction, gd in g.groupby("direction", sort=False):
            items = " ".join(f'<span class="tk {direction}" title="{v:+.3g}">{html.escape(repr(t)[1:-1])}</span>'
                             for t, v in zip(gd["token"], gd["logit"]))
            lines.append(f'<div class="tks"><span class="k">{direction}</span>{items}</div>')
        cols.append(f'<div class="col"><h5>through the {html.escape(model)} model\'s unembedding</h5>{"".join(lines)}</div>')
    return f'<div class="sec"><h4>Tokens it promotes and suppresses</h4><div class="cols">{"".join(cols)}</div></div>'


def _related_section(card: FeatureCard, exported: set | None) -> str:
    rows = []
    if card.similar:
        rows.append(_kv("most similar (decoder cosine)", " ".join(
            f"{_latent_link(j, exported)} <span class='bv'>{c:.2f}</span>" for j, c in card.similar)))
    else:
        rows.append(_kv("most similar (decoder cosine)", _missing("no crosscoder was given to the card maker")))
    if card.other_scheme is not None:
        s, j, c = card.other_scheme
        rows.append(_kv(f"best match in the {s} crosscoder", f'<span class="lat">latent {j}</span> '
                        f"<span class='bv'>cosine {c:.2f}</span>"))
    else:
        rows.append(_kv("best match in the other scheme", _missing("only one sparsity scheme was trained or given")))
    return f'<div class="sec"><h4>Related latents</h4>{"".join(rows)}</div>'


def card_html(card: FeatureCard, tokenizer, max_contexts: int = 5, exported: set | None = None) -> str:
    """One card as an HTML fragment (inline SVG, no scripts), rooted at ``div.thinkdiff-card#latent-<id>``.
    ``exported``: the latents present in the same page (links to others are plain text); None links all."""
    return "\n".join([f'<div class="thinkdiff-card" id="latent-{card.latent}">', _header(card),
                      '<div class="grid">', _geometry_section(card), _activity_section(card), "</div>",
                      _meaning_section(card), _contexts_section(card, tokenizer, max_contexts),
                      _tokens_section(card), _related_section(card, exported), "</div>"])


CSS = """
.thinkdiff-card{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;font-size:13px;line-height:1.4;color:#222;
 border:1px solid #c8c8c8;border-radius:8px;padding:10px 14px;margin:10px 0;background:#fff;max-width:1100px;box-sizing:border-box}
.thinkdiff-card *{line-height:1.4}
.thinkdiff-card .head{border-bottom:1px solid #e2e2e2;padding-bottom:6px;margin-bottom:6px}
.thinkdiff-card .head .id{font-size:18px;font-weight:700}
.thinkdiff-card .head .label{font-size:14px;background:#eef4fb;color:#1b4f72;border-radius:10px;padding:1px 9px;margin-left:6px}
.thinkdiff-card .head .scheme{font-size:12px;color:#666;margin-left:6px}
.thinkdiff-card .head .prov{font-size:12px;color:#555;margin-top:2px}
.thinkdiff-card .grid{display:flex;flex-wrap:wrap;gap:8px 24px}
.thinkdiff-card .sec{margin:6px 0}
.thinkdiff-card h4{font-size:13px;margin:6px 0 4px;color:#333;text-transform:uppercase;letter-spacing:.04em}
.thinkdiff-card h5{font-size:12px;margin:4px 0 2px;color:#444}
.thinkdiff-card .row{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
.thinkdiff-card .kvs{min-width:220px}
.thinkdiff-card .kv{display:flex;gap:8px;margin:1px 0}
.thinkdiff-card .kv .k{color:#555;min-width:200px}
.thinkdiff-card .nm{color:#888;font-style:italic}
.thinkdiff-card .note{color:#666;font-size:12px;margin:2px 0 4px}
.thinkdiff-card table.cats{border-collapse:collapse;font-size:12px}
.thinkdiff-card table.cats th{font-weight:600;text-align:left;padding:2px 10px 2px 0;color:#444}
.thinkdiff-card table.cats td{padding:2px 10px 2px 0;vertical-align:middle}
.thinkdiff-card .bar{display:inline-block;position:relative;width:90px;height:9px;background:#eee;border-radius:2px;vertical-align:middle}
.thinkdiff-card .bar .fill{position:absolute;top:0;height:9px;border-radius:2px}
.thinkdiff-card .bv{color:#333;font-variant-numeric:tabular-nums}
.thinkdiff-card .cols{display:flex;flex-wrap:wrap;gap:6px 18px}
.thinkdiff-card .cols .col{flex:1 1 380px;min-width:0}
.thinkdiff-card .ctx{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;margin:2px 0;white-space:pre-wrap;word-break:break-word}
.thinkdiff-card .tok{padding:0 1px;border-radius:2px}
.thinkdiff-card .val{color:#888}
.thinkdiff-card .tks{margin:2px 0}
.thinkdiff-card .tks .k{display:inline-block;width:80px;color:#555}
.thinkdiff-card .tk{display:inline-block;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;padding:0 4px;margin:1px 2px;border-radius:3px}
.thinkdiff-card .tk.promoted{background:#d6eaf8}
.thinkdiff-card .tk.suppressed{background:#fadbd8}
.thinkdiff-card a.lat{color:#1a5276}
""".strip()

PAGE_CSS = """
.thinkdiff-page{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:0 auto;padding:0 12px}
.thinkdiff-page .index li{margin:2px 0}
""".strip()


def export_cards_html(cards, tokenizer, path, title: str = "thinkdiff feature cards", sections: dict | None = None) -> Path:
    """Write ``cards`` into one self-contained HTML file (an index, then the cards; inline CSS and SVG, no
    scripts, no network) and return its path. ``sections``: optional title -> latents grouping of the index."""
    cards = list(cards)
    if not cards:
        raise ValueError("no cards to export")
    by_id = {c.latent: c for c in cards}
    exported = set(by_id)
    sections = sections or {"Cards": list(by_id)}

    def entry(j):
        c = by_id[j]
        lab = str(c.numbers.get("label") or "")
        nrn = c.numbers.get("relative_norm", float("nan"))
        return (f'<li><a href="#latent-{j}">latent {j}</a> {html.escape(category_name(lab) if lab else "unlabelled")}, '
                f'relative norm {_num(nrn, 2) if _finite(nrn) else "undefined"}</li>')

    index = "".join(f"<h3>{html.escape(t)}</h3><ul class='index'>{''.join(entry(j) for j in js if j in by_id)}</ul>"
                    for t, js in sections.items())
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{PAGE_CSS}\n{CSS}</style></head><body><div class='thinkdiff-page'><h1>{html.escape(title)}</h1>"
           f"{index}" + "\n".join(card_html(c, tokenizer, exported=exported) for c in cards) + "</div></body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(path)
    return path


def static_card_html(card: FeatureCard, tokenizer) -> str:
    """One card with its scoped style, for a notebook output that must read without a kernel."""
    return f"<style>{CSS}</style>" + card_html(card, tokenizer, exported={card.latent})


# ---------------------------------------------------------------------------------------------------------
# The ipywidgets browser
# ---------------------------------------------------------------------------------------------------------
BROWSER_CSS = """
.thinkdiff-browser .thinkdiff-controls{flex:0 0 330px;width:330px;min-width:330px;max-width:330px;overflow:hidden}
.thinkdiff-browser .thinkdiff-controls .widget-readout{min-width:76px}
.thinkdiff-browser .thinkdiff-controls select{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.thinkdiff-browser .thinkdiff-cardpane{flex:1 1 auto;min-width:0}
.thinkdiff-browser .thinkdiff-cardpane .widget-html-content{line-height:1.4}
.thinkdiff-browser .thinkdiff-status{font-size:12px;color:#444}
""".strip()


class FeatureBrowser:
    """Search, filter and sort latents and see their cards, in a notebook.

    ``table``: ``label.features_table`` rows to browse (e.g. the live latents); ``make_card(latent) -> FeatureCard``
    builds cards on demand (``CardMaker``). Controls: jump to a latent id; category (a label, or ranking by that
    category's scores); relative-norm range; floors on ReasonScore, ground-truth AUROC (where measured) and firing
    frequency; sort by any numeric column. The list shows at most ``max_listed`` rows under a count of matches,
    and a card is always shown: the selected latent's, or the first match after any filter change.
    Display the browser object itself: a live kernel gets the widget (``.widget``), a saved notebook a static
    rendering of the card on show (``text/html``).
    """

    def __init__(self, table: pd.DataFrame, make_card, tokenizer, max_listed: int = 200):
        import ipywidgets as w

        if not len(table):
            raise ValueError("the features table to browse is empty")
        self.table = table.reset_index(drop=True)
        self.make_card, self.tokenizer, self.max_listed = make_card, tokenizer, max_listed
        self._cards: dict = {}
        self.shown: int | None = None
        cats = sorted({c[len("score_"):] for c in table.columns if c.startswith("score_")}
                      | {c[len("auroc_"):] for c in table.columns if c.startswith("auroc_")}
                      | (set(table["label"]) - {""} if "label" in table else set()))
        self.categories = cats
        self.sort_columns = [c for c in COLUMN_NAMES if c in table and pd.api.types.is_numeric_dtype(table[c])]
        style = {"description_width": "118px"}
        full = w.Layout(width="calc(100% - 8px)")       # the widgets' own 2 px margins stay inside the column
        self.jump = w.IntText(value=int(self.table["latent"].iloc[0]), description="go to latent", style=style,
                              layout=full, continuous_update=False)
        self.category = w.Dropdown(options=[("any", "any")] + [(category_name(c), c) for c in cats], value="any",
                                   description="category", style=style, layout=full)
        self.sort_by = w.Dropdown(options=[(COLUMN_NAMES[c], c) for c in self.sort_columns], value="relative_norm",
                                  description="sort by", style=style, layout=full)
        self.nrn = w.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.01, description="relative norm",
                                      style=style, layout=full, continuous_update=False)
        lo, hi = self._score_range()
        self.min_score = w.FloatSlider(value=lo, min=lo, max=hi, step=(hi - lo) / 100, description="min score",
                                       style=style, layout=full, continuous_update=False, readout_format=".3f")
        self.min_auroc = w.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.01, description="min AUROC", style=style,
                                       layout=full, continuous_update=False,
                                       disabled=not any(c.startswith("auroc_") for c in table.columns))
        freq = table["frequency"].to_numpy() if "frequency" in table else np.ones(len(table))
        pos = freq[freq > 0]
        f_lo = math.floor(math.log10(pos.min())) if len(pos) else -6
        self.min_freq = w.FloatLogSlider(value=10.0 ** f_lo, base=10, min=f_lo, max=0, step=0.1,
                                         description="min frequency", style=style, layout=full,
                                         continuous_update=False, readout_format=".1e")
        self.count = w.HTML(layout=full)
        self.count.add_class("thinkdiff-status")
        self.latent = w.Select(options=[], rows=14, description="", layout=w.Layout(width="calc(100% - 8px)"))
        self.status = w.HTML(layout=full)
        self.status.add_class("thinkdiff-status")
        self.card = w.HTML(layout=w.Layout(width="calc(100% - 8px)"))
        self.similar = w.HBox(layout=w.Layout(flex_flow="row wrap"))
        self._similar_label = w.HTML("<span class='thinkdiff-status'>similar latents:</span>")
        self._similar_buttons: list = []   # reused across cards (``show``)
        controls = w.VBox([self.jump, self.category, self.sort_by, self.nrn, self.min_score, self.min_auroc,
                           self.min_freq, self.count, self.latent, self.status],
                          layout=w.Layout(width="330px", min_width="330px", max_width="330px", flex="0 0 330px"))
        controls.add_class("thinkdiff-controls")
        pane = w.VBox([self.similar, self.card], layout=w.Layout(flex="1 1 auto", min_width="0"))
        pane.add_class("thinkdiff-cardpane")
        self.widget = w.HBox([w.HTML(f"<style>{BROWSER_CSS}\n{CSS}</style>", layout=w.Layout(display="none")),
                              controls, pane], layout=w.Layout(width="100%", align_items="flex-start"))
        self.widget.add_class("thinkdiff-browser")
        self._batch = False          # set while one control change moves others: refresh once, at the end
        for ctl in (self.nrn, self.min_score, self.min_auroc, self.min_freq):
            ctl.observe(lambda _: None if self._batch else self.refresh(), names="value")
        self.sort_by.observe(lambda _: None if self._batch else self.refresh(keep_current=False), names="value")
        self.category.observe(self._on_category, names="value")
        self._quiet = False
        self.latent.observe(lambda ch: None if self._quiet else self.show(ch["new"]), names="value")
        self.jump.observe(lambda ch: None if self._quiet else self.go_to(ch["new"]), names="value")
        self.refresh()

    # -- filtering
    def _score(self, t: pd.DataFrame, prefix: str) -> pd.Series | None:
        """The category's ``prefix`` column (``score`` / ``auroc``), or the best over categories for "any"."""
        cat = self.category.value
        cols = [f"{prefix}_{c}" for c in ([cat] if cat != "any" else self.categories) if f"{prefix}_{c}" in t]
        return t[cols].max(axis=1) if cols else None

    def _score_range(self) -> tuple[float, float]:
        s = self._score(self.table, "score")
        v = s.to_numpy(dtype=float) if s is not None else np.zeros(0)
        v = v[np.isfinite(v)]
        if not len(v):
            return 0.0, 1.0
        lo, hi = float(v.min()), float(v.max())
        return lo, hi if hi > lo else lo + 1.0

    def filtered(self) -> pd.DataFrame:
        """The rows passing every filter, sorted by the chosen column (highest first, missing values last)."""
        t = self.table
        lo, hi = self.nrn.value
        keep = t["relative_norm"].between(lo, hi)
        cat = self.category.value
        if cat != "any" and f"score_{cat}" not in t and f"auroc_{cat}" not in t:
            keep &= t["label"] == cat
        score = self._score(t, "score")
        if score is not None and self.min_score.value > self.min_score.min:
            keep &= score >= self.min_score.value
        auroc = self._score(t, "auroc")
        if auroc is not None and self.min_auroc.value > 0:
            keep &= auroc >= self.min_auroc.value
        if "frequency" in t:
            keep &= t["frequency"] >= self.min_freq.value
        return t[keep].sort_values(self.sort_by.value, ascending=False, na_position="last", kind="stable")

    def _on_category(self, _):
        """A new category: the score floor spans that category's scores (starting open), the list is sorted by its
        ReasonScore when it has one, and the card shows the first match."""
        lo, hi = self._score_range()
        cat = self.category.value
        self._batch = True
        try:
            self.min_score.min, self.min_score.max = min(lo, self.min_score.min), max(hi, self.min_score.max)
            self.min_score.value = lo
            self.min_score.min, self.min_score.max, self.min_score.step = lo, hi, (hi - lo) / 100
            if cat != "any" and f"score_{cat}" in self.table:
                self.sort_by.value = f"score_{cat}"
        finally:
            self._batch = False
        self.refresh(keep_current=False)

    def _option(self, r) -> tuple[str, int]:
        key = self.sort_by.value
        v = getattr(r, key)
        val = f"{v:.3g}" if _finite(v) else "–"
        lab = category_name(r.label) if getattr(r, "label", "") else ""
        return f"{int(r.latent):>6}  {val:>8}  {lab}", int(r.latent)

    def refresh(self, keep_current: bool = True):
        """Re-apply the filters: update the count and the list, and keep a card on show (the current latent if it
        still passes and ``keep_current``, else the first match), or say that nothing passes. A new category or
        sort order shows its first match."""
        rows = self.filtered()
        listed = rows.head(self.max_listed)
        n = len(rows)
        more = f", listing the first {len(listed)}" if n > len(listed) else ""
        self.count.value = (f"<b>{n:,}</b> of {len(self.table):,} latents match{more}; sorted by "
                            f"{html.escape(COLUMN_NAMES[self.sort_by.value])}")
        keep = self.shown if keep_current and self.shown is not None and self.shown in set(listed["latent"]) else None
        opts = [self._option(r) for r in listed.itertuples()]
        self._quiet = True           # the list's own value changes while its options are replaced: not a pick
        try:
            self.latent.options = opts
            self.latent.value = keep if keep is not None else (opts[0][1] if opts else None)
        finally:
            self._quiet = False
        if not opts:
            self.shown = None
            self.similar.children = ()
            self.card.value = ('<div class="thinkdiff-card thinkdiff-empty"><b>No latent passes the filters.</b> '
                               "Relax the category, relative-norm range or a floor to see cards again.</div>")
            self.status.value = ""
        elif self.latent.value != self.shown:
            self.show(self.latent.value)

    def go_to(self, latent):
        """Show ``latent``'s card, listed first even when the filters leave it out (the status line says so)."""
        j = int(latent)
        if j not in set(self.table["latent"]):
            self.status.value = (f"latent {j} is not in this table ({len(self.table):,} latents browsed; dead latents "
                                 "are left out)")
            return
        values = [v for _, v in self.latent.options]
        if j not in values:
            r = self.table[self.table["latent"] == j].iloc[0]
            label, _ = self._option(r)
            self._quiet = True
            try:
                self.latent.options = [(label + "  (outside the filters)", j)] + list(self.latent.options)
            finally:
                self._quiet = False
        self.latent.value = j
        if self.shown != j:
            self.show(j)

    def card_for(self, latent: int) -> FeatureCard:
        j = int(latent)
        if j not in self._cards:
            self._cards[j] = self.make_card(j)
        return self._cards[j]

    def show(self, latent):
        """Render ``latent``'s card (and buttons to its most similar latents)."""
        if latent is None:
            return
        import ipywidgets as w

        card = self.card_for(int(latent))
        self.shown = card.latent
        self.card.value = card_html(card, self.tokenizer, exported={card.latent})   # similar latents: the buttons
        self._quiet = True               # the id box follows the card on show
        try:
            self.jump.value = card.latent
        finally:
            self._quiet = False
        passes = card.latent in set(self.filtered()["latent"])
        self.status.value = f"showing latent {card.latent}" + ("" if passes else " (it does not pass the filters)")
        # One set of buttons, relabelled on every card: a card change creates (and leaks) no widget models, and a
        # page reloaded while the kernel runs never meets a view of a model that was replaced meanwhile.
        while len(self._similar_buttons) < len(card.similar):
            b = w.Button(layout=w.Layout(width="auto"))
            b.target = None
            b.on_click(lambda btn: None if btn.target is None else self.go_to(btn.target))
            self._similar_buttons.append(b)
        for i, b in enumerate(self._similar_buttons):
            if i < len(card.similar):
                j, c = card.similar[i]
                b.target, b.description, b.tooltip = int(j), f"latent {j} ({c:.2f})", f"decoder cosine {c:.3f}"
                b.layout.display = None
            else:
                b.target, b.layout.display = None, "none"
        if not self.similar.children or len(self.similar.children) != len(self._similar_buttons) + 1:
            self.similar.children = [self._similar_label] + self._similar_buttons
        self._similar_label.layout.display = None if card.similar else "none"

    def static_html(self) -> str:
        """The card on show with its scoped style: what a notebook saved without a kernel displays."""
        if self.shown is None:
            return "<i>thinkdiff feature browser: no latent passes the filters</i>"
        return static_card_html(self.card_for(self.shown), self.tokenizer)

    def _repr_mimebundle_(self, **kwargs):
        data = self.widget._repr_mimebundle_(**kwargs)
        data["text/html"] = self.static_html()
        data["text/plain"] = (f"thinkdiff feature browser over {len(self.table):,} latents, showing latent {self.shown} "
                              "(interactive with a live kernel)")
        return data


def save_label_outputs(folder, table: pd.DataFrame, cards, tokenizer, title: str = "thinkdiff feature cards",
                       sections: dict | None = None):
    """Write the features table (``features.parquet``) and the cards (``feature_cards.html``) into ``folder``
    as one unit: built in a temporary sibling and renamed into place (an older copy is replaced), so the
    folder is never half-written. Returns (table path, html path)."""
    import shutil

    folder = Path(folder)
    cards = list(cards)
    if not cards:
        raise ValueError("no cards to export")
    if folder.exists():
        shutil.rmtree(folder)
    with paths.atomic_dir(folder) as tmp:
        save_features_table(table, tmp)
        export_cards_html(cards, tokenizer, tmp / "feature_cards.html", title=title, sections=sections)
    return folder / "features.parquet", folder / "feature_cards.html"
