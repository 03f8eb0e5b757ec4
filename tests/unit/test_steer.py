"""Steering: alpha 0 is a no-op, the added vector is alpha * v in raw units at exactly the policy's positions,
batched == unbatched, controls have equal norm, and the sweep pairs steered with unsteered runs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from thinkdiff import paths, plots, steer

LAYER = 2
PROMPTS = ["Ann has 3 apples.", "<think> 2 + 5 = 7. Wait", "Therefore the answer is", "<think> 4 </think> Answer:",
           "Ben gives her 4 more apples. So"]


pytestmark = pytest.mark.usefixtures("one_thread")


class _CC:
    """A stand-in crosscoder: W_dec [F, n_models, d] in raw units, ReLU encoder."""

    def __init__(self, d=32, F=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W_dec = torch.randn(F, 2, d, generator=g)
        self.W_enc = torch.randn(2, d, F, generator=g) / d
        self.b_enc = torch.zeros(F)

    def encode(self, x):
        return torch.relu(torch.einsum("bmd,mdf->bf", x, self.W_enc) + self.b_enc)


def _capture_next_layer(model, store):
    """Record the input of layers[LAYER] (= resid_pre of block LAYER + 1 after the steering hook of layers[LAYER-1])."""
    def pre(_m, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        store.append(h.detach().clone())
    return model.model.layers[LAYER].register_forward_pre_hook(pre, with_kwargs=True)


def test_alpha_zero_reproduces_unsteered(tiny_pair, tiny_tokenizer):
    model = tiny_pair[1]
    v = torch.randn(32)
    plain = steer.generate_steered(model, tiny_tokenizer, PROMPTS, None, layer=LAYER, max_new_tokens=12, batch_size=2)
    zero = steer.generate_steered(model, tiny_tokenizer, PROMPTS, v, alpha=0.0, layer=LAYER, max_new_tokens=12,
                                  batch_size=2)
    assert plain.ids == zero.ids and plain.texts == zero.texts
    strong = steer.generate_steered(model, tiny_tokenizer, PROMPTS, 50 * v / v.norm(), alpha=1.0, layer=LAYER,
                                    max_new_tokens=12, batch_size=2)
    assert strong.ids != plain.ids  # the hook does act: a large vector changes greedy output


def test_hf_generate_agrees_unsteered(tiny_pair, tiny_tokenizer):
    """Our KV-cached loop reproduces transformers' own greedy generate (single prompt, no padding)."""
    model = tiny_pair[0]
    ids = tiny_tokenizer.encode(PROMPTS[0], add_special_tokens=False)
    ours = steer.generate_steered(model, tiny_tokenizer, [ids], None, layer=LAYER, max_new_tokens=10, eos_ids=())
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)
    assert ours.ids[0] == ref[0, len(ids):].tolist()


def test_batched_equals_unbatched(tiny_pair, tiny_tokenizer):
    model = tiny_pair[1]
    v = torch.randn(32, generator=torch.Generator().manual_seed(3))
    for vec, pos in ((None, "all"), (v, "all"), (v, "think")):
        one = steer.generate_steered(model, tiny_tokenizer, PROMPTS, vec, 2.0, LAYER, pos, 10, batch_size=1)
        many = steer.generate_steered(model, tiny_tokenizer, PROMPTS, vec, 2.0, LAYER, pos, 10, batch_size=5)
        assert one.ids == many.ids, pos
    # sampling: per-row generators make the draw independent of batch composition too
    a = steer.generate_steered(model, tiny_tokenizer, PROMPTS, v, 2.0, LAYER, "all", 10, do_sample=True, seed=7,
                               batch_size=1)
    b = steer.generate_steered(model, tiny_tokenizer, PROMPTS, v, 2.0, LAYER, "all", 10, do_sample=True, seed=7,
                               batch_size=4)
    assert a.ids == b.ids


