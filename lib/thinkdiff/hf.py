"""Loading a base/distilled pair of causal LMs from the hub or from local folders, for any model family.

``load_hf_pair`` checks both sources first: offline, a hub id that is not in the local cache raises at once
with how to fetch it, instead of retrying for ~50 s. ``placement``: both models on one GPU ("same"), one GPU
each ("split"), or the CPU.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import torch

PLACEMENTS = ("same", "split")


@dataclasses.dataclass
class HFPair:
    base: torch.nn.Module
    distilled: torch.nn.Module
    base_tokenizer: object
    distilled_tokenizer: object


def offline(variables=("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")) -> bool:
    """True when one of the environment ``variables`` is set truthy, or huggingface_hub is in offline mode."""
    truthy = {"1", "true", "yes", "on"}
    if any(os.environ.get(v, "").strip().lower() in truthy for v in variables):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def hub_offline() -> bool:
    """True when the hub must not be contacted for models (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return offline(("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_checkpoint(id_or_path) -> str:
    """A local folder, or a hub id that can be loaded now. Fails fast with how-to-fix otherwise."""
    s = str(id_or_path)
    p = Path(s).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"{p} is a folder but has no config.json; it is not a saved model")
        return str(p)
    # A hub id is exactly "owner/name"; anything else is meant as a local path.
    if s.startswith((".", "/", "~")) or s.count("/") != 1:
        raise FileNotFoundError(f"model folder {s} does not exist (and it is not a hub id of the form 'owner/name')")
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(s, "config.json")
        if not isinstance(cached, str):
            raise RuntimeError(
                f"{s} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1). "
                f"On a connected machine run `huggingface-cli download {s}` (or "
                f"`python -c \"from huggingface_hub import snapshot_download; snapshot_download('{s}')\"`) "
                f"and copy the cache (~/.cache/huggingface/hub) here, or pass the local folder path instead of the id.")
    return s


def _device_for(placement: str, index: int) -> str:
    if placement not in PLACEMENTS + ("cpu",):
        raise ValueError(f"placement must be one of {PLACEMENTS + ('cpu',)}, got {placement!r}")
    if placement == "cpu":
        return "cpu"
    n = torch.cuda.device_count()
    if n == 0:
        raise RuntimeError(f"placement {placement!r} needs a CUDA GPU and none is visible; use placement='cpu'")
    if placement == "split":
        if n < 2:
            raise RuntimeError("placement 'split' puts each model on its own GPU and needs 2 GPUs; "
                               f"{n} visible. Use placement='same'.")
        return f"cuda:{index}"
    return "cuda:0"


def load_hf_pair(base_id_or_path, distilled_id_or_path, dtype="bfloat16", device_map="cpu") -> HFPair:
    """Load (base, distilled) causal LMs and their own tokenizers with ``from_pretrained``.

    ``dtype``: ``"bfloat16"``, ``"float16"``, ``"float32"`` or a ``torch.dtype``.
    ``device_map``: ``"cpu"``, ``"same"`` (both on cuda:0), ``"split"`` (base cuda:0, distilled cuda:1).
    Both ids are checked first (in well under a second): offline, an uncached hub id raises a
    ``RuntimeError`` saying how to download it instead of retrying for ~50 s. Models come back in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        if dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be bfloat16, float16 or float32, got {dtype!r}")
        dtype = getattr(torch, dtype)
    sources = [resolve_checkpoint(base_id_or_path), resolve_checkpoint(distilled_id_or_path)]
    devices = [_device_for(device_map, i) for i in range(2)]
    accelerate = importlib.util.find_spec("accelerate") is not None
    models, toks = [], []
    for src, dev in zip(sources, devices):
        kw = dict(dtype=dtype)
        if accelerate and dev != "cpu":
            kw["device_map"] = {"": dev}     # stream weights straight onto the GPU
        model = AutoModelForCausalLM.from_pretrained(src, **kw).eval()
        if not (accelerate and dev != "cpu"):
            model.to(dev)
        models.append(model)
        toks.append(AutoTokenizer.from_pretrained(src))
    return HFPair(models[0], models[1], toks[0], toks[1])
