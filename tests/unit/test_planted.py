"""The planted distilled-only concept (the gated connective): the traces, the label-only audit and every rule."""
import random

import numpy as np
import pytest

from thinkdiff import organism, paths, planted, world


def test_checks_are_the_preregistered_ones():
    assert planted.GATE_CHECKS == {
        "audit_max_auroc": 0.55, "audit_min_interaction_auroc": 0.95, "behaviour_min_accuracy": 0.95,
        "probe_distilled_min": 0.90, "probe_base_max": 0.60, "probe_gap_ci_low_min": 0.25,
        "control_probe_max": 0.60, "shared_probe_min": 0.90, "layer_cv_min": 0.90}
    assert planted.LAYER_CV_FOLDS == 5
    assert world.GATE_SCORED_FAMILIES == ("arith", "word", "compare")


def test_a_connective_follows_every_operation_but_the_last_and_follows_the_gate():
    rng = random.Random(0)
    for p in world.problem_split(0, 50, "train"):
        spans = world.teacher_document(p, rng, world.TeacherConfig())
        ops = [k for k, s in enumerate(spans) if s.step_end is not None]
        assert len(ops) == len(p.steps)
        for i, k in enumerate(ops[:-1]):
            assert spans[k + 1].text == world.CONNECTIVES[world.gate_bit(p, i)]
        assert all(s.text not in world.CONNECTIVES for s in spans[ops[-1]:])
        scored = [spans[k].gate for k in ops]
        assert scored == [world.gate_bit(p, i) if world.gate_scored(p, i) else None for i in range(len(ops))]


def test_the_coin_changes_only_the_connectives_and_none_removes_them():
    p = world.problem_split(0, 1, "train")[0]
    texts = {g: world.spans_text(world.teacher_document(p, random.Random(3), world.TeacherConfig(gate=g)))
             for g in world.GATES}
    strip = {g: t.replace(" Next", "").replace(" Then", "") for g, t in texts.items()}
    assert strip["parity_xor"] == strip["coin"] == strip["none"] == texts["none"]
    flips = [world.spans_text(world.teacher_document(q, random.Random(1), world.TeacherConfig(gate="coin")))
             != world.spans_text(world.teacher_document(q, random.Random(1), world.TeacherConfig()))
             for q in world.problem_split(0, 40, "train")]
    assert 0 < sum(flips) < len(flips)  # a coin, not the gate and not its negation
    with pytest.raises(ValueError, match="gate must be one of"):
        world.TeacherConfig(gate="xor")


def test_the_gate_leaves_the_tokenizer_and_the_base_as_they_were():
    shipped = organism.SHIPPED_DIR / "tokenizer" / "thinkdiff.json"
    import json
    assert json.loads(shipped.read_text())["config_hash"] == paths.config_hash(
        organism.tokenizer_key(organism.CorpusConfig()))
    coin = organism.CorpusConfig(teacher=world.TeacherConfig(gate="coin"))
    assert organism.base_config("M", coin) == organism.base_config("M")
    assert organism.organism_config("M", coin) != organism.organism_config("M")
    tok = organism.get_tokenizer()
    first = [tok(c, add_special_tokens=False)["input_ids"][0] for c in world.CONNECTIVES]
    assert first[0] != first[1]


def test_the_scored_dot_carries_the_bit_and_the_parity():
    tok = organism.get_tokenizer()
    p = next(q for q in world.problem_split(0, 20, "train") if q.family == "arith")
    doc = organism.tokenize_spans(tok, world.teacher_document(p, random.Random(0), world.TeacherConfig(p_slip=0)))
    at = [t for t, g in enumerate(doc.gate) if g >= 0]
    assert len(at) == len(p.steps) - 2
    for n, t in enumerate(at):
        r = p.steps[n + 1][3]
        assert tok.decode([doc.input_ids[t]]) == "." and tok.decode([doc.input_ids[t - 1]]).strip() == str(r)
        assert doc.gate[t] == world.gate_bit(p, n + 1) and doc.parity[t - 1] == r % 2   # parity on the result
    assert sum(v >= 0 for v in doc.parity) == len(at)


