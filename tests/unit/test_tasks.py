"""Each task states its problems, prompt and scoring the way 00 and 04_steer use them, for any pair."""
from __future__ import annotations

import random

import pytest

from thinkdiff import nlworld, tasks, world


def test_every_task_is_registered_behind_one_interface():
    assert set(tasks.TASKS) == {"organism-world", "english-world", "math"}
    for task in tasks.TASKS.values():
        assert isinstance(task, tasks.Task) and task.name
    with pytest.raises(ValueError, match="unknown task 'chess'"):
        tasks.get("chess")


@pytest.mark.parametrize("name, parse", [("organism-world", world.parse_output), ("english-world", nlworld.parse_output)])
def test_world_tasks_draw_held_out_problems_and_score_a_generation(name, parse):
    task = tasks.get(name)
    settings = {"n_eval": 10, "seed": 0}
    problems = task.problems(settings)
    assert len(problems) == 10 and len(task.problems(settings, n=4)) == 4
    assert not task.training_signatures() & {p.signature for p in problems}      # held out by computation
    p = problems[0]
    assert task.question(p) in task.prompt(p)
    right = task.teacher_completions([p])[1][0]                                    # the teacher's own trace
    assert task.score(right, p) == {"correct": True, "well_formed": True}, (right, parse(right))
    wrong = right.replace(str(p.answer), str(p.answer + 1))
    assert task.score(wrong, p)["correct"] is False
    assert task.has_teacher and task.marker_words and len(task.examples(random.Random(0))) == len(world.FAMILIES)


def test_the_math_task_scores_with_math_verify_and_has_no_teacher():
    from thinkdiff.realdata import MathProblem

    task = tasks.get("math")
    p = MathProblem(problem="What is 2 + 3?", answer="5", source="toy")
    assert task.prompt(p) == "What is 2 + 3?\n" and task.question(p) == "What is 2 + 3?"
    assert task.score("<think> 2 + 3 = 5 </think> The answer is \\boxed{5}.", p) == {"correct": True, "well_formed": True}
    assert task.score("The answer is \\boxed{6}.", p) == {"correct": False, "well_formed": False}
    assert not task.has_teacher and task.teacher_marker_rates(None, [p]) is None and task.examples(None) == []


def test_each_task_plants_only_its_own_words():
    """The ADL lens (03d_adl) scores a task's planted words: the organism's teacher plants the markers and the gated
    connective, the English teacher the same markers and no connective, a math set nothing."""
    from thinkdiff import tasks, world

    assert set(tasks.get("organism-world").planted_words) == set(world.MARKERS) | {"gated connective"}
    assert tasks.get("english-world").planted_words == dict(world.MARKERS)
    assert tasks.get("math").planted_words is None
    # the gated connective's checks (03_label) and the ADL's planted-concept comparison (03d_adl) need its teacher
    assert [n for n in ("organism-world", "english-world", "math") if tasks.get(n).plants_gate] == ["organism-world"]
