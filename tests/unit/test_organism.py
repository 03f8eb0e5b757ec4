"""The organism: world, teacher labels, tokenizer, bad input, resuming an interrupted build (its builds are in
tests/integration/test_organism.py)."""
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
