"""Model pairs as plug-ins: what a run diffs, loaded the same way whatever the pair.

A pair is data (``PairSpec``: which base and distilled model, the hook layer, dtype, task and corpus) plus a
*kind*, the plug-in that knows how to load that sort of pair and where its harvest documents come from:

- ``organism`` (``pairs/organism.py``): the embedded distillation model organism, sizes XS-L, planted labels;
- ``smollm2`` (``pairs/smollm2.py``): SmolLM2-135M-Instruct and its LoRA-distilled reasoner, built from files;
- ``hf`` (``pairs/hf.py``): any two Hugging Face causal LMs, by hub id or local folder. These are plain TOML
  files (``configs/pairs/<name>.toml``, or ``pairs/<name>.toml`` beside a run config of your own), so adding
  a Qwen-like pair needs no Python: see ``docs/adding-a-pair.md``.

Stages never ask which pair they have: they call the kind's methods (``load``, ``documents``,
``check_run``, ``members``) and the pair's ``task`` (``thinkdiff.tasks``). Index 0 = base, 1 = distilled,
everywhere in thinkdiff.

Which tokenizer feeds the models (``PairSpec.tokenizer``). Both models must see identical token ids.
``"base"`` (default, the paper's choice): the base model's tokenizer encodes every document for both models,
raw text, no chat template (a BOS only where the base tokenizer adds one itself; Qwen2.5's adds none).
``"own"``: each model keeps its own published tokenizer, and the harvest's pairing check compares them on
every document; for the Qwen pairs it refuses, because the R1-Distill tokenizer prepends a BOS (151646) and
makes ``<think>`` one token where Qwen2.5-Math has no BOS and three pieces. Either way
``ModelPair.own_tokenizers`` keeps both published tokenizers (chat templates, ``qwen.tokenizer_differences``).
"""
from __future__ import annotations

from . import hf, organism, smollm2  # noqa: F401  (the built-in kinds, imported for their registrations)
from .organism import DEFAULT_PAIR  # noqa: F401
from .spec import (KINDS, PAIR_CONFIG_DIR, PAIRS, ModelPair, PairError, PairKind, PairSpec, get, load,  # noqa: F401
                   paper_pairs, read_toml, register, register_folder, register_kind, resolve_layer,
                   weights_precision)

# The pairs shipped as TOML files (the Qwen pairs, the tiny stand-in).
register_folder(PAIR_CONFIG_DIR)
