"""Max-activating contexts, feature cards, a static HTML export and an ipywidgets browser.

A card shows one latent: relative norm, latent-scaling ratios, category scores and AUROCs (one row of
``label.features_table``), a histogram of its non-zero activations, its top contexts (optionally split by a
token group such as the document kind) with the firing token highlighted, and the tokens its decoder
direction promotes through each model's unembedding. ``export_cards_html`` writes the same cards into one
self-contained HTML file (inline CSS and SVG, no scripts) that opens without a kernel.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .codes import SparseActs, eval_mode, load_rows
from .label import MODELS
from .lexicon import runs_from_meta


# ---------------------------------------------------------------------------------------------------------
# Max-activating contexts
# ---------------------------------------------------------------------------------------------------------
def max_activating_contexts(cc, store, acts: SparseActs, latents, k: int = 10, context: int = 20,
                            group=None, chunk: int = 4096) -> pd.DataFrame:
    """Top-``k`` activating tokens of each latent (per value of ``group`` if given), with left context.

    Ranked by the actual post-ReLU activation from ``cc.encode`` on raw activations (the crosscoder's own
    normalisation), as stored in ``acts``. ``group`` is an array over all store tokens (e.g. document kind).
    Rows: latent, group, rank, token_index, doc_id, pos, activation, ``contrib_base`` / ``contrib_distilled``
    (each model's share ``x_m . W_enc[m][:, j]`` of the pre-activation), and the left context as lists
    ``context_index``, ``context_ids``, ``context_acts`` (this latent's activation on each context token;
    the firing token is last).
    """
    lat = np.unique(np.asarray(latents, dtype=np.int64).ravel())
    if len(lat) == 0 or lat.min() < 0 or lat.max() >= acts.n_latents:
        raise ValueError(f"latents must be indices in [0, {acts.n_latents})")
    if k < 1 or context < 0:
        raise ValueError("k must be >= 1 and context >= 0")
    meta = store.meta
    grp = np.zeros(acts.n_tokens, dtype=object) if group is None else np.asarray(group, dtype=object)[acts.token_index]
    sel = np.isin(acts.cols, lat)
    rows_, cols_, vals_ = acts.rows[sel], acts.cols[sel], acts.vals[sel]
    g = grp[rows_]
    g_codes, g_names = pd.factorize(pd.Series(g, dtype=object), sort=True)
    order = np.lexsort((-vals_, g_codes, cols_))
    rows_, cols_, vals_, g_codes = rows_[order], cols_[order], vals_[order], g_codes[order]
    key = cols_ * (len(g_names) + 1) + g_codes
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(len(key)), 0))
    rank = np.arange(len(key)) - start
    keep = rank < k
    top = pd.DataFrame({"latent": cols_[keep], "group": np.asarray(g_names, dtype=object)[g_codes[keep]] if len(g_names) else [],
                        "rank": rank[keep], "token_index": acts.token_index[rows_[keep]], "activation": vals_[keep]})
    if group is None:
        top["group"] = "all"
    # Left context: preceding tokens of the same document run (store order is document-contiguous).
    brk = runs_from_meta(meta["doc_id"], meta["pos"])
    run_lo = np.maximum.accumulate(np.where(brk, np.arange(len(brk)), 0))
    t = top["token_index"].to_numpy()
    lo = np.maximum(t - context, run_lo[t])
    ctx = [np.arange(a, b + 1) for a, b in zip(lo, t)]
    need = np.unique(np.concatenate(ctx)) if ctx else np.zeros(0, np.int64)
    col_of = {j: i for i, j in enumerate(lat)}
    acts_need = np.zeros((len(need), len(lat)), dtype=np.float32)
    contrib = np.zeros((len(need), 2, len(lat)), dtype=np.float32)
    lat_t = torch.as_tensor(lat)
    with eval_mode(cc):
        W = cc.W_enc.detach()[:, :, lat_t.to(cc.W_enc.device)]           # [2, d, J]
        for s in range(0, len(need), chunk):
            part = need[s: s + chunk]
            x = load_rows(store, part, cc)
            acts_need[s: s + len(part)] = cc.encode(x)[:, lat_t.to(x.device)].float().cpu().numpy()
            contrib[s: s + len(part)] = torch.einsum("bmd,mdj->bmj", x, W).float().cpu().numpy()
    pos_of = np.searchsorted(need, np.concatenate(ctx)) if ctx else np.zeros(0, np.int64)
    splits = np.cumsum([len(c) for c in ctx])[:-1]
    pos_lists = np.split(pos_of, splits) if ctx else []
    jcol = np.array([col_of[j] for j in top["latent"]], dtype=np.int64)
    top["doc_id"] = np.asarray(meta["doc_id"])[t]
    top["pos"] = np.asarray(meta["pos"])[t]
    last = np.array([p[-1] for p in pos_lists], dtype=np.int64) if ctx else np.zeros(0, np.int64)
    top["contrib_base"] = contrib[last, 0, jcol] if ctx else []
    top["contrib_distilled"] = contrib[last, 1, jcol] if ctx else []
    top["context_index"] = [c.tolist() for c in ctx]
    top["context_ids"] = [np.asarray(meta["token_id"])[c].tolist() for c in ctx]
    top["context_acts"] = [acts_need[p, j].tolist() for p, j in zip(pos_lists, jcol)]
    return top[["latent", "group", "rank", "token_index", "doc_id", "pos", "activation", "contrib_base",
                "contrib_distilled", "context_index", "context_ids", "context_acts"]].reset_index(drop=True)


def _tok_text(tokenizer, i: int) -> str:
    t = tokenizer.decode([int(i)])
    return t.replace("\n", "\u23ce")


def contexts_html(contexts: pd.DataFrame, tokenizer, max_rows: int | None = None) -> str:
    """HTML for context rows: each token shaded by this latent's activation, the firing token boxed,
    activation values in tooltips and at the end of the line."""
    out = []
    rows = contexts if max_rows is None else contexts.head(max_rows)
    for _, r in rows.iterrows():
        a = np.asarray(r["context_acts"], dtype=float)
        top = max(float(r["activation"]), float(a.max()) if len(a) else 0.0, 1e-12)
        spans = []
        for n, (tid, v) in enumerate(zip(r["context_ids"], a)):
            style = f"background: rgba(220, 60, 30, {min(v / top, 1):.2f});"
            if n == len(a) - 1:
                style += " border: 1.5px solid black; font-weight: bold;"
            spans.append(f'<span class="tok" style="{style}" title="{v:.3g}">{html.escape(_tok_text(tokenizer, tid))}</span>')
        out.append(f'<div class="ctx">{"".join(spans)} <span class="val">{float(r["activation"]):.3g}</span></div>')
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------
# Promoted tokens
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
    """Top-``k`` tokens promoted by latent ``latent``'s raw-unit decoder row through each model's
    unembedding. ``unembed``: model index -> [vocab, d] (see ``unembedding``)."""
    rows = []
    for m, U in unembed.items():
        if m not in (0, 1):
            raise ValueError("unembed keys are model indices: 0 = base, 1 = distilled")
        d = cc.W_dec.detach()[latent, m].float().to(U.device)
        if U.shape[-1] != d.shape[0]:
            raise ValueError(f"unembedding of model {m} is {tuple(U.shape)}, decoder rows have d={d.shape[0]}")
        logits = U.float() @ d
        val, idx = torch.topk(logits, min(k, len(logits)))
        for r, (v, i) in enumerate(zip(val.tolist(), idx.tolist())):
            rows.append({"model": MODELS[m], "rank": r, "token_id": i, "token": tokenizer.decode([i]), "logit": v})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# Cards
# ---------------------------------------------------------------------------------------------------------
@dataclass
class FeatureCard:
    latent: int
    numbers: dict                       # the latent's row of the features table
    hist_counts: np.ndarray             # histogram of its non-zero activations
    hist_edges: np.ndarray
    contexts: pd.DataFrame              # max_activating_contexts rows of this latent
    promoted: pd.DataFrame = field(default_factory=pd.DataFrame)


def feature_card(latent: int, table: pd.DataFrame, acts: SparseActs, contexts: pd.DataFrame, cc=None,
                 unembed: dict | None = None, tokenizer=None, bins: int = 30, k_promoted: int = 10) -> FeatureCard:
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
    return FeatureCard(int(latent), numbers, counts, edges, ctx, promoted)


def _hist_svg(counts, edges, title: str, w: int = 320, h: int = 150) -> str:
    """A log-count histogram as inline SVG, with title and axis labels."""
    pad_l, pad_b, pad_t = 34, 28, 16
    if len(counts) == 0:
        return f'<svg width="{w}" height="{h}"><text x="10" y="20">{html.escape(title)}: never fires</text></svg>'
    logc = np.log10(np.asarray(counts) + 1)
    top = max(float(logc.max()), 1e-9)
    bw = (w - pad_l - 4) / len(counts)
    bars = "".join(
        f'<rect x="{pad_l + i * bw:.1f}" y="{h - pad_b - (c / top) * (h - pad_b - pad_t):.1f}" width="{max(bw - 1, 1):.1f}" '
        f'height="{(c / top) * (h - pad_b - pad_t):.1f}" fill="#c0392b"><title>{int(n)}</title></rect>'
        for i, (c, n) in enumerate(zip(logc, counts)))
    return (f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" font-size="10">'
            f'<text x="{w / 2}" y="11" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>{bars}'
            f'<line x1="{pad_l}" y1="{h - pad_b}" x2="{w - 4}" y2="{h - pad_b}" stroke="black"/>'
            f'<text x="{pad_l}" y="{h - pad_b + 11}">{edges[0]:.3g}</text>'
            f'<text x="{w - 4}" y="{h - pad_b + 11}" text-anchor="end">{edges[-1]:.3g}</text>'
            f'<text x="{(w + pad_l) / 2}" y="{h - 3}" text-anchor="middle">activation (non-zero)</text>'
            f'<text x="10" y="{(h - pad_b + pad_t) / 2}" transform="rotate(-90 10 {(h - pad_b + pad_t) / 2})" '
            f'text-anchor="middle">tokens (log10 count+1)</text></svg>')


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "nan" if not np.isfinite(v) else f"{v:.4g}"
    return html.escape(str(v))


def card_html(card: FeatureCard, tokenizer, max_contexts: int = 10) -> str:
    """One card as an HTML fragment (inline SVG, no scripts)."""
    n = card.numbers
    title = f"Latent {card.latent}"
    if n.get("label"):
        title += f" &mdash; {html.escape(str(n['label']))} <small>({html.escape(str(n.get('label_source', '')))})</small>"
    skip = {"latent", "label", "label_source"}
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in n.items() if k not in skip)
    parts = [f'<div class="card" id="latent-{card.latent}"><h3>{title}</h3>',
             f'<div class="row"><table class="nums">{cells}</table>',
             _hist_svg(card.hist_counts, card.hist_edges, f"latent {card.latent} activations") + "</div>"]
    for grp, ctx in (card.contexts.groupby("group", sort=True) if len(card.contexts) else []):
        parts.append(f"<h4>Top contexts: {html.escape(str(grp))}</h4>")
        parts.append(contexts_html(ctx.sort_values("rank"), tokenizer, max_contexts))
    if len(card.promoted):
        parts.append("<h4>Tokens promoted by the decoder direction</h4><div class='row'>")
        for model, g in card.promoted.groupby("model", sort=False):
            items = ", ".join(f"<code>{html.escape(repr(t))}</code> {v:.2f}" for t, v in zip(g["token"], g["logit"]))
            parts.append(f"<p><b>{html.escape(model)}</b>: {items}</p>")
        parts.append("</div>")
    parts.append("</div>")
    return "\n".join(parts)


CSS = """body{font-family:sans-serif;max-width:1100px;margin:auto}.card{border:1px solid #999;border-radius:6px;
padding:8px 12px;margin:14px 0}.row{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}
.nums{font-size:12px;border-collapse:collapse}.nums th{text-align:left;padding-right:10px;font-weight:normal;color:#444}
.ctx{font-family:monospace;font-size:12px;margin:2px 0;white-space:pre-wrap}.tok{padding:0 1px}.val{color:#888}"""


def export_cards_html(cards, tokenizer, path, title: str = "thinkdiff feature cards") -> Path:
    """Write ``cards`` into one self-contained HTML file (index + cards) and return its path."""
    cards = list(cards)
    if not cards:
        raise ValueError("no cards to export")
    index = "".join(f'<li><a href="#latent-{c.latent}">latent {c.latent}</a> {html.escape(str(c.numbers.get("label", "")))} '
                    f'(relative norm {_fmt(c.numbers.get("relative_norm", float("nan")))})</li>' for c in cards)
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><ul>{index}</ul>"
           + "\n".join(card_html(c, tokenizer) for c in cards) + "</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------------------
# The ipywidgets browser
# ---------------------------------------------------------------------------------------------------------
class FeatureBrowser:
    """Pick a latent (filtered by label category, relative norm range and minimum category score) and see
    its card. ``make_card(latent) -> FeatureCard`` builds cards on demand; ``.widget`` is the UI."""

    def __init__(self, table: pd.DataFrame, make_card, tokenizer, max_listed: int = 500):
        import ipywidgets as w

        self.table, self.make_card, self.tokenizer, self.max_listed = table, make_card, tokenizer, max_listed
        self.score_cols = [c for c in table.columns if c.startswith("score_")]
        cats = ["any"] + sorted({c[len("score_"):] for c in self.score_cols} | set(table["label"]) - {""})
        self.category = w.Dropdown(options=cats, value="any", description="category")
        self.nrn = w.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.01, description="rel. norm")
        self.min_score = w.FloatText(value=-1e9, description="min score")
        self.latent = w.Select(options=[], rows=12, description="latent")
        self.card = w.HTML()
        for ctl in (self.category, self.nrn, self.min_score):
            ctl.observe(lambda _: self.refresh(), names="value")
        self.latent.observe(lambda ch: self.show(ch["new"]), names="value")
        self.widget = w.HBox([w.VBox([self.category, self.nrn, self.min_score, self.latent]), self.card])
        self.refresh()

    def filtered(self) -> pd.DataFrame:
        """The rows passing the filters, best score (or highest relative norm) first."""
        t = self.table
        lo, hi = self.nrn.value
        keep = t["relative_norm"].between(lo, hi)
        cat = self.category.value
        if cat != "any":
            col = f"score_{cat}"
            if col in t:
                keep &= t[col] >= self.min_score.value
                t = t.assign(_key=t[col])
            else:
                keep &= t["label"] == cat
                t = t.assign(_key=t["relative_norm"])
        else:
            t = t.assign(_key=t["relative_norm"])
        return t[keep].sort_values("_key", ascending=False).drop(columns="_key")

    def refresh(self):
        rows = self.filtered().head(self.max_listed)
        self.latent.options = [(f"{int(r.latent)}  nrn={r.relative_norm:.2f}  {r.label}", int(r.latent))
                               for r in rows.itertuples()]
        if len(rows) == 0:
            self.card.value = "<i>no latent passes the filters</i>"

    def show(self, latent):
        if latent is None:
            return
        self.card.value = f"<style>{CSS}</style>" + card_html(self.make_card(int(latent)), self.tokenizer)


def save_label_outputs(folder, table: pd.DataFrame, cards, tokenizer, title: str = "thinkdiff feature cards"):
    """Write the features table (``features.parquet``) and the cards (``feature_cards.html``) into ``folder``
    as one unit: built in a temporary sibling and renamed into place (an older copy is replaced), so the
    folder is never half-written. Returns (table path, html path)."""
    import shutil

    from . import paths
    from .label import save_features_table

    folder = Path(folder)
    cards = list(cards)
    if not cards:
        raise ValueError("no cards to export")
    if folder.exists():
        shutil.rmtree(folder)
    with paths.atomic_dir(folder) as tmp:
        save_features_table(table, tmp)
        export_cards_html(cards, tokenizer, tmp / "feature_cards.html", title=title)
    return folder / "features.parquet", folder / "feature_cards.html"
