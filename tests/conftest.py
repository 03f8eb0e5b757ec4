"""Shared fixtures: a tiny tokenizer and a tiny random Qwen2 pair, built in about a second.

They stand in for a model pair wherever a test needs the real architecture but not trained
weights. Tests that need the trained organism use ``thinkdiff.organism`` directly.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

TINY_TEXT = [
    "Ann has 3 apples. Ben gives her 4 more apples. Wait, let me check: 3 + 4 = 7.",
    "Therefore the answer is 7. Thus we are done. So the sum is 9.",
    "Alternatively, 4 + 3 = 7. But 7 is less than 8. However, 8 is more than 2.",
    "<think> 2 + 5 = 7. Wait, that is wrong. 2 + 5 = 7. </think> Answer: 7.",
    "The box is heavy, but Dan carries it. Eva waited at the door.",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<think>", "</think>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TINY_TEXT * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _tiny_qwen(vocab_size: int, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, eos_token_id=0, pad_token_id=0, bos_token_id=None)
    return Qwen2ForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_pair(tiny_tokenizer):
    """(base, distilled): the distilled model is the base with a seeded perturbation, like a short fine-tune."""
    base = _tiny_qwen(len(tiny_tokenizer), seed=0)
    distilled = _tiny_qwen(len(tiny_tokenizer), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in distilled.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return base, distilled


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (as torchrun workers with OMP_NUM_THREADS=1: the same float rounding)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_documents(tok, n: int = 24) -> list[dict]:
    """Organism-like documents over ``TINY_TEXT``: text, ids, a category label and a marker flag per token, kind."""
    docs = []
    for i in range(n):
        text = TINY_TEXT[i % len(TINY_TEXT)] + f" Doc {i}."
        ids = tok(text)["input_ids"]
        docs.append({"text": text, "input_ids": ids, "labels": [(j + i) % 5 for j in range(len(ids))],
                     "marker": [j % 7 == 0 for j in range(len(ids))], "kind": "teacher" if i % 3 else "base"})
    return docs
