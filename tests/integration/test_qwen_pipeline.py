"""The full code path of a Qwen preset on tiny random stand-ins: only the weights differ from a real run.

Two tiny random-weight ``Qwen2ForCausalLM`` (the qwen-1.5b config scaled to width 64 and 4 blocks, the real
151,936-row embedding; ``qwen.tiny_qwen_pair``) are registered as a custom hf pair from their local folders
and go through the functions a real run calls: ``pairs.load`` / ``pipeline.load_run`` (realdata corpus
from local OpenThoughts-format and general-text files, harvest with pairing check), ``Run.crosscoder``
(the paper's config scaled down), labelling with the real-tokenizer lexicon matcher, relative norms and
ReasonScore, a steered generation along a decoder direction, and the geometry relation filter on
``data/relations`` with the real Qwen2 tokenizer. Also the smoke path of ``benchmarks/gpu_check.py``.
"""
from __future__ import annotations

import copy
import importlib.util
import json

import numpy as np
import pytest
import torch

from standins import GENERAL, openthoughts_row as _ot_row, tiny_qwen_pair
from thinkdiff import (codes, geometry, harvest, hf, label, lexicon, norms, paths, pairs, pipeline, qwen, realdata,
                       relations, runconfig, steer, train)

PRESET = "test-tiny-qwen-1.5b"


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return tiny_qwen_pair(hidden=64, layers=4)      # the config test_qwen.py builds: cached


