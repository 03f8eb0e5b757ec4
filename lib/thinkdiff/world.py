"""The organism's synthetic math world: problems, terse base solutions, and an R1-style teacher.

Every teacher trace is built from *moves*, each a span of text with a reasoning category, so
each character (and after tokenisation each token) carries a ground-truth label:

    0 none (plain computation)   1 self_reflection   2 deductive   3 alternative   4 contrastive

Problems are chains of 3–5 operations on two-digit numbers (carries and borrows included). The
base corpus knows every *single* operation (many one-step facts, as a pretrained model knows
arithmetic) but answers multi-step problems in one line, with no intermediate values; the teacher
writes one easy operation per step. A terse answer has to compose 3–5 operations in one forward
pass, which these tiny models cannot do, so thinking pays, as in real distillation.

Two quantities are planted for the distilled model. (1) At the end of each written operation the
trace either goes on or concludes, so a model that continues traces must know whether the step it
just wrote was the **last** one (``Span.step_end``); the step's tag and the chain's length give this
away, and the base reads it too. (2) The **gated connective**, built to have no giveaway: after every
operation but the last the teacher writes " Next" or " Then", chosen by ``gate_bit`` = parity of the
result just written XOR parity of the question's first number. To predict it at the step's closing
"." the distilled model must compute an XOR of two distant parities, which no additive function of the
visible tokens gives (``probes.gate_audit`` checks that on the labels alone, before any model exists);
the base never sees a connective and never needs it. ``Span.gate`` labels the "." with that bit and
``Span.parity`` labels the result's own token with its parity (a quantity both models can read off the number
they just wrote or read: the shared control).
Whether each model represents them is measured, not assumed: ``probes.probe_ceiling`` (``03_label``).

Held-out problems are chosen by their *computation*: the step signature (every operation with its
operands), so no evaluation problem shares its steps with a training problem, whatever its wording.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

from .lexicon import CATEGORIES  # noqa: E402  (the four reasoning categories: one definition, in lexicon.py)

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
HELDOUT_PERCENT = 12  # share of step signatures reserved for evaluation
LO, HI = 10, 99       # running values stay two-digit


@dataclass
class Problem:
    """A problem with an exact integer answer; ``steps`` are (a, op, b, result) single operations.

    The question lists its quantities as tagged items ("(a) 72 (b) + 6 ..."); ``refs[i]`` is the
    text a step-by-step solution writes before step ``i`` to name the items that step uses, copied
    from the question ("(b) + 6"), so every operand is found by its tag, not by counting."""

    family: str
    question: str
    answer: int
    steps: list = field(default_factory=list)
    compare: tuple | None = None  # (value_1, value_2) for the comparison family
    refs: list = field(default_factory=list)

    @property
    def prompt(self) -> str:
        """The text both models are given at evaluation time."""
        return f"Question: {self.question}\n"

    @property
    def signature(self) -> str:
        """The computation, independent of wording: family and every (a op b) in order."""
        return self.family + ":" + ";".join(f"{a}{op}{b}" for a, op, b, _ in self.steps)

    @property
    def computation(self) -> str:
        """Every (a op b) in order, without the family: two problems of different families can share it."""
        return ";".join(f"{a}{op}{b}" for a, op, b, _ in self.steps)

    @property
    def key(self) -> str:
        return self.signature


@dataclass
class Span:
    text: str
    category: int = 0  # 0 none, else CATEGORY_ID
    marker: str | None = None  # the marker word opening this span, if any
    step_end: int | None = None  # on a written operation: 1 if it is the last one, 0 if more follow
    gate: int | None = None      # on a scored written operation (``gate_scored``): its ``gate_bit``
    parity: int | None = None    # on the same operations: parity of the result, labelled on the result's token


# ----------------------------------------------------------------------------- problems
TAGS = "abcdefghij"


def _tagged(items: list[str]) -> list[str]:
    """``["72", "+ 6"]`` -> ``["(a) 72", "(b) + 6"]``."""
    return [f"({TAGS[i]}) {it}" for i, it in enumerate(items)]


def _chain_refs(tagged: list[str], first: int, n_ops: int) -> list[str]:
    """The refs of a chain whose start is item ``first`` and whose operations are the next ``n_ops`` items."""
    return [f"{tagged[first]} {tagged[first + 1]}"] + [tagged[first + 1 + i] for i in range(1, n_ops)]


def _op(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def _chain(rng: random.Random, start: int, n_ops: int, ops=("+", "-")) -> list[tuple]:
    """``n_ops`` steps from ``start`` with single-digit operands, every value kept in [LO, HI]."""
    steps, total = [], start
    for _ in range(n_ops):
        choices = [o for o in ops if (o == "+" and total + 2 <= HI) or (o == "-" and total - 2 >= LO)
                   or (o == "*" and total * 2 <= HI)]
        op = rng.choice(choices)
        if op == "+":
            b = rng.randint(2, min(9, HI - total))
        elif op == "-":
            b = rng.randint(2, min(9, total - LO))
        else:
            b = 2 if total * 3 > HI else rng.choice((2, 3))
        steps.append((total, op, b, _op(total, op, b)))
        total = _op(total, op, b)
    return steps


def make_problem(rng: random.Random, family: str) -> Problem:
    if family == "arith":
        steps = _chain(rng, rng.randint(LO, HI - 10), rng.randint(3, 5))
        tagged = _tagged([str(steps[0][0])] + [f"{op} {b}" for _, op, b, _ in steps])
        return Problem(family, f"Compute {' '.join(tagged)}.", steps[-1][3], steps,
                       refs=_chain_refs(tagged, 0, len(steps)))
    if family == "linear":
        while True:
            a, x, b, d = rng.randint(2, 6), rng.randint(2, 16), rng.randint(2, 9), rng.randint(2, 9)
            c = a * x + b - d
            if a * x >= LO and a * x + b <= HI and c >= LO:
                break
        steps = [(c, "+", d, c + d), (c + d, "-", b, a * x), (a * x, "/", a, x)]
        tagged = _tagged(["x", f"* {a}", f"+ {b}", f"- {d}", f"= {c}"])
        # the solution undoes the operations last to first
        return Problem(family, f"Solve for x: {' '.join(tagged)}.", x, steps,
                       refs=[f"{tagged[4]} {tagged[3]}", tagged[2], tagged[1]])
    if family == "word":
        name, other = rng.sample(NAMES, 2)
        _, plur = rng.choice(NOUNS)
        steps = _chain(rng, rng.randint(LO, 60), rng.randint(3, 4), ops=("+", "-", "*"))
        events = {"+": lambda b: f"{other} gives {b} more",
                  "-": lambda b: f"{name} gives away {b}",
                  "*": lambda b: f"{name} {'doubles' if b == 2 else 'triples'} them"}
        tagged = _tagged([f"{name} has {steps[0][0]} {plur}"] + [events[op](b) for _, op, b, _ in steps])
        q = " ".join(t + "." for t in tagged) + f" How many {plur} does {name} have?"
        # a solution names each event by its tag and writes it as the operation it is ("(b) + 8")
        as_ops = _tagged([str(steps[0][0])] + [f"{op} {b}" for _, op, b, _ in steps])
        return Problem(family, q, steps[-1][3], steps, refs=_chain_refs(as_ops, 0, len(steps)))
    if family == "sequence":
        while True:
            start, d = rng.randint(LO, HI), rng.choice([-1, 1]) * rng.randint(2, 9)
            terms = [start + i * d for i in range(6)]
            if min(terms) >= LO and max(terms) <= HI:
                break
        shown, op, step = terms[:4], ("+" if d > 0 else "-"), abs(d)
        first = (shown[1], "-", shown[0], step) if d > 0 else (shown[0], "-", shown[1], step)
        steps = [first, (terms[3], op, step, terms[4]), (terms[4], op, step, terms[5])]
        tagged = _tagged([str(t) for t in shown])
        q = f"What comes two terms after: {', '.join(tagged)}?"
        return Problem(family, q, terms[5], steps, refs=[f"{tagged[0]} {tagged[1]}", tagged[3], f"({TAGS[4]})"])
    if family == "compare":
        while True:
            left = _chain(rng, rng.randint(LO, 80), 2, ops=("+",))
            right = _chain(rng, rng.randint(LO, 80), 2, ops=("+",))
            if left[-1][3] != right[-1][3]:
                break
        v1, v2 = left[-1][3], right[-1][3]
        tagged = _tagged([str(left[0][0]), f"+ {left[0][2]}", f"+ {left[1][2]}",
                          str(right[0][0]), f"+ {right[0][2]}", f"+ {right[1][2]}"])
        q = f"Which is larger: {' '.join(tagged[:3])} or {' '.join(tagged[3:])}?"
        return Problem(family, q, max(v1, v2), left + right, (v1, v2),
                       refs=_chain_refs(tagged, 0, 2) + _chain_refs(tagged, 3, 2))
    raise ValueError(f"unknown problem family {family!r}; known: {FAMILIES}")


def is_heldout(p: Problem) -> bool:
    """Deterministic ~12% of all step signatures are reserved for evaluation (hash of the computation)."""
    return int(hashlib.md5(p.signature.encode()).hexdigest()[:8], 16) % 100 < HELDOUT_PERCENT


def problem_split(rng_seed: int, n: int, split: str, exclude=frozenset()) -> list[Problem]:
    """``n`` problems of one split, the families in turn (balanced).

    Held-out problems ('eval') never share a step signature with a 'train' problem; eval problems are distinct.
    ``exclude``: computations (``Problem.computation``, the family left out) an eval problem must not have, e.g.
    those of the concrete training problems a model saw: the signature includes the family, so a training word
    problem and an eval arithmetic chain could otherwise compute the same thing.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    rng = random.Random(f"{rng_seed}-{split}")
    out, seen, misses = [], set(), 0
    while len(out) < n:
        family = FAMILIES[len(out) % len(FAMILIES)]
        p = make_problem(rng, family)
        if is_heldout(p) != (split == "eval") or (split == "eval" and (p.key in seen or p.computation in exclude)):
            misses += 1
            # a family has finitely many distinct held-out computations (sequences fewest): say so, do not spin
            if misses > 2000 + 200 * n:
                raise ValueError(f"cannot draw {n} distinct {split} problems: family {family!r} ran out after "
                                 f"{sum(q.family == family for q in out)}; ask for fewer")
            continue
        seen.add(p.key)
        out.append(p)
    return out


