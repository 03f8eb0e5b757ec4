"""Relative norms, latent scaling, ReasonScore, AUROC, features table, cards (label, browser) and the ablation."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from thinkdiff import ablation as A
from thinkdiff import label as L
from thinkdiff import claims, codes, norms, pairs
from thinkdiff import browser as B
from thinkdiff.lexicon import CATEGORIES, Lexicon, marker_token_ids


class ToyCC:
    """Stand-in crosscoder with the project's attributes: ReLU code, folded (raw-unit) weights."""

    def __init__(self, W_enc, W_dec, b_enc=None, b_dec=None):
        self.W_enc, self.W_dec = W_enc.float(), W_dec.float()
        F, _, d = self.W_dec.shape
        self.b_enc = torch.zeros(F) if b_enc is None else b_enc
        self.b_dec = torch.zeros(2, d) if b_dec is None else b_dec

    @classmethod
    def random(cls, d, F, seed=0):
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(F, 2, d, generator=g) / d ** 0.5
        return cls(W_dec.permute(1, 2, 0).contiguous(), W_dec, -0.1 * torch.ones(F))

    @classmethod
    def perfect(cls, d):
        """F = 2 models x d x 2 signs: f = relu(+-x), decode(encode(x)) == x exactly."""
        W_enc = torch.zeros(2, d, 4 * d)
        W_dec = torch.zeros(4 * d, 2, d)
        for m in range(2):
            for i in range(d):
                for s, sign in enumerate((1.0, -1.0)):
                    j = (m * d + i) * 2 + s
                    W_enc[m, i, j] = sign
                    W_dec[j, m, i] = sign
        return cls(W_enc, W_dec)

    def encode(self, x):
        return torch.relu(torch.einsum("bmd,mdf->bf", x, self.W_enc) + self.b_enc)

    def decode(self, f):
        return torch.einsum("bf,fmd->bmd", f, self.W_dec) + self.b_dec


class FakeStore:
    def __init__(self, x, meta):
        self.x, self.meta, self.n_tokens = np.asarray(x, np.float32), meta, len(x)

    def acts(self, idx):
        return self.x[np.asarray(idx)]


def docs_meta(tokenizer, texts, labels=None):
    ids, doc, pos = [], [], []
    for k, t in enumerate(texts):
        e = tokenizer.encode(t, add_special_tokens=False)
        ids += e
        doc += [k] * len(e)
        pos += list(range(len(e)))
    n = len(ids)
    return {"token_id": np.array(ids), "doc_id": np.array(doc), "pos": np.array(pos),
            "label": np.full(n, -1) if labels is None else labels, "marker": np.zeros(n, bool),
            "split": np.zeros(n, np.int8)}


# ------------------------------------------------------------------------------------------- norms
def test_relative_norm_orientation_and_converter():
    W = torch.zeros(5, 2, 4)
    W[0, 1] = torch.tensor([1.0, 2, 0, 0])            # base decoder zero -> distilled-only -> 1
    W[1, 0] = torch.tensor([0.0, 3, 0, 0])            # distilled zero -> base-only -> 0
    W[2, 0] = W[2, 1] = torch.tensor([1.0, 1, 1, 1])  # equal -> shared
    W[3, 0], W[3, 1] = torch.tensor([3.0, 0, 0, 0]), torch.tensor([0.0, 1, 0, 0])
    r = norms.relative_norm(W)
    assert r[0] == 1 and r[1] == 0 and r[2] == 0.5 and r[3] == pytest.approx(0.25) and np.isnan(r[4])
    W[3, 1] = torch.tensor([0.5, 0.5, 0, 0])
    assert norms.relative_norm(W, p=1)[3] == pytest.approx(1 / 4) and norms.relative_norm(W, p=2)[3] < 0.25
    Wr = torch.randn(200, 2, 8) * torch.rand(200, 2, 1)
    delta = norms.dec_norm_diff(Wr)
    np.testing.assert_allclose(norms.relative_norm_from_dec_norm_diff(delta), norms.relative_norm(Wr), atol=1e-9)
    np.testing.assert_allclose(norms.dec_norm_diff_from_relative_norm(norms.relative_norm(Wr)), delta, atol=1e-9)
    assert not np.allclose(1 - delta, norms.relative_norm(Wr))   # a different function, not a flip
    assert norms.dec_norm_diff(W)[0] == 0 and norms.dec_norm_diff(W)[1] == 1
    cos = norms.decoder_cosine(W)
    assert cos[2] == pytest.approx(1) and np.isnan(cos[0])


def test_relative_norm_uses_training_units_of_a_folded_crosscoder():
    from thinkdiff.crosscoder import CrossCoder, CrossCoderConfig

    cc = CrossCoder(CrossCoderConfig(d_model=8, n_latents=16))
    folded = cc.fold([2.0, 0.5])
    np.testing.assert_allclose(norms.relative_norm(folded), norms.relative_norm(cc), atol=1e-6)
    np.testing.assert_allclose(norms.relative_norm(cc), 0.5, atol=1e-6)


def test_plots_are_labelled(tmp_path, monkeypatch):
    from thinkdiff import paths, plots

    monkeypatch.setattr(paths, "FIGURES_DIR", tmp_path)
    W = torch.randn(300, 2, 8)
    r = norms.relative_norm(W)
    for name, fig in {"nrn": norms.plot_relative_norms(r, p=2), "cos": norms.plot_decoder_cosine(norms.decoder_cosine(W), r)}.items():
        assert "L2" in fig.axes[0].get_title() or "L2" in fig.axes[0].get_title()
        plots.savefig(fig, name)


# ------------------------------------------------------------------------------------------- scaling
def scaling_case(c_base, c_ft, n=3000, d=16, seed=0):
    """Latent 0 has base decoder exactly 0 and distilled decoder u; base activations hold c_base * a * u."""
    g = torch.Generator().manual_seed(seed)
    u = torch.zeros(d)
    u[0] = 1.0
    other = torch.zeros(3, d)
    other[:, 1:4] = torch.eye(3)                       # other latents, orthogonal to u
    a = torch.rand(n, generator=g) * (torch.rand(n, generator=g) < 0.3)
    b = torch.rand(n, 3, generator=g)
    noise = 0.01 * torch.randn(n, 2, d, generator=g)
    noise[:, :, 0] = 0
    x = torch.zeros(n, 2, d)
    x[:, 0] = c_base * a[:, None] * u + b @ other
    x[:, 1] = c_ft * a[:, None] * u + b @ other
    x += noise
    W_dec = torch.zeros(4, 2, d)
    W_dec[0, 1] = u
    W_dec[1:, 0] = W_dec[1:, 1] = other
    W_enc = torch.zeros(2, d, 4)
    W_enc[1, :, 0] = u / c_ft
    W_enc[0, :, 1:] = 0.5 * other.T
    W_enc[1, :, 1:] = 0.5 * other.T
    meta = {"token_id": np.zeros(n, int), "doc_id": np.arange(n), "pos": np.zeros(n, int)}
    return ToyCC(W_enc, W_dec), FakeStore(x.numpy(), meta)


