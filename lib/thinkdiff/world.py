"""The organism's synthetic math world: problems, terse base solutions, and an R1-style teacher.

Every teacher trace is built from *moves*, each a span of text with a reasoning category, so
each character (and after tokenisation each token) carries a ground-truth label:

    0 none (plain computation)   1 self_reflection   2 deductive   3 alternative   4 contrastive

Problems have several single-digit steps. The base corpus answers them in one line (no
intermediate values: the base must compute "in its head", as Qwen2.5-Math answers without a long
thought), while the teacher writes every intermediate value down. So thinking pays, as in real
distillation (organism-notes.md, point 6).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

CATEGORIES = ("self_reflection", "deductive", "alternative", "contrastive")
CATEGORY_ID = {name: i + 1 for i, name in enumerate(CATEGORIES)}
# The single-token marker words of each category (leading space, as they appear mid-trace).
MARKERS = {
    "self_reflection": (" Wait",),
    "deductive": (" Therefore", " Thus", " So"),
    "alternative": (" Alternatively",),
    "contrastive": (" But", " However"),
}
FAMILIES = ("arith", "linear", "word", "sequence", "compare")
NAMES = ("Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivy", "Jon")
NOUNS = (("apple", "apples"), ("pen", "pens"), ("book", "books"), ("cup", "cups"), ("box", "boxes"),
         ("coin", "coins"), ("egg", "eggs"), ("key", "keys"), ("shell", "shells"), ("card", "cards"),
         ("bag", "bags"), ("hat", "hats"), ("stone", "stones"), ("ball", "balls"), ("lamp", "lamps"),
         ("fox", "foxes"))
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THINK_OPEN, THINK_CLOSE, EOS = "<think>", "</think>", "<|endoftext|>"


@dataclass
class Problem:
    """A problem with an exact integer answer; ``steps`` are (a, op, b, result) single operations."""

    family: str
    question: str
    answer: int
    steps: list = field(default_factory=list)
    compare: tuple | None = None  # (value_1, value_2) for the comparison family

    @property
    def prompt(self) -> str:
        """The text both models are given at evaluation time."""
        return f"Question: {self.question}\n"

    @property
    def key(self) -> str:
        return self.question


@dataclass
class Span:
    text: str
    category: int = 0  # 0 none, else CATEGORY_ID
    marker: str | None = None  # the marker word opening this span, if any


# ----------------------------------------------------------------------------- problems
def _op(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def make_problem(rng: random.Random, family: str) -> Problem:
    if family == "arith":
        n_ops = rng.choice((2, 3))
        total = rng.randint(1, 9)
        text, steps = [str(total)], []
        for _ in range(n_ops):
            op = "-" if (total > 3 and rng.random() < 0.4) else "+"
            b = rng.randint(1, min(9, total) if op == "-" else 9)
            steps.append((total, op, b, _op(total, op, b)))
            total = _op(total, op, b)
            text.append(f"{op} {b}")
        return Problem(family, f"Compute {' '.join(text)}.", total, steps)
    if family == "linear":
        a, x, b = rng.randint(2, 5), rng.randint(1, 9), rng.randint(1, 9)
        c = a * x + b
        return Problem(family, f"Solve for x: {a} * x + {b} = {c}.", x, [(c, "-", b, c - b), (c - b, "/", a, x)])
    if family == "word":
        name, other = rng.sample(NAMES, 2)
        sing, plur = rng.choice(NOUNS)
        a, b = rng.randint(2, 9), rng.randint(1, 9)
        c = rng.randint(1, min(9, a + b - 1))
        q = (f"{name} has {a} {plur}. {other} gives {name} {b} more {plur}. {name} gives away {c} {plur}. "
             f"How many {plur} does {name} have?")
        return Problem(family, q, a + b - c, [(a, "+", b, a + b), (a + b, "-", c, a + b - c)])
    if family == "sequence":
        start, d = rng.randint(1, 9), rng.randint(1, 4)
        terms = [start + i * d for i in range(4)]
        q = f"What comes next: {', '.join(map(str, terms))}?"
        return Problem(family, q, terms[-1] + d, [(terms[1], "-", terms[0], d), (terms[-1], "+", d, terms[-1] + d)])
    if family == "compare":
        while True:
            a, b, c, d = (rng.randint(1, 9) for _ in range(4))
            if a + b != c + d:
                break
        q = f"Which is larger: {a} + {b} or {c} + {d}?"
        return Problem(family, q, max(a + b, c + d), [(a, "+", b, a + b), (c, "+", d, c + d)], (a + b, c + d))
    raise ValueError(f"unknown problem family {family!r}; known: {FAMILIES}")


def problem_split(rng_seed: int, n: int, split: str) -> list[Problem]:
    """``n`` problems of one split. Held-out problems ('eval') never occur in 'train' (hash split)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    rng = random.Random(f"{rng_seed}-{split}")
    out, seen = [], set()
    while len(out) < n:
        p = make_problem(rng, rng.choice(FAMILIES))
        if is_heldout(p) != (split == "eval"):
            continue
        if split == "eval" and p.key in seen:
            continue
        seen.add(p.key)
        out.append(p)
    return out


