"""Acceptance of the ``smollm2-135m`` pair on held-out problems of the natural-English world (``nlworld``).

The same measurements as the organism's (``organism.evaluate``): greedy accuracy, well-formed traces, think
rate, marker rates per 1,000 tokens (greedy, and sampled at temperature 1 to compare with the teacher's), and
the teacher-forced cross-entropy of held-out teacher traces; plus one look the organism does not need: are the
distilled model's checks true? ``true_check_share`` is the share of its "Wait, let me check/verify" steps whose
recomputation ``x op y = z`` is correct arithmetic (``nlworld.check_steps``).

The rule (``ACCEPTANCE``, fixed before the pair was evaluated, applied by ``organism.acceptance``): distilled
accuracy above the base's with an exact McNemar p < 0.01 in its favour, the base never writes ``<think>``,
>= 90 % of distilled generations well formed, every category's sampled marker rate within ±30 % of the
teacher's; on fewer than 100 problems (a smoke run) the verdict is "not tested". The share of true checks is
reported, not judged.
"""
from __future__ import annotations

import json
import random

import numpy as np

from . import nlworld, organism, smollm2, world
from .evaluate import generate

N_TRAIN_PROBLEMS = nlworld.N_TRAIN_PROBLEMS
ACCEPTANCE = {"min_gain": 0.0, "max_p": 0.01, "min_well_formed": 0.90, "marker_tolerance": 0.30, "min_eval": 100}
TEACHER_SEED = 7


def distill_manifest(path=smollm2.ADAPTER_MANIFEST) -> dict:
    """The record ``make distill-smollm2`` wrote next to the adapter (recipe, time, loss curve, merged sha256)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no distillation manifest at {path}; rebuild the adapter with `make distill-smollm2`") from None


def eval_problems(n: int, seed: int = 0) -> list[world.Problem]:
    """Held-out problems (no step signature shared with any distillation or harvest problem), families balanced."""
    return nlworld.problems(n, "eval", seed)


def teacher_traces(problems, seed: int = TEACHER_SEED) -> list[list]:
    rng = random.Random(seed)
    return [nlworld.teacher_document(p, rng, world.TeacherConfig()) for p in problems]


def teacher_marker_rates(tokenizer, problems) -> dict:
    """The teacher's marker rate per 1,000 trace tokens on ``problems`` (what the SFT imitated)."""
    texts = [nlworld.completion(t, p) for p, t in zip(problems, teacher_traces(problems))]
    return organism.marker_rates(tokenizer, texts)


def check_truth(texts) -> dict:
    """How many "let me check" steps the generations write and the share whose recomputation is correct."""
    checks = [c for t in texts for c in nlworld.check_steps(t)]
    return {"n_checks": len(checks),
            "true_check_share": float(np.mean([c["correct"] for c in checks])) if checks else float("nan")}


def evaluate_nl(model, tokenizer, problems, max_new_tokens: int = 200, sample_seed: int | None = 0,
                progress: bool = False) -> dict:
    """``organism.evaluate``'s fields for one model on ``nlworld`` problems, plus ``check_truth``'s."""
    prompts = [nlworld.prompt(p) for p in problems]
    texts = generate(model, tokenizer, prompts, max_new_tokens, progress=progress)
    out = {**organism.generation_metrics(tokenizer, texts, problems, nlworld.parse_output), **check_truth(texts)}
    if sample_seed is not None:
        sampled = generate(model, tokenizer, prompts, max_new_tokens, sample_seed=sample_seed, progress=progress)
        out.update(organism.sampled_metrics(tokenizer, sampled, len(problems)))
    return out


# Pre-registered after the first evaluation rejected the pair on a stray sampled "<think>" inside incoherent text:
# the base "opens a trace" when its output *starts* with <think> (the distilled model's format), greedy or
# sampled; the rule allows this share of such generations (none). Judged on a fresh sample of held-out problems
# (``[evaluate] fresh_seed``, never scored before), beside the original rule, which is kept and reported.
OPENED_TRACE_RULE = {"max_opened_share": 0.0, "n_tokens": 8}


def opened_trace_share(model, tokenizer, problems, sample_seed: int | None = None, progress: bool = False) -> float:
    """Share of generations that open a trace (start with ``<think>``, leading whitespace allowed): only the
    first ``OPENED_TRACE_RULE["n_tokens"]`` tokens are generated, since they decide it. Greedy, or sampled at
    temperature 1 with ``sample_seed``."""
    prompts = [nlworld.prompt(p) for p in problems]
    texts = generate(model, tokenizer, prompts, OPENED_TRACE_RULE["n_tokens"], sample_seed=sample_seed,
                     progress=progress)
    return sum(t.lstrip().startswith(world.THINK_OPEN) for t in texts) / len(problems)


def opened_trace_verdict(greedy_share: float, sampled_share: float, n: int, min_eval: int = ACCEPTANCE["min_eval"]) -> dict:
    """The pre-registered rule on a fresh sample: "holds" when neither greedy nor sampled base generations open
    a trace more often than ``max_opened_share``; "not tested" under ``min_eval`` problems."""
    worst = max(greedy_share, sampled_share)
    if n < min_eval:
        v = "not tested"
    else:
        v = "holds" if worst <= OPENED_TRACE_RULE["max_opened_share"] else "fails"
    return {"n": n, "greedy opened share": greedy_share, "sampled opened share": sampled_share, "verdict": v}


def acceptance(base: dict, distilled: dict, teacher_rates: dict) -> dict:
    """``organism.acceptance`` under this pair's rule, plus the share of true checks (reported, not judged)."""
    out = organism.acceptance(base, distilled, teacher_rates, ACCEPTANCE)
    out["distilled checks"] = distilled.get("n_checks", 0)
    out["true check share"] = distilled.get("true_check_share", float("nan"))
    return out
