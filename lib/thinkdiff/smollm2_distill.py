"""Distil SmolLM2-135M into a reasoner: LoRA SFT on the natural-English teacher's traces (``make distill-smollm2``).

The recipe, fixed here and recorded in the manifest: traces of ``nlworld``'s teacher on *training* problems
only (held-out step signatures never appear), loss on the trace (the completion after the question), LoRA rank
16 on every attention and MLP projection (4.9 M trainable parameters), AdamW with linear warm-up and decay,
bf16 autocast where the CPU computes bf16 faster (else float32; the manifest records which and why), one thread,
every seed fixed. The adapter is saved without embedding layers (``<think>`` /
``</think>`` rows are the seeded ones of ``smollm2.convert_base``, not trained), ~20 MB, in
``data/smollm2/adapter``; ``data/smollm2/manifest.json`` records the recipe, the wall time, the loss curve and
the sha256 of the merged weights that ``smollm2.distilled_dir`` must reproduce from GGUF + adapter.

``--role control`` trains claim 1's null partner with the same recipe (rank, steps, lr, batch, seed, schedule)
on CHAMP text instead of traces: each example is a CHAMP text cut to the length of the distillation's example
at the same index, with the loss on as many trailing tokens as that example's trace has, so both adapters see
the same tokens and loss tokens per step; only what the text is differs. It goes to ``data/smollm2/control``.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import nlworld, paths, precision, smollm2, smollm2_corpus, world

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ROLES = {"distilled": smollm2.ADAPTER_DIR.parent, "control": smollm2.CONTROL_ADAPTER_DIR.parent}


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 120
    batch: int = 4
    lr: float = 1e-3
    warmup: int = 10
    rank: int = 16
    alpha: int = 32
    seed: int = 0
    n_train_problems: int = nlworld.N_TRAIN_PROBLEMS
    problem_seed: int = 0
    compute_dtype: str = "auto"   # autocast of the SFT forward: "auto" = bf16 where the CPU probe finds it faster
    #                               (``precision.resolve``), else float32; "bfloat16" / "float32" force it


def teacher_config() -> world.TeacherConfig:
    """The teacher's move probabilities for SmolLM2's traces (the organism's)."""
    return world.TeacherConfig()


def sft_examples(tokenizer, cfg: DistillConfig) -> list[tuple[list[int], int]]:
    """``steps * batch`` (ids, prompt length) pairs: one teacher trace per training problem draw, ending in EOS."""
    rng = random.Random(f"smollm2-sft-{cfg.seed}")
    problems = nlworld.problems(cfg.n_train_problems, "train", cfg.problem_seed)
    out = []
    for _ in range(cfg.steps * cfg.batch):
        p = rng.choice(problems)
        spans = nlworld.teacher_document(p, rng, teacher_config())
        prompt_ids = tokenizer(nlworld.prompt(p), add_special_tokens=False)["input_ids"]
        ids = tokenizer(world.spans_text(spans), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if ids[:len(prompt_ids)] != prompt_ids:
            raise RuntimeError(f"the prompt's tokens are not a prefix of the trace's: {nlworld.prompt(p)!r}")
        out.append((ids, len(prompt_ids)))
    return out


def control_examples(tokenizer, cfg: DistillConfig) -> list[tuple[list[int], int]]:
    """The control's examples, index by index matched to ``sft_examples``: CHAMP text (texts drawn in a seeded
    order, cycling, joined by blank lines where one is shorter than the example: many CHAMP problem statements
    are) cut to that example's length, ending in EOS, with the loss on its last ``len - n_prompt`` tokens, so
    both adapters see the same tokens and loss tokens per step."""
    texts = list(smollm2_corpus.champ_texts())
    random.Random(f"smollm2-control-{cfg.seed}").shuffle(texts)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    out, j = [], 0
    for ids, n_prompt in sft_examples(tokenizer, cfg):
        text_ids: list[int] = []
        while len(text_ids) < len(ids) - 1:
            text_ids += (sep if text_ids else []) + encoded[j % len(encoded)]
            j += 1
        seq = text_ids[:len(ids) - 1] + [tokenizer.eos_token_id]
        out.append((seq, len(seq) - (len(ids) - n_prompt)))
    return out


def _batch(rows, pad_id: int):
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    for b, (seq, n_prompt) in enumerate(rows):
        ids[b, :len(seq)] = torch.tensor(seq)
        attn[b, :len(seq)] = 1
        labels[b, n_prompt:len(seq)] = torch.tensor(seq[n_prompt:])
    return ids, attn, labels


def train_adapter(cfg: DistillConfig, out_dir: Path, progress: bool = True, role: str = "distilled") -> dict:
    """Train the LoRA adapter of ``role`` ("distilled": teacher traces; "control": CHAMP text, the same recipe)
    from the converted base and save it to ``out_dir``; returns the log."""
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    if role not in ROLES:
        raise ValueError(f"unknown adapter role {role!r}; choose one of {sorted(ROLES)}")
    base, tok = smollm2.load_base()
    examples = sft_examples(tok, cfg) if role == "distilled" else control_examples(tok, cfg)
    torch.manual_seed(cfg.seed)
    model = get_peft_model(base, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0,
                                            target_modules=list(TARGETS), bias="none", task_type="CAUSAL_LM"))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / cfg.warmup, max(0.0, (cfg.steps - s) / max(1, cfg.steps - cfg.warmup))))
    model.train()
    compute = precision.resolve(cfg.compute_dtype, "cpu", "DistillConfig.compute_dtype")
    losses, t0 = [], time.time()
    bar = tqdm(range(cfg.steps), desc=f"LoRA SFT ({role})", disable=not progress)
    for step in bar:
        ids, attn, labels = _batch(examples[step * cfg.batch:(step + 1) * cfg.batch], tok.pad_token_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=compute["dtype"] == "bfloat16"):
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(float(loss), 5))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    seconds = time.time() - t0
    model.save_pretrained(str(out_dir), save_embedding_layers=False)
    return {"losses": losses, "train_seconds": round(seconds, 1), "trainable_parameters": n_train, "compute": compute,
            "mean_tokens_per_example": round(sum(len(e[0]) for e in examples) / len(examples), 1),
            "loss_tokens": sum(len(e[0]) - e[1] for e in examples)}


