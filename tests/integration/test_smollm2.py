"""The smollm2-135m pair rebuilt as a fresh clone rebuilds it: the exact GGUF -> Qwen2 conversion, the rebuild of
the distilled and control models from GGUF + shipped adapter (checked against the adapters' manifests), and the
pipeline on the smoke run (configs/smollm2-smoke.toml: tiny parameters, nothing judged). The rebuilt pair is the
``smollm2_rebuilt`` fixture of tests/conftest.py; the teacher and its labels are tested in tests/unit/test_smollm2.py,
the notebooks on the smoke run in tests/e2e/test_smollm2.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from thinkdiff import (harvest, organism, pairs, pipeline, precision, smollm2, smollm2_corpus,
                       smollm2_distill, smollm2_eval)


def test_conversion_is_exact_and_the_rebuild_matches_the_manifest(smollm2_rebuilt):
    base, distilled = smollm2_rebuilt
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


def test_control_adapter_sees_the_distillations_tokens_on_champ_text(smollm2_rebuilt):
    """Claim 1's null partner: index by index, the control's example is CHAMP text exactly as long as the
    distillation's, ends in EOS and carries as many loss tokens; it shares no example with the traces."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_rebuilt[0])
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


def test_the_control_rebuild_matches_its_manifest(smollm2_rebuilt):
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


def test_smoke_run_harvests_labelled_store_and_trains(smollm2_smoke_run):
    run = smollm2_smoke_run
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


def test_bf16_and_float32_compute_agree_within_the_stated_tolerance(smollm2_smoke_run):
    """The same pair loaded to compute in float32 and in bf16 (either may be what "auto" picks on a CPU): activations
    at the hook, the smoke crosscoder's codes and greedy tokens (where float32's top two are not near-tied) agree
    within ``precision.AGREEMENT``. Small on purpose: bf16 is emulated, ~50x slower, on some CPUs."""
    tol = precision.AGREEMENT
    loaded = {dt: pairs.load("smollm2-135m", model_dtype=dt) for dt in ("float32", "bfloat16")}
    assert loaded["float32"].base.dtype == torch.float32 and loaded["bfloat16"].base.dtype == torch.bfloat16
    tok = loaded["float32"].tokenizer
    docs = [d for d in smollm2_smoke_run.documents() if d.kind == "teacher"][:1]
    x = torch.tensor([list(d.input_ids[:32]) for d in docs])
    acts = {dt: [harvest.LayerReader(m, tok, p.layer)(x, torch.ones_like(x)) for m in p.models]
            for dt, p in loaded.items()}
    for a, b in zip(acts["float32"], acts["bfloat16"]):
        assert ((b - a).norm() / a.norm()).item() <= tol["activations_rel_l2"]
    cc = smollm2_smoke_run.crosscoder("relu")
    with torch.no_grad():
        f32, f16 = (cc.encode(torch.stack(acts[dt], 2)[:, 1:].reshape(-1, 2, cc.d_model)) for dt in loaded)
    assert ((f16 - f32).norm() / f32.norm()).item() <= tol["codes_rel_l2"]
    assert ((f16 > 0) == (f32 > 0)).float().mean().item() >= tol["codes_active_agreement"]
    # greedy: float32's continuation, then bf16's argmax on the same prefixes; a near-tie may go either way
    n_new, prompt = 6, x[:1, :20]
    seq = loaded["float32"].distilled.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                                              do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        l32, l16 = (loaded[dt].distilled(seq).logits[0, prompt.shape[1] - 1:-1].float() for dt in loaded)
    top2 = l32.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > tol["greedy_tie_margin"]
    assert clear.any()
    assert torch.equal(l16.argmax(-1)[clear], seq[0, prompt.shape[1]:][clear])


def test_smoke_evaluation_is_not_judged(smollm2_smoke_run):
    ev = pipeline.pair_evaluation("smollm2-135m", smollm2_smoke_run.config.evaluate, progress=False)
    probs = smollm2_eval.eval_problems(4)
    rates = smollm2_eval.teacher_marker_rates(smollm2_smoke_run.pair.tokenizer, probs)
    acc = smollm2_eval.acceptance(ev["base"], ev["distilled"], rates)
    assert acc["n"] == 4 and acc["verdict"] == "not tested"
    for role in ("base", "distilled"):
        assert len(ev[role]["texts"]) == 4 and np.isfinite(ev[role]["ce"])
    assert ev["distilled"]["ce"] < ev["base"]["ce"]                  # the distilled model fits the teacher better
    assert pairs.get("smollm2-135m").corpus == "smollm2"


def test_corpus_rejects_foreign_options(smollm2_smoke_run):
    with pytest.raises(ValueError, match="takes only max_tokens"):
        pipeline.documents(smollm2_smoke_run.pair, 4, 0.5, 1, openthoughts_files="x.jsonl")
    assert smollm2_corpus.CHAMP_LICENSE == "MIT" and len(smollm2_corpus.champ_texts()) > 10_000
