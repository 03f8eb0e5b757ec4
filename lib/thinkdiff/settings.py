"""Typed analysis settings of a run config, one dataclass per stage section (``[evaluate]``, ``[label]``,
``[steer]``, ``[geometry]``, ``[adl]``): every key a run may set, its default, its unit (a docstring per field),
and the checks across fields, run when the config is read rather than after an hour of work.

A run config keeps each section as the plain dict ``dataclasses.asdict`` gives (``run.config.steer["alphas"]``),
so cache keys and report records hash plain values.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .norms import DISTILLED_SPECIFIC
from .steer import POSITION_POLICIES


class RunConfigError(ValueError):
    """A run config that cannot be used; the message names the file and the key."""


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _numbers(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in v)


@dataclass
class EvaluateSettings:
    """``[evaluate]``: how ``00`` scores the pair on its task's held-out problems (``05`` reads the same)."""

    sizes: list = field(default_factory=lambda: ["XS", "S", "M", "L"])
    """Organism runs: the sizes evaluated side by side (the pair's kind checks them; other pairs: unused)."""
    n_eval: int = 200
    """Held-out problems per model; under the task's ``min_eval`` its acceptance is "not tested"."""
    max_new_tokens: int = 200
    """Generation cap, in tokens, per problem."""
    math_set: str = "math500"
    """A math task's set: "math500" or "gsm8k"."""
    math_files: str = ""
    """A math task's local json/jsonl/parquet file in the dataset's format (offline); empty: the hub."""
    seed: int = 0
    """Which held-out problems are drawn."""
    fresh_seed: int = 1
    """A second sample of held-out problems, for rules registered after the first sample was scored."""

    def check(self, where: str) -> None:
        for key in ("n_eval", "max_new_tokens"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 1:
                raise RunConfigError(f"{where}: [evaluate] {key} = {getattr(self, key)!r} must be an integer >= 1")


@dataclass
class LabelSettings:
    """``[label]``: labelling, latent scaling, the ablation (claim 5) and the planted gate (``03_label``, ``03b``)."""

    n_scaling: int = 100
    """Top distilled-only latents checked with latent scaling (the paper: 100)."""
    reasonscore_alpha: float = 0.7
    """ReasonScore's entropy exponent."""
    window: list = field(default_factory=lambda: [1, 2])
    """ReasonScore's window: tokens before and after a lexicon match."""
    n_occurrences: int = 50
    """Ablation: marker occurrences per category (the paper: 44-50)."""
    ablation_ks: list = field(default_factory=lambda: [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
    """Ablation: the top fractions of latents removed, each in (0, 1]."""
    k_verdict: float = 0.2
    """The fraction claim 5 is judged at; one of ``ablation_ks``."""
    ablation_random_sets: int = 20
    """Matched random latent sets at ``k_verdict`` (one per bootstrap replicate), >= 2."""
    ablation_base_margin: float = 0.5
    """How far (marker-logit units) the base's targeted - random change may stray from 0 and still "barely move"."""
    gate_problems: list = field(default_factory=lambda: [1500, 500])
    """The planted gated connective: problems for its probes (training, held out)."""
    gate_random: int = 10
    """Matched random latents the gate latent's ablation is compared with."""
    gate_layer: int | None = None
    """The layer (resid_pre of block L) the gated connective is analysed at, fixed before looking; None: the first
    layer where the distilled probe reaches the bar on training problems (else the hook layer). A layer other than
    the hook layer harvests a store and trains crosscoders there."""

    def check(self, where: str) -> None:
        ks = self.ablation_ks
        if not _numbers(ks) or not all(0 < k <= 1 for k in ks):
            raise RunConfigError(f"{where}: [label] ablation_ks = {ks!r} must be a non-empty list of fractions in (0, 1]")
        if self.k_verdict not in ks:
            raise RunConfigError(f"{where}: [label] k_verdict = {self.k_verdict!r} must be one of ablation_ks = {ks!r} "
                                 "(claim 5 is judged where the ablation ran)")
        if not is_int(self.ablation_random_sets) or self.ablation_random_sets < 2:
            raise RunConfigError(f"{where}: [label] ablation_random_sets = {self.ablation_random_sets!r} must be an "
                                 "integer >= 2")
        if self.gate_layer is not None and not (is_int(self.gate_layer) and self.gate_layer >= 1):
            raise RunConfigError(f"{where}: [label] gate_layer = {self.gate_layer!r} must be a layer number >= 1 or omitted")
        if not self.ablation_base_margin > 0:
            raise RunConfigError(f"{where}: [label] ablation_base_margin = {self.ablation_base_margin!r} must be > 0")


@dataclass
class SteerSettings:
    """``[steer]``: steering with a latent's decoder direction (``04_steer``, claims 6 and 7). Strengths are
    multiples of the latent's max activation times its decoder vector."""

    n_prompts: int = 128
    """Held-out problems steered (>= 3: the side-by-side shows three)."""
    max_new_tokens: int = 128
    """Generation cap, in tokens."""
    alphas: list = field(default_factory=lambda: [-4, -2, -1, -0.5, 0.5, 1, 2, 4])
    """Strengths for the reasoning latents; 0 (the unsteered run itself) is not one."""
    control_alphas: list = field(default_factory=lambda: [-4, -1, 1, 4])
    """Strengths for the control directions (random, matched norm)."""
    claim_alpha: float = 1
    """The strength claims 6 and 7 are judged at; in both grids."""
    positions: str = "all"
    """Where the vector is added: "all" (the paper), "generated" or "think"."""
    specific_nrn: float = DISTILLED_SPECIFIC
    """Relative norm at or above which a latent counts as distilled-specific, in [0, 1]."""
    seed: int = 0
    """Which held-out problems are drawn."""
    noninferiority_margin: float = 0.05
    """How much accuracy / well-formedness steering may lose and still count as non-inferior (Newcombe), in (0, 1)."""
    min_prompts: int = 20
    """The fewest prompts a verdict may rest on (>= 2)."""

    def check(self, where: str) -> None:
        for key in ("alphas", "control_alphas"):
            grid = getattr(self, key)
            if not _numbers(grid):
                raise RunConfigError(f"{where}: [steer] {key} = {grid!r} must be a non-empty list of numbers")
            if 0 in grid:
                raise RunConfigError(f"{where}: [steer] {key} = {grid!r} holds 0; alpha = 0 is the unsteered run itself")
        if self.claim_alpha not in self.alphas or self.claim_alpha not in self.control_alphas:
            raise RunConfigError(f"{where}: [steer] claim_alpha = {self.claim_alpha!r} must be in both alphas = "
                                 f"{self.alphas!r} and control_alphas = {self.control_alphas!r}: claims are judged "
                                 "where every direction was run")
        if not 0.0 <= self.specific_nrn <= 1.0:
            raise RunConfigError(f"{where}: [steer] specific_nrn = {self.specific_nrn!r} is a relative norm, in [0, 1]")
        if self.n_prompts < 3 or self.max_new_tokens < 1:
            raise RunConfigError(f"{where}: [steer] needs n_prompts >= 3 (the side-by-side shows three) and "
                                 f"max_new_tokens >= 1; got {self.n_prompts} and {self.max_new_tokens}")
        if not 0.0 < self.noninferiority_margin < 1.0:
            raise RunConfigError(f"{where}: [steer] noninferiority_margin = {self.noninferiority_margin!r} is a "
                                 "difference of proportions, in (0, 1)")
        if not is_int(self.min_prompts) or self.min_prompts < 2:
            raise RunConfigError(f"{where}: [steer] min_prompts = {self.min_prompts!r} must be an integer >= 2")
        if self.positions not in POSITION_POLICIES:
            raise RunConfigError(f"{where}: [steer] positions = {self.positions!r}; one of {list(POSITION_POLICIES)}")


@dataclass
class GeometrySettings:
    """``[geometry]``: representation geometry across sizes (``05_geometry``, claim 8)."""

    runs: list = field(default_factory=list)
    """The runs compared across sizes, smallest first; empty: this run alone. Each pair's performance is its
    ``[evaluate]``."""
    dims: list = field(default_factory=lambda: [2, 5, 10, 20])
    """PCA dimensions (capped at 2 n_pairs - 1 per relation)."""
    claim_dim: int = 2
    """The dimension claim 8 is judged at (the paper's headline plot); one of ``dims``."""
    top_k: int = 6
    """Top latents per reasoning category in the feature geometry."""
    seed: int = 0
    """Bootstrap and permutation seed."""

    def check(self, where: str) -> None:
        if not isinstance(self.dims, list) or not self.dims or not all(is_int(d) and d >= 1 for d in self.dims):
            raise RunConfigError(f"{where}: [geometry] dims = {self.dims!r} must be a non-empty list of integers >= 1 "
                                 "(PCA dimensions)")
        if self.claim_dim not in self.dims:
            raise RunConfigError(f"{where}: [geometry] claim_dim = {self.claim_dim!r} must be one of dims = {self.dims!r}")
        if not isinstance(self.runs, list) or not all(isinstance(r, str) for r in self.runs):
            raise RunConfigError(f"{where}: [geometry] runs = {self.runs!r} must be a list of run names (empty: this run)")
        if not is_int(self.top_k) or self.top_k < 1:
            raise RunConfigError(f"{where}: [geometry] top_k = {self.top_k!r} must be an integer >= 1")


@dataclass
class AdlSettings:
    """``[adl]``: the Activation Difference Lens (``03d_adl``; Minder et al.), the mean difference of the two
    models' hook-layer activations over each text's first tokens, read from the run's activation store."""

    first_tokens: int = 5
    """Positions averaged per text, from the store's first stored one (the paper: 5)."""
    n_texts: int = 10_000
    """Texts averaged (the paper: 10,000): the store's first documents, all of them where it holds fewer."""
    top_tokens: int = 20
    """Promoted and suppressed tokens listed per model's logit lens."""
    n_random: int = 1000
    """Random unit directions the ADL direction's closeness to the distilled-only latents is compared with."""
    seed: int = 0
    """Seed of the random directions."""

    def check(self, where: str) -> None:
        for key in ("first_tokens", "n_texts", "top_tokens", "n_random"):
            if not is_int(getattr(self, key)) or getattr(self, key) < 1:
                raise RunConfigError(f"{where}: [adl] {key} = {getattr(self, key)!r} must be an integer >= 1")
        if self.n_random < 19:
            raise RunConfigError(f"{where}: [adl] n_random = {self.n_random} must be >= 19: with fewer random "
                                 "directions no permutation p can reach 0.05")


SECTIONS = {"evaluate": EvaluateSettings, "label": LabelSettings, "steer": SteerSettings, "geometry": GeometrySettings,
            "adl": AdlSettings}


def defaults() -> dict[str, dict]:
    """Each section's defaults as plain values."""
    return {name: dataclasses.asdict(cls()) for name, cls in SECTIONS.items()}