def test_rows_that_finish_leave_the_batch_without_changing_any_row(tiny_pair, tiny_tokenizer, monkeypatch):
    """Rows ending at different steps are dropped from the batch (fewer row-forwards) and every row's tokens are
    those it generates alone, greedy and sampled, steered or not."""
    model = tiny_pair[1]
    v = torch.randn(32, generator=torch.Generator().manual_seed(3))
    for vec, sample in ((None, False), (None, True), (v / v.norm(), False)):
        kw = dict(layer=LAYER, max_new_tokens=12, do_sample=sample, seed=11, progress=False)
        free = steer.generate_steered(model, tiny_tokenizer, PROMPTS, vec, 0.5, batch_size=5, eos_ids=(), **kw)
        # an end token that rows first write at different steps (some early, some late or never)
        ends = [t for t in sorted({x for row in free.ids for x in row})
                if min(first := [row.index(t) if t in row else 12 for row in free.ids]) >= 1 and len(set(first)) > 1]
        assert ends, free.ids
        kw["eos_ids"] = {ends[0]}
        alone = steer.generate_steered(model, tiny_tokenizer, PROMPTS, vec, 0.5, batch_size=1, **kw)
        together = steer.generate_steered(model, tiny_tokenizer, PROMPTS, vec, 0.5, batch_size=5, **kw)
        assert together.ids == alone.ids and together.truncated == alone.truncated
        lengths = [len(x) for x in together.ids]
        assert min(lengths) < 11 and max(lengths) > min(lengths), lengths   # rows did end at different steps
        with monkeypatch.context() as m:     # finished rows ride along to the end
            m.setattr(steer, "DROP_FINISHED_ROWS", False)
            kept = steer.generate_steered(model, tiny_tokenizer, PROMPTS, vec, 0.5, batch_size=5, **kw)
        assert kept.ids == together.ids and together.n_forward_tokens < kept.n_forward_tokens


@pytest.mark.parametrize("positions", ["all", "generated", "think"])
def test_delta_is_alpha_v_at_policy_positions(tiny_pair, tiny_tokenizer, positions):
    """Steered minus unsteered residual = alpha * v exactly where the policy says, 0 elsewhere (incl. padding)."""
    model = tiny_pair[1]
    alpha, v = 1.5, torch.randn(32, generator=torch.Generator().manual_seed(5))
    sp = steer.special_ids(tiny_tokenizer)
    runs = {}
    for name, vec in (("plain", None), ("steered", v)):
        store = []
        h = _capture_next_layer(model, store)
        try:
            # 2 new tokens: step 1 reads the prompt, step 2 the first generated token
            g = steer.generate_steered(model, tiny_tokenizer, PROMPTS, vec, alpha, LAYER, positions, 2, batch_size=5)
        finally:
            h.remove()
        runs[name] = (g, store)
    (gp, sp_plain), (gs, sp_steer) = runs["plain"], runs["steered"]
    order = sorted(range(len(PROMPTS)), key=lambda i: len(gp.prompt_ids[i]))  # batch order inside the call
    T = max(len(p) for p in gp.prompt_ids)
    delta = sp_steer[0] - sp_plain[0]  # [B, T, d] prompt forward
    target = alpha * v
    for b, i in enumerate(order):
        p = gp.prompt_ids[i]
        want = steer._policy_mask(p, len(p), positions, sp)
        assert gs.prompt_steered[i] == want
        pad = T - len(p)
        assert torch.all(delta[b, :pad] == 0), "padding positions must be untouched"
        for t, w in enumerate(want):
            got = delta[b, pad + t]
            if w:
                torch.testing.assert_close(got, target, atol=1e-5, rtol=1e-5)
            else:
                assert torch.all(got == 0), (i, t)
        if positions == "generated":
            assert not any(want)
        if positions == "think":
            assert want == steer.think_states(p, sp["open"], sp["close"])
    if positions != "all":
        # rows whose prompt was not steered produce the same first token in both runs, so at step 2
        # (that token's position) the residual delta is again exactly alpha * v or 0
        d2 = sp_steer[1] - sp_plain[1]  # [B, 1, d]
        checked = 0
        for b, i in enumerate(order):
            if any(gs.prompt_steered[i]) or not gs.ids[i]:
                continue
            assert gp.ids[i][0] == gs.ids[i][0]
            checked += 1
            if gs.steered[i][0]:
                torch.testing.assert_close(d2[b, 0], target, atol=1e-4, rtol=1e-4)
            else:
                assert positions == "think" and torch.all(d2[b, 0] == 0)
        assert checked >= 2


class _Scripted(torch.nn.Module):
    """A stand-in causal LM whose next token is a fixed function of the current token, with an identity
    'layer' stack, so the steering mask during generation is visible directly in the layer outputs."""

    def __init__(self, table, vocab, d=8):
        super().__init__()
        self.table, self.vocab = table, vocab
        self.config = type("C", (), {"hidden_size": d})()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
        self.emb = torch.nn.Embedding(vocab, d)
        self.seen = []

    def forward(self, input_ids, **_):
        h = self.emb(input_ids) * 0
        for layer in self.model.layers:
            h = layer(h)
        self.seen.append(h.detach().clone())
        nxt = torch.tensor([[self.table.get(int(t), 0) for t in row] for row in input_ids])
        logits = torch.nn.functional.one_hot(nxt, self.vocab).float()
        return type("O", (), {"logits": logits})()