@pytest.fixture(scope="module")
def pair(tiny, tmp_path_factory):
    """The tiny pair as a custom hf preset from local folders; stores and crosscoders go to a temporary RUNS_DIR
    (the tokenizers and tiny models above stay cached in the real one)."""
    p = pairs.register(pairs.PairSpec(
        name=PRESET, kind="hf", base=str(tiny.base_path), distilled=str(tiny.distilled_path), layer=tiny.layer,
        dtype="float32", train_config="paper", corpus="openthoughts", notes="tiny random qwen-1.5b stand-in"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paths, "RUNS_DIR", tmp_path_factory.mktemp("runs"))
        yield pipeline.load_pair(p.name)
    pairs.PAIRS.pop(PRESET, None)
    pipeline._PAIRS.pop((PRESET, None, "auto"), None)


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "openthoughts.jsonl").write_text("".join(json.dumps(_ot_row(i)) + "\n" for i in range(40)))
    (d / "general.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GENERAL))
    return dict(openthoughts_files=d / "openthoughts.jsonl", general_files=d / "general.jsonl")


@pytest.fixture(scope="module")
def run(pair, corpus_files):
    """A run of the tiny pair, declared as a run config would declare it: a few hundred tokens of the realdata
    corpus, and the paper's crosscoder config (ReLU + L1, lambda 2, Adam betas, decoder init 0.08, grad clip 1)
    scaled down to 256 latents and 40 steps of 64 tokens (lr raised from 5e-5 so that 40 steps move the weights)."""
    cfg = runconfig.from_dict({
        "preset": PRESET,
        "harvest": {"n_docs": 16, "teacher_fraction": 0.5, "seed": 49, "batch_size": 8, "max_seq_len": 64,
                    "heldout_fraction": 0.2, "shard_tokens": 256,
                    "corpus": {"max_tokens": 64, "shuffle_buffer": 8, **{k: str(v) for k, v in corpus_files.items()}}},
        "train": {"schemes": ["relu"], "relu": {"n_latents": 256, "n_steps": 40, "batch_size": 64, "lr": 2e-3,
                                                "buffer_tokens": 1024, "checkpoint_every": 0}}}, "test-tiny-qwen")
    return pipeline.Run(cfg, progress=False)


@pytest.fixture(scope="module")
def store(run):
    return run.store


def test_presets_table_and_custom_preset(pair, tiny):
    for name, (layer, n_layers) in {"qwen-1.5b": (14, 28), "qwen-7b": (14, 28), "qwen-14b": (24, 48),
                                    "qwen-32b": (32, 64)}.items():
        p = pairs.get(name)
        assert (p.kind, p.layer, p.dtype, p.train_config, p.corpus, p.tokenizer, p.task) == (
            "hf", layer, "bfloat16", "paper", "openthoughts", "base", "math")
        assert p.options["base_arch"]["n_layers"] == n_layers and p.in_paper
    assert pairs.get("qwen-32b").placement == "split"
    # The custom preset loads offline from local folders with the real architecture and tokenizers.
    assert type(pair.base).__name__ == type(pair.distilled).__name__ == "Qwen2ForCausalLM"
    assert (pair.layer, pair.d_model, pair.n_layers) == (tiny.layer, 64, 4) == (2, 64, 4)
    assert pair.base.config.vocab_size == 151_936 and not pair.base.training
    # Default: the base (Qwen2.5-Math) tokenizer feeds both models; R1's own tokenizer is kept, not used.
    assert pair.tokenizer_distilled is pair.tokenizer and pair.tokenizer.bos_token is None
    math_own, r1_own = pair.own_tokenizers
    assert math_own is pair.tokenizer and r1_own.bos_token_id == 151646
    assert r1_own.chat_template == qwen.R1_CHAT_TEMPLATE
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        pairs.register(pairs.PairSpec(name="bad", kind="hf", base="a/b", distilled="c/d", tokenizer="mine"))
    assert "bad" not in pairs.PAIRS
    with pytest.raises(ValueError, match="do not apply to organism-s"):
        pipeline.documents(pairs.ModelPair(None, None, None, None, 1, pairs.get("organism-s")), 2, 0.5, 1,
                           openthoughts_files="x.jsonl")


def test_pairing_check_on_the_real_vocabulary(pair, tmp_path, monkeypatch):
    docs = realdata.build_documents([_ot_row(i) for i in range(12)], GENERAL[:12], pair.tokenizer, n_docs=12,
                                    teacher_fraction=0.5, max_tokens=48, seed=3, shuffle_buffer=4)
    cfg = harvest.HarvestConfig(layer=pair.layer, batch_size=4, max_seq_len=48)
    prepared = harvest.prepare_documents(docs, pair.tokenizer, cfg)
    # The documented default passes with the check really run (two tokenizer objects, same Math tokenizer):
    # documents are encoded with add_special_tokens=False and the check encodes with the harvest's default
    # (True); the Math tokenizer adds no BOS, so both see exactly the documents' ids.
    info = harvest.check_pairing(pair.tokenizer, copy.deepcopy(pair.tokenizer), prepared)
    assert info["ids_identical"] and info["n_documents_checked"] == 12 and not info["same_tokenizer_object"]
    assert all(pair.tokenizer(d.text)["input_ids"] == d.input_ids for d in docs)
    # Each model with its own published tokenizer (tokenizer="own"; load_pair's loader is patched to hand back
    # the pair already loaded, so only the tokenizer choice is under test): R1-Distill prepends BOS 151646, so
    # the check refuses at token 0 of the first document, before any store folder exists.
    loaded = hf.HFPair(pair.base, pair.distilled, *pair.own_tokenizers)
    monkeypatch.setattr(hf, "load_hf_pair", lambda *a, **k: loaded)
    own = pairs.load(pairs.PairSpec(name="own-tokenizers", kind="hf", base=pair.spec.base,
                                    distilled=pair.spec.distilled, layer=pair.layer, tokenizer="own"))
    assert own.tokenizer_distilled is pair.own_tokenizers[1] and own.tokenizer is pair.tokenizer
    out = tmp_path / "store"
    with pytest.raises(ValueError, match="token pairing failed") as err:
        harvest.get_store(own, docs, cfg, out_dir=out, progress=False)
    assert "document 0" in str(err.value) and "first difference at token 0" in str(err.value)
    assert "151646" in str(err.value) and not out.exists()
    # Without the BOS, <think> still differs (one R1 token, three Math pieces), so teacher traces differ too.
    r1 = own.tokenizer_distilled
    teacher = next(d for d in docs if d.kind == "teacher" and "<think>" in d.text)
    assert r1(teacher.text, add_special_tokens=False)["input_ids"] != teacher.input_ids
    assert 151648 in r1(teacher.text, add_special_tokens=False)["input_ids"]


def test_harvest_store_real_corpus(pair, store, corpus_files):
    m = store.manifest
    assert (store.n_models, store.d_model, store.layer) == (2, 64, pair.layer)
    assert 200 <= store.n_tokens <= 1000, store.n_tokens
    assert m["pairing"]["same_tokenizer_object"] and m["documents"]["n"] == 16
    assert set(m["documents"]["kinds"]) == {"teacher", "base"} and store.split_indices("heldout").size > 0
    assert m["models"][0]["class"] == "Qwen2ForCausalLM" and m["models"][0]["d_model"] == 64
    meta = store.meta
    assert meta["pos"].min() == 1                                    # position 0 (attention sink) dropped
    # The same corpus call again is deterministic, and the stored rows are resid_pre of block L of each model.
    docs = pipeline.documents(pair, 16, 0.5, 49, max_tokens=64, shuffle_buffer=8, **corpus_files)
    assert any(15277 in d.input_ids for d in docs)                    # " Therefore" as one real Qwen2 token
    for doc_id in (int(meta["doc_id"][0]), int(meta["doc_id"][-1])):
        rows = np.nonzero(meta["doc_id"] == doc_id)[0]
        ids = torch.tensor([docs[doc_id].input_ids])
        assert meta["token_id"][rows].tolist() == docs[doc_id].input_ids[1:]
        got = torch.from_numpy(store.acts(rows))                     # [T - 1, 2, 64]
        for k, model in enumerate(pair.models):
            with torch.no_grad():
                want = model(ids, output_hidden_states=True).hidden_states[pair.layer][0, 1:]
            torch.testing.assert_close(got[:, k], want, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def crosscoder(run):
    cfg = run.train_config("relu")
    assert (cfg.l1_coeff, cfg.dec_init_norm, cfg.lr_decay_frac, cfg.seed) == (2.0, 0.08, 0.2, 49)   # train.PAPER's
    return run.crosscoder("relu")


def test_train_and_label_with_the_real_lexicon(pair, store, crosscoder):
    cc = crosscoder
    assert (cc.n_latents, cc.n_models, cc.d_model) == (256, 2, 64) and cc.config.layer == pair.layer
    log = train.load_log(cc)
    assert len(log) == 40 and np.isfinite(log["loss"]).all()
    assert log["recon"].tail(5).mean() < log["recon"].head(5).mean()      # it learns, a little
    nrn = norms.relative_norm(cc)
    assert nrn.shape == (256,) and np.all((nrn >= 0) & (nrn <= 1))
    # The lexicon matcher on real Qwen2 ids: every category matches somewhere in the harvested tokens.
    lex = lexicon.Lexicon(pair.tokenizer)
    assert lexicon.marker_token_ids(pair.tokenizer) == {
        "self_reflection": [13824], "deductive": [15277, 14301], "alternative": [38478], "contrastive": [4354, 1988]}
    cats = lex.label_tokens(store.meta["token_id"], lexicon.runs_from_meta(store.meta["doc_id"], store.meta["pos"]))
    assert set(np.unique(cats)) == {0, 1, 2, 3, 4}
    masks = label.marker_masks(store.meta, lexicon.marker_token_ids(pair.tokenizer))
    assert all(m.sum() > 0 for m in masks.values()), {c: int(m.sum()) for c, m in masks.items()}
    acts = codes.encode_store(cc, store)
    assert acts.n_tokens == store.n_tokens and len(acts.vals) > 0 and (acts.vals > 0).all()
    rs = label.reason_scores(acts, lex, store.meta, special_ids=pair.tokenizer.all_special_ids)
    assert rs.score.shape == (256, 4) and all(rs.n_groups[c] >= 1 for c in lexicon.CATEGORIES), rs.n_groups
    alive = acts.frequency() > 0
    assert np.isfinite(rs.score.to_numpy()[alive]).all()
    top = rs.ranked("self_reflection", n=5, nrn=nrn)
    assert len(top) == 5 and top["score"].is_monotonic_decreasing and top["relative_norm"].between(0, 1).all()


def test_steered_generation_along_a_decoder_direction(pair, store, crosscoder):
    acts = codes.encode_store(crosscoder, store)
    latent = int(np.argmax(acts.frequency()))                         # the most active latent: a live direction
    v = steer.steering_vector(crosscoder, latent, 1, unit="resid_norm", resid=store.acts(np.arange(64)))
    assert v.shape == (64,) and torch.isclose(v.norm(), torch.tensor(float(
        np.linalg.norm(store.acts(np.arange(64))[:, 1], axis=-1).mean())), rtol=1e-4)
    rows = [{"question": f"Sam has {n} pens and buys {n + 2} more. How many pens?", "answer": f"...\n#### {2 * n + 2}"}
            for n in (3, 5)]
    prompts = [realdata.gsm8k_problem(r, i).prompt("raw") for i, r in enumerate(rows)]
    kw = dict(layer=pair.layer, max_new_tokens=6, progress=False, eos_ids=())
    plain = steer.generate_steered(pair.distilled, pair.tokenizer, prompts, None, **kw)
    zero = steer.generate_steered(pair.distilled, pair.tokenizer, prompts, v, alpha=0.0, **kw)
    pushed = steer.generate_steered(pair.distilled, pair.tokenizer, prompts, v, alpha=8.0, **kw)
    assert plain.ids == zero.ids and all(len(g) == 6 for g in pushed.ids)
    assert pushed.ids != plain.ids and pushed.meta["steered"] and pushed.meta["layer"] == pair.layer
    assert all(all(s) for s in pushed.prompt_steered)                 # positions="all": the paper's setting
    # The paper's base tokenizer has no single <think> token, so think-only steering is refused up front.
    with pytest.raises(ValueError, match="<think>"):
        steer.generate_steered(pair.distilled, pair.tokenizer, prompts, v, positions="think", **kw)


def test_geometry_relation_filter_on_the_real_tokenizer(pair):
    rels = {name: relations.load_relation(name) for name in relations.RELATIONS}
    for name, word_pairs in rels.items():
        kept, dropped = geometry.filter_single_token(word_pairs, pair.tokenizer)
        n_tok = {w: len(pair.tokenizer(w, add_special_tokens=False)["input_ids"]) for p in word_pairs for w in p}
        assert kept == [p for p in word_pairs if n_tok[p[0]] == n_tok[p[1]] == 1] and len(kept) + dropped == len(word_pairs)
        assert len(kept) >= 10, (name, len(kept))
    assert ("cat", "cats") in geometry.filter_single_token(rels["singular-plural"], pair.tokenizer)[0]
    small = {name: pairs[:12] for name, pairs in rels.items()}
    results, survival = geometry.analyse_relations(pair.models, pair.tokenizer, small, pair.layer, dims=(2,),
                                                   n_boot=50, n_perm=20, shared_basis=False)
    assert list(survival["relation"]) == list(relations.RELATIONS)
    assert len(results) == int(survival["analysed"].sum()) >= 3
    for r in results:
        assert r.table["mean"].between(0, 2).all() and len(r.delta) == 1
    A, B = geometry.pair_vectors(pair.models, pair.tokenizer, [("cat", "cats"), ("dog", "dogs")], pair.layer)
    assert A.shape == B.shape == (2, 2, 64) and not torch.allclose(A[0], A[1])


def test_gpu_check_smoke(tiny_tokenizer):
    # Documents are random Qwen2 ids and carry them, so the tokenizer only gives the pad id; the small conftest
    # tokenizer spares the harvest's per-model copies of the 151k-entry one (seconds on this machine).
    spec = importlib.util.spec_from_file_location("gpu_check", paths.REPO_ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = gpu_check.run(gpu_check.parse_args(["--smoke"]), tokenizer=tiny_tokenizer)
    assert (out["device"], out["layer"], out["d_model"], out["n_latents"]) == ("cpu", 2, 64, 512)
    assert out["n_params"][1] > out["n_params"][0]                    # R1-Distill's untied head
    assert out["harvest_tokens"] == 512 and out["harvest_tok_s"] > 0 and out["train_tok_s"] > 0
    assert out["store_bytes_per_token"] == 256                       # d_model x 2 models x 2 bytes (bf16)
    assert out["ddp_allreduce_bytes_per_step"] == 4 * (2 * 2 * 64 * 512 + 512 + 2 * 64)   # fp32 grads, all params
    assert "step_s_bf16" not in out and out["train_compute"]["dtype"] == "float32"    # a CPU never computes in bf16
    # the streaming path: sustained rate, and the measured peak disk within the plan's
    assert out["stream_steps"] == 12 and out["stream_tok_s"] > 0 and out["stream_compute"] == "float32"
    assert 0 < out["stream_peak_disk_bytes"] <= out["stream_plan_peak_disk_bytes"]
    with pytest.raises(ValueError, match="unknown preset"):
        gpu_check.run(gpu_check.parse_args(["--smoke", "--preset", "qwen-3b"]))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="--smoke"):
            gpu_check.run(gpu_check.parse_args([]))


def test_claim1_null_needs_a_control_fine_tune(run):
    """A pair without a control model has no null for claim 1: the base paired with itself cannot show an exclusive
    latent, so it is no test, and asking for it says why."""
    assert run.pair.control is None and not run.has_null
    with pytest.raises(ValueError, match="no control model"):
        run.null_store