def test_latent_scaling_recovers_planted_beta():
    cc, store = scaling_case(c_base=0.8, c_ft=1.0)
    df = L.latent_scaling(cc, store, [0, 1], chunk=700)
    r = df.set_index("latent").loc[0]
    assert r["beta_err_distilled"] == pytest.approx(1.0, abs=1e-3)
    assert r["beta_err_base"] == pytest.approx(0.8, abs=1e-3)
    assert r["nu_error"] == pytest.approx(0.8, abs=1e-3) and abs(r["nu_reconstruction"]) < 1e-3
    assert r["flag"] == "shrinkage"
    cc, store = scaling_case(c_base=0.0, c_ft=2.0)
    r = L.latent_scaling(cc, store, [0]).iloc[0]
    assert r["beta_err_distilled"] == pytest.approx(2.0, abs=1e-3)   # f = a, d = u, target 2 a u: beta = c_ft
    assert abs(r["beta_err_base"]) < 1e-3 and abs(r["nu_error"]) < 1e-3 and r["flag"] == "genuine"
    with pytest.raises(ValueError, match="latents"):
        L.latent_scaling(cc, store, [99])


def test_latent_scaling_refuses_unfolded_decode():
    cc, store = scaling_case(0.5, 1.0)
    cc.decode = lambda f: 2 * (torch.einsum("bf,fmd->bmd", f, cc.W_dec) + cc.b_dec)
    with pytest.raises(ValueError, match="fold"):
        L.latent_scaling(cc, store, [0])


# ------------------------------------------------------------------------------------------- sparse acts
def test_encode_store_and_sparse_ops():
    cc = ToyCC.random(d=6, F=20)
    x = np.random.default_rng(0).normal(size=(50, 2, 6)).astype(np.float32)
    store = FakeStore(x, {})
    mask = np.zeros(50, bool)
    mask[5:45] = True
    acts = codes.encode_store(cc, store, mask, chunk=7)
    dense = cc.encode(torch.as_tensor(x[mask])).numpy()
    col = acts.column(3)
    np.testing.assert_allclose(col, dense[:, 3], rtol=1e-6)
    w = np.random.default_rng(1).random((40, 3))
    np.testing.assert_allclose(acts.sums(w), w.T @ dense, rtol=1e-5)
    np.testing.assert_allclose(acts.counts(w > 0.5), (w > 0.5).T.astype(float) @ (dense > 0), rtol=1e-9)
    with pytest.raises(ValueError, match="bool array"):
        codes.encode_store(cc, store, np.ones(10, bool))


def brute_auroc(v, y):
    pos, neg = v[y], v[~y]
    return ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))


def test_auroc_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    f = np.round(rng.random((300, 12)), 1) * (rng.random((300, 12)) < 0.4)   # zeros and tied values
    y = rng.random(300) < 0.3
    f[:, 0] = y * 2.0                                                          # perfect detector
    f[:, 1] = 0                                                                # never fires
    got = L.auroc_per_latent(codes.SparseActs.from_dense(f), y)
    want = np.array([brute_auroc(f[:, j], y) for j in range(12)])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[0] == 1 and got[1] == 0.5


def test_ground_truth_table():
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(-1, 5, n)
    f = rng.random((n, 6)) * (rng.random((n, 6)) < 0.2)
    for c in range(1, 5):
        f[:, c] = (labels == c) * (1 + rng.random(n))
    nrn = np.array([0.5, 0.95, 0.2, 0.99, 0.91, 0.5])
    acts = codes.SparseActs.from_dense(f, np.arange(n) + 10)
    labels_all = np.concatenate([np.full(10, -1), labels])
    gt = L.ground_truth_auroc(acts, labels_all, nrn)
    best = gt.best.set_index("category")
    assert best["best_latent"].tolist() == [1, 2, 3, 4]
    assert np.allclose(best["auroc"], 1)
    assert best["meets_target"].tolist() == [True, False, True, True]
    assert best.loc["deductive", "best_specific_latent"] != 2


# ------------------------------------------------------------------------------------------- ReasonScore
def test_reason_score_properties_and_hand_example():
    # 8 tokens, 2 groups of one category: group 0 window = tokens 0-1, group 1 window = tokens 4-5.
    groups = np.zeros((8, 2), bool)
    groups[[0, 1], 0] = True
    groups[[4, 5], 1] = True
    f = np.zeros((8, 4))
    f[[0, 1], 0] = 1.0               # latent 0: fires only in group 0 windows -> H = 0
    f[[0, 1, 4, 5], 1] = 1.0         # latent 1: uniform over groups -> H = 1
    f[:, 2] = 1.0                    # latent 2: fires everywhere
    f[[2, 3], 3] = 2.0               # latent 3: only outside the windows
    acts = codes.SparseActs.from_dense(f)
    rs = L.reason_scores_from_groups(acts, groups, np.array([0, 0]), ("cat",), alpha=1.0)
    H = rs.entropy["cat"].to_numpy()
    assert H[0] == pytest.approx(0, abs=1e-9) and H[1] == pytest.approx(1) and H[2] == pytest.approx(1)
    # By hand: mu+ = (0.5, 1, 1, 0), sum 2.5; mu- over tokens 2,3,6,7 = (0, 0, 1, 1), sum 2.
    want = np.array([0.5 / 2.5 * 0, 1 / 2.5 * 1 - 0, 1 / 2.5 * 1 - 1 / 2, 0 - 1 / 2])
    np.testing.assert_allclose(rs.score["cat"].to_numpy(), want, atol=1e-9)
    rs0 = L.reason_scores_from_groups(acts, groups, np.array([0, 0]), ("cat",), alpha=0.0)
    assert rs0.score["cat"].sum() == pytest.approx(0, abs=1e-12)
    special = np.zeros(8, bool)
    special[[6, 7]] = True           # specials leave D-: latent 3's mu- doubles its share
    rs_s = L.reason_scores_from_groups(acts, groups, np.array([0, 0]), ("cat",), special=special, alpha=1.0)
    assert rs_s.mu_minus["cat"][3] == pytest.approx(2.0)
    assert rs.ranked("cat", n=2)["latent"].tolist() == [1, 0]


def test_reason_scores_on_a_store(tiny_tokenizer):
    texts = ["Ann has 3 apples. Wait, let me check: 3 + 4 = 7.", "Therefore the answer is 7. Thus we are done.",
             "Alternatively, 4 + 3 = 7. But 7 is less than 8. However, 8 is more than 2."]
    meta = docs_meta(tiny_tokenizer, texts)
    lex = Lexicon(tiny_tokenizer)
    grp = L.lexicon_groups(lex, meta)
    n = len(meta["token_id"])
    f = np.zeros((n, 3))
    cats = lex.entry_categories()
    f[:, 0] = grp[:, cats == 0].any(1)            # a self-reflection window detector
    f[:, 1] = grp[:, cats == 3].any(1)            # a contrastive one
    f[:, 2] = 1
    rs = L.reason_scores(codes.SparseActs.from_dense(f), lex, meta, special_ids=tiny_tokenizer.all_special_ids)
    assert rs.score["self_reflection"].idxmax() == 0 and rs.score["contrastive"].idxmax() == 1
    assert rs.lexicon_share.loc[0, "self_reflection"] == pytest.approx(1)
    assert rs.n_groups["contrastive"] == 2