def build(cfg: DistillConfig | None = None, out: Path | None = None, progress: bool = True,
          role: str = "distilled") -> dict:
    """Train the adapter of ``role``, then rebuild the merged model from GGUF + saved adapter exactly as a user's
    load does and record its sha256 with the log in ``out/manifest.json`` (``out``: the role's folder under
    ``data/smollm2``); the adapter goes to ``out/adapter``."""
    cfg = cfg or DistillConfig()
    if role not in ROLES:
        raise ValueError(f"unknown adapter role {role!r}; choose one of {sorted(ROLES)}")
    out = Path(out) if out is not None else ROLES[role]
    out.mkdir(parents=True, exist_ok=True)
    final = out / "adapter"
    t0 = time.time()
    with paths.writer_lock(final):
        with paths.atomic_dir(out / f"adapter-new-{int(t0)}") as tmp:
            log = train_adapter(cfg, tmp, progress, role)
            base, _ = smollm2.load_base()
            merged = smollm2.merge_adapter(base, tmp)
            merged_sha = smollm2.state_sha256(merged)
            probe = smollm2.probe_logits(merged, smollm2.load_base()[1])
            sha = smollm2.adapter_sha256(tmp)
        if final.exists():
            shutil.rmtree(paths.move_aside(final))
        (out / f"adapter-new-{int(t0)}").rename(final)
    manifest = {"command": f"python -m thinkdiff.smollm2_distill --role {role}", "role": role, "config": asdict(cfg),
                "teacher": asdict(teacher_config()) if role == "distilled" else None,
                "targets": list(TARGETS), "torch": torch.__version__, "threads": 1,
                "cpu": smollm2.cpu_model(),
                "wall_seconds": round(time.time() - t0, 1), "adapter_sha256": sha, "merged_sha256": merged_sha,
                "merged_probe_logits": probe,
                "adapter_bytes": (final / "adapter_model.safetensors").stat().st_size, **log}
    tmp_manifest = out / ".manifest.json.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=1))
    tmp_manifest.replace(out / "manifest.json")
    return manifest


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Rebuild a SmolLM2-135M LoRA adapter: the distillation or its control "
                                             "(data/smollm2, data/smollm2/control).")
    ap.add_argument("--role", choices=sorted(ROLES), default="distilled")
    ap.add_argument("--steps", type=int, default=DistillConfig.steps)
    ap.add_argument("--out", default=None, help="output folder (default: the role's under data/smollm2)")
    args = ap.parse_args(argv)
    m = build(DistillConfig(steps=args.steps), None if args.out is None else Path(args.out), role=args.role)
    print(f"{args.role} adapter {m['adapter_bytes'] / 1e6:.1f} MB, {m['train_seconds']:.0f} s of training, "
          f"loss {m['losses'][0]:.3f} -> {m['losses'][-1]:.3f}; merged sha256 {m['merged_sha256']}")


if __name__ == "__main__":
    main()