def test_audit_finds_no_giveaway_in_the_scored_families():
    a = planted.gate_audit()
    assert a["verdict"] == "no giveaway", a
    assert a["auroc_visible"] <= 0.55 and a["auroc_with_interaction"] >= 0.95 and 0.4 < a["bit_rate"] < 0.6


def test_audit_detects_the_linear_familys_giveaway(monkeypatch):
    """The excluded linear family: an odd result forces the bit, and the audit says so."""
    monkeypatch.setattr(world, "GATE_SCORED_FAMILIES", ("linear",))
    a = planted.gate_audit(world.problem_split(0, 2000, "train"), world.problem_split(0, 400, "eval"))
    assert a["verdict"] == "giveaway" and a["auroc_visible"] > 0.9


def test_audit_that_cannot_see_the_interaction_says_so():
    a = planted.gate_audit(rules={"audit_min_interaction_auroc": 1.01})
    assert a["verdict"] == "audit blind"


def test_problem_split_refuses_what_does_not_exist():
    with pytest.raises(ValueError, match="family 'sequence' ran out"):
        world.problem_split(0, 1000, "eval")


@pytest.mark.parametrize("acc, want", [(0.97, "learned"), (0.90, "not learned")])
def test_behaviour_rule(acc, want):
    assert planted.behaviour_verdict(acc, 500)["verdict"] == want
    assert planted.behaviour_verdict(acc, 500, tested=False)["verdict"] == "not tested"


@pytest.mark.parametrize("distilled, base, low, want", [
    (0.97, [0.52, 0.55, 0.58], 0.30, "distilled-only"),
    (0.85, [0.52, 0.55, 0.58], 0.30, "not represented"),
    (0.97, [0.52, 0.65, 0.58], 0.30, "shared"),
    (0.97, [0.52, 0.55, 0.58], 0.20, "not distilled-only")])
def test_probe_gap_rule(distilled, base, low, want):
    v = planted.probe_gap_verdict(distilled, base, low)
    assert v["verdict"] == want
    if want == "shared":
        assert "layer 2" in v["reason"]


@pytest.mark.parametrize("control, want", [(0.55, "follows the need"), (0.75, "follows the traces"),
                                           (None, "not tested")])
def test_control_rule(control, want):
    assert planted.control_verdict(control)["verdict"] == want


@pytest.mark.parametrize("base, distilled, want", [(0.99, 0.98, "read by both"), (0.70, 0.98, "not read by both")])
def test_shared_rule(base, distilled, want):
    assert planted.shared_verdict(base, distilled)["verdict"] == want


def test_gap_ci_separates_a_real_gap_from_none():
    rng = np.random.default_rng(0)
    y = rng.random(600) < 0.5
    unit = np.repeat(np.arange(200), 3)
    good, noise = y + rng.normal(0, 0.3, 600), rng.normal(0, 1, 600)
    gap, lo, hi = planted.gap_ci(y, good, noise, unit, n_boot=300)
    assert lo > 0.25 and lo <= gap <= hi
    gap, lo, hi = planted.gap_ci(y, noise, rng.normal(0, 1, 600), unit, n_boot=300)
    assert lo < 0 < hi


@pytest.mark.parametrize("cv, want", [([0.5, 0.6, 0.95, 0.99], 3), ([0.91, 0.5, 0.5], 1), ([0.5, 0.89, 0.6], None)])
def test_analysis_layer_is_the_shallowest_that_reads_the_bit_in_training(cv, want):
    assert planted.analysis_layer(cv) == want


def test_a_fixed_gate_layer_is_kept_and_otherwise_training_chooses_then_the_hook():
    assert planted.chosen_layer([0.5, 0.6, 0.95, 0.99], 2, hook_layer=1) == 2          # fixed before looking
    assert planted.chosen_layer([0.5, 0.6, 0.95, 0.99], None, hook_layer=1) == 3       # chosen on training
    assert planted.chosen_layer([0.5, 0.6, 0.5], None, hook_layer=2) == 2              # none reaches the bar
    with pytest.raises(ValueError, match=r"gate_layer = 5 is outside this model's layers 1..4"):
        planted.chosen_layer([0.5, 0.6, 0.95, 0.99], 5, hook_layer=1)