# ------------------------------------------------------------------------------------------- markers, table
def test_marker_counts_category_latents_and_plot(tiny_tokenizer, tmp_path, monkeypatch):
    from thinkdiff import paths, plots

    monkeypatch.setattr(paths, "FIGURES_DIR", tmp_path)
    texts = ["Wait, 3 + 4 = 7. Wait, no.", "But 7 is less than 8. However, 8 is more."]
    meta = docs_meta(tiny_tokenizer, texts)
    ids = marker_token_ids(tiny_tokenizer, {"self_reflection": (" Wait",), "contrastive": (" However",)})
    masks = L.marker_masks(meta, ids)
    n = len(meta["token_id"])
    f = np.zeros((n, 3))
    f[masks["self_reflection"], 0] = 1
    f[:, 2] = 0.5
    counts = L.marker_counts(codes.SparseActs.from_dense(f), masks)
    assert counts.loc[0, "self_reflection"] == 1 and counts.loc[2, "contrastive"] == 1
    assert counts.attrs["n_markers"] == {"self_reflection": 1, "contrastive": 1}
    cl = L.category_latents(counts, np.array([0.9, 0.5, 0.4]))
    assert set(cl.loc[cl.category == "self_reflection", "latent"]) == {0, 2}
    plots.savefig(L.plot_category_relative_norms(cl), "cat")


def test_lexicon_validation_against_planted_labels(tiny_tokenizer):
    texts = ["Wait, 3 + 4 = 7.", "The box is heavy, but Dan carries it.", "But 7 is less than 8."]
    meta = docs_meta(tiny_tokenizer, texts)
    lab = np.zeros(len(meta["token_id"]), int)
    lab[meta["doc_id"] == 0] = 1          # the whole first document is a self-reflection span
    lab[meta["doc_id"] == 2] = 4          # the last is contrastive; the plain "but" is label 0
    meta["label"] = lab
    v = L.lexicon_validation(Lexicon(tiny_tokenizer), meta)
    but = v[(v.entry == "but")].iloc[0]
    n_plain, n_start = (len(tiny_tokenizer.encode(w, add_special_tokens=False)) for w in (" but", "But"))
    assert but.n_matched_tokens == n_plain + n_start and but.precision == pytest.approx(n_start / (n_plain + n_start))
    wait = v[(v.entry == "wait")].iloc[0]
    assert wait.precision == 1 and wait.recall < 1


def test_features_table_labels_and_save(tmp_path):
    F = 6
    W = torch.randn(F, 2, 4)
    W[0, 0] = 0
    f = np.random.default_rng(0).random((30, F)) * 0.1
    f[:10, 0] = 5
    acts = codes.SparseActs.from_dense(f)
    auroc = pd.DataFrame(0.5, index=range(F), columns=list(CATEGORIES))
    auroc.loc[0, "deductive"] = 0.97
    truth = L.GroundTruth(pd.DataFrame(), auroc)
    share = pd.DataFrame(0.1, index=range(F), columns=list(CATEGORIES))
    share.loc[1, "alternative"] = 0.8
    score = pd.DataFrame(-0.01, index=range(F), columns=list(CATEGORIES))
    score.loc[2, "contrastive"] = 0.3
    rs = L.ReasonScores(score, share, share, share, share, {}, 0.7)
    scaling = pd.DataFrame({"latent": [0], "nu_error": [0.1], "nu_reconstruction": [0.05], "flag": ["genuine"]})
    df = L.features_table(W, acts=acts, scaling=scaling, scores=rs, truth=truth, score_top=1)
    assert len(df) == F and df.loc[0, "relative_norm"] == 1
    assert (df.loc[0, "label"], df.loc[0, "label_source"]) == ("deductive", "ground_truth")
    assert (df.loc[1, "label"], df.loc[1, "label_source"]) == ("alternative", "lexicon")
    assert (df.loc[2, "label"], df.loc[2, "label_source"]) == ("contrastive", "score")
    assert df.loc[0, "scaling_flag"] == "genuine" and np.isnan(df.loc[1, "nu_error"])
    out = L.save_features_table(df, tmp_path)
    back = pd.read_parquet(out)
    assert back.shape == df.shape and list(tmp_path.iterdir()) == [out]


# ------------------------------------------------------------------------------------------- contexts, cards
CARD_TEXTS = ["Ann has 3 apples. Wait, let me check: 3 + 4 = 7.", "The box is heavy, but Dan carries it."]


def toy_codes(tokenizer, texts=CARD_TEXTS, F=16, seed=3, store_seed=0):
    """(meta, crosscoder, store, codes) of a random toy crosscoder over ``texts``."""
    meta = docs_meta(tokenizer, texts)
    cc = ToyCC.random(d=32, F=F, seed=seed)
    store = FakeStore(np.random.default_rng(store_seed).normal(size=(len(meta["token_id"]), 2, 32)), meta)
    return meta, cc, store, codes.encode_store(cc, store)


def test_contexts_cards_html_and_browser(tiny_tokenizer, tiny_pair, tmp_path):
    meta, cc, store, acts = toy_codes(tiny_tokenizer)
    dense = cc.encode(torch.as_tensor(store.x)).numpy()
    kind = np.where(meta["doc_id"] == 0, "teacher", "base")
    ctx = B.max_activating_contexts(cc, store, acts, [2, 5], k=3, context=4, group=kind)
    top = ctx[(ctx.latent == 2) & (ctx["rank"] == 0)]
    assert top["activation"].max() == pytest.approx(dense[:, 2].max(), rel=1e-5)
    for r in ctx.itertuples():
        assert r.context_index[-1] == r.token_index and len(r.context_index) <= 5
        assert len({meta["doc_id"][i] for i in r.context_index}) == 1                 # never crosses documents
        assert r.context_acts[-1] == pytest.approx(r.activation, rel=1e-5)
        assert r.contrib_base + r.contrib_distilled + float(cc.b_enc[r.latent]) == pytest.approx(r.activation, rel=1e-4)
    assert set(ctx.group) <= {"teacher", "base"}
    html = B.contexts_html(ctx, tiny_tokenizer)
    assert "font-weight: bold" in html and "title=" in html

    table = L.features_table(cc.W_dec, acts=acts)
    unembed = {m: B.unembedding(model) for m, model in enumerate(tiny_pair)}
    cards = [B.feature_card(j, table, acts, ctx, cc, unembed, tiny_tokenizer) for j in (2, 5)]
    assert len(cards[0].promoted) == 40 and cards[0].hist_counts.sum() == (acts.cols == 2).sum()
    prom = cards[0].promoted
    for m in ("base", "distilled"):   # promoted: the highest logits, suppressed: the lowest
        up, down = prom[(prom.model == m) & (prom.direction == "promoted")], prom[(prom.model == m) & (prom.direction == "suppressed")]
        assert up.logit.is_monotonic_decreasing and down.logit.is_monotonic_increasing and up.logit.min() > down.logit.max()
    t_path, h_path = B.save_label_outputs(tmp_path / "run", table, cards, tiny_tokenizer)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["feature_cards.html", "features.parquet"]
    assert len(pd.read_parquet(t_path)) == 16 and B.save_label_outputs(tmp_path / "run", table, cards[:1], tiny_tokenizer)
    assert 'id="latent-5"' not in h_path.read_text()                                 # replaced, not appended
    path = B.export_cards_html(cards, tiny_tokenizer, tmp_path / "cards.html")
    page = path.read_text()
    assert 'id="latent-2"' in page and 'id="latent-5"' in page and "<svg" in page and "<script" not in page
    assert ">nan<" not in page and " nan " not in page and "not measured" in page


