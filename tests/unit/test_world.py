"""The organism's world: hard multi-step problems, an honest held-out split, the planted distilled-only quantity."""
import random
import re

import numpy as np
import pytest

from thinkdiff import organism, world


def test_problems_are_multi_step_two_digit_chains():
    rng = random.Random(0)
    for fam in world.FAMILIES:
        for _ in range(200):
            p = world.make_problem(rng, fam)
            assert 3 <= len(p.steps) <= 5, (fam, p.steps)
            for a, op, b, r in p.steps:
                assert world._op(a, op, b) == r and world.LO <= r or op == "/" or fam == "sequence"
            values = [r for *_, r in p.steps]
            if fam in ("arith", "word", "compare"):
                assert all(world.LO <= v <= world.HI for v in values)
            assert p.answer == (max(p.compare) if p.compare else p.steps[-1][3])


def test_heldout_split_never_shares_a_step_signature():
    """No held-out problem's computation occurs in any training corpus: base, teacher or harvest."""
    cfg = organism.CorpusConfig()
    train_sigs = {p.signature for p in world.problem_split(cfg.seed, cfg.n_train_problems, "train")}
    held = organism.eval_problems(400)
    assert len({p.signature for p in held}) == len(held)
    assert not train_sigs & {p.signature for p in held}
    # every family balanced in the evaluation set
    assert {f: sum(p.family == f for p in held) for f in world.FAMILIES} == {f: 80 for f in world.FAMILIES}
    assert all(world.is_heldout(p) for p in held)
    assert not any(world.is_heldout(p) for p in world.problem_split(cfg.seed, 2000, "train"))


def test_corpora_use_only_training_problems():
    """Base corpus, teacher traces and harvest corpus draw their problems from the training split only."""
    cfg = organism.CorpusConfig()
    train_prompts = {p.prompt for p in world.problem_split(cfg.seed, cfg.n_train_problems, "train")}
    texts = [d if isinstance(d, str) else world.spans_text(d)
             for kind in ("base", "teacher") for d in organism.corpus_texts(cfg, kind, 300, seed_offset=5)]
    texts += [d.text for d in organism.harvest_documents(organism.get_tokenizer(), n_docs=100)]
    prompts = [t.split("\n", 1)[0] + "\n" for t in texts if t.startswith("Question:")]
    assert len(prompts) > 150
    assert set(prompts) <= train_prompts


def test_step_end_marks_the_last_operation_only():
    tok = organism.get_tokenizer()
    rng = random.Random(0)
    for fam in world.FAMILIES:
        p = world.make_problem(rng, fam)
        doc = organism.tokenize_spans(tok, world.teacher_document(p, rng, world.TeacherConfig(p_slip=1.0)))
        ends = [i for i, v in enumerate(doc.step_end) if v >= 0]
        assert len(ends) == len(p.steps)
        assert [doc.step_end[i] for i in ends] == [0] * (len(p.steps) - 1) + [1]
        assert all(tok.decode([doc.input_ids[i]]).endswith(".") for i in ends)
        # the planted slip's wrong step is not an operation end
        text = tok.decode(doc.input_ids[:ends[0] + 1])
        assert text.endswith(f"= {p.steps[0][3]}.")
    base = organism.tokenize_spans(tok, world.base_solution(p))
    assert set(base.step_end) == {-1}


def test_step_end_labels_follow_store_positions():
    tok = organism.get_tokenizer()
    docs = organism.harvest_documents(tok, n_docs=20, teacher_fraction=0.5)
    doc_id = np.concatenate([np.full(len(d.input_ids), i) for i, d in enumerate(docs)])
    pos = np.concatenate([np.arange(len(d.input_ids)) for d in docs])
    lab = organism.step_end_labels(docs, {"doc_id": doc_id, "pos": pos})
    assert (lab == np.concatenate([d.step_end for d in docs])).all()
    assert (lab == 1).sum() == 10
    with pytest.raises(ValueError, match="not the store's documents"):
        organism.step_end_labels(docs, {"doc_id": doc_id, "pos": pos + 1000})


