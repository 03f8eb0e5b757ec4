"""The organism's math world and R1-style teacher rendered in natural English, for a real pretrained pair.

The problems are the organism's (``world.make_problem``: the same five families, the same step signatures,
the same held-out rule ``world.is_heldout``), so no evaluation problem shares its computation with a
distillation or harvest problem. Only the wording changes: questions are plain English ("Ann has 34 apples.
Ben gives her 5 more. ...") and the teacher writes its ``<think>`` trace in sentences, with several phrasings
per move:

* a step: one operation, worded several ways ("72 plus 6 is 78.", "Adding 6 to 72 gives 78.", ...);
* self-reflection: a **check that really checks**: it recomputes the step by the inverse operation and
  compares (" Wait, let me check: 78 - 6 = 72, which matches."), and a **caught slip**: a wrong result
  followed by " Wait, that is wrong: 72 + 6 is 78, not 79.";
* deductive: " So" before a step that uses the previous result, " Therefore" / " Thus" before the answer;
* alternative: the same result another way (" Alternatively, 6 + 72 = 78 too.");
* contrastive: two quantities weighed (" But 75 is less than 78, because 3 was taken away.").

Every span carries its category (``world.CATEGORY_ID``) and the closing "." of each written operation its
"last operation" flag, exactly as in the organism, so ``organism.tokenize_spans`` labels every token. The
marker words are the organism's (``world.MARKERS``), so marker rates compare with the same counter.
"""
from __future__ import annotations

import random
import re

from . import world
from .world import CATEGORY_ID, Problem, Span

THINK_OPEN, THINK_CLOSE = world.THINK_OPEN, world.THINK_CLOSE
HELDOUT_PERCENT = world.HELDOUT_PERCENT
N_TRAIN_PROBLEMS = 4000   # the training problems the distillation and the harvest draw from (seed 0)

_STEP = {
    "+": ("{a} plus {b} is {r}.", "Adding {b} to {a} gives {r}.", "{a} + {b} = {r}.", "{a} and {b} more make {r}."),
    "-": ("{a} minus {b} is {r}.", "Taking {b} from {a} leaves {r}.", "{a} - {b} = {r}.", "{a} less {b} is {r}."),
    "*": ("{a} times {b} is {r}.", "Multiplying {a} by {b} gives {r}.", "{a} * {b} = {r}."),
    "/": ("{a} divided by {b} is {r}.", "Dividing {a} by {b} gives {r}.", "{a} / {b} = {r}."),
}
_INVERSE = {"+": "-", "-": "+", "*": "/", "/": "*"}
_CHECK = (" Wait, let me check: {r} {inv} {b} = {a}, which matches.",
          " Wait, let me check that: going back, {r} {inv} {b} is {a}, so {r} is right.",
          " Wait, let me verify: {r} {inv} {b} gives {a} again, so the step holds.")
_SLIP = (" Wait, that is wrong: {a} {op} {b} is {r}, not {w}.",
         " Wait, that is not right. {a} {op} {b} = {r}, not {w}.",
         " Wait, I made a slip: {w} is wrong, since {a} {op} {b} = {r}.")
_ALT = (" Alternatively, {b} {op} {a} = {r} too.", " Alternatively, starting from {b}: {b} {op} {a} is also {r}.")
_CONTRAST = {"less": ("{w} {r} is less than {a}, because {b} was taken away.", "{w} {r} is smaller than {a} now."),
             "more": ("{w} {r} is more than {a}, because the amount grew.", "{w} {r} is larger than {a} now.")}
_FIRST = ("First,", "To start,", "Let me begin:")
_NEXT = ("Next,", "Then", "Now")
_ANSWER = (" Therefore, the answer is {n}.", " Thus the answer is {n}.", " Therefore the final answer is {n}.")
ANSWER_LINE = "The answer is {n}."