def test_think_tracking_during_generation(tiny_tokenizer):
    sp = steer.special_ids(tiny_tokenizer)
    o, c, eos = sp["open"], sp["close"], sp["eos"]
    x, y, z, w = (tiny_tokenizer.encode(t, add_special_tokens=False)[0] for t in ("A", "B", "C", "D"))
    assert len({x, y, z, w, o, c, eos}) == 7
    table = {x: o, o: y, y: z, z: c, c: w, w: eos}  # A -> <think> B C </think> D -> eos
    model = _Scripted(table, len(tiny_tokenizer))
    v = torch.ones(8)
    g = steer.generate_steered(model, tiny_tokenizer, [[x, x]], v, 1.0, 1, "think", 20)
    assert g.ids[0] == [o, y, z, c, w] and not g.truncated[0]
    assert g.regions[0] == [steer.THINK] * 4 + [steer.AFTER]
    assert g.steered[0] == [True, True, True, False, False]
    seen = torch.cat([s[0, :, 0] for s in model.seen])  # prompt A A, then fed tokens <think> B C </think> D
    assert seen.tolist() == [0, 0, 1, 1, 1, 0, 0]
    gen = steer.generate_steered(model, tiny_tokenizer, [[x, x]], v, 1.0, 1, "generated", 20)
    assert gen.steered[0] == [True] * 5 and gen.prompt_steered[0] == [False, False]


def test_steering_vector_units_and_random_control():
    cc = _CC()
    raw = steer.steering_vector(cc, 3, 1, "raw")
    torch.testing.assert_close(raw, cc.W_dec[3, 1])
    mx = steer.steering_vector(cc, 3, 1, "max_act", max_act=2.5)
    torch.testing.assert_close(mx, 2.5 * cc.W_dec[3, 1])
    acts = torch.randn(200, 2, 32)
    f = cc.encode(acts)[:, 3]
    via_acts = steer.steering_vector(cc, 3, 1, "max_act", acts=acts)
    torch.testing.assert_close(via_acts, float(f.max()) * cc.W_dec[3, 1])
    q90 = steer.steering_vector(cc, 3, 1, "max_act", acts=f, q=0.9)
    torch.testing.assert_close(q90.norm(), torch.quantile(f.double(), 0.9).float() * cc.W_dec[3, 1].norm())
    rn = steer.steering_vector(cc, 3, 0, "resid_norm", resid=acts)
    torch.testing.assert_close(rn.norm(), acts[:, 0].norm(dim=-1).mean())
    assert torch.nn.functional.cosine_similarity(rn, cc.W_dec[3, 0], dim=0) > 0.9999
    r1, r2 = steer.random_direction(mx, 0), steer.random_direction(mx, 0)
    torch.testing.assert_close(r1.norm(), mx.norm())
    assert torch.equal(r1, r2) and not torch.equal(r1, steer.random_direction(mx, 1))
    with pytest.raises(ValueError, match="unit"):
        steer.steering_vector(cc, 3, 1, "bogus")
    with pytest.raises(ValueError, match="max_act"):
        steer.steering_vector(cc, 3, 1, "max_act")
    with pytest.raises(ValueError, match="model_index"):
        steer.steering_vector(cc, 3, 2)


def test_bad_inputs(tiny_pair, tiny_tokenizer):
    m = tiny_pair[0]
    with pytest.raises(ValueError, match="layer"):
        steer.generate_steered(m, tiny_tokenizer, PROMPTS, None, layer=9)
    with pytest.raises(ValueError, match="positions"):
        steer.generate_steered(m, tiny_tokenizer, PROMPTS, None, positions="prompt")
    with pytest.raises(ValueError, match="d_model"):
        steer.generate_steered(m, tiny_tokenizer, PROMPTS, torch.ones(7))
    with pytest.raises(ValueError, match="list"):
        steer.generate_steered(m, tiny_tokenizer, "one string", None)


