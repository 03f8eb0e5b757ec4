"""The task interface: what a pair is evaluated on, one implementation per file, registered in ``TASKS``.

A task says its held-out problems, how a prompt is written, how a generation is scored, whether a programmatic
teacher exists (its traces give marker rates and the teacher-forced cross-entropy) and its acceptance rule:
is this a distillation that pays? ``00`` and ``05`` evaluate every pair through ``Task.evaluate_pair``;
``04`` steers on ``Task.problems`` and scores with ``Task.score``.
"""
from __future__ import annotations

TASKS: dict = {}


def register_task(cls):
    """Class decorator: make a ``Task`` available under ``cls.name``."""
    TASKS[cls.name] = cls()
    return cls


class Task:
    """Interface. ``problems`` are objects with ``answer``; ``evaluate`` returns per model at least ``accuracy``,
    ``correct`` [n] bool, ``texts``, ``think_rate`` and ``tokens_per_generation``."""

    name: str = ""
    has_teacher: bool = False     # a programmatic teacher: marker rates against it, teacher-forced CE, families
    marker_words: dict | None = None   # category -> marker words (None: the steering lexicon's defaults)
    planted_words: dict | None = None  # category -> the words its teacher plants, as written (None: no planted truth)
    plants_gate: bool = False     # its teacher plants the gated connective (``planted``): a distilled-only concept
    min_eval: int = 0             # fewer held-out problems than this: acceptance "not tested" (a smoke run)

    def problems(self, settings: dict, n: int | None = None, seed: int | None = None) -> list:
        """Held-out problems of an ``[evaluate]`` table (``n``/``seed`` override its ``n_eval``/``seed``)."""
        raise NotImplementedError

    def training_signatures(self) -> frozenset | None:
        """The computations of every training problem (None: the task has no planted split to check)."""
        return None

    def prompt(self, problem) -> str:
        raise NotImplementedError

    def question(self, problem) -> str:
        """The problem as a person reads it (the side-by-side tables)."""
        return self.prompt(problem)

    def score(self, text: str, problem) -> dict:
        """``{"correct": bool, "well_formed": bool}`` for one generation."""
        raise NotImplementedError

    def evaluate_pair(self, pair, settings: dict, progress: bool = True) -> dict:
        """``{"base": result, "distilled": result}`` on the held-out problems of ``settings``."""
        raise NotImplementedError

    def teacher_marker_rates(self, tokenizer, problems) -> dict | None:
        """The teacher's marker rate per 1,000 tokens per category (None without a teacher)."""
        return None

    def acceptance(self, base: dict, distilled: dict, teacher_rates: dict | None) -> dict:
        """One row of checks with a ``verdict`` (or the paired gain alone where the task has no rule)."""
        raise NotImplementedError

    def examples(self, rng) -> list:
        """(family, plain text, teacher spans) for one problem of each family (empty without a teacher)."""
        return []

    acceptance_label: str = "pair acceptance"   # the report's name for the acceptance verdict

    def extra_check(self, pair, settings: dict, problems: list, tested: bool) -> dict | None:
        """A further pre-registered check of the pair beside the acceptance rule (None: the task has none)."""
        return None

