"""Harvest throughput against a plain transformers forward stopped at the same layer (goal: ratio >= 0.9),
in float32 and under bf16 autocast.

    python benchmarks/bench_harvest.py                      # organism-L-shaped random pair, 32,768 tokens
    python benchmarks/bench_harvest.py --size S --tokens 16384 --repeats 5

Both sides process the same token batches (same documents, same right padding) through both models and
stop at resid_pre of block L: the plain side with a forward hook on decoder layer L-1 that keeps the
output and raises to skip the layers above; the harvest side is ``harvest_pair`` end to end (nnsight
traces, exclusions, NaN checks, statistics, shard writes with sha256, manifest). Runs alternate
plain/harvest so load from other processes hits both alike; medians and best runs are compared. Throughput is
input tokens (positions) per second, the same numerator on both sides, by wall clock and by this
process's CPU time (the honest number on a shared machine: run with --threads 1; it leaves out I/O waits).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from thinkdiff import precision  # noqa: E402
from thinkdiff.harvest import HarvestConfig, _batch_arrays, _plan, harvest_pair, prepare_documents  # noqa: E402
from thinkdiff.hooks import decoder_layers_path  # noqa: E402
from thinkdiff.organism import SIZES  # noqa: E402

# Random-weight models with the organism's shapes (organism.SIZES): the harvest's cost depends on shape only.
SHAPES = {name: dict(hidden_size=c.hidden, num_hidden_layers=c.layers, num_attention_heads=c.heads,
                     num_key_value_heads=c.kv_heads, intermediate_size=c.intermediate) for name, c in SIZES.items()}
VOCAB = 1000


def _tokenizer(vocab: int = VOCAB):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    text = [f"Ann has {a} apples. Wait, let me check: {a} + {b} = {a + b}. Therefore the answer is {a + b}."
            for a in range(30) for b in range(30)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def build_pair(size: str = "L"):
    """(base, distilled, tokenizer). Swap this one function for ``organism.get_organism(size)`` later."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    tok = _tokenizer()
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        cfg = Qwen2Config(vocab_size=VOCAB, max_position_embeddings=1024, tie_word_embeddings=True, **SHAPES[size])
        models.append(Qwen2ForCausalLM(cfg).eval())
    return models[0], models[1], tok


def make_documents(n_tokens: int, seq_len: int, seed: int = 0):
    """Documents of exactly ``seq_len`` random token ids, ``n_tokens`` in all (rounded up)."""
    rng = np.random.default_rng(seed)
    return [{"text": "", "input_ids": rng.integers(1, VOCAB, seq_len).tolist()}
            for _ in range(-(-n_tokens // seq_len))]


class _Stop(Exception):
    pass


def plain_forward(models, docs, cfg, layer, pad_id) -> tuple[float, float]:
    """(wall, CPU) seconds for the plain transformers forward of every harvest batch through both models, stopped
    at the layer (under bf16 autocast when ``cfg.compute_dtype`` is bfloat16)."""
    prepared = prepare_documents(docs, None, cfg)
    kept = []

    def hook(module, inputs, output):
        kept.append(output.float().cpu())
        raise _Stop

    t0, c0 = time.perf_counter(), time.process_time()
    for _, idx in _plan(prepared, cfg):
        batch = _batch_arrays([prepared[i] for i in idx], pad_id)
        for m in models:
            layers = m
            for attr in decoder_layers_path(m).split("."):
                layers = getattr(layers, attr)
            handle = layers[layer - 1].register_forward_hook(hook)
            try:
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                     enabled=cfg.compute_dtype == "bfloat16"):
                    m(input_ids=batch["ids"], attention_mask=batch["mask"])
            except _Stop:
                pass
            finally:
                handle.remove()
        kept.clear()
    return time.perf_counter() - t0, time.process_time() - c0


def harvest(base, distilled, tok, docs, cfg) -> tuple[float, float]:
    """(wall, CPU) seconds for a complete harvest into a fresh store."""
    with tempfile.TemporaryDirectory() as d:
        t0, c0 = time.perf_counter(), time.process_time()
        harvest_pair(base, distilled, tok, tok, docs, cfg, out_dir=os.path.join(d, "store"), progress=False)
        return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="L", choices=sorted(SHAPES))
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base, distilled, tok = build_pair(args.size)
    layer = base.config.num_hidden_layers // 2
    docs = make_documents(args.tokens, args.seq_len)
    n_tok = len(docs) * args.seq_len
    warm = make_documents(4 * args.seq_len, args.seq_len, seed=1)
    print(f"pair {args.size} (d={base.config.hidden_size}, {base.config.num_hidden_layers} layers), layer {layer}, "
          f"{n_tok} tokens, batch {args.batch_size}x{args.seq_len}, {torch.get_num_threads()} threads, "
          f"{args.repeats} alternating repeats")
    ratios, rates = {}, {}
    bf16 = precision.resolve("auto", "cpu")
    dtypes = ("float32", "bfloat16") if bf16["dtype"] == "bfloat16" else ("float32",)
    if len(dtypes) == 1:
        print(f"bf16 autocast skipped: {bf16['why']}")
    for dtype in dtypes:
        cfg = HarvestConfig(layer=layer, batch_size=args.batch_size, max_seq_len=args.seq_len, shard_tokens=65536,
                            compute_dtype=dtype)
        plain_forward([base, distilled], warm, cfg, layer, tok.pad_token_id)
        harvest(base, distilled, tok, warm, cfg)
        t_plain, t_harv = [], []
        for _ in range(args.repeats):
            t_plain.append(plain_forward([base, distilled], docs, cfg, layer, tok.pad_token_id))
            t_harv.append(harvest(base, distilled, tok, docs, cfg))
        for k, clock in enumerate(("wall", "cpu")):
            tp, th = [t[k] for t in t_plain], [t[k] for t in t_harv]
            p, h = n_tok / statistics.median(tp), n_tok / statistics.median(th)
            ratios[dtype, clock], rates[dtype, clock] = h / p, h
            print(f"{dtype:8s} [{clock} clock] plain forward (both models, stopped at layer) {p:,.0f} tok/s, harvest "
                  f"{h:,.0f} tok/s: ratio {h / p:.3f} by medians, {min(tp) / min(th):.3f} by best runs (goal >= 0.9)")
    for clock in ("wall", "cpu") if len(dtypes) == 2 else ():
        print(f"[{clock} clock] harvest speed bf16 / float32 = {rates['bfloat16', clock] / rates['float32', clock]:.2f}")
    # CPU time is robust to other processes on a shared machine (use --threads 1 there) but leaves out I/O waits.
    return ratios


if __name__ == "__main__":
    main()