def test_contexts_on_both_sides_and_per_model(tiny_tokenizer):
    meta, cc, store, acts = toy_codes(tiny_tokenizer)
    n = len(meta["token_id"])
    x = torch.as_tensor(store.x, dtype=torch.float32)
    ctx = B.max_activating_contexts(cc, store, acts, [2, 5], k=3, context=4, right=3, by="model")
    assert set(ctx.model) == {"base", "distilled"}
    for r in ctx.itertuples():
        assert r.context_index[r.fire_offset] == r.token_index and len(r.context_index) <= 8
        assert len({meta["doc_id"][i] for i in r.context_index}) == 1                 # never crosses documents
        assert r.context_acts[r.fire_offset] == pytest.approx(r.activation, rel=1e-5)
        share = float(x[r.token_index, 0 if r.model == "base" else 1] @ cc.W_enc[0 if r.model == "base" else 1][:, r.latent])
        assert getattr(r, f"contrib_{r.model}") == pytest.approx(share, rel=1e-4, abs=1e-5)
    some = ctx[ctx.token_index < n - 3]
    assert (some.context_index.map(len) > some.fire_offset + 1).any()                   # text after the firing token
    for (j, m), g in ctx.groupby(["latent", "model"]):   # ranked by that model's share among firing tokens
        fires = acts.rows[acts.cols == j]
        mi = 0 if m == "base" else 1
        best = (x[acts.token_index[fires], mi] @ cc.W_enc[mi][:, j]).max().item()
        assert g.sort_values("rank")[f"contrib_{m}"].iloc[0] == pytest.approx(best, rel=1e-4, abs=1e-5)
        assert g.sort_values("rank")[f"contrib_{m}"].is_monotonic_decreasing


def test_card_maker_browser_filters_jump_and_static_fallback(tiny_tokenizer, tiny_pair):
    meta, cc, store, acts = toy_codes(tiny_tokenizer, CARD_TEXTS * 3, F=24, seed=4, store_seed=1)
    other = ToyCC.random(d=32, F=24, seed=5)
    other.W_dec[7] = cc.W_dec[3] * 2                                  # the other scheme has a copy of latent 3
    score = pd.DataFrame(np.random.default_rng(2).normal(size=(24, 4)), columns=list(CATEGORIES))
    rs = L.ReasonScores(score, score.abs(), score, score, score, {}, 0.7)
    table = L.features_table(cc, acts=acts, scores=rs)
    unembed = {m: B.unembedding(model) for m, model in enumerate(tiny_pair)}
    kind = np.where(meta["doc_id"] % 2 == 0, "teacher", "base")
    maker = B.CardMaker(table, acts, cc, store, tiny_tokenizer, unembed, group=kind, scheme="relu", others={"batchtopk": other})
    card = maker(3)
    assert card.other_scheme[:2] == ("batchtopk", 7) and card.other_scheme[2] == pytest.approx(1.0)
    assert len(card.similar) == 5 and all(j != 3 for j, _ in card.similar)
    html = B.card_html(card, tiny_tokenizer)
    assert html.startswith('<div class="thinkdiff-card" id="latent-3">') and "teacher documents" in html
    assert "base model" in html and "distilled model" in html and "suppressed" in html
    for rule in re.findall(r"(?m)^([^{}\n]+)\{", B.CSS):                        # every rule scoped to the card
        assert all(sel.strip().startswith(".thinkdiff-card") for sel in rule.split(",")), rule

    live = table[table.frequency > 0]
    br = B.FeatureBrowser(live, maker, tiny_tokenizer)
    assert br.shown == int(br.latent.options[0][1]) and 'id="latent-' in br.card.value    # a card by default
    assert f"{len(live)}</b> of {len(live)}" in br.count.value
    first = br.shown
    br.category.value = "deductive"                                    # sorted by that category's ReasonScore
    assert br.sort_by.value == "score_deductive" and br.shown == int(live.sort_values("score_deductive").latent.iloc[-1])
    assert br.shown != first or len(live) == 1
    br.min_score.value = br.min_score.max                              # a floor keeps the best only
    assert len(br.latent.options) == 1 and "<b>1</b> of" in br.count.value
    br.nrn.value = (0.0, 0.0)                                          # nothing passes: said, no card
    assert br.latent.options == () and "No latent passes" in br.card.value and br.shown is None
    br.nrn.value, br.min_score.value = (0.0, 1.0), br.min_score.min    # relaxed: a card again
    assert br.shown is not None and f'id="latent-{br.shown}"' in br.card.value
    br.nrn.value = (0.0, 0.01)
    target = int(live.latent.iloc[-1])
    br.jump.value = target                                             # jump even outside the filters
    assert br.shown == target and f'id="latent-{target}"' in br.card.value
    br.jump.value = 10_000
    assert "not in this table" in br.status.value and br.shown == target
    bundle = br._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and f'id="latent-{target}"' in bundle["text/html"]
    assert "HBox" not in bundle["text/plain"]


def test_card_words_for_scaling_and_what_was_not_measured(tiny_tokenizer):
    base = {"latent": 4, "relative_norm": 0.97, "relative_norm_l1": 0.96, "dec_norm_base": 0.1, "dec_norm_distilled": 2.0,
            "decoder_cosine": float("nan"), "frequency": 0.01, "mean_active": 1.0, "max_activation": 2.0,
            "score_deductive": float("nan"), "label": "", "label_source": "none"}
    scaled = B.card_html(B.FeatureCard(4, {**base, "scaling_flag": "genuine", "nu_error": 0.1, "nu_reconstruction": 0.05},
                                       np.zeros(0, int), np.zeros(0), pd.DataFrame()), tiny_tokenizer)
    assert "genuine: the base model does not carry this direction" in scaled and "&nu;<sub>error</sub> = 0.1" in scaled
    assert "&amp;" not in scaled and "distilled-specific" in scaled
    bare = B.card_html(B.FeatureCard(4, {**base, "nu_error": float("nan"), "scaling_flag": float("nan")},
                                     np.zeros(0, int), np.zeros(0), pd.DataFrame()), tiny_tokenizer)
    for why in ("latent scaling is run on the most distilled-specific live latents only",
                "one model&#x27;s decoder vector is zero", "no planted labels in this run",
                "no activation in or outside the category", "no unembedding was given"):
        assert why in bare, why
    assert "nan" not in re.sub(r"<[^>]+>", " ", bare).split()


