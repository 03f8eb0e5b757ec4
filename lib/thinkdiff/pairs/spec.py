"""The pair interface: ``PairSpec`` (a pair as data), ``ModelPair`` (a loaded pair), ``PairKind`` (a plug-in)
and the registries. Plug-ins import this module; ``thinkdiff.pairs`` imports the plug-ins."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from .. import paths, precision
from .. import relations as word_relations
from ..tasks import TASKS

TOKENIZER_CHOICES = ("base", "own")
PLACEMENTS = ("same", "split")
TRAIN_CONFIGS = ("organism", "paper")   # the crosscoder defaults a run starts from (``train.SCHEMES`` / ``train.PAPER``)
PAIR_CONFIG_DIR = paths.REPO_ROOT / "configs" / "pairs"


class PairError(ValueError):
    """A pair that cannot be used: the message names the pair (and the file it was read from)."""


@dataclass(frozen=True)
class PairSpec:
    """A base/distilled pair, as data. ``layer``: hook at the residual stream *entering* block ``layer``
    (None = ``n_layers // 2``, the paper's half-depth resid_pre)."""

    name: str
    kind: str                      # the plug-in that loads it: a key of ``KINDS``
    base: str                      # what the kind loads as the base: a hub id, a local folder, an organism size
    distilled: str                 # the same for the distilled model
    task: str = "math"             # what the pair is evaluated on: a key of ``tasks.TASKS``
    corpus: str = "openthoughts"   # the harvest corpus the kind draws (``documents``)
    layer: int | None = None
    dtype: str = "float32"         # the dtype the weights are stored in
    placement: str = "same"        # "same": both models on one device; "split": one per GPU
    train_config: str = "organism"  # the crosscoder defaults of its runs: "organism" or "paper"
    tokenizer: str = "base"        # which tokenizer feeds both models: "base" (paper) or "own" (see module doc)
    in_paper: bool = False         # one of the paper's four pairs (claim 9 is judged only there)
    notes: str = ""
    source: str = "<code>"         # the TOML file it was read from
    options: dict = field(default_factory=dict)   # the kind's own settings (e.g. published architectures)

    def check(self) -> "PairSpec":
        where = f"pair {self.name!r} ({self.source})"
        if self.kind not in KINDS:
            raise PairError(f"{where}: kind = {self.kind!r}; one of {sorted(KINDS)}")
        if self.task not in TASKS:
            raise PairError(f"{where}: task = {self.task!r}; one of {sorted(TASKS)}")
        if self.placement not in PLACEMENTS:
            raise PairError(f"{where}: placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.tokenizer not in TOKENIZER_CHOICES:
            raise PairError(f"{where}: tokenizer must be one of {TOKENIZER_CHOICES}, got {self.tokenizer!r}")
        if self.train_config not in TRAIN_CONFIGS:
            raise PairError(f"{where}: train_config must be one of {TRAIN_CONFIGS}, got {self.train_config!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise PairError(f"{where}: dtype = {self.dtype!r}; one of float32, bfloat16, float16")
        if self.layer is not None and (not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 1):
            raise PairError(f"{where}: layer = {self.layer!r} must be an integer >= 1 (resid_pre of that block)")
        KINDS[self.kind].check_spec(self, where)
        return self

    @property
    def kind_plugin(self) -> "PairKind":
        return KINDS[self.kind]

    @property
    def task_plugin(self):
        return TASKS[self.task]


@dataclass
class ModelPair:
    """Two causal LMs on the same tokens. Index 0 = base, 1 = distilled, everywhere in thinkdiff."""

    base: object
    distilled: object
    tokenizer: object             # encodes documents for the base model (and for both under tokenizer="base")
    tokenizer_distilled: object   # encodes them for the distilled model; the harvest checks the ids agree
    layer: int                    # resid_pre of block `layer` = output of model.model.layers[layer - 1]
    spec: PairSpec
    organism: object = None       # the organism's own handle (planted world, coin-flip control) where it has one
    own_tokenizers: tuple = ()    # hf pairs: (base's, distilled's) tokenizer as published with each checkpoint
    precision: dict = None        # the weights' compute dtype and why (``precision.weights_dtype``)
    control: object = None        # the base fine-tuned with the same recipe but no distillation (claim 1's null
                                  # partner); None where the pair ships none

    @property
    def models(self):
        return (self.base, self.distilled)

    @property
    def n_layers(self) -> int:
        return self.base.config.num_hidden_layers

    @property
    def d_model(self) -> int:
        return self.base.config.hidden_size

    @property
    def task(self):
        return self.spec.task_plugin


class PairKind:
    """One sort of pair: how to load it and where its documents come from. Subclasses register with
    ``register_kind`` and override what differs; the defaults suit a pair of Hugging Face checkpoints."""

    name: str = ""
    storage_device: str = "auto"   # "cpu": always loaded on the CPU; "auto": a GPU when one is visible

    def check_spec(self, spec: PairSpec, where: str) -> None:
        """Refuse a spec this kind cannot load (before any model is loaded)."""

    def load(self, spec: PairSpec, layer: int | None, dtype: str) -> ModelPair:
        raise NotImplementedError

    def documents(self, pair: ModelPair, n_docs: int, teacher_fraction: float, seed: int, **corpus) -> list:
        """The harvest corpus: ``n_docs`` documents, ``teacher_fraction`` of them reasoning traces."""
        raise NotImplementedError

    def check_run(self, spec: PairSpec, harvest: dict, evaluate: dict, where: str) -> None:
        """Refuse run settings that do not fit this pair (a layer beyond its depth, members it lacks)."""
        layer = harvest["layer"]
        if layer is not None and layer < 1:
            raise PairError(f"{where}: [harvest] layer = {layer} must be >= 1 (resid_pre of that block)")

    def members(self, spec: PairSpec, evaluate: dict) -> list[tuple[str, str]]:
        """The pairs ``00`` evaluates side by side for a run of ``spec``, as (label, pair name): the pair itself,
        or a family of sizes."""
        return [(spec.name, spec.name)]

    def describe(self, pair: ModelPair) -> dict:
        """One row of ``00``'s table of pairs: size, and how the models were made."""
        return {"parameters": sum(p.numel() for p in pair.base.parameters()), "layers": pair.n_layers,
                "d_model": pair.d_model}

    relations_single_token: bool = False   # every word of ``relations()`` is one token of the pair's vocabulary

    def relations(self) -> dict:
        """The word relations ``05_geometry`` reads (name -> [(word, word), ...]): the paper's five."""
        return {n: word_relations.load_relation(n) for n in word_relations.RELATIONS}

    def size_label(self, spec: PairSpec) -> str:
        """How ``05_geometry`` labels this pair on a size axis."""
        return spec.name


KINDS: dict[str, PairKind] = {}
PAIRS: dict[str, PairSpec] = {}


def register_kind(cls):
    """Class decorator: make a ``PairKind`` available under ``cls.name``."""
    KINDS[cls.name] = cls()
    return cls


def register(spec: PairSpec) -> PairSpec:
    """Add ``spec`` to the registry (checked first). A name already registered with other settings is refused:
    a run's cache keys name the pair, so two different pairs must not share a name."""
    spec.check()
    old = PAIRS.get(spec.name)
    if old is not None and _settings(old) != _settings(spec):
        raise PairError(f"pair {spec.name!r} from {spec.source} is already defined differently in {old.source}; "
                        "give it another name")
    PAIRS[spec.name] = spec
    return spec


def _settings(spec: PairSpec) -> dict:
    return {f.name: getattr(spec, f.name) for f in fields(spec) if f.name not in ("source", "notes")}


SPEC_KEYS = tuple(f.name for f in fields(PairSpec) if f.name not in ("name", "source", "options"))


def read_toml(path: Path) -> PairSpec:
    """A ``PairSpec`` from a TOML file (the file's stem is the pair's name; tables go to ``options``)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise PairError(f"pair file {path} is not valid TOML: {err}") from None
    flat = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    bad = sorted(set(flat) - set(SPEC_KEYS))
    if bad:
        raise PairError(f"pair file {path}: unknown key(s) {bad}; known: {list(SPEC_KEYS)} (and tables for the kind)")
    for key in ("kind", "base", "distilled"):
        if key not in flat:
            raise PairError(f"pair file {path}: no {key!r} (see docs/adding-a-pair.md)")
    return PairSpec(name=path.stem, source=str(path), options={k: v for k, v in raw.items() if isinstance(v, dict)},
                    **flat)


def register_folder(folder: Path) -> list[str]:
    """Register every ``*.toml`` pair in ``folder``; returns their names."""
    return [register(read_toml(p)).name for p in sorted(Path(folder).glob("*.toml"))]


def get(name: str | PairSpec) -> PairSpec:
    """The pair named ``name`` (a ``PairSpec`` is returned as is); a clear error listing the known ones."""
    if isinstance(name, PairSpec):
        return name
    if name not in PAIRS:
        raise PairError(f"unknown pair {name!r}; known pairs: {', '.join(sorted(PAIRS))} (a pair of your own: a TOML "
                        f"file in {PAIR_CONFIG_DIR} or in a pairs/ folder beside your run config)")
    return PAIRS[name]


def paper_pairs() -> list[str]:
    """The names of the paper's pairs (``PairSpec.in_paper``)."""
    return sorted(name for name, spec in PAIRS.items() if spec.in_paper)


def resolve_layer(layer: int | None, n_layers: int, what: str = "model") -> int:
    """Default half depth; a clear error for a layer outside 1..n_layers."""
    if layer is None:
        return n_layers // 2
    if not isinstance(layer, int) or not 1 <= layer <= n_layers:
        raise ValueError(f"layer {layer!r} is out of range for {what} with {n_layers} blocks: "
                         f"the hook reads the residual stream entering block L, 1 <= L <= {n_layers}")
    return layer


def weights_precision(name: str | PairSpec, model_dtype: str = "auto") -> dict:
    """The dtype ``load`` loads the pair's weights in, and why (``precision.weights_dtype``), without loading."""
    spec = get(name)
    device = "cuda" if spec.kind_plugin.storage_device == "auto" and torch.cuda.is_available() else "cpu"
    return precision.weights_dtype(spec.dtype, model_dtype, device)


def load(name: str | PairSpec, layer: int | None = None, model_dtype: str = "auto") -> ModelPair:
    """Both models and the tokenizer of the pair ``name``, hooked at ``layer`` (None: the pair's).

    ``model_dtype``: the weights' compute dtype. ``"auto"`` loads the pair's stored ``dtype``, except that bf16
    weights are upcast to float32 on a CPU whose bf16 matmuls are not faster (``precision.weights_dtype``);
    ``"float32"`` / ``"bfloat16"`` force it. The choice and why are in ``pair.precision``."""
    spec = get(name)
    prec = weights_precision(spec, model_dtype)
    pair = spec.kind_plugin.load(spec, layer if layer is not None else spec.layer, prec["dtype"])
    pair.precision = prec
    return pair