def test_metrics_and_markers(tiny_tokenizer):
    count = steer.regex_marker_counter(tiny_tokenizer)
    ids = tiny_tokenizer.encode("Wait, so 3. However butter. Hmm therefore alternatively", add_special_tokens=False)
    assert count(ids) == {"self_reflection": 2, "deductive": 2, "alternative": 1, "contrastive": 1}
    assert steer.repeated_ngram_share([1, 2, 3, 4, 5]) == 0.0
    assert steer.repeated_ngram_share([1, 2, 3, 4] * 4) == pytest.approx(1 - 4 / 13)
    assert steer.token_regions([5, 1, 6, 2, 7], 1, 2) == [0, 1, 1, 1, 2]


def test_sweep_and_summary(tiny_pair, tiny_tokenizer, tmp_path, monkeypatch):
    model = tiny_pair[1]
    v = torch.randn(32, generator=torch.Generator().manual_seed(0))
    v = 3 * v / v.norm()
    problems = list(range(len(PROMPTS)))

    def score(text, problem):
        return dict(correct=problem % 2 == 0, well_formed="</think>" in text)

    dirs = {"latent": v, "random": steer.random_direction(v, 1)}
    df = steer.steering_sweep(model, tiny_tokenizer, PROMPTS, dirs, [-2, 0, 2], LAYER, "all", problems, score,
                              max_new_tokens=8, batch_size=5)
    assert set(df["condition"]) == {"unsteered", "latent", "random"}
    assert len(df) == len(PROMPTS) * 5 and set(df["alpha"]) == {-2.0, 0.0, 2.0}
    assert np.allclose(df.loc[df.condition == "latent", "added_norm"], 6.0)
    s = steer.summarize_sweep(df, n_boot=200)
    row = s[(s.condition == "unsteered") & (s.metric == "n_tokens")].iloc[0]
    assert row["diff"] == 0 and row["diff_lo"] == 0 and not row["excludes_zero"]
    for _, r in s.iterrows():
        assert r["mean_lo"] - 1e-9 <= r["mean"] <= r["mean_hi"] + 1e-9
    # correctness depends only on the problem here, so the paired difference is exactly 0
    assert (s.loc[s.metric == "correct", "diff"] == 0).all()
    monkeypatch.setattr(paths, "FIGURES_DIR", tmp_path)
    assert plots.savefig(steer.plot_dose_response(s, ["n_tokens", "rep4"]), "dose").exists()
    page = steer.side_by_side_html(df, [0, 1], [("latent", 2)], prompts=PROMPTS)
    assert page.count("<tr>") == 3 and "&lt;think&gt;" in page
    with pytest.raises(ValueError, match="greedy"):
        steer.steering_sweep(model, tiny_tokenizer, PROMPTS, dirs, [1], LAYER, seeds=(0, 1))


