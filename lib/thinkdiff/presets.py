"""Named model pairs. A preset says which base and distilled model, which layer, dtype and data.

Adding a pair is a few lines: ``register(Preset(name=..., kind="hf", base=..., distilled=...))``, where
``base`` / ``distilled`` are hub ids (``"owner/name"``) or local folders saved with ``save_pretrained``;
``load_pair(name)`` then loads them offline from the folders (or from the hub cache).

Which tokenizer feeds the models (``Preset.tokenizer``). Both models must see identical token ids.
``"base"`` (default, the paper's choice): the base model's tokenizer encodes every document for both models,
raw text, no chat template (a BOS only where the base tokenizer adds one itself; Qwen2.5's adds none).
``"own"``: each model keeps its own published tokenizer, and the harvest's pairing check compares them on
every document; for the Qwen pairs it refuses, because the R1-Distill tokenizer prepends a BOS (151646)
and makes ``<think>`` one token where Qwen2.5-Math has no BOS and three pieces. Either way ``ModelPair.own_tokenizers`` keeps both published
tokenizers (chat templates, ``qwen.tokenizer_differences``).
"""
from __future__ import annotations

import copy

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
    tokenizer: str = "base"        # which tokenizer feeds both models: "base" (paper) or "own" (see module doc)
    notes: str = ""
    extra: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {}
TOKENIZER_CHOICES = ("base", "own")


def register(p: Preset) -> Preset:
    if p.kind not in ("organism", "hf"):
        raise ValueError(f"preset {p.name!r}: kind must be 'organism' or 'hf', got {p.kind!r}")
    if p.placement not in ("same", "split"):
        raise ValueError(f"preset {p.name!r}: placement must be 'same' or 'split', got {p.placement!r}")
    if p.tokenizer not in TOKENIZER_CHOICES:
        raise ValueError(f"preset {p.name!r}: tokenizer must be one of {TOKENIZER_CHOICES}, got {p.tokenizer!r}")
    PRESETS[p.name] = p
    return p


for _size in ("XS", "S", "M", "L"):
    register(Preset(name=f"organism-{_size.lower()}", kind="organism", base=_size, distilled=_size,
                    notes=f"distillation model organism, size {_size}"))
# The embedded default every notebook runs on.
DEFAULT_PRESET = "organism-m"
# A stand-in for the real pairs on a CPU: two tiny random-weight Qwen2 models with the qwen-1.5b architecture
# scaled to width 64 and 4 blocks, the real embedding size and the real tokenizers (``qwen.tiny_qwen_pair``, built
# on first use and cached). Everything a real pair runs, it runs in seconds; its numbers mean nothing.
register(Preset(name="tiny-qwen-1.5b", kind="hf", base="tiny:qwen-1.5b", distilled="tiny:qwen-1.5b", layer=2,
                dtype="float32", train_config="paper", corpus="openthoughts",
                notes="tiny random stand-in for qwen-1.5b (code path only)",
                extra={"tiny": {"flavour_config": "qwen-1.5b", "hidden": 64, "layers": 4}}))

# A real pretrained pair that runs on a laptop CPU: SmolLM2-135M-Instruct (converted exactly to Qwen2) and the same
# model distilled by LoRA SFT on the natural-English teacher's traces (``smollm2``, ``smollm2_distill``, ``nlworld``).
register(Preset(name="smollm2-135m", kind="hf", base="smollm2:base", distilled="smollm2:distilled", layer=15,
                dtype="bfloat16", train_config="organism", corpus="smollm2",
                notes="SmolLM2-135M-Instruct vs its LoRA-distilled reasoner (natural-English teacher traces)",
                extra={"smollm2": {}}))


def get_preset(name: str | Preset) -> Preset:
    if isinstance(name, Preset):
        return name
    _register_hf_presets()
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def _register_hf_presets() -> None:
    """The real Qwen pairs (hub ids and the paper's settings live in qwen.py)."""
    from .qwen import QWEN_PAIRS

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
    tokenizer: object             # encodes documents for the base model (and for both under tokenizer="base")
    tokenizer_distilled: object   # encodes them for the distilled model; the harvest checks the ids agree
    layer: int                    # resid_pre of block `layer` = output of model.model.layers[layer - 1]
    preset: Preset
    organism: object = None       # the OrganismPair for organism presets (ground truth, eval helpers)
    own_tokenizers: tuple = ()    # hf presets: (base's, distilled's) tokenizer as published with each checkpoint
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