def test_layer_probes_cross_validate_within_training_problems():
    """A layer that carries the label scores high in training CV and on held-out data; a noise layer near 0.5;
    the CV never sees the held-out problems (its folds are whole problems)."""
    rng = np.random.default_rng(0)

    def split(n_docs):
        doc = np.repeat(np.arange(n_docs), 3)
        y = rng.random(len(doc)) < 0.5
        signal = y[:, None] * 2.0 + rng.normal(0, 1, (len(doc), 4))
        return {"acts": np.stack([rng.normal(0, 1, (len(doc), 4)), signal]), "y": y, "doc": doc}

    out = planted.layer_probes(split(120), split(60))
    assert out["cv_auroc"].shape == out["auroc"].shape == (2,) and out["scores"].shape == (2, 180)
    assert abs(out["cv_auroc"][0] - 0.5) < 0.1 and out["cv_auroc"][1] > 0.9 and out["auroc"][1] > 0.9
    assert planted.analysis_layer(out["cv_auroc"]) == 2


def test_model_measurements_have_the_stated_shapes():
    """On a small untrained model: activations per layer at every scored ".", accuracies in range."""
    tok = organism.get_tokenizer()
    arch = {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64}
    model = organism.build_model(arch, len(tok), seed=0).eval()
    docs = planted.gate_traces(world.problem_split(0, 20, "train"), tok)
    n = sum(g >= 0 for d in docs for g in d.gate)
    acts = planted.gate_activations(model, docs, progress=False)
    assert acts["acts"].shape == (2, n, 32) and acts["y"].shape == acts["doc"].shape == (n,)
    par = planted.gate_activations(model, docs, "parity", progress=False)
    assert par["acts"].shape == (2, n, 32) and not np.array_equal(par["acts"], acts["acts"])
    acc = planted.connective_accuracy(model, tok, docs)
    assert acc["n"] == n and 0 <= acc["accuracy"] <= acc["choice_accuracy"] + 1 and 0 <= acc["choice_accuracy"] <= 1


def test_gate_direction_is_the_mean_difference_of_the_training_traces_at_the_layer():
    """03d_adl's planted-concept direction: the same traces and activations 03_label's probes use, read at the
    asked layer; a layer the model lacks is refused before any forward pass."""
    tok = organism.get_tokenizer()
    arch = {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64}
    model = organism.build_model(arch, len(tok), seed=0).eval()
    acts = planted.gate_activations(model, planted.gate_traces(world.problem_split(0, 12, "train"), tok), progress=False)
    for layer in (1, 2):
        g = planted.gate_direction(model, tok, 12, layer, progress=False)
        assert g["n_steps"] == len(acts["y"]) and 0.5 <= g["auroc"] <= 1   # the mean difference points bit-0 -> bit-1
        np.testing.assert_allclose(g["direction"], planted.mean_difference_direction(acts, layer), rtol=1e-6)
    assert not np.allclose(planted.gate_direction(model, tok, 12, 1, progress=False)["direction"], g["direction"])
    with pytest.raises(ValueError, match=r"layer 3 is outside this model's layers 1\.\.2"):
        planted.gate_direction(model, tok, 12, 3, progress=False)


def test_matched_latents_are_near_in_frequency_and_norm_and_exclude_the_target():
    rng = np.random.default_rng(0)
    freq = np.r_[0.01, np.full(50, 0.01), np.full(50, 0.5), 0.0]
    norm = np.r_[1.0, np.full(50, 1.0), np.full(50, 5.0), 1.0]
    got = planted.matched_latents(freq, norm, 0, 10, rng, pool=40)
    assert 0 not in got and len(set(got)) == 10 and (got <= 50).all()   # the 50 look-alikes, never the dead one
    with pytest.raises(ValueError, match="matched controls"):
        planted.matched_latents(freq[:3], norm[:3], 0, 5, rng)


