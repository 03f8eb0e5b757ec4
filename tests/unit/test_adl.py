"""The Activation Difference Lens: the first-token rows and their mean difference, the logit lens as the model reads
its last hidden state, decoder-difference cosines, the random-direction comparison and its rule (one test per
outcome), and the verdict-free lens table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from thinkdiff import adl, claims, hooks, records

pytestmark = pytest.mark.usefixtures("one_thread")


def test_first_token_rows_start_at_the_first_stored_position_and_cap_the_texts():
    # three documents; position 0 was dropped (the store starts at 1); doc 7 has 2 tokens, doc 3 has 7
    doc = np.array([3] * 7 + [7] * 2 + [5] * 6)
    pos = np.concatenate([np.arange(1, 8), [1, 2], np.arange(1, 7)])
    rows, off = adl.first_token_rows(doc, pos, first_tokens=3, n_texts=2)   # the first 2 documents by id: 3 and 5
    assert sorted(set(doc[rows])) == [3, 5] and list(off) == [0, 1, 2] * 2
    assert list(pos[rows]) == [1, 2, 3] * 2
    rows, _ = adl.first_token_rows(doc, pos, first_tokens=5, n_texts=100)   # fewer documents than asked: all
    assert len(rows) == 5 + 2 + 5
    with pytest.raises(ValueError, match="first_tokens = 0"):
        adl.first_token_rows(doc, pos, first_tokens=0, n_texts=1)


def test_mean_difference_per_position_and_pooled():
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((6, 2, 4))
    off = np.array([0, 1, 0, 1, 0, 3])
    delta, per, counts = adl.mean_difference(acts, off, 4)
    d = acts[:, 1] - acts[:, 0]
    np.testing.assert_allclose(delta, d.mean(0))
    np.testing.assert_allclose(per[0], d[[0, 2, 4]].mean(0))
    np.testing.assert_allclose(per[3], d[5])
    assert list(counts) == [3, 2, 0, 1] and np.isnan(per[2]).all()
    with pytest.raises(ValueError, match=r"\[n > 0, 2, d\]"):
        adl.mean_difference(acts[:, :1], off, 4)


def test_the_logit_lens_is_the_models_own_output_head(tiny_pair, tiny_tokenizer):
    """Read through the lens, the last block's output gives the model's own logits: final norm, then lm_head."""
    model = tiny_pair[1]
    ids = torch.tensor([tiny_tokenizer.encode("Ann has 3 apples. Wait")])
    seen = []
    n_layers = len(hooks.decoder_layers(model))
    with torch.no_grad(), hooks.resid_hook(model, n_layers, lambda h: seen.append(h.clone())):
        logits = model(ids).logits[0]
    for t in (0, ids.shape[1] - 1):
        np.testing.assert_allclose(adl.logit_lens(model, seen[0][0, t].numpy()), logits[t].numpy(), rtol=1e-5, atol=1e-5)


def test_top_tokens_and_ranks():
    logits = np.array([0.5, 3.0, -2.0, 1.0, 3.0])
    promoted, suppressed = adl.top_tokens(logits, 2)
    assert list(promoted) == [1, 4] and list(suppressed) == [2, 0]
    assert list(adl.token_ranks(logits, [1, 4, 3, 2])) == [0, 0, 2, 4]


def test_decoder_differences_and_cosines():
    W = torch.randn(5, 2, 8, generator=torch.Generator().manual_seed(0))
    D = adl.decoder_differences(W)
    np.testing.assert_allclose(D, (W[:, 1] - W[:, 0]).double().numpy())
    c = adl.cosines(D[2] * 3.0, np.vstack([D, np.zeros(8)]))
    assert c[2] == pytest.approx(1.0) and np.isnan(c[-1]) and np.all(np.abs(c[:-1]) <= 1 + 1e-12)


def _latents(d=48, m=6, seed=1):
    return np.random.default_rng(seed).standard_normal((m, d))


def _orthogonal(V):
    """A unit direction orthogonal to every row of V."""
    q = np.linalg.qr(np.vstack([V, np.random.default_rng(9).standard_normal((1, V.shape[1]))]).T)[0]
    return q[:, len(V)]


@pytest.mark.parametrize("outcome", ["supports", "mixed", "contradicts"])
def test_the_closeness_rule_against_random_directions(outcome):
    """The same null of random directions decides all three ways: a direction inside the latents' span beats it,
    one orthogonal to them loses to it, and a weak tilt towards them lies in between."""
    V = _latents()
    inside, orth = V.sum(0) / np.linalg.norm(V.sum(0)), _orthogonal(V)
    tilt = {"supports": 1.0, "mixed": 0.3, "contradicts": 0.0}[outcome]
    close = adl.closeness(tilt * inside + np.sqrt(1 - tilt ** 2) * orth, V, n_random=200, seed=0)
    v, e = claims.adl_closeness_verdict(close, len(V))
    assert v == outcome, (close["stat"], np.median(close["random"]), close["p"], e)
    assert "of 200" in e
    if outcome == "supports":
        assert close["n_higher"] == 0 and close["p"] == pytest.approx(1 / 201)


def test_the_closeness_rule_without_latents_is_not_tested():
    assert claims.adl_closeness_verdict(None, 0)[0] == "not tested"
    with pytest.raises(ValueError, match=r"\[m > 0, d\]"):
        adl.closeness(np.ones(4), np.zeros((0, 4)), n_random=20)
    with pytest.raises(ValueError, match="every vector is zero"):
        adl.closeness(np.ones(4), np.zeros((2, 4)), n_random=20)


@pytest.mark.parametrize("outcome", ["supports", "mixed", "contradicts"])
def test_the_planted_concept_rule_against_random_directions(outcome):
    """The concept rule on one direction (the gated connective's): aligned with it beats every random direction, a
    weak tilt lies between the median and the 5 % tail, orthogonal loses to the median."""
    c = _latents(m=1)
    inside, orth = c[0] / np.linalg.norm(c[0]), _orthogonal(c)
    tilt = {"supports": 1.0, "mixed": 0.13, "contradicts": 0.0}[outcome]
    close = adl.closeness(tilt * inside + np.sqrt(1 - tilt ** 2) * orth, c, n_random=400, seed=0)
    v, e = claims.adl_concept_verdict(close)
    assert v == outcome, (close["stat"], np.median(close["random"]), close["p"], e)
    assert e.startswith("|cos| with the planted concept's direction") and "of 400" in e


def test_the_planted_concept_rule_without_a_concept_is_not_tested():
    v, e = claims.adl_concept_verdict(None)
    assert v == "not tested" and "plants no distilled-only concept" in e


def test_word_token_ids_prefer_single_tokens_and_fall_back_to_the_first(tiny_tokenizer):
    enc = lambda w: tiny_tokenizer.encode(w, add_special_tokens=False)
    assert len(enc(" Wait")) == 1 and len(enc("zzqxj")) > 1 and len(enc(" zzqxj")) > 1
    ids = adl.word_token_ids(tiny_tokenizer, ["Wait", " Wait", "zzqxj"])
    assert enc(" Wait")[0] in ids and ids[-1] == enc("zzqxj")[0] and len(ids) == len(set(ids))
    assert enc("zzqxj")[0] not in adl.word_token_ids(tiny_tokenizer, ["Wait"])


def test_the_lens_table_lines_up_each_lens_per_category():
    features = pd.DataFrame({"relative_norm": [0.2, 0.95, 0.99, 0.97], "frequency": [0.1, 0.1, 0.2, 0.0],
                             "label": ["self_reflection", "deductive", "deductive", "deductive"],
                             "auroc_self_reflection": [0.9, 0.2, 0.6, 1.0], "auroc_deductive": [0.1, 0.8, 0.7, 1.0]})
    tokens = {"self_reflection": [2], "deductive": [0, 1], "gated connective": [3]}
    logits = {"distilled": np.array([0.0, 1.0, 5.0, 2.0]), "base": np.array([3.0, 0.0, -1.0, 1.0])}
    meta = {"label": np.array([1, 1, 2, 0, -1]), "token_id": np.array([2, 3, 3, 0, 1])}
    t = records.adl_lens_table(tokens, logits, features, meta=meta, decode=lambda ids: f"t{ids[0]}")
    assert t.loc["deductive", "ADL: tokens ranked"] == "'t0' 't1'"
    # distilled-only: latents 1 and 2 (latent 3 never fires, latent 0 is base-leaning)
    assert t.loc["deductive", "crosscoder: distilled-only latents labelled so"] == 2
    assert t.loc["self_reflection", "crosscoder: distilled-only latents labelled so"] == 0
    assert t.loc["self_reflection", "crosscoder: best score (distilled-only)"] == 0.6
    assert t.loc["self_reflection", "crosscoder: score"] == "auroc"
    assert t.loc["self_reflection", "ADL: rank in distilled lens"] == 0 and t.loc["deductive", "ADL: rank in base lens"] == 0
    assert t.loc["gated connective", "ADL: rank in distilled lens"] == 1
    assert np.isnan(t.loc["gated connective", "crosscoder: best score (distilled-only)"])
    assert t.loc["self_reflection", "planted: tokens in its moves"] == 2
    assert t.loc["gated connective", "store: occurrences of the ranked tokens"] == 2
    assert np.isnan(t.loc["gated connective", "planted: tokens in its moves"])


def test_the_random_direction_plot_is_labelled_and_marks_the_statistic():
    close = adl.closeness(_latents(m=1)[0], _latents(m=1), n_random=30)
    fig = adl.plot_against_random(close, "|cos|", "a title")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "|cos|" and ax.get_ylabel() and ax.get_title() == "a title"
    assert ax.lines[0].get_xdata()[0] == pytest.approx(close["stat"])
    assert any("30 random" in t for t in ax.get_legend_handles_labels()[1])