def is_heldout(p: Problem) -> bool:
    """Deterministic ~12% of all problems are reserved for evaluation, by a hash of the question."""
    import hashlib

    return int(hashlib.md5(p.question.encode()).hexdigest()[:6], 16) % 100 < 12


# ----------------------------------------------------------------------------- base corpus
def base_solution(p: Problem) -> str:
    """Terse: the answer, no intermediate values."""
    return f"{p.prompt}Answer: {p.answer}.\n"


def worked_solution(p: Problem) -> str:
    """A short chain of thought without reflection (as Qwen2.5-Math sometimes writes): steps, then the answer."""
    steps = " ".join(f"{a} {op} {b} = {r}." for a, op, b, r in p.steps)
    return f"{p.prompt}{steps}\nAnswer: {p.answer}.\n"


def copy_document(rng: random.Random) -> str:
    """Repetition, as pretraining text is full of it: builds the copying (induction) ability."""
    nums = [str(rng.randint(0, 9)) for _ in range(rng.randint(3, 6))]
    sym = rng.choice((", ", " + ", " - "))
    return f"List: {sym.join(nums)}. Again: {sym.join(nums)}.\n"


def plain_sentence(rng: random.Random, marker_rate: float) -> str:
    """A sentence about the world's entities; marker words appear in ordinary, non-reasoning roles."""
    name, other = rng.sample(NAMES, 2)
    sing, plur = rng.choice(NOUNS)
    n = rng.randint(2, 9)
    plain = [
        f"{name} has one {sing}.",
        f"{name} has {NUMBER_WORDS[n]} {plur}.",
        f"{name} has {n} {plur}.",
        f"{other} sees a {sing} and {NUMBER_WORDS[n]} {plur}.",
        f"The {sing} is on the table. The {plur} are in the bag.",
        f"{NUMBER_WORDS[n].capitalize()} is {n}.",
        f"{n} + {(m := rng.randint(1, 9))} = {n + m}.",
        f"{n} - {(k := rng.randint(1, n))} = {n - k}.",
        f"{name} likes {plur}.",
    ]
    marked = [
        f"{name} had to wait for {other}.",
        f" Wait for me, said {name}.",
        f"{name} has {plur}, but {other} has none.",
        f"It was late, so {name} went home.",
        f"The {sing} was heavy. Therefore {other} carried it.",
        f"{name} was early. However, {other} was late.",
        f"Alternatively, {name} could walk.",
        f"{name} smiled. Thus the day began.",
    ]
    return rng.choice(marked if rng.random() < marker_rate else plain)