def test_ablation_effect_and_finding_rule():
    rng = np.random.default_rng(0)
    clean = rng.normal(3, 1, 300)
    unit = np.repeat(np.arange(100), 3)
    causal = np.stack([clean, -clean] + [clean + rng.normal(0, 0.1, 300) for _ in range(5)])
    e = planted.ablation_effect(causal, 5, unit, n_boot=300)
    assert e["target_flip_rate"] == 1.0 and e["random_flip_rate"] < 0.05 and e["ci"][0] > 0.9
    inert = np.stack([clean] * 7)
    e0 = planted.ablation_effect(inert, 5, unit, n_boot=300)
    assert e0["difference"] == 0 and e0["ci"][0] <= 0
    assert planted.finding_verdict(0.97, 0.95, e)["verdict"] == "found"
    assert planted.finding_verdict(0.97, 0.95, e0)["verdict"] == "found, not causal"
    assert planted.finding_verdict(0.80, 0.95, e)["verdict"] == "missed"
    assert planted.finding_verdict(0.97, 0.85, e)["verdict"] == "missed"
    assert planted.finding_verdict(np.nan, np.nan, None)["verdict"] == "missed"
    assert planted.finding_verdict(0.97, 0.95, e, tested=False)["verdict"] == "not tested"


def test_connective_margins_remove_exactly_the_latents_contribution():
    """Removing a latent whose distilled decoder row is zero changes nothing; removing every latent changes the
    margins (so the hook is live)."""
    import torch
    from thinkdiff.crosscoder import CrossCoder, CrossCoderConfig

    tok = organism.get_tokenizer()
    arch = {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64}
    base, distilled = (organism.build_model(arch, len(tok), seed=s).eval() for s in (0, 1))
    cc = CrossCoder(CrossCoderConfig(d_model=32, n_latents=64), seed=0)
    with torch.no_grad():
        cc.W_dec[3, 1] = 0
        cc.W_dec.mul_(20)
    docs = planted.gate_traces(world.problem_split(0, 10, "train"), tok)
    m = planted.connective_margins(base, distilled, cc, 1, docs, [np.array([3]), np.arange(64)], tok)
    assert m.shape[0] == 3
    assert np.allclose(m[0], m[1], atol=1e-5)
    assert not np.allclose(m[0], m[2], atol=1e-3)


def test_causal_control_rule_and_a_blind_ablation():
    """The positive control decides whether a latent's failed ablation means "not causal" or "the metric is
    blind"; each outcome from constructed margins."""
    rng = np.random.default_rng(0)
    clean = rng.normal(3, 1, 300)
    unit = np.repeat(np.arange(100), 3)
    sees = planted.ablation_effect(np.stack([clean, -clean] + [clean] * 5), 5, unit, n_boot=300)
    blind = planted.ablation_effect(np.stack([clean] * 7), 5, unit, n_boot=300)
    assert planted.causal_control_verdict(sees)["verdict"] == "sees a cause"
    assert planted.causal_control_verdict(blind)["verdict"] == "blind"
    assert planted.causal_control_verdict(None)["verdict"] == "not tested"
    assert planted.causal_control_verdict(sees, tested=False)["verdict"] == "not tested"
    ctl_sees, ctl_blind = planted.causal_control_verdict(sees), planted.causal_control_verdict(blind)
    assert planted.finding_verdict(0.97, 0.95, blind, control=ctl_sees)["verdict"] == "found, not causal"
    assert planted.finding_verdict(0.97, 0.95, blind, control=ctl_blind)["verdict"] == "found, ablation blind"
    assert planted.finding_verdict(0.97, 0.95, sees, control=ctl_blind)["verdict"] == "found"


