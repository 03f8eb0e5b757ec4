"""Parallelogram loss (exactness, invariances), its bootstrap and permutation null, word vectors, and
decoder geometry."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from thinkdiff import geometry as geo
from thinkdiff import evaluate, paths, plots, relations

LAYER = 2


def _relation(n=12, k=6, noise=0.0, seed=0):
    """a's random, b = a + a shared offset (+ noise): an exact parallelogram family when noise = 0."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, k))
    B = A + rng.normal(size=k) * 2 + noise * rng.normal(size=(n, k))
    return A, B


def _random_rotation(k, seed=0):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(k, k)))
    return q * np.sign(np.diag(r))


def test_exact_parallelogram_is_zero():
    A, B = _relation()
    assert geo.pairwise_parallelogram_losses(A, B).max() < 1e-12  # float rounding of b - a only
    Ai = np.arange(24.0).reshape(8, 3) ** 2  # integers: the differences are exact
    assert np.all(geo.pairwise_parallelogram_losses(Ai, Ai + np.array([5.0, -2.0, 7.0])) == 0)
    t = torch.as_tensor
    assert float(geo.parallelogram_loss(t(Ai[0]), t(Ai[0] + 1), t(Ai[3]), t(Ai[3] + 1))) == 0


def test_invariances_and_hand_value():
    A, B = _relation(noise=0.7, seed=1)
    base = geo.pairwise_parallelogram_losses(A, B)
    assert base.shape == (12 * 11 // 2,) and base.min() > 0
    Q = _random_rotation(A.shape[1], 2)
    np.testing.assert_allclose(geo.pairwise_parallelogram_losses(A @ Q, B @ Q), base, rtol=1e-10)
    np.testing.assert_allclose(geo.pairwise_parallelogram_losses(3.7 * A, 3.7 * B), base, rtol=1e-10)
    i, j = np.triu_indices(12, 1)
    swapped = geo.parallelogram_loss(A[j], B[j], A[i], B[i])
    np.testing.assert_allclose(swapped, base, rtol=1e-12)
    a1, b1, a2, b2 = np.array([1.0, 0]), np.array([0, 1.0]), np.array([2.0, 0]), np.array([0, 0.0])
    # ||(1,-1) - (2,0)|| / sqrt(1 + 1 + 4 + 0) = sqrt(2) / sqrt(6)
    assert geo.parallelogram_loss(a1, b1, a2, b2) == pytest.approx(np.sqrt(2 / 6))
    # the fast Gram form used for bootstrap and null agrees with the explicit one
    D, S = torch.as_tensor(A - B), torch.as_tensor((A ** 2).sum(1) + (B ** 2).sum(1))
    np.testing.assert_allclose(geo._loss_matrices(D, S).numpy()[i, j], base, rtol=1e-7, atol=1e-9)


def test_permutation_null_uses_same_pairs():
    A, B = _relation(n=10, noise=0.05, seed=3)
    null, perms = geo.permutation_null(A, B, n_perm=25, seed=0, return_perms=True)
    assert perms.shape == (25, 10)
    for p, m in zip(perms, null):
        assert sorted(p.tolist()) == list(range(10))  # the same b's, only re-paired; the a's untouched
        assert m == pytest.approx(geo.pairwise_parallelogram_losses(A, B[p]).mean(), rel=1e-7)
    # a near-parallelogram relation is far more structured than its re-pairings
    assert geo.pairwise_parallelogram_losses(A, B).mean() < np.quantile(null, 0.05)
    np.testing.assert_array_equal(null, geo.permutation_null(A, B, n_perm=25, seed=0))  # seeded


def test_relation_losses_bootstrap_and_delta():
    A0, B0 = _relation(n=15, k=8, noise=0.1, seed=4)  # base: tidy relation
    A1, B1 = _relation(n=15, k=8, noise=1.5, seed=5)  # distilled: messy
    A, B = np.stack([A0, A1]), np.stack([B0, B1])
    res = geo.relation_losses(A, B, "toy", dims=(2, 5, 40), n_boot=300, n_perm=40)
    t, d = res.table, res.delta
    assert set(t.basis) == {geo.PER_MODEL, geo.SHARED} and len(t) == 2 * 3 * 2
    assert t.loc[t.dim == 40, "dim_used"].max() == 8  # capped at min(2n - 1, d)
    assert ((t.mean_lo <= t["mean"]) & (t["mean"] <= t.mean_hi)).all()
    assert ((d.delta_lo <= d.delta) & (d.delta <= d.delta_hi)).all()
    full = d[(d.basis == geo.PER_MODEL) & (d.dim == 40)].iloc[0]
    assert full.delta < 0 and full.delta_hi < 0  # base tidier -> base minus distilled < 0, CI excludes 0
    tb = t[(t.basis == geo.PER_MODEL) & (t.dim == 40) & (t.model == "base")].iloc[0]
    assert tb["mean"] < tb.null_q025 and tb.p_null < 0.05
    # stored losses are the explicit pairwise losses in the fitted PCA space
    mu, V = geo.pca_fit(np.concatenate([A0, B0]), 40)
    a, b = (torch.as_tensor(A0) - mu) @ V, (torch.as_tensor(B0) - mu) @ V
    np.testing.assert_allclose(res.losses[(geo.PER_MODEL, 40, "base")], geo.pairwise_parallelogram_losses(a, b),
                               rtol=1e-6, atol=1e-9)
    adj = geo.adjust_null_pvalues(t.assign(size="S"))
    assert (adj.n_comparisons == len(t)).all() and (adj.q_null >= adj.p_null - 1e-12).all()
    two = geo.adjust_null_pvalues(pd.concat([t.assign(size="S"), t.assign(size="M")]))
    assert (two.n_comparisons == len(t)).all()            # adjusted within each size, not across sizes
    with pytest.raises(ValueError, match="2 models"):
        geo.relation_losses(A[:1], B[:1])
    with pytest.raises(ValueError, match="at least 3"):
        geo.relation_losses(A[:, :2], B[:, :2])


def test_size_table_and_claim8(tmp_path, monkeypatch):
    results, perf = {}, {}
    for s, (size, noise) in enumerate((("S", 1.0), ("M", 0.6), ("L", 0.2))):
        rels = []
        for r in range(2):
            A0, B0 = _relation(n=12, noise=1.0, seed=10 + r)
            A1, B1 = _relation(n=12, noise=noise, seed=20 + r)
            rels.append(geo.relation_losses(np.stack([A0, A1]), np.stack([B0, B1]), f"rel{r}", dims=(5,),
                                            n_boot=200, n_perm=20, shared_basis=False))
        results[size] = rels
        perf[size] = evaluate.accuracy_gain(np.zeros(40), np.r_[np.ones(10 * (s + 1)), np.zeros(40 - 10 * (s + 1))])
    tab = geo.size_table(results, perf, dim=5)
    assert len(tab) == 3 * 3 and (tab.relation == "all relations").sum() == 3
    pooled = tab[tab.relation == "all relations"].set_index("size")
    assert pooled.loc["L", "delta"] > pooled.loc["S", "delta"]
    assert ((tab.delta_lo <= tab.delta) & (tab.delta <= tab.delta_hi)).all()
    deltas = geo.deltas_by_size(results, dim=5)
    assert set(deltas) == {"S", "M", "L"} and set(deltas["L"]) == {"rel0", "rel1"}
    assert deltas["L"]["rel0"][1].shape == (200,)
    from thinkdiff import claims
    v, e = claims.claim8_verdict(deltas, {"S": 1e5, "M": 3e5, "L": 1e6},
                                 {s: (np.zeros(40), np.ones(40)) for s in deltas}, n_boot=100)
    assert v == "not tested" and "3 sizes" in e
    monkeypatch.setattr(paths, "FIGURES_DIR", tmp_path)
    assert plots.savefig(geo.plot_delta_vs_performance(tab), "delta").exists()
    assert plots.savefig(geo.plot_ecdf_grid(results, dim=5), "ecdf").exists()
    with pytest.raises(ValueError, match="sizes differ"):
        geo.size_table(results, {"S": 0.1})
    g = evaluate.accuracy_gain([0, 1, 0, 1], [1, 1, 0, 1])
    assert g["gain"] == 0.25 and g["lo"] <= 0.25 <= g["hi"]


def test_filter_single_token_and_word_vectors(tiny_pair, tiny_tokenizer):
    pairs = [("3", "7"), ("apples", "apple"), ("Wait", "wait"), ("2", "5"), ("zebra", "zebras")]
    single = {w for p in pairs for w in p if len(tiny_tokenizer.encode(w, add_special_tokens=False)) == 1}
    kept, dropped = geo.filter_single_token(pairs, tiny_tokenizer)
    assert kept == [p for p in pairs if p[0] in single and p[1] in single]
    assert dropped == len(pairs) - len(kept) and ("3", "7") in kept and ("zebra", "zebras") not in kept
    model = tiny_pair[0]
    words = ["3", "7", "2"]
    V = geo.word_vectors(model, tiny_tokenizer, words, LAYER)
    assert V.shape == (3, 32)
    # each word alone at position 0 equals hidden_states[LAYER] of a single-token forward
    ids = tiny_tokenizer.encode("7", add_special_tokens=False)
    with torch.no_grad():
        hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[LAYER]
    torch.testing.assert_close(V[1], hs[0, 0])
    T = geo.word_vectors(model, tiny_tokenizer, ["3", "apples"], LAYER, template="Ann has {} here")
    ids = tiny_tokenizer.encode("Ann has apples", add_special_tokens=False)
    with torch.no_grad():
        hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[LAYER]
    torch.testing.assert_close(T[1], hs[0, -1])
    with pytest.raises(ValueError, match="tokens"):
        geo.word_vectors(model, tiny_tokenizer, ["zebras"], LAYER)
    results, surv = geo.analyse_relations(tiny_pair, tiny_tokenizer, {"digits": [("2", "3"), ("5", "7"), ("4", "8"),
                                                                                 ("1", "9")],
                                                                      "tiny": pairs[:2]}, LAYER, dims=(2,),
                                          n_boot=50, n_perm=10)
    assert [r.relation for r in results] == ["digits"]
    assert surv.set_index("relation").loc["tiny", "analysed"] == False  # noqa: E712


def test_organism_relations_forms():
    rel = relations.organism_relations()
    assert set(rel) == {"singular-plural", "number-digit", "number-capitalised", "digit-successor"}
    assert (" apple", " apples") in rel["singular-plural"] and (" seven", " 7") in rel["number-digit"]
    assert all(len(v) >= 7 for v in rel.values())


def test_every_single_token_relation_word_is_a_token_the_organism_was_trained_on():
    """A relation word read at a token the base corpus never (or hardly) holds measures an untrained embedding."""
    from collections import Counter

    from thinkdiff import organism
    tok = organism.get_tokenizer()
    seen = Counter(organism._packed_tokens(tok, organism.corpus_texts(organism.CorpusConfig(), "base", 2000)).tolist())
    words = {w for pairs in relations.organism_relations().values() for pair in pairs for w in pair}
    ids = {w: tok(w, add_special_tokens=False)["input_ids"] for w in words}
    single = {w: i[0] for w, i in ids.items() if len(i) == 1}
    assert len(single) >= 0.8 * len(words)
    # 2,000 documents are about a twentieth of organism M's pretraining corpus: once here is ~20 times there
    unseen = {w: seen[i] for w, i in single.items() if seen[i] == 0}
    assert not unseen, f"relation words absent from a sample of the base corpus: {unseen}"


def test_decoder_geometry(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(10, 2, 16, generator=g)
    W[0, 0] = 0  # distilled-only latent
    W[1, 1] = 3 * W[1, 0]  # same direction on both sides
    cc = type("CC", (), {"W_dec": W})()
    cos = geo.decoder_cosines(cc, [1, 2, 3], model_index=1)
    assert cos.shape == (3, 3) and np.allclose(np.diag(cos), 1)
    al = geo.side_alignment(cc, [0, 1, 2]).set_index("latent")
    assert al.loc[1, "cos_base_distilled"] == pytest.approx(1.0)
    assert al.loc[0, "rel_norm"] == pytest.approx(1.0) and al.loc[1, "rel_norm"] == pytest.approx(0.75)
    m = geo.decoder_map(cc, range(10), categories=[0, 1, 2, 3, 4, 1, 1, 2, 0, 0])
    assert list(m.columns) == ["latent", "pc1", "pc2", "rel_norm", "category"]
    assert m.loc[1, "category"] == "self_reflection"
    monkeypatch.setattr(paths, "FIGURES_DIR", tmp_path)
    for name, fig in (("map", geo.plot_decoder_map(m)), ("cos", geo.plot_cosine_matrix(cos))):
        assert plots.savefig(fig, name).exists()  # savefig checks title and axis labels
    with pytest.raises(ValueError, match="latents"):
        geo.decoder_cosines(cc, [11])


def test_teacher_forced_ce_matches_loss(tiny_pair, tiny_tokenizer):
    model = tiny_pair[0]
    prompts, comps = ["Ann has 3 apples.", "Ben"], [" Wait, let me check: 3 + 4 = 7.", " gives her 4 more apples."]
    ce = evaluate.teacher_forced_ce(model, tiny_tokenizer, prompts, comps, batch_size=2)
    for p, c, got in zip(prompts, comps, ce):  # one at a time, no padding, HF's own loss on completion tokens
        pi = tiny_tokenizer.encode(p, add_special_tokens=False)
        ids = torch.tensor([pi + tiny_tokenizer.encode(c, add_special_tokens=False)])
        labels = ids.clone()
        labels[0, :len(pi)] = -100
        with torch.no_grad():
            want = model(input_ids=ids, labels=labels).loss.item()
        assert got == pytest.approx(want, rel=1e-4)
    red = evaluate.ce_reduction([20.0, 30.0, 25.0], [10.0, 20.0, 25.0], [10, 10, 10], n_boot=200)
    assert red["gain"] == pytest.approx(20 / 30) and red["lo"] <= red["gain"] <= red["hi"]
    red = evaluate.ce_reduction([20.0, 3.0], [10.0, 3.0], [10, 1], n_boot=200)      # token-weighted: 10 / 11
    assert red["gain"] == pytest.approx(10 / 11)
    with pytest.raises(ValueError, match="equal"):
        evaluate.teacher_forced_ce(model, tiny_tokenizer, prompts, comps[:1])


def test_figures_records_what_it_saves(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setattr(paths, "FIGURES_DIR", tmp_path)
    figs = plots.Figures()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0]); ax.set_xlabel("x"); ax.set_ylabel("y"); ax.set_title("t")
    p = figs.save(fig, "one")
    assert figs == [p] and p.exists() and p.name == "one.png"
    fig2, ax2 = plt.subplots()
    ax2.plot([0, 1], [1, 0])
    with pytest.raises(ValueError, match="labels"):
        figs.save(fig2, "unlabelled")
    assert figs == [p] and not (tmp_path / "unlabelled.png").exists()


def _claim8_inputs(trend, gains=(0.6, 0.56, 0.5, 0.45), n_rel=5, noise=0.002, seed=0):
    """Four sizes (10x parameters apart); each relation's Δ = trend(size index) + noise, 500 draws over pairs;
    200 problems per size with the given accuracy gain."""
    rng = np.random.default_rng(seed)
    sizes = ["XS", "S", "M", "L"]
    params = {s: 10 ** (4 + i) for i, s in enumerate(sizes)}
    deltas, correct = {}, {}
    for i, s in enumerate(sizes):
        deltas[s] = {}
        for r in range(n_rel):
            d = trend(i) + rng.normal(0, noise)
            deltas[s][f"rel{r}"] = (d, d + rng.normal(0, noise, 500))
        base = (rng.random(200) < 0.3).astype(float)
        dist = np.where(rng.random(200) < gains[i], 1.0, base)
        correct[s] = (base, dist)
    return deltas, params, correct


def test_claim8_is_a_trend_against_size_with_a_bootstrap_ci():
    from thinkdiff import claims

    rising = _claim8_inputs(lambda i: -0.02 + 0.01 * i)
    v, e = claims.claim8_verdict(*rising, n_boot=300)
    # sizes are ordered by parameters, although the accuracy gain falls with size
    assert v == "supports" and e.index("XS") < e.index("S (") < e.index("M (") < e.index("L (")
    assert claims.claim8_verdict(*_claim8_inputs(lambda i: 0.02 - 0.01 * i), n_boot=300)[0] == "contradicts"
    flat = _claim8_inputs(lambda i: 0.0, noise=0.01)
    assert claims.claim8_verdict(*flat, n_boot=300)[0] == "mixed"
    three = tuple({k: v for k, v in d.items() if k != "XS"} for d in rising)
    v, e = claims.claim8_verdict(*three, n_boot=300)
    assert v == "not tested" and "3 sizes" in e and "at least 4" in e