def resolve_layer(layer: int | None, n_layers: int, what: str = "model") -> int:
    """Default half depth; a clear error for a layer outside 1..n_layers."""
    if layer is None:
        return n_layers // 2
    if not isinstance(layer, int) or not 1 <= layer <= n_layers:
        raise ValueError(f"layer {layer!r} is out of range for {what} with {n_layers} blocks: "
                         f"the hook reads the residual stream entering block L, 1 <= L <= {n_layers}")
    return layer


def weights_precision(preset: str | Preset, model_dtype: str = "auto") -> dict:
    """The dtype ``load_pair`` loads ``preset``'s weights in, and why (``precision.weights_dtype``), without
    loading them: the organism is stored in float32, an hf preset in its ``dtype``."""
    import torch

    from . import precision

    p = get_preset(preset)
    storage = "float32" if p.kind == "organism" else p.dtype
    device = "cuda" if p.kind != "organism" and torch.cuda.is_available() else "cpu"
    return precision.weights_dtype(storage, model_dtype, device)


def load_pair(preset: str | Preset, layer: int | None = None, model_dtype: str = "auto") -> ModelPair:
    """Load both models and the tokenizer of ``preset`` (organism: built or loaded from cache).

    ``model_dtype``: the weights' compute dtype. ``"auto"`` loads the preset's stored ``dtype``, except that bf16
    weights are upcast to float32 on a CPU whose bf16 matmuls are not faster (``precision.weights_dtype``);
    ``"float32"`` / ``"bfloat16"`` force it. The choice and why are in ``pair.precision``."""
    import torch

    p = get_preset(preset)
    prec = weights_precision(p, model_dtype)
    if p.kind == "organism":
        from . import organism

        org = organism.get_organism(p.base)
        lay = resolve_layer(layer if layer is not None else p.layer, org.base.config.num_hidden_layers, p.name)
        base, distilled, control = org.base, org.distilled, org.control
        if prec["dtype"] != "float32":      # copies: the organism's cached fp32 models stay as they are
            base, distilled, control = (copy.deepcopy(m).to(getattr(torch, prec["dtype"]))
                                        for m in (base, distilled, control))
        return ModelPair(base, distilled, org.tokenizer, org.tokenizer, lay, p, org, precision=prec, control=control)

    from .hf import load_hf_pair
    from .qwen import tiny_qwen_pair

    base, distilled, control_dir = p.base, p.distilled, None
    if "smollm2" in p.extra:
        from .smollm2 import control_dir as _control_dir
        from .smollm2 import pair_dirs

        base, distilled = (str(d) for d in pair_dirs(**p.extra["smollm2"]))
        control_dir = _control_dir()
    if "tiny" in p.extra:
        tiny = tiny_qwen_pair(**p.extra["tiny"])
        base, distilled = str(tiny.base_path), str(tiny.distilled_path)
    device_map = p.placement if torch.cuda.is_available() else "cpu"
    hf = load_hf_pair(base, distilled, dtype=prec["dtype"], device_map=device_map)
    lay = resolve_layer(layer if layer is not None else p.layer, hf.base.config.num_hidden_layers, p.name)
    # "base": the paper fed both models the base tokenizer's ids, no template (the harvest then skips the
    # pairing check: one tokenizer object); "own": the harvest compares the two on every document.
    tok_d = hf.base_tokenizer if p.tokenizer == "base" else hf.distilled_tokenizer
    control = None
    if control_dir is not None:   # the same architecture and dtype as the base, placed with it
        from transformers import AutoModelForCausalLM

        control = AutoModelForCausalLM.from_pretrained(control_dir, dtype=getattr(torch, prec["dtype"])).eval()
        control.to(hf.base.device)
    return ModelPair(hf.base, hf.distilled, hf.base_tokenizer, tok_d, lay, p,
                     own_tokenizers=(hf.base_tokenizer, hf.distilled_tokenizer), precision=prec, control=control)