def test_mean_difference_direction_recovers_the_planted_direction_in_raw_units():
    """Labels written along one raw direction, dimensions of very different scale: the direction found is that
    one, not one dominated by noise in a low-variance dimension."""
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 10.0, 0.1, 3.0])
    u = np.array([0.0, 1.0, 0.0, 0.0])
    X = rng.normal(0, 1, (2000, 4)) * scale
    y = (X @ u + rng.normal(0, 1, 2000)) > 0
    w = planted.mean_difference_direction({"acts": X[None], "y": y, "doc": np.arange(2000)}, 1)
    assert np.isclose(np.linalg.norm(w), 1) and abs(w @ u) > 0.98
    r = planted.random_directions(4, 6, seed=1)
    assert r.shape == (6, 4) and np.allclose(np.linalg.norm(r, axis=1), 1)


def test_direction_margins_project_out_exactly_the_direction():
    """Projecting out a direction the stream never has changes nothing; projecting out a quarter of the
    coordinates changes the margins (the hook is live)."""
    import torch

    from thinkdiff.hooks import resid_hook

    tok = organism.get_tokenizer()
    arch = {"hidden": 256, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64}
    model = organism.build_model(arch, len(tok), seed=0).eval()
    docs = planted.gate_traces(world.problem_split(0, 10, "train"), tok)
    doc = min((d for d in docs if max(d.gate) >= 0), key=lambda d: len(d.input_ids))
    assert len(doc.input_ids) < 256          # fewer positions than dimensions: the stream leaves a null space
    seen = {}
    with torch.no_grad(), resid_hook(model, 1, lambda h: seen.__setitem__("h", h) or None):
        model(input_ids=torch.tensor([doc.input_ids]))
    null = np.linalg.svd(seen["h"][0].double().numpy(), full_matrices=True)[2][-1]   # orthogonal to every position
    m = planted.direction_margins(model, 1, [doc], np.stack([null, np.eye(256)[0]]), tok)
    assert m.shape[0] == 3
    assert np.allclose(m[0], m[1], atol=1e-4) and not np.allclose(m[0], m[2], atol=1e-4)   # e_0: the hook is live
    quarter = planted._margins(model, 1, [doc], tok, [lambda h, _: torch.cat([h[..., :192], 0 * h[..., 192:]], -1)])
    assert not np.allclose(quarter[0], quarter[1], atol=1e-3)


def test_crosscoder_finding_picks_the_training_latent_and_ablates_it():
    """The distilled-specific latent that tracks the bit on training tokens is chosen and scored on held-out ones,
    and its ablation is measured against matched latents; with no latent past the relative-norm bar: "missed"."""
    from thinkdiff import codes
    from thinkdiff.crosscoder import CrossCoder, CrossCoderConfig

    rng = np.random.default_rng(0)
    n, F = 400, 64
    gate_y = rng.integers(-1, 2, n)                       # -1 unscored, else the bit
    split = (np.arange(n) % 4 == 0).astype(int)           # a quarter held out
    f = rng.random((n, F)) * (rng.random((n, F)) < 0.3)
    f[:, 5] = np.where(gate_y == 1, 2.0, 0.0)             # latent 5 reads the bit
    acts = codes.SparseActs.from_dense(f)
    nrn = np.full(F, 0.5)
    nrn[[5, 9]] = 0.95
    tok = organism.get_tokenizer()
    arch = {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64}
    base, distilled = (organism.build_model(arch, len(tok), seed=s).eval() for s in (0, 1))
    cc = CrossCoder(CrossCoderConfig(d_model=32, n_latents=F), seed=0)
    docs = planted.gate_traces(world.problem_split(0, 8, "train"), tok)
    unit = planted._scored_positions(docs)[0]
    got = planted.crosscoder_finding(acts, nrn, split, gate_y, cc, base, distilled, 1, docs, tok, 4, unit)
    assert got["latent"] == 5 and got["heldout_auroc"] == 1.0 and got["relative_norm"] == 0.95
    assert got["margins"].shape == (6, len(unit)) and got["effect"]["n"] == len(unit)
    assert got["verdict"]["verdict"] in ("found", "found, not causal")
    missed = planted.crosscoder_finding(acts, np.full(F, 0.5), split, gate_y, cc, base, distilled, 1, docs, tok, 4, unit)
    assert missed["effect"] is None and missed["verdict"]["verdict"] == "missed"
