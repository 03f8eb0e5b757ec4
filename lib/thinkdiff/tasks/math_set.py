"""A public math set (MATH-500 or GSM8K) scored with math-verify: the paper's evaluation of the real pairs. No
teacher, so no marker rates or cross-entropy; acceptance is the paired gain with its exact McNemar test."""
from __future__ import annotations

from .. import realdata
from ..evaluate import math_accuracy, math_problems, paired_gain
from .task import Task, register_task

THINK_CLOSE = "</think>"


@register_task
class MathSet(Task):
    name = "math"

    def problems(self, settings, n=None, seed=None):
        return math_problems({**settings, "n_eval": settings["n_eval"] if n is None else n,
                              "seed": settings["seed"] if seed is None else seed})

    def prompt(self, problem):
        return problem.prompt("raw")   # the paper's steering prompts: the raw problem and a newline, no template

    def question(self, problem):
        return problem.problem

    def score(self, text, problem):
        return {"correct": realdata.check_answer(text, problem.answer), "well_formed": THINK_CLOSE in text}

    def evaluate_pair(self, pair, settings, progress=True):
        problems = self.problems(settings)
        return {role: math_accuracy(model, pair.tokenizer, problems, settings["max_new_tokens"], progress=progress)
                for role, model in zip(("base", "distilled"), pair.models)}

    def acceptance(self, base, distilled, teacher_rates):
        return paired_gain(base, distilled)