def test_export_picks_sections():
    table = pd.DataFrame({"latent": range(6), "frequency": [0.1, 0.1, 0, 0.2, 0.1, 0.1],
                          "relative_norm": [0.5, 0.95, 0.99, 0.2, 0.9, 0.1], "score_deductive": [0.1, 0.3, 0.9, 0, 0, 0]})
    picks = B.export_picks(table, per_category=1, n_extremes=2)
    assert picks == {"Top latents: deductive": [1], "Distilled-only extremes": [4]}    # 2 is dead; 1 only once


# ------------------------------------------------------------------------------------------- ablation
def ablation_inputs(tiny_tokenizer):
    from conftest import TINY_TEXT

    seqs = [tiny_tokenizer.encode(t, add_special_tokens=False) for t in TINY_TEXT]
    ids = marker_token_ids(tiny_tokenizer, {"self_reflection": (" Wait",), "contrastive": (" But", " However")})
    occ = {c: [(s, p) for s, q in enumerate(seqs) for p, t in enumerate(q) if t in ids[c] and p > 1] for c in ids}
    return seqs, occ


def test_hook_reads_resid_pre(tiny_tokenizer, tiny_pair):
    base = tiny_pair[0]
    ids = torch.as_tensor([tiny_tokenizer.encode("Wait, 3 + 4 = 7.", add_special_tokens=False)])
    with torch.no_grad():
        logits, h = A._forward(base, ids, 2)
        out = base(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(h, out.hidden_states[2])
    torch.testing.assert_close(logits, out.logits[:, -1])


def test_spliced_forward_skips_the_blocks_below_the_hook_and_changes_nothing(tiny_tokenizer, tiny_pair):
    """Splicing every position makes the blocks below the hook dead work: skipping them gives the logits of the
    full forward with the same splice, and the blocks are back in place afterwards."""
    from thinkdiff.hooks import decoder_layers, resid_hook

    base = tiny_pair[0]
    ids = torch.as_tensor([tiny_tokenizer.encode("Wait, 3 + 4 = 7. So 7.", add_special_tokens=False)]).expand(3, -1)
    blocks = list(decoder_layers(base))
    with torch.no_grad():
        _, clean = A._forward(base, ids[:1], 3)
        splice = clean.expand(3, -1, -1) + torch.randn(3, *clean.shape[1:], generator=torch.Generator().manual_seed(0))

        def put(h):
            h = h.clone()
            h[:, 1:] = splice[:, 1:]
            return h

        with resid_hook(base, 3, put):                      # the full forward, every block computed
            ref = base(input_ids=ids).logits[:, -1]
        got, h = A._forward(base, ids, 3, splice, start=1, clean=clean[0])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h[:, 0], clean[:, 0].expand(3, -1))
    assert list(decoder_layers(base)) == blocks
    with pytest.raises(ValueError, match="clean hook activation"):
        A._forward(base, ids, 3, splice, start=1)


def test_ablation_perfect_reconstruction_leaves_logits(tiny_tokenizer, tiny_pair):
    seqs, occ = ablation_inputs(tiny_tokenizer)
    cc = ToyCC.perfect(32)
    F = cc.W_dec.shape[0]
    nrn = norms.relative_norm(cc.W_dec)
    counts = pd.DataFrame({c: np.random.default_rng(i).integers(0, 5, F) for i, c in enumerate(occ)})
    cfg = A.AblationConfig(ks=(0.1, 0.5), n_occurrences=3, n_boot=200)
    res = A.run_ablation(*tiny_pair, cc, 2, seqs, occ, counts, nrn, cfg)
    rec = res.per_occurrence[res.per_occurrence.arm == "recon"]
    assert len(rec) == 2 * 2 * min(3, len(occ["self_reflection"]))
    np.testing.assert_allclose(rec["delta"], 0, atol=1e-4)
    tgt = res.per_occurrence[(res.per_occurrence.arm == "targeted") & (res.per_occurrence.k == 0.5)]
    assert (tgt["delta"].abs() > 1e-4).any()                 # zeroing latents of an exact code does move logits


def test_ablation_random_crosscoder_changes_logits_and_summary(tiny_tokenizer, tiny_pair, tmp_path, monkeypatch):
    from thinkdiff import paths, plots

    monkeypatch.setattr(paths, "FIGURES_DIR", tmp_path)
    seqs, occ = ablation_inputs(tiny_tokenizer)
    cc = ToyCC.random(d=32, F=64, seed=1)
    nrn = np.random.default_rng(0).random(64)
    counts = pd.DataFrame({c: np.random.default_rng(i).integers(0, 9, 64) for i, c in enumerate(occ)})
    cfg = A.AblationConfig(ks=(0.05, 0.2), n_occurrences=4, n_boot=200, seed=3)
    res = A.run_ablation(*tiny_pair, cc, 2, seqs, occ, counts, nrn, cfg)
    per = res.per_occurrence
    assert (per.loc[per.arm == "recon", "delta"].abs() > 1e-3).all()      # the splice really acts
    s = res.summary
    # per (category, model): recon + per k targeted, random, targeted - random; the base also the paired contrast
    assert len(s) == len(occ) * (2 * (1 + 3 * len(cfg.ks)) + len(cfg.ks))    # no contribution given: no shared arm
    sets = per[per.arm == "random"].groupby(["category", "occurrence", "model", "k"])["draw"].nunique()
    assert (sets.xs(0.2, level="k") == cfg.n_random_sets).all()
    assert (sets.xs(0.05, level="k") == cfg.curve_random_sets).all()
    assert set(s[s.arm == "base_minus_distilled"].model) == {"base"}
    ok = s.dropna(subset=["ci_lo"])
    assert ((ok.ci_lo <= ok["mean"] + 1e-9) & (ok["mean"] <= ok.ci_hi + 1e-9)).all()
    for (cat, k), lat in res.latents.items():
        assert (nrn[lat] > 0.5).all() and (counts[cat].to_numpy()[lat] > 0).all()
    again = A.run_ablation(*tiny_pair, cc, 2, seqs, occ, counts, nrn, cfg)
    pd.testing.assert_frame_equal(again.summary, s)                       # seeded
    verdict, evidence = claims.claim5_verdict(res)
    assert "k=0.2" in evidence and len(evidence.split(";")) == len(occ)      # one verdict part per category
    assert "no shared control" in evidence
    contrib = pd.DataFrame({c: np.random.default_rng(i + 7).random(64) * (counts[c].to_numpy() > 0)
                            for i, c in enumerate(occ)})
    nrn_mixed = np.where(np.arange(64) % 2 == 0, 0.5, nrn)                  # half the latents shared
    with_shared = A.run_ablation(*tiny_pair, cc, 2, seqs, occ, counts, nrn_mixed, cfg, contribution=contrib)
    arms = set(with_shared.summary.arm)
    assert {"shared", "targeted_minus_shared"} <= arms
    sh = with_shared.per_occurrence[with_shared.per_occurrence.arm == "shared"]
    assert (sh.n_latents == with_shared.per_occurrence[with_shared.per_occurrence.arm == "targeted"]
            .set_index(["category", "occurrence", "model", "k"]).loc[
                sh.set_index(["category", "occurrence", "model", "k"]).index, "n_latents"].to_numpy()).all()
    plots.savefig(A.plot_ablation(res), "ablation")
    with pytest.raises(ValueError, match="prefix"):
        A.run_ablation(*tiny_pair, cc, 2, seqs, {"self_reflection": [(0, 1)]}, counts, nrn, cfg)


