"""Generated tokens/s, steered vs unsteered, on a model of organism-L shape (target: hook cost < 10 %).

Random Qwen2ForCausalLM: hidden 192, 8 layers, 6 heads / 2 KV heads, intermediate 576, vocab ~1000;
batch 32 prompts, 64 new tokens each (no early stop). Runs are interleaved and the median of
``--repeats`` is reported with the best run (the least disturbed by other processes on the
shared 2-core machine; one thread by default so the two settings do not fight over cores).

    python benchmarks/bench_steer.py [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from thinkdiff import steer

TEXT = ["Ann has 3 apples. Ben gives her 4 more. <think> 3 + 4 = 7. Wait, let me check: 3 + 4 = 7. </think> Answer: 7.",
        "Therefore the answer is 9. Alternatively, 4 + 5 = 9. But 9 is more than 8. However, 2 is less."]


def build(vocab: int = 1000):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT * 50, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>", "<think>", "</think>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=1000, hidden_size=192, intermediate_size=576, num_hidden_layers=8,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, eos_token_id=0, pad_token_id=0, bos_token_id=None)
    return Qwen2ForCausalLM(cfg).eval(), tokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = build()
    prompts = [f"{TEXT[i % 2][: 20 + 3 * (i % 7)]}" for i in range(args.batch)]  # mixed lengths: real left padding
    v = steer.random_direction(torch.ones(192), 0) * 10
    kw = dict(layer=4, max_new_tokens=args.new, batch_size=args.batch, eos_ids=(), progress=False)
    steer.generate_steered(model, tok, prompts[:4], None, **{**kw, "max_new_tokens": 4})  # warm-up
    rates = {"unsteered": [], "steered (all)": [], "steered (think)": []}
    for _ in range(args.repeats):
        rates["unsteered"].append(steer.generate_steered(model, tok, prompts, None, **kw).tokens_per_s)
        rates["steered (all)"].append(steer.generate_steered(model, tok, prompts, v, 4.0, positions="all", **kw).tokens_per_s)
        rates["steered (think)"].append(steer.generate_steered(model, tok, prompts, v, 4.0, positions="think", **kw).tokens_per_s)
    base, best0 = statistics.median(rates["unsteered"]), max(rates["unsteered"])
    print(f"organism-L shape, batch {args.batch}, {args.new} new tokens, {args.threads} threads, {args.repeats} repeats")
    for name, r in rates.items():
        med, best = statistics.median(r), max(r)
        print(f"{name:>16}: median {med:7.1f}, best {best:7.1f} generated tok/s (runs: {', '.join(f'{x:.0f}' for x in r)}); "
              f"cost vs unsteered: median {100 * (1 - med / base):+.1f} %, best {100 * (1 - best / best0):+.1f} %")


if __name__ == "__main__":
    main()
