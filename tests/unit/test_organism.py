"""The organism: world, teacher labels, tokenizer, determinism, bad input."""
import json
import random

import pytest

from thinkdiff import organism, paths, world


@pytest.fixture(scope="module")
def tok():
    return organism.get_tokenizer()


def test_teacher_traces_are_well_formed_and_correct():
    rng = random.Random(0)
    for fam in world.FAMILIES:
        for _ in range(30):
            p = world.make_problem(rng, fam)
            text = world.spans_text(world.teacher_document(p, rng, world.TeacherConfig()))
            out = world.parse_output(text[len(p.prompt):])
            assert out["well_formed"] and out["answer"] == p.answer, text
            # every written step is arithmetic that holds, except a planted slip right before "Wait, that is wrong."
            for a, op, b, r in p.steps:
                assert {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] == r


def test_base_solution_has_no_think_and_parses():
    p = world.make_problem(random.Random(1), "word")
    out = world.parse_output(world.base_solution(p)[len(p.prompt):])
    assert out["answer"] == p.answer and not out["has_think"] and not out["well_formed"]


def test_heldout_problems_never_in_training():
    train = {p.question for p in world.problem_split(0, 5000, "train")}
    held = organism.eval_problems(200)
    assert not train & {p.question for p in held}
    assert {p.family for p in held} == set(world.FAMILIES)


def test_markers_single_tokens_and_labels_align(tok):
    for words in world.MARKERS.values():
        for w in words:
            assert len(tok(w, add_special_tokens=False)["input_ids"]) == 1
    docs = organism.harvest_documents(tok, n_docs=60, teacher_fraction=0.5)
    assert sum(d.kind == "teacher" for d in docs) == 30
    marker_words = {w.strip() for ws in world.MARKERS.values() for w in ws}
    n_markers = 0
    for d in docs:
        assert len(d.input_ids) == len(d.labels) == len(d.marker)
        assert tok.decode(d.input_ids) == d.text
        for i, (tid, lab, m) in enumerate(zip(d.input_ids, d.labels, d.marker)):
            if m:
                n_markers += 1
                word = tok.decode([tid]).strip()
                assert word in marker_words
                assert lab in (1, 2, 3, 4)
                # the label is the marker's own category
                cat = next(c for c, ws in world.MARKERS.items() if " " + word in ws)
                assert lab == world.CATEGORY_ID[cat]
        if d.kind == "base":
            assert not any(d.marker) and set(d.labels) == {0}
    assert n_markers > 30


def test_bad_input_is_rejected_before_work(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown organism size"):
        organism.organism_config("XL")
    with pytest.raises(ValueError, match="not divisible by heads"):
        organism.organism_config("S", hidden=66)
    with pytest.raises(ValueError, match="n_docs"):
        organism.harvest_documents(None, n_docs=0)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    monkeypatch.setattr(paths, "RUNS_DIR", ro / "runs")
    if not (ro / "probe").parent.exists() or __import__("os").geteuid() != 0:
        with pytest.raises(PermissionError, match="cannot write"):
            organism.get_organism("S", pretrain_steps=2, sft_steps=2)
    else:  # root ignores directory permissions; use a path under a file instead
        f = tmp_path / "file"
        f.write_text("x")
        monkeypatch.setattr(paths, "RUNS_DIR", f / "runs")
        with pytest.raises(PermissionError, match="cannot write"):
            organism.get_organism("S", pretrain_steps=2, sft_steps=2)


def test_build_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path)
    kw = dict(pretrain_steps=3, sft_steps=3, batch=4, seq_len=32)
    m1 = organism.build_organism("S", tmp_path / "a", **kw)
    m2 = organism.build_organism("S", tmp_path / "b", **kw)
    assert m1["config_hash"] == m2["config_hash"]
    for role in ("base", "distilled"):
        a = (tmp_path / "a" / role / "model.safetensors").read_bytes()
        b = (tmp_path / "b" / role / "model.safetensors").read_bytes()
        assert a == b
    pair = organism.get_organism("S", **kw)
    again = organism.get_organism("S", **kw)
    assert pair.path == again.path
    # SFT changed the weights: distilled differs from base
    diff = sum((p - q).abs().sum() for p, q in zip(pair.base.parameters(), pair.distilled.parameters()))
    assert diff > 0


def test_the_coin_flip_control_ships_only_where_its_check_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path)
    kw = dict(pretrain_steps=2, sft_steps=2, batch=2, seq_len=32)
    assert "XS" not in organism.COIN_CONTROL_SIZES and "M" in organism.COIN_CONTROL_SIZES
    man = organism.build_organism("XS", tmp_path / "xs", **kw)
    assert sorted(p.name for p in (tmp_path / "xs").iterdir() if p.is_dir()) == ["base", "control", "distilled",
                                                                                 "tokenizer"]
    assert set(man["train_seconds"]) == {"pretrain", "sft", "control"}
    pair = organism.get_organism("XS", **kw)
    assert pair.coin_control is None and pair.control is not None
    # a folder that lacks a model its size ships is refused, naming the model
    import shutil
    shutil.rmtree(pair.path / "control")
    with pytest.raises(FileNotFoundError, match="no control model"):
        organism.get_organism("XS", **kw)