def test_ablation_latent_selection():
    counts = np.array([0, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1])
    nrn = np.array([0.9, 0.9, 0.4, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    assert A.ablation_latents(counts, nrn, 0.2).tolist() == [1]        # top 2 of 10 active, latent 2 is base-leaning
    assert A.ablation_latents(counts, nrn, 1.0).tolist() == [1, 3, 4, 5, 6, 7, 8, 9, 10]
    with pytest.raises(ValueError):
        A.ablation_latents(counts, nrn, 0)


def test_marker_occurrences_from_meta():
    meta = {"token_id": np.array([5, 7, 5, 5, 9, 5]), "doc_id": np.array([0, 0, 0, 1, 1, 1]),
            "pos": np.array([1, 2, 3, 1, 2, 3]), "label": np.array([0, 0, 1, 1, 0, 0]),
            "split": np.array([0, 0, 0, 1, 1, 1])}
    ids = {"self_reflection": [5], "contrastive": [9]}
    occ = A.marker_occurrences(meta, ids)
    assert occ == {"self_reflection": [(0, 3)], "contrastive": []}      # pos 1 has no prefix; labels must agree
    occ = A.marker_occurrences(meta, ids, use_labels=False, split=1)
    assert occ == {"self_reflection": [(1, 3)], "contrastive": [(1, 2)]}
    with pytest.raises(ValueError, match="category"):
        A.marker_occurrences(meta, {"wait": [5]})


# ------------------------------------------------------------------------------------------- real classes
def test_pipeline_on_real_store_and_crosscoder(tiny_tokenizer, tiny_pair, tmp_path):
    """The project's ActivationStore + folded CrossCoder feed every analysis (API compatibility)."""
    from conftest import TINY_TEXT
    from thinkdiff.crosscoder import CrossCoder, CrossCoderConfig
    from thinkdiff.harvest import HarvestConfig, harvest_pair

    docs = []
    for t in TINY_TEXT * 4:
        ids = tiny_tokenizer(t)["input_ids"]
        labels = Lexicon(tiny_tokenizer).label_tokens(ids)          # stand-in for planted labels
        docs.append({"text": t, "input_ids": ids, "labels": labels, "kind": "teacher" if "Wait" in t else "base"})
    store = harvest_pair(*tiny_pair, tiny_tokenizer, tiny_tokenizer, docs, HarvestConfig(layer=2, heldout_fraction=0.3),
                         out_dir=tmp_path / "store", progress=False)
    cc = CrossCoder(CrossCoderConfig(d_model=32, n_latents=64, layer=2), seed=0).fold(store.norm_scale)
    heldout = store.meta["split"] == 1
    acts = codes.encode_store(cc, store)
    nrn = norms.relative_norm(cc)
    scaling = L.latent_scaling(cc, store, norms.top_latents(nrn, 10), mask=heldout if heldout.any() else None)
    rs = L.reason_scores(acts, Lexicon(tiny_tokenizer), store.meta, special_ids=tiny_tokenizer.all_special_ids)
    gt = L.ground_truth_auroc(acts, store.meta["label"], nrn)
    masks = L.marker_masks(store.meta, marker_token_ids(tiny_tokenizer, {"self_reflection": (" Wait",)}))
    counts = L.marker_counts(acts, masks)
    table = L.features_table(cc, acts=acts, scaling=scaling, scores=rs, counts=counts, truth=gt)
    assert len(table) == 64 and table["relative_norm"].between(0, 1).all() and len(gt.best) == 4
    ctx = B.max_activating_contexts(cc, store, acts, [int(table["frequency"].idxmax())], k=2, context=5)
    assert len(ctx) == 2 and (np.diff(ctx["activation"]) <= 0).all()


# ------------------------------------------------------------------------------------------- claims 1, 3, 4
def test_lexical_profile_and_claim_verdicts():
    meta = {"token_id": np.array([7, 7, 7, 7, 3, 3, 3, 3]), "label": np.array([1, 1, 0, 0, 1, 0, 0, 0])}
    f = np.zeros((8, 3))
    f[:4, 0] = 1.0                     # latent 0 fires on every "7", reasoning use or not: lexical
    f[:2, 1] = 1.0
    f[4, 1] = 1.0                      # latent 1 fires on the reasoning span, not on ordinary "7"s
    f[:, 2] = 1.0                      # latent 2 fires everywhere
    prof = L.lexical_profile(codes.SparseActs.from_dense(f), meta, [0, 1, 2], [7], "self_reflection")
    p = prof.set_index("latent")
    assert p.loc[0, "token_purity"] == 1 and p.loc[0, "label_ratio"] == 1
    assert p.loc[1, "fire_unlabelled"] == 0 and p.loc[1, "token_purity"] == pytest.approx(2 / 3)
    assert p.loc[2, "token_purity"] == 0.5 and prof.attrs == {"n_labelled": 2, "n_unlabelled": 2}
    assert claims.claim4_verdict(prof, np.array([0.5, 0.05, 0.5]))[0] == "contradicts"   # the base-side one is 1
    assert claims.claim4_verdict(prof, np.array([0.05, 0.5, 0.5]))[0] == "supports"
    assert claims.claim4_verdict(prof, np.array([0.1, 0.05, 0.5]))[0] == "mixed"
    assert claims.claim4_verdict(prof, np.array([0.6, 0.7, 0.5]))[0] == "not tested"
    # every use of the word is a reasoning use: a firing ratio cannot be measured, so nothing is judged
    only = L.lexical_profile(codes.SparseActs.from_dense(f), {**meta, "label": np.r_[1, 1, 1, 1, meta["label"][4:]]},
                             [0, 1, 2], [7], "self_reflection")
    assert only.attrs["n_unlabelled"] == 0
    v, e = claims.claim4_verdict(only, np.array([0.5, 0.05, 0.5]))
    assert v == "not tested" and "no ordinary" in e
    nrn = np.r_[np.full(30, 0.95), np.full(20, 0.05), np.full(50, 0.5)]
    freq = np.full(100, 0.01)
    quiet = [{"distilled_only": 2, "base_only": 1}, {"distilled_only": 4, "base_only": 3}]   # bars 6 and 5
    assert claims.claim1_verdict(nrn, freq, quiet)[0] == "supports"
    loud = [{"distilled_only": 2, "base_only": 15}, {"distilled_only": 4, "base_only": 18}]  # base bar 21 > 20
    assert claims.claim1_verdict(nrn, freq, loud)[0] == "mixed"
    rare = freq.copy()
    rare[:50] = 1e-6                                # the exclusive latents hardly fire: they do not count
    v, e = claims.claim1_verdict(nrn, rare, quiet)
    assert v == "contradicts" and "50 live latents" in e
    with pytest.raises(ValueError, match="null"):
        claims.claim1_verdict(nrn, freq, [])
    # with latent scaling: 30 distilled-only latents, but only 5 survive it; the null's survivors set the bar
    genuine = np.zeros(100, bool)
    genuine[:5] = True
    few = [{**n, "distilled_only_genuine": g} for n, g in zip(quiet, (1, 2))]      # bar 3 < 5
    v, e = claims.claim1_verdict(nrn, freq, few, genuine=genuine)
    assert v == "supports" and "5 distilled-only surviving latent scaling (null [1, 2], bar 3)" in e
    many = [{**n, "distilled_only_genuine": g} for n, g in zip(quiet, (3, 4))]     # bar 5, not exceeded
    assert claims.claim1_verdict(nrn, freq, many, genuine=genuine)[0] == "mixed"
    with pytest.raises(ValueError, match="distilled_only_genuine"):
        claims.claim1_verdict(nrn, freq, quiet, genuine=genuine)


def test_claim3_needs_markers_more_shared_than_latents_in_general():
    """200 live latents; markers of "a" are latents 0-29, of "b" 30-59. Fisher's test against the others decides."""
    def rows(cat, lat):
        return pd.DataFrame({"category": cat, "latent": lat})

    freq = np.full(200, 0.01)
    cl = pd.concat([rows("a", np.arange(30)), rows("b", np.arange(30, 60))])
    mostly_rest_shared = np.r_[np.full(30, 0.5), np.full(30, 0.5), np.full(140, 0.95)]
    assert claims.claim3_verdict(cl, mostly_rest_shared, freq)[0] == "supports"
    # every latent is shared: markers being "mostly shared" is then no finding
    everything_shared = np.full(200, 0.5)
    v, e = claims.claim3_verdict(cl, everything_shared, freq)
    assert v == "contradicts" and "a: 100% of 30 shared vs 100% of the other 170" in e
    half = mostly_rest_shared.copy()
    half[30:60] = 0.99                                  # "b" markers are distilled-side
    v, e = claims.claim3_verdict(cl, half, freq)
    assert v == "mixed" and "1 in [0.95, 1]" not in e and "b: 0% of 30 shared" in e
    # a category with no live marker latent is not tested, never silently dropped
    v, e = claims.claim3_verdict(cl, mostly_rest_shared, freq, categories=["a", "b", "c"])
    assert v == "supports" and "not tested (no live marker latent): c" in e
    quiet = freq.copy()
    quiet[:60] = 1e-6
    assert claims.claim3_verdict(cl, mostly_rest_shared, quiet)[0] == "not tested"
    with pytest.raises(ValueError, match="at least one check"):
        claims.verdict([])


def test_claim10_needs_each_property_under_every_scheme():
    both = {"exclusive latents": {"relu": True, "batchtopk": True}, "markers shared": {"relu": True, "batchtopk": True}}
    assert claims.claim10_verdict(both)[0] == "supports"
    one = {**both, "markers shared": {"relu": True, "batchtopk": False}}
    assert claims.claim10_verdict(one)[0] == "mixed"
    # failing under both schemes is not surviving: two failures do not make the claim hold
    fails = {p: {"relu": False, "batchtopk": False} for p in both}
    assert claims.claim10_verdict(fails)[0] == "contradicts"
    v, e = claims.claim10_verdict({"exclusive latents": {"relu": True, "batchtopk": False}})
    assert v == "contradicts" and "relu yes, batchtopk no" in e
    # a scheme with nothing to measure makes that property untested, not failed
    unmeasured = {**both, "markers shared": {"relu": True, "batchtopk": None}}
    v, e = claims.claim10_verdict(unmeasured)
    assert v == "supports" and "1 of 1 tested" in e and "batchtopk not measurable" in e
    assert claims.claim10_verdict({"markers shared": {"relu": None, "batchtopk": True}})[0] == "not tested"
    with pytest.raises(ValueError):
        claims.claim10_verdict({})


def test_claim9_is_judged_only_at_the_papers_settings():
    from thinkdiff import train

    ok, why = claims.paper_settings(train.PAPER, "qwen-1.5b", pairs.paper_pairs())
    assert ok and why == ""
    ok, why = claims.paper_settings(train.ORGANISM["relu"], "organism-m", pairs.paper_pairs())
    assert not ok and "pair 'organism-m' is not one of the paper's" in why and "n_latents" in why
    v, e = claims.claim9_verdict(0.95, 0.95, 40.0, False, why)
    assert v == "not tested" and "not the paper's settings" in e
    ok, why = claims.paper_settings(None, "qwen-1.5b", pairs.paper_pairs())   # imported: even on a paper pair
    assert not ok and "imported" in why
    assert claims.claim9_verdict(0.91, 0.90, 700.0, True)[0] == "supports"
    assert claims.claim9_verdict(0.91, 0.80, 700.0, True)[0] == "mixed"
    assert claims.claim9_verdict(0.70, 0.80, 700.0, True)[0] == "contradicts"


def test_claim2_compares_the_top_distilled_latents_with_random_live_latents():
    F = 1024
    nrn = np.full(F, 0.5)
    nrn[:10] = 0.95                                  # ten distilled-specific latents
    freq = np.full(F, 0.01)
    hit = np.zeros(F, bool)
    n_top = claims.claim2_top_size(F)
    assert n_top == 3 and claims.claim2_top_size(32_768) == 100
    hit[:3] = True                                   # all three top latents are reasoning features, rare elsewhere
    hit[500:510] = True
    assert claims.claim2_verdict(nrn, freq, hit, ground_truth=True)[0] == "supports"
    assert claims.claim2_verdict(nrn, freq, hit, ground_truth=False)[0] == "mixed"      # score evidence only
    common = hit.copy()
    common[::2] = True                               # half of all live latents hit: the top set is no better
    common[1:3] = False
    assert claims.claim2_verdict(nrn, freq, common, ground_truth=True)[0] == "mixed"
    assert claims.claim2_verdict(nrn, freq, np.zeros(F, bool), ground_truth=True)[0] == "contradicts"
    rare = freq.copy()
    rare[:10] = 1e-6                                 # distilled-specific but (almost) never firing: not counted
    v, e = claims.claim2_verdict(nrn, rare, hit, ground_truth=True)
    assert v == "not tested" and "0 candidates" in e


def test_move_precision_finds_phase_features_and_rejects_token_detectors():
    """Tokens 0-599 training, 600-1199 held-out; the same layout in both: a self-reflection move (label 1) on
    tokens 100-149 with a ":" (token 7) at every 5th, plain trace tokens elsewhere, and ":" in ordinary roles
    at every 10th token outside the move. Latent 0 fires on the in-move ":" only (a phase feature, like
    "Wait, let me check:"); latent 1 on every ":" (a token detector); latent 2 on a deductive move nowhere
    (fires at random); latent 3 on the in-move ":" of a corpus with no ordinary ":" (lexical status unmeasured)."""
    n = 1200
    lab, tok = np.zeros(n, int), np.full(n, 3)
    split = (np.arange(n) >= 600).astype(int)
    for off in (0, 600):
        lab[off + 100:off + 150] = 1
        tok[off + 100:off + 150:5] = 7
        tok[off + 200:off + 600:10] = 7
    f = np.zeros((n, 4), np.float32)
    in_colon = (tok == 7) & (lab == 1)
    f[in_colon, 0] = 3.0
    f[tok == 7, 1] = 2.0
    f[np.random.default_rng(0).random(n) < 0.05, 2] = 1.0
    meta = {"label": lab, "token_id": tok, "split": split}
    acts = codes.SparseActs.from_dense(f)
    mp = L.move_precision(acts, meta, [0, 1, 2], n_top=50).set_index("latent")
    assert mp.loc[0, "category"] == "self_reflection" and mp.loc[0, "precision"] == 1.0
    assert mp.loc[0, "lexical"] == False and mp.loc[0, "reasoning"]  # noqa: E712 (ordinary ":" exist, it ignores them)
    assert mp.loc[1, "precision"] < 0.5 and mp.loc[1, "lexical"] == True and not mp.loc[1, "reasoning"]  # noqa: E712
    assert not mp.loc[2, "reasoning"] and mp.loc[2, "precision"] < 0.9
    no_ordinary = tok.copy()
    no_ordinary[(tok == 7) & (lab != 1)] = 3
    mp = L.move_precision(acts, {**meta, "token_id": no_ordinary}, [0], n_top=50).set_index("latent")
    assert mp.loc[0, "lexical"] is None and mp.loc[0, "n_ordinary"] == 0 and mp.loc[0, "reasoning"]


def test_matched_random_control_fires_as_often_and_never_overlaps():
    rng = np.random.default_rng(0)
    counts = np.r_[np.zeros(20), rng.integers(1, 5, 40), rng.integers(200, 400, 40)]       # rare and frequent
    targeted = np.arange(60, 70)                                                             # frequent ones
    ctrl = A.matched_random_latents(counts, targeted, np.random.default_rng(1))
    assert len(ctrl) == 10 and not set(ctrl) & set(targeted) and (counts[ctrl] > 0).all()
    assert counts[ctrl].min() >= 200                        # matched: drawn among the frequent latents, not the rare
    again = A.matched_random_latents(counts, targeted, np.random.default_rng(1))
    assert ctrl.tolist() == again.tolist()
    with pytest.raises(ValueError, match="to match"):
        A.matched_random_latents(counts, np.arange(20, 100), np.random.default_rng(0))
    # matched on relative-norm bin and on each model's decoder norm too
    nrn = np.r_[np.full(60, 0.5), np.full(20, 0.95), np.full(20, 0.5)]       # targeted 60-69 are distilled-side
    dec = np.ones((100, 2))
    dec[80:, 0] = 5.0                                                          # 80-99 carry large base decoders
    ctrl = A.matched_random_latents(counts, targeted, np.random.default_rng(1), nrn=nrn, decoder_norms=dec)
    assert (nrn[ctrl] >= 0.9).all() and (dec[ctrl, 0] == 1.0).all()


def test_claim5_rule_outcomes():
    def summary(rows, arm="targeted_minus_random"):
        return A.AblationResult(pd.DataFrame(), pd.DataFrame([
            dict(category=c, model=m, arm=arm, k=0.2, mean=mu, ci_lo=lo, ci_hi=hi, level=0.975)
            for c, m, mu, lo, hi in rows]), {})

    def with_paired(rows, paired):
        r = summary(rows).summary
        return A.AblationResult(pd.DataFrame(), pd.concat([r, summary(paired, "base_minus_distilled").summary],
                                                          ignore_index=True), {})

    good = [("wait", "distilled", -2.0, -3.0, -1.0), ("wait", "base", 0.0, -0.4, 0.4),
            ("so", "distilled", -1.5, -2.0, -1.0), ("so", "base", -0.1, -0.45, 0.3)]
    paired = [("wait", "base", 2.0, 1.0, 3.0), ("so", "base", 1.4, 0.8, 2.0)]
    assert claims.claim5_verdict(with_paired(good, paired))[0] == "supports"
    # the base drops as much: the paired contrast is not above 0 and its change is not within the margin
    base_moves = good[:3] + [("so", "base", -1.6, -2.2, -1.1)]
    v, e = claims.claim5_verdict(with_paired(base_moves, [paired[0], ("so", "base", 0.1, -0.4, 0.6)]))
    assert v == "mixed" and "base moves less (paired)" in e and "base within +-0.5" in e
    # CIs that merely fail to overlap no longer decide: a paired contrast is required
    v, e = claims.claim5_verdict(summary(good))
    assert v == "contradicts" and "no paired contrast" in e
    # a base change wide on both sides is no evidence that it barely moves (equivalence, not absence)
    wide = good[:1] + [("wait", "base", 0.0, -1.5, 1.5)] + good[2:]
    v, e = claims.claim5_verdict(with_paired(wide, paired))
    assert v == "mixed" and "fails: base within +-0.5" in e
    none = [("wait", "distilled", -0.1, -0.5, 0.3), ("wait", "base", 0.0, -0.4, 0.4),
            ("so", "distilled", 0.2, -0.1, 0.5), ("so", "base", 0.0, -0.2, 0.2)]
    v, e = claims.claim5_verdict(with_paired(none, paired))
    assert v == "contradicts" and "matched random" in e and "97.5%" in e
    # shared latents of matched contribution do as much for "so": it is not about distilled-specific latents
    shared = with_paired(good, paired).summary
    shared = pd.concat([shared, summary([("wait", "distilled", -1.5, -2.0, -1.0), ("so", "distilled", 0.1, -0.4, 0.6)],
                                        arm="targeted_minus_shared").summary], ignore_index=True)
    v, e = claims.claim5_verdict(A.AblationResult(pd.DataFrame(), shared, {}))
    assert v == "mixed" and "distilled vs shared" in e
    # nothing to ablate in a category, or too few held-out markers: not tested, never a failure
    v, e = claims.claim5_verdict(with_paired(good, paired), untested={"contrastive": "3 held-out marker occurrences"},
                                 categories=["wait", "so", "alternative", "contrastive"])
    assert v == "supports" and "contrastive: not tested (3 held-out" in e
    assert "alternative: not tested (no distilled" in e
    empty = A.AblationResult(pd.DataFrame(), summary(good).summary.iloc[:0], {})
    assert claims.claim5_verdict(empty, k=0.2, untested={"wait": "too few"}, categories=["wait"])[0] == "not tested"


def test_a_smoke_run_judges_nothing_and_keeps_the_evidence():
    got = claims.judged({"1": ("supports", "3 exclusive latents"), "2": ("mixed", "1 hit")}, False, "smoke")
    assert got == {"1": ("not tested", "smoke run (smoke): 3 exclusive latents"),
                   "2": ("not tested", "smoke run (smoke): 1 hit")}
    assert claims.judged({"1": ("supports", "e")}, True, "organism-m") == {"1": ("supports", "e")}