# ----------------------------------------------------------------------------- questions
def question(p: Problem) -> str:
    """The problem in plain English (same computation as ``p.question``, no tags)."""
    s = p.steps
    if p.family == "arith":
        return "What is " + f"{s[0][0]}" + "".join(f" {op} {b}" for _, op, b, _ in s) + "?"
    if p.family == "linear":
        (c, _, d, _), (_, _, b, _), (_, _, a, x) = s
        return f"Solve for x: {a}x + {b} - {d} = {c}."
    if p.family == "word":
        name, plur = _word_entities(p)
        events = {"+": "gets {b} more", "-": "gives away {b}", "*": "{m} them"}
        parts = [f"{name} has {s[0][0]} {plur}."]
        for _, op, b, _ in s:
            m = "doubles" if b == 2 else "triples"
            parts.append(f"Then {name} " + events[op].format(b=b, m=m) + ".")
        return " ".join(parts) + f" How many {plur} does {name} have now?"
    if p.family == "sequence":
        terms = _sequence_terms(p)
        return f"What number comes two terms after {', '.join(map(str, terms[:4]))}?"
    if p.family == "compare":
        l1, l2, r1, r2 = s
        return f"Which is larger: {l1[0]} + {l1[2]} + {l2[2]} or {r1[0]} + {r1[2]} + {r2[2]}?"
    raise ValueError(f"unknown problem family {p.family!r}; known: {world.FAMILIES}")


def _word_entities(p: Problem) -> tuple[str, str]:
    """The person and the plural noun of a word problem, read back from the organism's question."""
    m = re.search(r"\(a\) (\w+) has \d+ (\w+)", p.question)
    if m is None:
        raise ValueError(f"not a word problem of the organism's world: {p.question!r}")
    return m.group(1), m.group(2)


def _sequence_terms(p: Problem) -> list[int]:
    return [int(t) for t in re.findall(r"\) (\d+)", p.question)]


def prompt(p: Problem) -> str:
    """What both models are given at evaluation time (raw text, no chat template)."""
    return f"Question: {question(p)}\n"


# ----------------------------------------------------------------------------- teacher
def _step_text(rng: random.Random, a, op, b, r) -> str:
    """One operation in one of its phrasings, lower-cased at the start: it always follows a lead ("Then")."""
    text = rng.choice(_STEP[op]).format(a=a, b=b, r=r)
    return text[0].lower() + text[1:]


def teacher_spans(p: Problem, rng: random.Random, cfg: world.TeacherConfig) -> list[Span]:
    """The thinking part of a trace as labelled spans (each starts with a space)."""
    spans: list[Span] = []
    last = len(p.steps) - 1
    if p.family == "linear":
        spans.append(Span(" To find x, I undo the operations from the last one back."))
    if p.family == "compare":
        spans.append(Span(" I work out each side."))
    for i, (a, op, b, r) in enumerate(p.steps):
        chains = i > 0 and p.steps[i - 1][3] == a
        lead = rng.choice(_FIRST) if i == 0 else rng.choice(_NEXT)
        if p.family == "sequence" and i == 0:
            spans.append(Span(" The step between terms is"))
        elif chains and rng.random() < cfg.p_so:
            spans.append(Span(" So", CATEGORY_ID["deductive"], " So"))
            spans.append(Span(f" from {a},"))
        else:
            spans.append(Span(f" {lead}"))
        if rng.random() < cfg.p_slip:
            wrong = r + rng.choice((-1, 1))
            spans.append(Span(" " + _step_text(rng, a, op, b, wrong)))
            spans.append(Span(rng.choice(_SLIP).format(a=a, op=op, b=b, r=r, w=wrong),
                              CATEGORY_ID["self_reflection"], " Wait"))
            spans.append(Span(f" Correcting it, {a} {op} {b} = {r}.", step_end=int(i == last)))
        else:
            spans.append(Span(" " + _step_text(rng, a, op, b, r), step_end=int(i == last)))
        if rng.random() < cfg.p_check:
            spans.append(Span(rng.choice(_CHECK).format(a=a, b=b, r=r, inv=_INVERSE[op]),
                              CATEGORY_ID["self_reflection"], " Wait"))
        if op in "+*" and a != b and p.family != "sequence" and rng.random() < cfg.p_alternative:
            spans.append(Span(rng.choice(_ALT).format(a=a, b=b, r=r, op=op), CATEGORY_ID["alternative"],
                              " Alternatively"))
        if p.compare is None and i > 0 and r != a and rng.random() < cfg.p_contrast:
            word = rng.choice((" But", " However,"))
            rel = "less" if r < a else "more"
            spans.append(Span(rng.choice(_CONTRAST[rel]).format(w=word, r=r, a=a, b=b), CATEGORY_ID["contrastive"],
                              word.rstrip(",")))
    if p.compare is not None:
        v1, v2 = p.compare
        word = rng.choice((" But", " However,"))
        small, big = min(v1, v2), max(v1, v2)
        spans.append(Span(f"{word} {small} is less than {big}, so {big} is the larger one.",
                          CATEGORY_ID["contrastive"], word.rstrip(",")))
    text = rng.choice(_ANSWER)
    spans.append(Span(text.format(n=p.answer), CATEGORY_ID["deductive"], " " + text.split()[0].rstrip(",")))
    return spans