def test_shipping_from_cache_assembles_the_cached_builds_and_deletes_none(tmp_path, monkeypatch):
    """``python -m thinkdiff.organism --from-cache`` ships the base and fine-tunes already built, one role at a
    time; it must never retrain or remove them (hours of CPU each at full size)."""
    from dataclasses import replace
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(organism, "SHIPPED_DIR", tmp_path / "data")
    monkeypatch.setitem(organism.SIZES, "XS", replace(organism.SIZES["XS"], pretrain_steps=2, sft_steps=2, batch=2,
                                                      seq_len=32))
    cfg, tok = organism.organism_config("XS"), organism.get_tokenizer()
    base, _ = organism.get_base("XS", None, tok, use_shipped=False)
    built = {}
    for role in ("distilled", "control"):
        organism.get_finetune("XS", role, cfg, base, tok)
        built[role] = next(f for f in (tmp_path / "runs" / "organism-sft").iterdir()
                           if json.loads((f / "sft.json").read_text())["config"]["role"] == role)
    stamps = {r: (f / "sft.json").stat().st_mtime_ns for r, f in built.items()}
    dest = organism.ship("XS", rebuild=False)
    assert {r: (f / "sft.json").stat().st_mtime_ns for r, f in built.items()} == stamps
    assert (dest / "distilled" / "model.safetensors").read_bytes() == \
        (built["distilled"] / "model.safetensors").read_bytes()
    assert organism.get_organism("XS").path == dest


@pytest.mark.slow
def test_pretraining_prefix_reproduces_the_shipped_manifest():
    """Same machine: two rebuilds of the start of S's schedule are bitwise equal. Any machine of this kind:
    they agree with the losses the shipped manifest recorded within ``PREFIX_RTOL`` (float kernels differ
    across CPUs, so trained bytes are not compared)."""
    shipped = organism.SHIPPED_DIR / "S"
    man = json.loads((shipped / "manifest.json").read_text())
    assert man["config_hash"] == paths.config_hash(organism.organism_config("S")), \
        "shipped S weights are stale: run `make organism`"
    full = organism.pretrain_prefix("S", organism.PREFIX_STEPS)
    half = organism.pretrain_prefix("S", organism.PREFIX_STEPS // 2)
    assert half == full[:len(half)]
    assert len(man["prefix_losses"]) == organism.PREFIX_STEPS
    rel = max(abs(a - b) / abs(b) for a, b in zip(full, man["prefix_losses"]))
    assert rel <= organism.PREFIX_RTOL, f"prefix losses differ from the manifest by {rel:.2e} (relative)"


def test_accuracy_is_reported_with_and_without_malformed_outputs(monkeypatch):
    """An answer line with no closed trace still counts for ``accuracy``; ``accuracy_well_formed`` does not."""
    from thinkdiff import organism, world

    problems = world.problem_split(0, 3, "eval")
    a = [p.answer for p in problems]
    texts = [f"<think> So it is {a[0]}. </think>\nAnswer: {a[0]}.\n",       # well formed, right
             f"Answer: {a[1]}. <think> and then nothing",                     # right answer, no closed trace
             f"<think> So. </think>\nAnswer: {a[2] + 1}.\n"]                  # well formed, wrong
    monkeypatch.setattr(organism, "generate", lambda *args, **kw: texts)
    out = organism.evaluate(None, organism.get_tokenizer(), problems, sample_seed=None)
    assert [world.parse_output(t)["well_formed"] for t in texts] == [True, False, True]
    assert out["accuracy"] == 2 / 3 and out["accuracy_well_formed"] == 1 / 3


def test_an_interrupted_organism_build_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """train_lm checkpoints every LM_CHECKPOINT_EVERY steps; a run stopped after 12 of 20 steps and started again
    ends with the weights and losses of an uninterrupted run (one thread), skipping the batches it trained on."""
    import torch

    from thinkdiff import organism

    torch.set_num_threads(1)
    monkeypatch.setattr(organism, "LM_CHECKPOINT_EVERY", 5)
    tok = organism.get_tokenizer()
    arch = {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64}
    texts = organism.corpus_texts(organism.CorpusConfig(), "base", 200)

    def run(ckpt_dir=None, stop_after=None):
        model = organism.build_model(arch, len(tok), seed=0)
        losses = organism.train_lm(model, organism._document_batches(tok, texts, 64, 4, 1), 20, 1e-3, "t", 1,
                                   stop_after=stop_after, ckpt_dir=ckpt_dir)
        return model, losses

    whole, whole_losses = run()
    run(tmp_path, stop_after=12)                    # "killed" after step 12: checkpoints at 5 and 10
    assert (tmp_path / "lm_checkpoint.pt").exists()
    resumed, losses = run(tmp_path)
    assert losses == whole_losses
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    (tmp_path / "lm_checkpoint.sha256").write_text("0" * 64)   # a checkpoint failing its checksum is not used
    again, losses = run(tmp_path)
    assert losses == whole_losses
