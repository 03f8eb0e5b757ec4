"""Named model pairs. A preset says which base and distilled model, which layer, dtype and data.

Adding a pair is a few lines: ``register(Preset(name=..., kind="hf", base=..., distilled=...))``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    """A base/distilled pair. ``layer``: hook at the residual stream *entering* block ``layer``
    (None = ``n_layers // 2``, the paper's half-depth resid_pre)."""

    name: str
    kind: str                      # "organism" or "hf"
    base: str                      # organism size, or a hub id / local path
    distilled: str
    layer: int | None = None
    dtype: str = "float32"
    placement: str = "same"        # "same": both models on one device; "split": one per GPU
    train_config: str = "organism"  # named crosscoder training config (train.py)
    corpus: str = "organism"       # harvest corpus: "organism" or "openthoughts"
    notes: str = ""
    extra: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {}


def register(p: Preset) -> Preset:
    if p.kind not in ("organism", "hf"):
        raise ValueError(f"preset {p.name!r}: kind must be 'organism' or 'hf', got {p.kind!r}")
    if p.placement not in ("same", "split"):
        raise ValueError(f"preset {p.name!r}: placement must be 'same' or 'split', got {p.placement!r}")
    PRESETS[p.name] = p
    return p


for _size in ("S", "M", "L"):
    register(Preset(name=f"organism-{_size.lower()}", kind="organism", base=_size, distilled=_size,
                    notes=f"distillation model organism, size {_size}"))
# The embedded default every notebook runs on.
DEFAULT_PRESET = "organism-m"


def get_preset(name: str | Preset) -> Preset:
    if isinstance(name, Preset):
        return name
    _register_hf_presets()
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def _register_hf_presets() -> None:
    """The real Qwen pairs (hub ids and the paper's settings live in qwen.py)."""
    try:
        from .qwen import QWEN_PAIRS
    except ImportError:  # qwen.py absent: only organism presets
        return
    for name, spec in QWEN_PAIRS.items():
        if name not in PRESETS:
            register(Preset(name=name, kind="hf", base=spec["base"], distilled=spec["distilled"],
                            layer=spec["layer"], dtype=spec.get("dtype", "bfloat16"),
                            placement=spec.get("placement", "same"), train_config="paper",
                            corpus="openthoughts", extra=dict(spec)))


@dataclass
class ModelPair:
    """Two causal LMs on the same tokens. Index 0 = base, 1 = distilled, everywhere in thinkdiff."""

    base: object
    distilled: object
    tokenizer: object             # feeds both models (pairing is checked at harvest)
    tokenizer_distilled: object
    layer: int                    # resid_pre of block `layer` = output of model.model.layers[layer - 1]
    preset: Preset
    organism: object = None       # the OrganismPair for organism presets (ground truth, eval helpers)

    @property
    def models(self):
        return (self.base, self.distilled)

    @property
    def n_layers(self) -> int:
        return self.base.config.num_hidden_layers

    @property
    def d_model(self) -> int:
        return self.base.config.hidden_size


def resolve_layer(layer: int | None, n_layers: int, what: str = "model") -> int:
    """Default half depth; a clear error for a layer outside 1..n_layers."""
    if layer is None:
        return n_layers // 2
    if not isinstance(layer, int) or not 1 <= layer <= n_layers:
        raise ValueError(f"layer {layer!r} is out of range for {what} with {n_layers} blocks: "
                         f"the hook reads the residual stream entering block L, 1 <= L <= {n_layers}")
    return layer


def load_pair(preset: str | Preset, layer: int | None = None) -> ModelPair:
    """Load both models and the tokenizer of ``preset`` (organism: built or loaded from cache)."""
    p = get_preset(preset)
    if p.kind == "organism":
        from . import organism

        org = organism.get_organism(p.base)
        lay = resolve_layer(layer if layer is not None else p.layer, org.base.config.num_hidden_layers, p.name)
        return ModelPair(org.base, org.distilled, org.tokenizer, org.tokenizer, lay, p, org)
    import torch

    from .qwen import load_hf_pair

    # The paper fed both models with the base tokenizer, no template; harvest checks the ids agree.
    device_map = p.placement if torch.cuda.is_available() else "cpu"
    hf = load_hf_pair(p.base, p.distilled, dtype=p.dtype, device_map=device_map)
    lay = resolve_layer(layer if layer is not None else p.layer, hf.base.config.num_hidden_layers, p.name)
    return ModelPair(hf.base, hf.distilled, hf.base_tokenizer, hf.distilled_tokenizer, lay, p)