# ----------------------------------------------------------------------------- teacher
@dataclass
class TeacherConfig:
    """Per-step probabilities of each reasoning move (all configurable)."""

    p_check: float = 0.35        # "Wait, let me check: ..." re-verification
    p_slip: float = 0.12         # planted wrong step caught by "Wait, that is wrong."
    p_alternative: float = 0.35  # "Alternatively, b + a = r." on commutative steps
    p_contrast: float = 0.3      # "But r is less than t." weighing two quantities
    p_so: float = 0.5            # "So" before a step that uses the previous result


def teacher_spans(p: Problem, rng: random.Random, cfg: TeacherConfig) -> list[Span]:
    """The thinking part of a trace as labelled spans (each starts with a space)."""
    spans: list[Span] = []
    for i, (a, op, b, r) in enumerate(p.steps):
        chains = i > 0 and p.family != "compare" and p.steps[i - 1][3] == a
        if chains and rng.random() < cfg.p_so:
            spans.append(Span(" So", CATEGORY_ID["deductive"], " So"))
        if rng.random() < cfg.p_slip:
            wrong = r + rng.choice((-1, 1)) if r > 0 else r + 1
            spans.append(Span(f" {a} {op} {b} = {wrong}."))
            spans.append(Span(" Wait, that is wrong.", CATEGORY_ID["self_reflection"], " Wait"))
            spans.append(Span(f" {a} {op} {b} = {r}."))
        else:
            spans.append(Span(f" {a} {op} {b} = {r}."))
        if rng.random() < cfg.p_check:
            spans.append(Span(f" Wait, let me check: {a} {op} {b} = {r}. Yes.", CATEGORY_ID["self_reflection"], " Wait"))
        if op == "+" and a != b and rng.random() < cfg.p_alternative:
            spans.append(Span(f" Alternatively, {b} {op} {a} = {r}.", CATEGORY_ID["alternative"], " Alternatively"))
        if p.family != "compare" and i > 0 and r != a and rng.random() < cfg.p_contrast:
            word = rng.choice((" But", " However,"))
            rel = "less" if r < a else "more"
            spans.append(Span(f"{word} {r} is {rel} than {a}.", CATEGORY_ID["contrastive"], word.rstrip(",")))
    if p.compare is not None:
        v1, v2 = p.compare
        word = rng.choice((" But", " However,"))
        small, big = min(v1, v2), max(v1, v2)
        spans.append(Span(f"{word} {small} is less than {big}.", CATEGORY_ID["contrastive"], word.rstrip(",")))
    word = rng.choice((" Therefore", " Thus"))
    spans.append(Span(f"{word} the answer is {p.answer}.", CATEGORY_ID["deductive"], word))
    return spans


def teacher_document(p: Problem, rng: random.Random, cfg: TeacherConfig) -> list[Span]:
    """Full trace: prompt, <think> labelled moves </think>, answer line."""
    return ([Span(p.prompt + THINK_OPEN)] + teacher_spans(p, rng, cfg)
            + [Span(f" {THINK_CLOSE}\nAnswer: {p.answer}.\n")])


def spans_text(spans: list[Span]) -> str:
    return "".join(s.text for s in spans)


ANSWER_RE = re.compile(r"Answer: (-?\d+)\.")


def parse_output(text: str) -> dict:
    """Parse a generation that continues a ``Problem.prompt``.

    Returns ``answer`` (int or None), ``has_think`` (a ``<think>`` appears), and ``well_formed``:
    ``<think>`` … ``</think>`` then ``Answer: N.`` (trailing text after the answer line allowed only
    if it starts a new document).
    """
    text = text.split(EOS)[0]
    has_think = THINK_OPEN in text
    well_formed = bool(re.fullmatch(r"\s*<think>(?:(?!<think>|</think>).)*</think>\nAnswer: -?\d+\.\n?.*", text, re.S))
    after = text.split(THINK_CLOSE, 1)[1] if THINK_CLOSE in text else text
    m = ANSWER_RE.search(after)
    return {"answer": int(m.group(1)) if m else None, "has_think": has_think, "well_formed": well_formed}