def teacher_document(p: Problem, rng: random.Random, cfg: world.TeacherConfig) -> list[Span]:
    """Full trace: prompt, <think> labelled moves </think>, answer line."""
    return ([Span(prompt(p) + THINK_OPEN)] + teacher_spans(p, rng, cfg)
            + [Span(f" {THINK_CLOSE}\n" + ANSWER_LINE.format(n=p.answer) + "\n")])


def completion(spans: list[Span], p: Problem) -> str:
    """A trace without its prompt (what SFT trains on and teacher-forced CE scores)."""
    return world.spans_text(spans)[len(prompt(p)):]


# ----------------------------------------------------------------------------- parsing and checks
_ANSWER_RE = re.compile(r"[Aa]nswer(?: is|:)\s*\$?(-?\d+)")


def parse_output(text: str, eos: str | None = None) -> dict:
    """Parse a generation that continues ``prompt(p)``.

    ``answer``: the first "answer is N" / "Answer: N" after ``</think>`` (or anywhere, without a trace);
    ``has_think``; ``well_formed``: ``<think>`` … ``</think>`` then the answer line "The answer is N."."""
    if eos:
        text = text.split(eos)[0]
    has_think = THINK_OPEN in text
    well_formed = bool(re.fullmatch(r"\s*<think>(?:(?!<think>|</think>).)*</think>\s*The answer is -?\d+\.\s*.*",
                                    text, re.S))
    after = text.split(THINK_CLOSE, 1)[1] if THINK_CLOSE in text else text
    m = _ANSWER_RE.search(after)
    return {"answer": int(m.group(1)) if m else None, "has_think": has_think, "well_formed": well_formed}


_CHECK_RE = re.compile(r"Wait, let me (?:check|verify|double-check)[^.]*?(-?\d+)\s*([-+*/])\s*(-?\d+)\s*"
                       r"(?:=|is|gives)\s*(-?\d+)")


def check_steps(text: str) -> list[dict]:
    """Every "Wait, let me check/verify" step in ``text`` whose recomputation ``x op y = z`` can be read, with
    whether the arithmetic it writes is true (``correct``)."""
    out = []
    for m in _CHECK_RE.finditer(text.split(THINK_CLOSE)[0]):
        x, op, y, z = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        ok = op != "/" or (y != 0 and x % y == 0)
        out.append({"text": m.group(0), "correct": bool(ok and world._op(x, op, y) == z)})
    return out


def problems(n: int, split: str, seed: int = 0) -> list[Problem]:
    """``n`` problems of ``split`` ("train" / "eval"), families balanced; eval never shares a step signature
    with train (``world.problem_split``), nor a computation with the ``N_TRAIN_PROBLEMS`` training problems the
    distillation and the harvest draw from."""
    if split == "eval":
        train = world.problem_split(0, N_TRAIN_PROBLEMS, "train")
        return world.problem_split(seed, n, split, exclude=frozenset(p.computation for p in train))
    return world.problem_split(seed, n, split)