def _gen_sweep(n, arms, seed=0):
    """A sweep table: unsteered and each arm's generations on the same n prompts. ``arms``: condition -> dict of
    per-generation column values (scalars or [n] arrays) added to the unsteered row's (tokens ~100, rate ~2,
    all correct and well formed, rep4 0.02)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        noise = rng.normal(0, 2)
        u = dict(prompt_idx=i, replicate=0, n_tokens=100 + noise, rate_self_reflection=2 + rng.normal(0, 0.3),
                 correct=1.0, well_formed=1.0, rep4=0.02)
        rows.append(dict(condition="unsteered", alpha=0.0, **u))
        for cond, delta in arms.items():
            r = dict(u, condition=cond, alpha=1.0, n_tokens=u["n_tokens"] + rng.normal(0, 2),
                     rate_self_reflection=u["rate_self_reflection"] + rng.normal(0, 0.3))
            for k, v in delta.items():
                v = v[i] if np.ndim(v) else v
                r[k] = v if k in ("correct", "well_formed") else r[k] + v
            rows.append(r)
    return pd.DataFrame(rows)


def test_claim6_needs_a_rise_beyond_unsteered_and_control_with_intact_output():
    from thinkdiff import claims

    def v6(sr, ctrl=None, n=100):
        return claims.claim6_verdict(_gen_sweep(n, {"sr": sr, "rand": ctrl or {}}), "sr", "rand", 1.0, n_boot=300)

    up = {"n_tokens": 30, "rate_self_reflection": 5}
    assert v6(up)[0] == "supports"
    assert v6({})[0] == "contradicts"                                    # nothing rises
    assert v6(up, ctrl=up)[0] == "contradicts"                           # the random vector raises both as much
    assert v6({"n_tokens": 30})[0] == "mixed"                            # longer, no more self-reflection
    v, e = v6({**up, "rep4": 0.3})                                       # longer through loops
    assert v == "mixed" and "repeated-4-gram" in e
    broken = np.r_[np.zeros(30), np.ones(70)]
    assert v6({**up, "well_formed": broken})[0] == "mixed"               # 30 % of outputs lose their form
    v, e = v6(up, n=10)
    assert v == "not tested" and "10 prompts" in e
    with pytest.raises(ValueError, match="alpha"):
        claims.claim6_verdict(_gen_sweep(30, {"sr": up, "rand": {}}), "sr", "rand", 2.0)


def test_claim7_needs_shortening_beyond_unsteered_and_control_with_accuracy_kept():
    from thinkdiff import claims

    def v7(ded, ctrl=None, n=100):
        return claims.claim7_verdict(_gen_sweep(n, {"ded": ded, "ctrl": ctrl or {}}), "ded", "ctrl", 1.0, n_boot=300)

    assert v7({"n_tokens": -20})[0] == "supports"
    # the random control shortens as much: no shortening beyond it
    assert v7({"n_tokens": -20}, ctrl={"n_tokens": -20})[0] == "contradicts"
    # the control lengthens (runs to the cap) and deductive steering changes nothing: the difference in
    # differences would be -30 tokens, but nothing got shorter
    assert v7({}, ctrl={"n_tokens": 30})[0] == "contradicts"
    # shorter, but a tenth of the answers break: accuracy is not non-inferior
    broke = np.r_[np.zeros(10), np.ones(90)]
    v, e = v7({"n_tokens": -20, "correct": broke})
    assert v == "mixed" and "unchanged on 90%" in e
    v, e = v7({"n_tokens": -20}, n=12)
    assert v == "not tested" and "12 prompts" in e
    with pytest.raises(ValueError, match="alpha"):
        claims.claim7_verdict(_gen_sweep(30, {"ded": {}, "ctrl": {}}), "ded", "ctrl", 2.0)


def test_newcombe_paired_interval_matches_the_reference_and_has_width_without_discordance():
    from thinkdiff.stats import paired_proportion_diff_ci

    def pairs(a, b, c, d):   # a: both 1, b: x only, c: y only, d: neither
        return np.r_[np.ones(a + b), np.zeros(c + d)], np.r_[np.ones(a), np.zeros(b), np.ones(c), np.zeros(d)]

    # Fagerland, Lydersen & Laake (2017), ch. 8, Cavo et al. (2012): -0.0621 (95% CI -0.1186 to -0.0046)
    diff, lo, hi = paired_proportion_diff_ci(*pairs(59, 6, 16, 80))
    assert (round(diff, 4), round(lo, 4), round(hi, 4)) == (-0.0621, -0.1186, -0.0046)
    # no discordant pair: a percentile bootstrap says [0, 0]; this interval narrows with n instead
    w20, w400 = (paired_proportion_diff_ci(np.ones(n), np.ones(n)) for n in (20, 400))
    assert w20[1] < -0.15 and -0.01 < w400[1] < 0 and w20[0] == 0.0
    with pytest.raises(ValueError, match="binary"):
        paired_proportion_diff_ci(np.array([0.5, 1.0]), np.array([1.0, 1.0]))


def test_sweep_summary_adjusts_p_values_over_the_steered_conditions():
    df = _gen_sweep(40, {"ded": {"n_tokens": -20}, "ctrl": {}})
    s = steer.summarize_sweep(df, ["n_tokens", "correct"], n_boot=200)
    tok = s[(s.metric == "n_tokens") & (s.condition != "unsteered")]
    assert (tok.n_comparisons == 2).all() and (tok.p_bh >= tok.p).all()
    assert tok.set_index("condition").loc["ded", "p_bh"] < 1e-3          # 20 tokens shorter on every prompt
    assert s[(s.metric == "correct") & (s.condition == "ctrl")].p.iloc[0] == 1.0     # all differences zero


def test_pick_latents_rule():
    scores = pd.DataFrame({"self_reflection": [0.9, 0.8, 0.7, 0.95, 0.6], "deductive": [0.5, 0.9, 0.6, 0.99, 0.7]})
    nrn = np.array([0.95, 0.8, 0.5, 0.3, 0.52])
    got = steer.pick_latents(scores, nrn, specific=0.7).set_index("role")
    # latent 3 scores best on both but is base-leaning: excluded from the distilled-specific picks
    assert got.loc["self_reflection", "latent"] == 0 and got.loc["deductive", "latent"] == 1
    assert got.loc["shared", "latent"] == 2 and got.loc["shared", "relative_norm"] == 0.5
    with pytest.raises(ValueError, match="widen"):
        steer.pick_latents(scores, nrn, specific=0.99)
    with pytest.raises(ValueError, match="lacks"):
        steer.pick_latents(scores[["deductive"]], nrn)


def test_a_category_without_a_distilled_specific_latent_leaves_its_claim_not_tested():
    scores = pd.DataFrame({"self_reflection": [0.9, 0.8, 0.7, 0.95, 0.6], "deductive": [np.nan, 0.9, 0.6, 0.99, 0.7]})
    nrn = np.array([0.95, 0.8, 0.5, 0.3, 0.92])
    both = steer.pick_latents(scores, nrn, specific=0.9, strict=False).set_index("role")
    assert both["found"].all() and steer.claims_without_latents(both.reset_index()) == {}
    # at nrn >= 0.93 the only deductive candidate (latent 0) has no finite score: claim 7 is not tested, claim 6 still is
    got = steer.pick_latents(scores, nrn, specific=0.93, strict=False)
    assert list(got[got.found].role) == ["self_reflection", "shared"]
    assert got.set_index("role").loc["deductive", "latent"] == -1
    untested = steer.claims_without_latents(got)
    assert set(untested) == {"7"} and untested["7"]["verdict"] == "not tested"
    assert "nrn >= 0.93" in untested["7"]["evidence"]
    # no distilled-specific latent at all: neither steering claim is tested
    none = steer.pick_latents(scores, nrn, specific=0.99, strict=False)
    assert set(steer.claims_without_latents(none)) == {"6", "7"} and list(none[none.found].role) == ["shared"]
    with pytest.raises(ValueError, match="no row for role"):
        steer.claims_without_latents(none[none.role != "deductive"])


def test_sweep_grid_per_direction_and_overhead(tiny_pair, tiny_tokenizer):
    model = tiny_pair[1]
    v = torch.randn(32, generator=torch.Generator().manual_seed(0))
    dirs = {"a": v, "b": steer.random_direction(v, 1)}
    df = steer.steering_sweep(model, tiny_tokenizer, PROMPTS[:2], dirs, {"a": [-1, 1], "b": [1]}, LAYER,
                              max_new_tokens=4, batch_size=2, include_text=False)
    assert sorted(map(tuple, df[["condition", "alpha"]].drop_duplicates().to_numpy().tolist())) == [
        ("a", -1.0), ("a", 1.0), ("b", 1.0), ("unsteered", 0.0)]
    with pytest.raises(ValueError, match="exactly the directions"):
        steer.steering_sweep(model, tiny_tokenizer, PROMPTS[:2], dirs, {"a": [1]}, LAYER)
    bench = steer.hook_overhead(model, tiny_tokenizer, PROMPTS[:2], v, LAYER, n_tokens=3, repeats=1, batch_size=2)
    assert bench["unsteered_tok_s"] > 0 and bench["steered_tok_s"] > 0
    assert bench["overhead"] == pytest.approx(1 - bench["steered_tok_s"] / bench["unsteered_tok_s"])


def test_matched_control_latent_is_live_near_in_norm_and_scale_and_seeded():
    nrn = np.r_[np.full(50, 0.95), np.full(50, 0.5)]
    max_act = np.r_[np.linspace(1, 50, 50), np.linspace(1, 50, 50)]
    live = np.ones(100, bool)
    live[40:45] = False
    j = steer.matched_control_latent(30, nrn, max_act, live, exclude=[31], seed=0, pool=4)
    assert j not in (30, 31) and nrn[j] >= 0.85 and abs(max_act[j] - max_act[30]) <= 3 and live[j]
    assert j == steer.matched_control_latent(30, nrn, max_act, live, exclude=[31], seed=0, pool=4)
    alone = np.full(100, 0.5)
    alone[30] = 0.95                                     # the only distilled-side latent: nothing comparable
    with pytest.raises(ValueError, match="matched control"):
        steer.matched_control_latent(30, alone, max_act, live)
    from thinkdiff import codes as C
    acts = C.SparseActs.from_dense(np.array([[0.0, 2.0], [3.0, 1.0]]))
    assert acts.max_activation().tolist() == [3.0, 2.0]
