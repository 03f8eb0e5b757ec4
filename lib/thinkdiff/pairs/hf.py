"""Any two Hugging Face causal LMs as a pair kind, by hub id or local folder (``save_pretrained``), read from TOML.

A pair file (``configs/pairs/<name>.toml``, or ``pairs/<name>.toml`` beside a run config of your own) names the
two checkpoints and the settings of ``PairSpec``; see ``docs/adding-a-pair.md``. A relative folder is read from
the TOML file's folder. Two optional tables:

- ``[base_arch]`` / ``[distilled_arch]``: the published architecture (``n_layers``, ``d_model``, ...), used by
  the tiny stand-ins and the GPU check without downloading a checkpoint;
- ``[tiny]``: instead of the checkpoints, two tiny random-weight Qwen2 models with the architecture of the pair
  named by ``from`` scaled to ``hidden`` width and ``layers`` blocks (``qwen.tiny_qwen_pair``): the real
  pair's code path on a CPU in seconds, its numbers meaningless.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .. import qwen, realdata
from .. import hf as hf_loading
from .spec import ModelPair, PairError, PairKind, get, register_kind, resolve_layer

TINY_KEYS = ("from", "hidden", "layers")


def _checkpoint(spec, which: str) -> str:
    """A hub id as is; a folder relative to the pair's TOML file resolved there."""
    value = getattr(spec, which)
    if spec.source.endswith(".toml") and value.startswith("."):
        return str((Path(spec.source).parent / value).resolve())
    return value


@register_kind
class HFKind(PairKind):
    name = "hf"

    def check_spec(self, spec, where):
        tiny = spec.options.get("tiny")
        if tiny is not None:
            bad = sorted(set(tiny) - set(TINY_KEYS))
            if bad or "from" not in tiny:
                raise PairError(f"{where}: [tiny] takes {list(TINY_KEYS)} ('from' required: the pair whose "
                                f"architecture it scales); got {sorted(tiny)}")
        for which in ("base", "distilled"):
            path = _checkpoint(spec, which)
            if path.startswith("/") and not Path(path).is_dir():
                raise PairError(f"{where}: {which} = {getattr(spec, which)!r} is not a folder ({path} does not exist)")

    def load(self, spec, layer, dtype):
        base, distilled = _checkpoint(spec, "base"), _checkpoint(spec, "distilled")
        tiny = spec.options.get("tiny")
        if tiny is not None:
            real = get(tiny["from"])
            if "base_arch" not in real.options or "distilled_arch" not in real.options:
                raise PairError(f"pair {spec.name!r} ({spec.source}): [tiny] from = {tiny['from']!r}, which has no "
                                "[base_arch] and [distilled_arch] tables to scale")
            made = qwen.tiny_qwen_pair(real.name, real.options["base_arch"], real.options["distilled_arch"],
                                       hidden=tiny.get("hidden", 64), layers=tiny.get("layers", 4))
            base, distilled = str(made.base_path), str(made.distilled_path)
        device_map = spec.placement if torch.cuda.is_available() else "cpu"
        hf = hf_loading.load_hf_pair(base, distilled, dtype=dtype, device_map=device_map)
        lay = resolve_layer(layer, hf.base.config.num_hidden_layers, spec.name)
        # "base": the paper fed both models the base tokenizer's ids, no template (the harvest then skips the
        # pairing check: one tokenizer object); "own": the harvest compares the two on every document.
        tok_d = hf.base_tokenizer if spec.tokenizer == "base" else hf.distilled_tokenizer
        return ModelPair(hf.base, hf.distilled, hf.base_tokenizer, tok_d, lay, spec,
                         own_tokenizers=(hf.base_tokenizer, hf.distilled_tokenizer))

    def documents(self, pair, n_docs, teacher_fraction, seed, **corpus):
        """OpenThoughts traces mixed with general text (``realdata.harvest_corpus``: ``max_tokens``,
        ``min_tokens``, ``corpus``, ``shuffle_buffer``, and local ``openthoughts_files`` / ``general_files``)."""
        return realdata.harvest_corpus(pair.tokenizer, n_docs, teacher_fraction=teacher_fraction, seed=seed, **corpus)
