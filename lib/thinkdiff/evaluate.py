"""How well each model of a pair solves held-out problems: generation and scoring for any causal LM.

Each pair's task (``thinkdiff.tasks``) scores it with these: the organism's world with exact integer answers,
a public math set with math-verify (``math_accuracy``). Every task returns the same fields, so a notebook
compares base and distilled the same way whatever the pair: ``accuracy``, ``correct`` [n] bool,
``texts``, ``think_rate`` and ``tokens_per_generation``. Distillation performance across sizes is measured
as ``accuracy_gain`` and, where a teacher's traces exist, ``ce_reduction`` (both paired over the same items).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import realdata
from .stats import bootstrap_mean_ci, bootstrap_ratio_ci, mcnemar
from .steer import generate_steered

THINK_OPEN = "<think>"


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 200, batch_size: int = 64,
             sample_seed: int | None = None, progress: bool = False) -> list[str]:
    """Continuations of ``prompts`` (no special tokens added), decoded with ``<think>`` kept and cut at EOS: the
    one generation loop every task uses (``steer.generate_steered`` with no vector).

    Greedy by default; with ``sample_seed`` set, ancestral sampling at temperature 1 with prompt i seeded
    ``sample_seed + i`` (its own generator, so a prompt's sample depends neither on its batch nor on the others),
    which is how a model's move *rates* are compared with a teacher's (greedy keeps only the modal move).
    Finished rows leave their batch, which on a CPU makes a pass over traces of unequal length several times
    cheaper than ``transformers``' ``generate``.
    """
    g = generate_steered(model, tokenizer, list(prompts), None, max_new_tokens=max_new_tokens,
                         do_sample=sample_seed is not None, seed=0 if sample_seed is None else sample_seed,
                         batch_size=batch_size, progress=progress)
    return g.texts


def math_problems(evaluate_settings: dict) -> list:
    """The held-out math problems of a run's ``[evaluate]`` settings (``math_set``, ``n_eval``, ``seed``,
    ``math_files``: a local json/jsonl/parquet file in the dataset's format, which works offline)."""
    sets = {"math500": realdata.MATH500, "gsm8k": realdata.GSM8K}
    name = evaluate_settings["math_set"]
    if name not in sets:
        raise ValueError(f"[evaluate] math_set = {name!r}; choose one of {sorted(sets)}")
    files = evaluate_settings.get("math_files") or None
    if files is None:
        realdata.require_online(sets[name])
    return realdata.math_eval_problems(sets[name], evaluate_settings["n_eval"], evaluate_settings["seed"], files)


def math_accuracy(model, tokenizer, problems, max_new_tokens: int = 1024, batch_size: int = 8,
                  prompt_style: str = "boxed", progress: bool = True) -> dict:
    """Greedy generations on ``realdata.MathProblem``s, each scored with math-verify against the gold answer."""
    texts = generate(model, tokenizer, [p.prompt(prompt_style) for p in problems], max_new_tokens, batch_size,
                     progress=progress)
    correct = [realdata.check_answer(t, p.answer) for t, p in zip(texts, problems)]
    n_tok = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return {"accuracy": sum(correct) / len(problems), "correct": correct, "texts": texts,
            "think_rate": sum(THINK_OPEN in t for t in texts) / len(problems),
            "tokens_per_generation": n_tok / len(problems)}


def paired_gain(base: dict, distilled: dict) -> dict:
    """Accuracy gain (distilled - base) with the exact McNemar test on the same problems."""
    test = mcnemar(base["correct"], distilled["correct"])
    return {"n": len(base["correct"]), "base accuracy": base["accuracy"], "distilled accuracy": distilled["accuracy"],
            "gain": distilled["accuracy"] - base["accuracy"], "McNemar p": test["p"],
            "only base right": test["a_only"], "only distilled right": test["b_only"]}


def accuracy_gain(correct_base, correct_distilled, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """Distillation performance: distilled minus base accuracy on the same problems, paired bootstrap CI."""
    cb = np.asarray(correct_base, dtype=float)
    cd = np.asarray(correct_distilled, dtype=float)
    if cb.shape != cd.shape or cb.ndim != 1 or len(cb) == 0:
        raise ValueError("correct_base and correct_distilled must be equal-length 1-D arrays over the same problems")
    gain, lo, hi = bootstrap_mean_ci(cd - cb, n_boot, seed, ci)
    return dict(gain=gain, lo=lo, hi=hi, n=len(cb))


@torch.no_grad()
def teacher_forced_nll(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 32,
                       progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(summed next-token cross-entropy in nats [n], completion tokens scored [n]) of ``model`` on each
    completion given its prompt. ``teacher_forced_ce`` divides them.

    A smooth measure of distillation performance: run on held-out teacher traces, the distilled model's
    CE should sit below the base's. Prompt and completion are tokenised separately (no specials added) and
    concatenated, as at generation time; only completion tokens are scored. Batches are right-padded, so
    positions are unaffected.
    """
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"need equal, non-zero numbers of prompts and completions, got {len(prompts)} and {len(completions)}")
    seqs, starts = [], []
    for p, c in zip(prompts, completions):
        pi = tokenizer.encode(p, add_special_tokens=False)
        ci = tokenizer.encode(c, add_special_tokens=False)
        if not pi or not ci:
            raise ValueError(f"empty prompt or completion: {p!r} / {c!r}")
        seqs.append(pi + ci)
        starts.append(len(pi))
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and max(len(s) for s in seqs) > max_pos:
        raise ValueError(f"a prompt + completion is {max(len(s) for s in seqs)} tokens, beyond the model's {max_pos}")
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    nll_sum, n_tok = np.zeros(len(seqs)), np.zeros(len(seqs))
    for k in tqdm(range(0, len(seqs), batch_size), desc="teacher-forced CE", disable=not progress):
        rows = seqs[k:k + batch_size]
        T = max(len(s) for s in rows)
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        attn = torch.zeros((len(rows), T), dtype=torch.long)
        score = torch.zeros((len(rows), T), dtype=torch.bool)   # target positions that are completion tokens
        for b, s in enumerate(rows):
            ids[b, :len(s)] = torch.tensor(s)
            attn[b, :len(s)] = 1
            score[b, starts[k + b]:len(s)] = True
        logits = model(input_ids=ids.to(dev), attention_mask=attn.to(dev), use_cache=False).logits.float().cpu()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        m = score[:, 1:].float()
        nll_sum[k:k + len(rows)] = (nll * m).sum(1).double().numpy()
        n_tok[k:k + len(rows)] = m.sum(1).numpy()
    return nll_sum, n_tok


def teacher_forced_ce(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 32,
                      progress: bool = False) -> np.ndarray:
    """Mean next-token cross-entropy (nats / token) of ``model`` on each completion given its prompt, ``[n]``."""
    nll_sum, n_tok = teacher_forced_nll(model, tokenizer, prompts, completions, batch_size, progress)
    return nll_sum / n_tok


def ce_reduction(nll_base, nll_distilled, n_tokens, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """Distillation performance as CE reduction on the same texts: (sum of base minus distilled nats) / (sum of
    tokens), i.e. the drop in token-weighted teacher-forced CE (positive = the distilled model fits the teacher
    better), with a paired bootstrap CI over texts. Same keys as ``accuracy_gain``."""
    diff = np.asarray(nll_base, float) - np.asarray(nll_distilled, float)
    gain, lo, hi = bootstrap_ratio_ci(diff, n_tokens, n_boot, seed, ci)
    return dict(gain=gain, lo=lo, hi=hi, n=len(diff))
