"""Tasks a pair is evaluated on, one file each behind one interface (``task.Task``):

    organism_world.py   the organism's synthetic math world (exact answers, a labelled teacher)
    english_world.py    the same world in natural English (the SmolLM2 pair's distillation data)
    math_set.py         MATH-500 / GSM8K scored with math-verify (the paper's real pairs)

A pair names its task (``PairSpec.task``); adding one is a new file with a ``@register_task`` class.
"""
from __future__ import annotations

from . import english_world, math_set, organism_world  # noqa: F401  (imported for their registrations)
from .task import TASKS, Task, register_task  # noqa: F401


def get(name: str) -> Task:
    """The task called ``name``; a clear error for an unknown one."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]
