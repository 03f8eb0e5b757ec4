"""Real-data helpers on local rows: OpenThoughts formatting, mixing, truncation, offline guards,
math answer checking, and the word relations under the real Qwen2 tokenizer."""
from __future__ import annotations

import json
import time

import pytest

from thinkdiff import geometry, qwen, realdata, relations


@pytest.fixture(scope="module")
def tok():
    return qwen.qwen_tokenizer("qwen2.5-math")


def _ot_row(i: int) -> dict:
    trace = (f"<|begin_of_thought|>\n\nLet me add {i} and 2. Wait, check: {i} + 2 = {i + 2}.\n\n<|end_of_thought|>\n\n"
             f"<|begin_of_solution|>\n\nThe answer is {i + 2}.\n\n<|end_of_solution|>")
    return {"system": "Your role as an assistant ...",
            "conversations": [{"from": "user", "value": f"What is {i} + 2?"}, {"from": "assistant", "value": trace}]}


GENERAL = [{"text": f"General text number {i}. The weather was mild and the market opened late. " * (1 + i % 5)}
           for i in range(60)]


def test_format_openthoughts():
    text = realdata.format_openthoughts(_ot_row(3))
    assert text.startswith("What is 3 + 2?\n<think>\n\nLet me add 3 and 2.")
    assert "</think>\n\n\n\nThe answer is 5." in text
    assert "<|begin_of_solution|>" not in text and "<|end_of_thought|>" not in text and "<|" not in text
    meta = realdata.format_openthoughts({"problem": "P?", "deepseek_reasoning": "r", "deepseek_solution": "s"})
    assert meta == "P?\n<think>r</think>s"
    with pytest.raises(ValueError, match="not an OpenThoughts row"):
        realdata.format_openthoughts({"text": "x"})


def test_shuffle_and_mix_are_seeded():
    a = list(realdata.buffer_shuffle(range(100), 16, seed=1))
    assert sorted(a) == list(range(100)) and a != list(range(100))
    assert a == list(realdata.buffer_shuffle(range(100), 16, seed=1))
    assert a != list(realdata.buffer_shuffle(range(100), 16, seed=2))
    kinds = [k for k, _ in realdata.mix(range(10_000), range(10_000), 0.3, seed=0)]
    assert abs(kinds.count("teacher") / len(kinds) - 0.3) < 0.03
    with pytest.raises(ValueError, match="teacher_fraction"):
        next(realdata.mix([], [], 1.5, 0))
    with pytest.raises(ValueError, match="buffer_size"):
        next(realdata.buffer_shuffle([1], 0, 0))


def test_build_documents(tok):
    rows = [_ot_row(i) for i in range(40)]
    docs = realdata.build_documents(rows, GENERAL, tok, n_docs=30, teacher_fraction=0.5, max_tokens=24,
                                    seed=49, shuffle_buffer=8)
    assert len(docs) == 30 and {d.kind for d in docs} == {"teacher", "base"}
    assert all(1 <= len(d.input_ids) <= 24 for d in docs)
    assert all(d.input_ids == tok(d.text, add_special_tokens=False)["input_ids"] for d in docs[:10])
    teach = [d for d in docs if d.kind == "teacher"]
    assert all(d.text.startswith("What is ") and "<think>" in d.text for d in teach)
    assert all(151648 not in d.input_ids for d in teach)      # Math tokenizer: <think> is three ordinary pieces
    again = realdata.build_documents(rows, GENERAL, tok, 30, 0.5, 24, seed=49, shuffle_buffer=8)
    assert [d.input_ids for d in again] == [d.input_ids for d in docs]
    other = realdata.build_documents(rows, GENERAL, tok, 30, 0.5, 24, seed=50, shuffle_buffer=8)
    assert [d.input_ids for d in other] != [d.input_ids for d in docs]
    long_only = realdata.build_documents(rows, GENERAL, tok, 5, 0.0, 40, min_tokens=40, seed=0)
    assert all(len(d.input_ids) == 40 and d.kind == "base" for d in long_only)
    with pytest.raises(ValueError, match="min_tokens"):
        realdata.build_documents(rows, GENERAL, tok, 5, 0.5, 10, min_tokens=20)