# ----------------------------------------------------------------------------- base corpus
def base_solution(p: Problem) -> str:
    """Terse: the answer, no intermediate values."""
    return f"{p.prompt}Answer: {p.answer}.\n"


def random_fact(rng: random.Random) -> tuple:
    """One single operation of the kinds the problems use: (a, op, b, result)."""
    u = rng.random()
    if u < 0.7:
        return _chain(rng, rng.randint(LO, HI), 1, ops=("+", "-"))[0]
    if u < 0.8:  # the difference of two close two-digit numbers (a sequence's step)
        a = rng.randint(LO + 2, HI)
        b = rng.randint(max(LO, a - 9), a - 2)
        return (a, "-", b, a - b)
    if u < 0.9:
        return _chain(rng, rng.randint(LO // 2, HI // 2), 1, ops=("*",))[0]
    a, x = rng.randint(2, 6), rng.randint(2, 16)
    return (a * x, "/", a, x)


def fact_document(rng: random.Random) -> str:
    """Several one-step facts in the teacher's step format: the base knows single operations."""
    facts = (random_fact(rng) for _ in range(rng.randint(4, 8)))
    return "Facts:" + "".join(f" {a} {op} {b} = {r}." for a, op, b, r in facts) + "\n"


def _item(rng: random.Random) -> str:
    """A short list item: a number (one or two digits), an operation with its operand, or a few words."""
    u = rng.random()
    if u < 0.4:
        return str(rng.randint(2, 9) if rng.random() < 0.3 else rng.randint(LO, HI))
    if u < 0.8:
        return f"{rng.choice('+-*')} {rng.randint(2, 9)}"
    return f"{rng.choice(NAMES)} has {rng.randint(LO, HI)} {rng.choice(NOUNS)[1]}"


def copy_document(rng: random.Random) -> str:
    """Repetition, as pretraining text is full of it: builds the copying (induction) ability."""
    if rng.random() < 0.5:
        nums = [str(rng.randint(2, 9) if rng.random() < 0.5 else rng.randint(LO, HI))
                for _ in range(rng.randint(3, 6))]
        sym = rng.choice((", ", " + ", " - "))
        return f"List: {sym.join(nums)}. Again: {sym.join(nums)}.\n"
    tagged = " ".join(_tagged([_item(rng) for _ in range(rng.randint(3, 6))]))
    return f"List: {tagged}. Again: {tagged}.\n"


def lookup_document(rng: random.Random) -> str:
    """Tagged items, then some of them looked up by tag in random order: finding a quantity by its name."""
    tagged = _tagged([_item(rng) for _ in range(rng.randint(3, 6))])
    asked = rng.sample(tagged, rng.randint(2, len(tagged)))
    return f"Items: {' '.join(tagged)}. Look up:" + "".join(f" {t}." for t in asked) + "\n"


def plain_sentence(rng: random.Random, marker_rate: float) -> str:
    """A sentence about the world's entities; marker words appear in ordinary, non-reasoning roles."""
    name, other = rng.sample(NAMES, 2)
    sing, plur = rng.choice(NOUNS)
    n = rng.randint(2, 9)
    plain = [
        f"{name} has one {sing}.",
        f"{name} has {NUMBER_WORDS[n]} {plur}.",
        f"{name} has {rng.randint(LO, HI)} {plur}.",
        f"{other} sees a {sing} and {NUMBER_WORDS[n]} {plur}.",
        f"The {sing} is on the table. The {plur} are in the bag.",
        f"{NUMBER_WORDS[n].capitalize()} is {n}.",
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


# ----------------------------------------------------------------------------- the gated connective
# Connective after every operation but the last, indexed by the gate bit. Neither word is in the base corpus, so
# the base never predicts one; their first tokens differ, so the choice is made at the step's closing ".".
CONNECTIVES = (" Next", " Then")
GATES = ("parity_xor", "coin", "none")  # how the teacher picks the connective (TeacherConfig.gate)
# Families whose steps are scored for the gate. Excluded, because no choice of two parities can hide the bit there
# (a giveaway ``probes.gate_audit`` detects): "sequence" has one non-final step after the first, t4 = t0 + 4d, so any
# XOR of its parities is a constant or the parity of the operand d; "linear"'s scored step computes a*x from the
# question's first number a, so an odd result forces the bit to 0. Their traces still carry the connective.
GATE_SCORED_FAMILIES = ("arith", "word", "compare")
_NUMBER = re.compile(r"\d+")


def first_quantity(p: Problem) -> int:
    """The first number written in the question (what the gate XORs with)."""
    return int(_NUMBER.search(p.question).group())


def gate_bit(p: Problem, i: int) -> int:
    """The connective after step ``i``: parity of its result XOR parity of the question's first number."""
    return (p.steps[i][3] % 2) ^ (first_quantity(p) % 2)


def gate_scored(p: Problem, i: int) -> bool:
    """Is step ``i`` scored for the gate? Not the first step (its result is one operation from the first number:
    the XOR reduces to the parity of one visible operand), not the last (no connective follows), and only in
    ``GATE_SCORED_FAMILIES``."""
    return 1 <= i < len(p.steps) - 1 and p.family in GATE_SCORED_FAMILIES


def _connective(p: Problem, i: int, gate: str, seed: int) -> str:
    if gate == "parity_xor":
        return CONNECTIVES[gate_bit(p, i)]
    # "coin" (the control fine-tune): a fair coin of its own per problem and step, so the rest of the trace (and
    # the problem draw) is the same as under "parity_xor"
    return CONNECTIVES[random.Random(f"coin-{seed}-{p.signature}-{i}-{p.question}").random() < 0.5]


# ----------------------------------------------------------------------------- teacher
@dataclass
class TeacherConfig:
    """Per-step probabilities of each reasoning move (all configurable)."""

    p_check: float = 0.25        # "Wait, let me check: ..." re-verification
    p_slip: float = 0.1          # planted wrong step caught by "Wait, that is wrong."
    p_alternative: float = 0.3   # "Alternatively, b + a = r." on commutative steps
    p_contrast: float = 0.25     # "But r is less than t." weighing two quantities
    p_so: float = 0.5            # "So" before a step that uses the previous result
    gate: str = "parity_xor"     # the connective after each non-final operation: one of GATES ("none": no connective)
    coin_seed: int = 0           # the coin's seed, for gate = "coin"

    def __post_init__(self):
        if self.gate not in GATES:
            raise ValueError(f"TeacherConfig.gate must be one of {GATES}, got {self.gate!r}")


def teacher_spans(p: Problem, rng: random.Random, cfg: TeacherConfig) -> list[Span]:
    """The thinking part of a trace as labelled spans (each starts with a space)."""
    spans: list[Span] = []
    last = len(p.steps) - 1
    for i, (a, op, b, r) in enumerate(p.steps):
        chains = i > 0 and p.steps[i - 1][3] == a
        if chains and rng.random() < cfg.p_so:
            spans.append(Span(" So", CATEGORY_ID["deductive"], " So"))
        spans.append(Span(f" {p.refs[i]}:"))
        if rng.random() < cfg.p_slip:
            wrong = r + rng.choice((-1, 1))
            spans.append(Span(f" {a} {op} {b} = {wrong}."))
            spans.append(Span(" Wait, that is wrong.", CATEGORY_ID["self_reflection"], " Wait"))
        scored = gate_scored(p, i)
        spans.append(Span(f" {a} {op} {b} = {r}.", step_end=int(i == last), gate=gate_bit(p, i) if scored else None,
                          parity=r % 2 if scored else None))
        if i != last and cfg.gate != "none":
            spans.append(Span(_connective(p, i, cfg.gate, cfg.coin_seed)))
        if p.family == "sequence" and i == 0:   # the difference becomes the operation every later step repeats
            spans.append(Span(f" The step is {p.steps[1][1]} {r}."))
        if rng.random() < cfg.p_check:
            spans.append(Span(f" Wait, let me check: {a} {op} {b} = {r}. Yes.", CATEGORY_ID["self_reflection"], " Wait"))
        if op in "+*" and a != b and p.family != "sequence" and rng.random() < cfg.p_alternative:
            spans.append(Span(f" Alternatively, {b} {op} {a} = {r}.", CATEGORY_ID["alternative"], " Alternatively"))
        if p.compare is None and i > 0 and r != a and rng.random() < cfg.p_contrast:
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