def test_base_corpus_never_writes_steps_of_a_problem():
    cfg = organism.CorpusConfig()
    for doc in organism.corpus_texts(cfg, "base", 300):
        assert world.THINK_OPEN not in doc
        if doc.startswith("Question:"):
            assert doc.count("=") == doc.split("\n", 1)[0].count("=") and "Answer:" in doc



def test_every_step_names_its_items_by_tags_copied_from_the_question():
    """The trace finds each operand by its tag: the text it writes before a step is a tagged item of the question
    (or two adjacent ones at a chain's start), and that item holds the step's operand."""
    rng = random.Random(2)
    for fam in world.FAMILIES:
        for _ in range(100):
            p = world.make_problem(rng, fam)
            assert len(p.refs) == len(p.steps)
            for ref, (a, op, b, r) in zip(p.refs, p.steps):
                tags = re.findall(r"\(([a-j])\)", ref)
                assert tags, ref
                if fam == "sequence" and ref == "(e)":
                    continue  # the term after the last one shown: named, not copied
                items = dict(re.findall(r"\(([a-j])\) ([^()]*[^() ])", p.question))
                for tag, text in re.findall(r"\(([a-j])\) ([^()]*[^() ])", ref):
                    if fam == "word":   # events are written as the operation they are: "(b) + 8" for "gives 8 more"
                        number = {"doubles": "2", "triples": "3"}
                        said = re.sub(r"(doubles|triples)", lambda m: number[m.group(1)], items[tag])
                        assert text.split()[-1] in said, (tag, text, p.question)
                    else:
                        assert f"({tag}) {text}" in p.question, (tag, text, p.question)
                assert str(b) in ref or str(a) in ref, (ref, a, op, b)
            letters = re.findall(r"\(([a-j])\)", p.question)
            assert letters == list(world.TAGS[:len(letters)])


def test_base_corpus_teaches_lookup_by_tag_and_close_differences():
    rng = random.Random(0)
    doc = world.lookup_document(rng)
    listed = doc.split("Look up:")[0].removeprefix("Items:").strip().rstrip(".")
    items = dict(re.findall(r"\(([a-j])\) ([^()]+?)(?= \(|$)", listed))
    asked = re.findall(r"\(([a-j])\) ([^.]+)\.", doc.split("Look up:")[1])
    assert asked and all(items[t] == v for t, v in asked)
    diffs = [f for f in (world.random_fact(rng) for _ in range(2000)) if f[1] == "-" and f[2] >= world.LO]
    assert diffs and all(0 < r < world.LO for *_, r in diffs)


def test_every_teacher_document_fits_the_sft_window_whole():
    """SFT trains on whole documents: the longest trace with its question must fit every size's window."""
    tok = organism.get_tokenizer()
    texts = organism.corpus_texts(organism.CorpusConfig(), "teacher", 3000, seed_offset=3)
    longest = max(len(tok(t if isinstance(t, str) else world.spans_text(t))["input_ids"]) for t in texts)
    assert longest + 1 < min(s.seq_len for s in organism.SIZES.values()), longest


def test_no_eval_problem_computes_what_a_training_problem_computes():
    """The signature holds the family; the computation does not. No eval problem of the organism or of the
    natural-English world shares its computation with the training problems their models saw, and the rule is
    enforced (an exclusion set removes exactly those problems)."""
    from thinkdiff import nlworld, organism

    train = organism.training_computations()
    assert not {p.computation for p in organism.eval_problems(200)} & train
    nl_train = {p.computation for p in nlworld.problems(nlworld.N_TRAIN_PROBLEMS, "train")}
    assert not {p.computation for p in nlworld.problems(100, "eval")} & nl_train
    plain = world.problem_split(0, 50, "eval")
    banned = frozenset(p.computation for p in plain[:10])
    kept = world.problem_split(0, 50, "eval", exclude=banned)
    assert not {p.computation for p in kept} & banned and len(kept) == 50