def test_loaders_fail_fast_offline(monkeypatch, tok):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = [lambda: realdata.stream_openthoughts(),
             lambda: next(realdata.stream_general()),
             lambda: realdata.harvest_corpus(tok, 10),
             lambda: realdata.math_eval_problems(realdata.MATH500, 5),
             lambda: realdata.math_eval_problems(realdata.GSM8K, 5)]
    names = [realdata.OPENTHOUGHTS, realdata.GENERAL_CORPUS[0], realdata.OPENTHOUGHTS, realdata.MATH500, realdata.GSM8K]
    for call, name in zip(calls, names):
        t0 = time.time()
        with pytest.raises(RuntimeError) as err:
            call()
        assert time.time() - t0 < 5.0
        assert name in str(err.value) and "data_files" in str(err.value)


def test_local_files_work_offline(monkeypatch, tmp_path, tok):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ot, gen, m5 = tmp_path / "ot.jsonl", tmp_path / "gen.jsonl", tmp_path / "math500.jsonl"
    ot.write_text("\n".join(json.dumps(_ot_row(i)) for i in range(12)))
    gen.write_text("\n".join(json.dumps(r) for r in GENERAL[:12]))
    m5.write_text("\n".join(json.dumps({"problem": f"Compute {i}+1.", "answer": str(i + 1), "unique_id": f"t/{i}"})
                            for i in range(8)))
    docs = realdata.harvest_corpus(tok, 8, 0.5, max_tokens=32, seed=1, openthoughts_files=ot, general_files=gen,
                                   shuffle_buffer=4)
    assert len(docs) == 8 and {d.kind for d in docs} <= {"teacher", "base"}
    probs = realdata.math_eval_problems(realdata.MATH500, n=3, seed=0, data_files=m5)
    assert len(probs) == 3 and all(p.source == realdata.MATH500 for p in probs)
    assert realdata.check_answer(f"so \\boxed{{{probs[0].answer}}}", probs[0].answer)
    with pytest.raises(FileNotFoundError, match="not found"):
        realdata.stream_openthoughts(data_files=tmp_path / "missing.jsonl")


def test_math_answers():
    g = realdata.gsm8k_problem({"question": "Tom has 1,200 coins ...", "answer": "1200 ... \n#### 1,200"})
    assert g.answer == "1200" and g.prompt() == "Tom has 1,200 coins ...\n"
    assert "\\boxed{}" in g.prompt("boxed")
    assert realdata.check_answer("Therefore the answer is \\boxed{1200}.", g.answer)
    assert not realdata.check_answer("Therefore the answer is \\boxed{1201}.", g.answer)
    assert realdata.check_answer("We get $0.5$", "\\frac{1}{2}")
    assert realdata.check_answer("\\boxed{\\sqrt{18}}", "3\\sqrt{2}")
    assert not realdata.check_answer("no idea", "3\\sqrt{2}")
    with pytest.raises(ValueError, match="####"):
        realdata.gsm8k_problem({"question": "q", "answer": "no final line"})
    with pytest.raises(ValueError, match="style"):
        g.prompt("chat")


def test_relations_single_token_counts(tok):
    print("\nrelation: pairs written / kept (bare word single token, Qwen2) / kept with leading space / paper kept")
    for name in relations.RELATIONS:
        pairs = relations.load_relation(name)
        assert 100 <= len(pairs) <= 300 and len({a for a, _ in pairs}) == len(pairs)
        kept, n_dropped = geometry.filter_single_token(pairs, tok)  # the one single-token filter (bare words)
        assert n_dropped == len(pairs) - len(kept)
        spaced = [(a, b) for a, b in pairs if all(len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1
                                                  for w in (a, b))]
        print(f"  {name}: {len(pairs)} / {len(kept)} / {len(spaced)} / {relations.PAPER_KEPT[name]}")
        assert len(kept) >= 10
        assert all(len(tok(w, add_special_tokens=False)["input_ids"]) == 1 for p in kept for w in p)
        dropped = [p for p in pairs if p not in kept]
        assert all(any(len(tok(w, add_special_tokens=False)["input_ids"]) > 1 for w in p) for p in dropped)
    with pytest.raises(ValueError, match="unknown relation"):
        relations.load_relation("english-klingon")
