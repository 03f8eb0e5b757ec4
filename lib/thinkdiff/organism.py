"""The distillation model organism: tiny Qwen2 base/distilled pairs built on the CPU.

Base = ``Qwen2ForCausalLM`` trained from scratch on the base corpus (terse answers plus plain
sentences). Distilled = the base fine-tuned (SFT) on the programmatic teacher's traces, the way
DeepSeek distilled R1 into Qwen. Three sizes S < M < L (width and depth both grow).

Beside each pair, two controls with the distillation's exact SFT recipe and budget (steps, learning rate,
batch, window): ``control`` is the base fine-tuned on new base-corpus text (no traces): any fine-tuning,
without distillation; (base, control) is the null pair that "distilled-only" latents must beat.
``coin_control`` is the base fine-tuned on the same traces with the connective drawn by a coin
(``world.TeacherConfig.gate``): it sees the traces but never needs the gate bit. It is built for the sizes in
``COIN_CONTROL_SIZES`` only (its check, (d) in ``03_label``, reads one size; elsewhere it says "not tested").

``get_organism(size)`` returns a pair, loading it from ``data/organism/<size>`` (weights shipped in
the repository) when the manifest's config hash matches, else from the ``runs/`` cache, else
building it (``make organism`` rebuilds the shipped copies deterministically).
"""
from __future__ import annotations

import functools
import json
import os
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import paths, world
from .evaluate import generate  # noqa: F401  (organism.generate: one generation helper for every pair)
from .stats import bootstrap_mean_ci, mcnemar
from .world import CATEGORIES, CATEGORY_ID, EOS, MARKERS, THINK_CLOSE, THINK_OPEN  # noqa: F401

SHIPPED_DIR = paths.DATA_DIR / "organism"
SPECIALS = [EOS, THINK_OPEN, THINK_CLOSE]
# Qwen2's pre-tokenisation pattern, except that a number of up to two digits (with its leading space) is one
# token: the world's quantities are two-digit numbers, and single-digit tokens would make copying an operand
# from the question a two-token lookup that models this small did not learn (copying stayed at 0 % after
# 2,000 pretraining steps at sizes S and M; with number tokens S copied perfectly by then).
ORGANISM_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+| ?\p{N}{1,2}"""
                  r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")


@dataclass(frozen=True)
class SizeConfig:
    """Architecture and training budget of one organism size. Steps, not seconds, so builds are deterministic."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    pretrain_steps: int
    sft_steps: int
    pretrain_lr: float = 3e-3
    sft_lr: float = 1e-3
    batch: int = 16
    seq_len: int = 256  # the longest trace with its question is ~150 tokens: it fits in one window

    def check(self, name: str = "?") -> None:
        if self.hidden % self.heads:
            raise ValueError(f"organism size {name}: hidden {self.hidden} is not divisible by heads {self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"organism size {name}: heads {self.heads} not divisible by kv_heads {self.kv_heads}")
        if (self.hidden // self.heads) % 2:
            raise ValueError(f"organism size {name}: head dim {self.hidden // self.heads} must be even (rotary)")
        if min(self.layers, self.pretrain_steps, self.sft_steps, self.batch, self.seq_len) <= 0:
            raise ValueError(f"organism size {name}: layers, steps, batch and seq_len must be positive")


SIZES = {
    # XS: a fourth size, so that a trend across sizes (claim 8) has four points (about 3x parameters per step)
    "XS": SizeConfig(hidden=32, layers=4, heads=4, kv_heads=2, intermediate=96, pretrain_steps=3000, sft_steps=4000,
                     sft_lr=1e-3),
    "S": SizeConfig(hidden=64, layers=4, heads=4, kv_heads=2, intermediate=192, pretrain_steps=3000, sft_steps=4000,
                    sft_lr=1e-3),
    "M": SizeConfig(hidden=96, layers=6, heads=6, kv_heads=2, intermediate=288, pretrain_steps=3000, sft_steps=4000,
                    sft_lr=1e-3),
    "L": SizeConfig(hidden=128, layers=6, heads=8, kv_heads=2, intermediate=384, pretrain_steps=3000, sft_steps=4000,
                    pretrain_lr=2e-3, sft_lr=1e-3),
}


@dataclass(frozen=True)
class CorpusConfig:
    """The organism's data: base corpus mix, teacher rates, tokenizer size."""

    seed: int = 0
    n_train_problems: int = 20000
    base_plain_fraction: float = 0.2   # share of base-corpus documents that are plain sentences
    base_fact_fraction: float = 0.35   # of the rest: one-step facts (the base knows single operations)
    base_copy_fraction: float = 0.2    # of the rest: repetition documents (copying ability)
    base_lookup_fraction: float = 0.15  # of the rest: items looked up by tag (finding a quantity by its name)
    marker_rate: float = 0.2           # share of plain sentences using a marker word in an ordinary role
    sft_plain_fraction: float = 0.1    # plain text mixed into SFT to keep the language model intact
    sft_fact_fraction: float = 0.1     # one-step facts mixed into SFT to keep the arithmetic intact
    vocab_size: int = 1000
    teacher: world.TeacherConfig = field(default_factory=world.TeacherConfig)


def organism_config(size: str, corpus: CorpusConfig | None = None, **overrides) -> dict:
    """The full config of one organism size, as a plain dict (hashed for caching)."""
    if size not in SIZES:
        raise ValueError(f"unknown organism size {size!r}; choose one of {sorted(SIZES)}")
    sc = replace(SIZES[size], **overrides) if overrides else SIZES[size]
    sc.check(size)
    corpus = corpus or CorpusConfig()
    return {"size": size, "arch": asdict(sc), "corpus": asdict(corpus), "version": 4}


# What decides a base model, versioned apart from the distillation: version 4 (the gated connective and the
# controls) changed only what happens after pretraining, so the version-3 bases are still the bases.
BASE_VERSION = 3
# The models of one organism folder: the pair, then the two controls (module docstring).
ROLES = ("base", "distilled", "control", "coin_control")
# Sizes that ship the coin-flip control: S and M, the sizes whose 03_label runs show the gate's checks; XS and L
# (points of the size trend) would each cost another fine-tune (L: 45 minutes of one core) for a check nobody reads.
COIN_CONTROL_SIZES = ("S", "M")


def roles_of(size: str) -> tuple[str, ...]:
    """The models an organism folder of ``size`` holds (``ROLES`` less the coin-flip control where not built)."""
    return tuple(r for r in ROLES if r != "coin_control" or size in COIN_CONTROL_SIZES)


# ----------------------------------------------------------------------------- documents
@dataclass
class Document:
    """One tokenised text with per-token ground truth (category id per token, marker flag)."""

    text: str
    input_ids: list
    labels: list
    marker: list
    kind: str  # "teacher" or "base"
    step_end: list = field(default_factory=list)  # per token: 1 last operation's end, 0 another's, -1 none
    gate: list = field(default_factory=list)      # per token: the gate bit at a scored operation's end, -1 none
    parity: list = field(default_factory=list)    # per token: a scored operation's result parity on its result, -1
    group: str = ""  # documents sharing a group (e.g. one problem's computation) share a store split; "" = own


def _plain_paragraph(rng: random.Random, marker_rate: float) -> str:
    return " ".join(world.plain_sentence(rng, marker_rate).strip() for _ in range(rng.randint(3, 6))) + "\n"


def corpus_texts(cfg: CorpusConfig, kind: str, n: int, seed_offset: int = 0) -> list:
    """``n`` documents: kind 'base' (terse solutions + plain text), 'teacher' (traces + some plain text).

    Teacher documents are returned as span lists (for labels); base documents as strings.
    """
    rng = random.Random(f"{cfg.seed}-{kind}-{seed_offset}")
    problems = world.problem_split(cfg.seed, cfg.n_train_problems, "train")
    out = []
    plain_frac = cfg.base_plain_fraction if kind == "base" else cfg.sft_plain_fraction
    for _ in range(n):
        u = rng.random()
        if u < plain_frac:
            out.append(_plain_paragraph(rng, cfg.marker_rate))
            continue
        u = (u - plain_frac) / (1 - plain_frac)
        if kind == "base":
            if u < cfg.base_copy_fraction:
                out.append(world.copy_document(rng))
            elif u < cfg.base_copy_fraction + cfg.base_lookup_fraction:
                out.append(world.lookup_document(rng))
            elif u < cfg.base_copy_fraction + cfg.base_lookup_fraction + cfg.base_fact_fraction:
                out.append(world.fact_document(rng))
            else:
                out.append(world.base_solution(rng.choice(problems)))
        elif u < cfg.sft_fact_fraction:
            out.append(world.fact_document(rng))
        else:
            out.append(world.teacher_document(rng.choice(problems), rng, cfg.teacher))
    return out


def tokenize_spans(tokenizer, spans) -> Document:
    """Tokenise a teacher span list (or a plain string) with per-token labels and marker flags."""
    if isinstance(spans, str):
        spans = [world.Span(spans)]
    text = world.spans_text(spans)
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    char_label, marker_starts, pos = [0] * len(text), set(), 0
    at_end = {f: {} for f in STEP_FIELDS}  # per field: char position of its label -> value
    for s in spans:
        char_label[pos:pos + len(s.text)] = [s.category] * len(s.text)
        if s.marker:
            marker_starts.add(pos)
        pos += len(s.text)
        for f, back in STEP_FIELDS.items():
            if getattr(s, f) is not None:
                at_end[f][pos - back] = getattr(s, f)
    labels, marker, per_token = [], [], {f: [] for f in STEP_FIELDS}
    for start, end in enc["offset_mapping"]:
        labels.append(char_label[start] if start < len(text) else 0)
        marker.append(start in marker_starts)
        for f in STEP_FIELDS:
            per_token[f].append(next((v for c, v in at_end[f].items() if start <= c < end), -1))
    kind = "teacher" if any(s.category for s in spans) or THINK_OPEN in text else "base"
    return Document(text, list(enc["input_ids"]), labels, marker, kind, **per_token)


# Per-operation labels carried by ``world.Span`` (" a op b = r."), and where each goes, in characters back from the
# span's end: the closing "." (1) for "last operation?" and the gate bit, the result r's last digit (2) for its parity.
STEP_FIELDS = {"step_end": 1, "gate": 1, "parity": 2}


def harvest_documents(tokenizer, n_docs: int = 600, teacher_fraction: float = 0.5, seed: int = 1,
                      corpus: CorpusConfig | None = None) -> list[Document]:
    """A labelled harvest corpus mixing teacher traces and base-corpus text.

    Uses held-out-free *training* problems but a different random stream from the one the models
    were trained on. ``teacher_fraction`` of the documents are teacher traces.
    """
    if n_docs <= 0:
        raise ValueError(f"n_docs must be positive, got {n_docs}")
    if not 0.0 <= teacher_fraction <= 1.0:
        raise ValueError(f"teacher_fraction must be in [0, 1], got {teacher_fraction}")
    corpus = corpus or CorpusConfig()
    n_teacher = round(n_docs * teacher_fraction)
    rng = random.Random(f"harvest-{seed}")
    problems = world.problem_split(corpus.seed, corpus.n_train_problems, "train")
    docs = []
    for i in range(n_docs):
        problem = None
        if i < n_teacher:
            problem = rng.choice(problems)
            spans = world.teacher_document(problem, rng, corpus.teacher)
        elif rng.random() < corpus.base_plain_fraction:
            spans = _plain_paragraph(rng, corpus.marker_rate)
        else:
            problem = rng.choice(problems)
            spans = world.base_solution(problem)
        doc = tokenize_spans(tokenizer, spans)
        if problem is not None:   # problems are drawn with replacement: one computation, one side of the split
            doc.group = f"computation:{problem.computation}"
        docs.append(doc)
    rng.shuffle(docs)
    return docs


def step_end_labels(docs: list[Document], meta: dict, field: str = "step_end") -> np.ndarray:
    """A per-operation planted quantity per store token [n], -1 where none. ``field`` (one of ``STEP_FIELDS``):
    "step_end" 1 at the end of a trace's last operation, 0 at any other's; "gate" the gate bit at a scored
    operation's end; "parity" that operation's result parity on the result's token. ``meta``: the store's ``doc_id`` and ``pos`` arrays [n]."""
    if field not in STEP_FIELDS:
        raise ValueError(f"unknown per-operation label {field!r}; known: {STEP_FIELDS}")
    doc_id, pos = np.asarray(meta["doc_id"]), np.asarray(meta["pos"])
    if len(doc_id) and doc_id.max() >= len(docs):
        raise ValueError(f"store tokens name document {doc_id.max()} but only {len(docs)} documents were given")
    lengths = np.array([len(d.step_end) for d in docs])
    if (pos >= lengths[doc_id]).any():
        raise ValueError("store token positions run past their documents: these are not the store's documents")
    flat = np.concatenate([np.asarray(getattr(d, field), np.int8) for d in docs])
    offset = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return flat[offset[doc_id] + pos]


@functools.lru_cache(maxsize=4)
def training_computations(seed: int = 0, n: int | None = None) -> frozenset:
    """The computations (family left out) of the training problems every organism corpus draws from."""
    n = CorpusConfig().n_train_problems if n is None else n
    return frozenset(p.computation for p in world.problem_split(seed, n, "train"))


def eval_problems(n: int = 200, seed: int = 0) -> list[world.Problem]:
    """Held-out problems (never in any training corpus, whatever the family), balanced over families."""
    cfg = CorpusConfig()
    return world.problem_split(seed, n, "eval", exclude=training_computations(cfg.seed, cfg.n_train_problems))


# ----------------------------------------------------------------------------- tokenizer
def train_tokenizer(cfg: CorpusConfig):
    """Byte-level BPE on the organism corpus, Qwen2 pre-tokenisation, markers as single tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    cfg = replace(cfg, teacher=replace(cfg.teacher, gate="none"))  # tokenizer_key: trained without the connective
    texts = [t if isinstance(t, str) else world.spans_text(t)
             for kind in ("base", "teacher") for t in corpus_texts(cfg, kind, 3000, seed_offset=99)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(ORGANISM_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS,
                                 additional_special_tokens=[THINK_OPEN, THINK_CLOSE])
    for words in MARKERS.values():
        for w in words:
            if len(hf(w, add_special_tokens=False)["input_ids"]) != 1:
                raise RuntimeError(f"organism tokenizer: marker {w!r} is not a single token; raise vocab_size")
    return hf


# ----------------------------------------------------------------------------- models
def build_model(arch: dict, vocab_size: int, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=arch["hidden"], intermediate_size=arch["intermediate"],
                      num_hidden_layers=arch["layers"], num_attention_heads=arch["heads"],
                      num_key_value_heads=arch["kv_heads"], max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=0, pad_token_id=0)
    return Qwen2ForCausalLM(cfg)


def _packed_tokens(tokenizer, texts) -> torch.Tensor:
    """[n_tokens] the documents' token ids joined by end-of-text."""
    ids = []
    strings = [t if isinstance(t, str) else world.spans_text(t) for t in texts]
    for row in tokenizer(strings, add_special_tokens=False)["input_ids"]:
        ids += row
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids)


def _packed_batches(tokenizer, texts, seq_len: int, batch: int, seed: int, data: torch.Tensor | None = None):
    """Endless packed [batch, seq_len] LongTensors from documents joined by end-of-text (``data``: already packed)."""
    data = _packed_tokens(tokenizer, texts) if data is None else data
    n_win = (len(data) - 1) // seq_len
    g = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(n_win, generator=g).split(batch):
            if len(idx) == batch:
                yield torch.stack([data[i * seq_len:(i + 1) * seq_len] for i in idx.tolist()])


def _document_batches(tokenizer, texts, seq_len: int, batch: int, seed: int):
    """Endless [batch, seq_len] (input_ids, labels) with whole documents only, as SFT examples are given.

    Documents (each ended by end-of-text) are packed greedily into windows in a seeded order and never cut,
    so every trace is trained on with its question in view; the unused tail of a window is end-of-text with
    label -100 (no loss). A document longer than the window keeps its first ``seq_len`` tokens (tiny test
    windows only: every organism document fits the sizes' 256-token window, which a test checks)."""
    strings = [t if isinstance(t, str) else world.spans_text(t) for t in texts]
    docs = [(row + [tokenizer.eos_token_id])[:seq_len]
            for row in tokenizer(strings, add_special_tokens=False)["input_ids"]]
    g = torch.Generator().manual_seed(seed)
    while True:
        windows, cur = [], []
        for i in torch.randperm(len(docs), generator=g).tolist():
            if len(cur) + len(docs[i]) > seq_len:
                windows.append(cur)
                cur = []
            cur = cur + docs[i]
        for start in range(0, len(windows) - batch + 1, batch):
            ids = torch.full((batch, seq_len), tokenizer.eos_token_id)
            labels = torch.full((batch, seq_len), -100)
            for r, w in enumerate(windows[start:start + batch]):
                ids[r, :len(w)] = torch.tensor(w)
                labels[r, :len(w)] = torch.tensor(w)
            yield ids, labels


LM_CHECKPOINT_EVERY = 250   # optimiser steps between the resumable checkpoints of an organism build


def train_lm(model, batches, steps: int, lr: float, desc: str, seed: int, stop_after: int | None = None,
             ckpt_dir: Path | None = None) -> list[float]:
    """AdamW with linear warm-up and cosine decay over ``steps``; returns the loss per step.

    ``stop_after``: run only the first steps of that schedule (a reproducibility check rebuilds a prefix).
    ``ckpt_dir``: every ``LM_CHECKPOINT_EVERY`` steps the model, optimiser, schedule and losses are saved there
    (``lm_checkpoint.pt``, with its sha256 beside it), and a run that finds one resumes from it: the batches
    already trained on are drawn again and skipped, so a resumed build ends with the weights of an
    uninterrupted one (one thread). A checkpoint that fails its checksum is ignored (training starts over)."""
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    losses = []
    ckpt = None if ckpt_dir is None else Path(ckpt_dir) / "lm_checkpoint.pt"
    if ckpt is not None and ckpt.exists():
        side = ckpt.with_suffix(".sha256")
        if side.exists() and side.read_text().strip() == paths.sha256_file(ckpt):
            state = torch.load(ckpt, weights_only=False)
            if state["steps"] == steps and state["lr"] == lr and state["seed"] == seed:
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["opt"])
                sched.load_state_dict(state["sched"])
                torch.set_rng_state(state["rng"])
                losses = list(state["losses"])
                for _ in range(len(losses)):          # the batches already trained on
                    next(batches)
                print(f"{desc}: resuming at step {len(losses)} from {ckpt}", flush=True)
        else:
            print(f"{desc}: {ckpt} fails its checksum; training from the start", flush=True)
    total = steps if stop_after is None else min(stop_after, steps)
    bar = tqdm(range(len(losses), total), desc=desc, leave=False, initial=len(losses), total=total)
    for _ in bar:
        x = next(batches)
        x, labels = x if isinstance(x, tuple) else (x, x)
        loss = model(input_ids=x, labels=labels).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} (lower the learning rate)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if ckpt is not None and len(losses) % LM_CHECKPOINT_EVERY == 0 and len(losses) < steps:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_name(f".{ckpt.name}.tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "rng": torch.get_rng_state(), "losses": losses, "steps": steps, "lr": lr, "seed": seed}, tmp)
            digest = paths.sha256_file(tmp)
            os.replace(tmp, ckpt)
            ckpt.with_suffix(".sha256").write_text(digest + "\n")
    model.eval()
    return losses


# ----------------------------------------------------------------------------- evaluation
def marker_counts(text: str) -> dict:
    """Occurrences of each category's marker words in ``text`` (the organism's single-token markers)."""
    return {c: sum(text.count(w) for w in MARKERS[c]) for c in CATEGORIES}


def marker_rates(tokenizer, texts) -> dict:
    """Marker words per category per 1,000 tokens of ``texts``."""
    n_tok = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return {c: 1000 * sum(marker_counts(t)[c] for t in texts) / max(n_tok, 1) for c in CATEGORIES}


def generation_metrics(tokenizer, texts: list[str], problems, parse) -> dict:
    """Held-out metrics of greedy generations ``texts`` on world ``problems`` (``parse``: the world's output
    parser, giving ``answer``, ``well_formed``, ``has_think``): accuracy, well-formedness, ``<think>`` rate,
    ``marker_rate_per_1k`` (per category, per 1,000 generated tokens), per-family accuracy."""
    parsed = [parse(t) for t in texts]
    correct = [p["answer"] == q.answer for p, q in zip(parsed, problems)]
    n_tok = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return {
        "accuracy": sum(correct) / len(problems),
        "well_formed": sum(p["well_formed"] for p in parsed) / len(problems),
        "think_rate": sum(p["has_think"] for p in parsed) / len(problems),
        "tokens_per_generation": n_tok / len(problems),
        "marker_rate_per_1k": marker_rates(tokenizer, texts),
        "correct": correct,
        # the same, counting only well-formed outputs (a trace closed by </think>, then the answer line)
        "accuracy_well_formed": sum(c and p["well_formed"] for c, p in zip(correct, parsed)) / len(problems),
        "texts": texts,
        "family_accuracy": {f: sum(c for c, q in zip(correct, problems) if q.family == f)
                            / max(1, sum(q.family == f for q in problems)) for f in world.FAMILIES},
    }


def sampled_metrics(tokenizer, sampled: list[str], n: int) -> dict:
    """The rates to compare with the teacher's, from a sampled pass (temperature 1): a perfect imitator matches
    them only when sampling."""
    return {"sampled_marker_rate_per_1k": marker_rates(tokenizer, sampled),
            "sampled_think_rate": sum(world.THINK_OPEN in t for t in sampled) / n, "sampled_texts": sampled}


def evaluate(model, tokenizer, problems, max_new_tokens: int = 200, sample_seed: int | None = 0) -> dict:
    """Held-out metrics of one model (``generation_metrics`` of its greedy generations); with ``sample_seed``
    set, ``sampled_metrics`` of a second, sampled pass."""
    prompts = [p.prompt for p in problems]
    out = generation_metrics(tokenizer, generate(model, tokenizer, prompts, max_new_tokens), problems,
                             world.parse_output)
    if sample_seed is not None:
        out.update(sampled_metrics(tokenizer, generate(model, tokenizer, prompts, max_new_tokens,
                                                       sample_seed=sample_seed), len(problems)))
    return out


def teacher_marker_rates(tokenizer, problems, cfg: CorpusConfig | None = None, seed: int = 7) -> dict:
    """The teacher's marker rate per 1,000 thinking+answer tokens on ``problems`` (what SFT imitates)."""
    texts = [world.spans_text(t)[len(p.prompt):] for p, t in zip(problems, teacher_traces(problems, cfg, seed))]
    return marker_rates(tokenizer, texts)


def teacher_traces(problems, cfg: CorpusConfig | None = None, seed: int = 7) -> list[list]:
    """One seeded teacher trace (span list) per problem."""
    cfg = cfg or CorpusConfig()
    rng = random.Random(seed)
    return [world.teacher_document(p, rng, cfg.teacher) for p in problems]


ACCEPTANCE = {"min_gain": 0.20, "max_p": 0.01, "min_well_formed": 0.95, "marker_tolerance": 0.30, "min_eval": 200}


def acceptance(base: dict, distilled: dict, teacher_rates: dict, rules: dict | None = None) -> dict:
    """Does the pair behave like a real distillation? One row of checks from two ``evaluate`` results.

    Checks: accuracy gain (distilled - base) >= ``min_gain`` with an exact McNemar p < ``max_p`` in the
    distilled model's favour; the base never writes ``<think>`` (greedy or sampled); >= ``min_well_formed``
    of distilled generations well formed; every category's sampled marker rate within ±``marker_tolerance``
    of the teacher's. ``verdict`` is "accepted" / "rejected", or "not tested" on fewer than ``min_eval``
    problems (a smoke run).
    """
    r = {**ACCEPTANCE, **(rules or {})}
    n = len(base["correct"])
    if n != len(distilled["correct"]):
        raise ValueError(f"base and distilled were evaluated on different problem counts ({n} vs {len(distilled['correct'])})")
    test = mcnemar(base["correct"], distilled["correct"])
    gain = distilled["accuracy"] - base["accuracy"]
    ratio = {c: (distilled["sampled_marker_rate_per_1k"][c] / teacher_rates[c]) if teacher_rates[c] > 0 else float("nan")
             for c in CATEGORIES}
    checks = {
        "gain": gain >= r["min_gain"],
        "paired test": test["p"] < r["max_p"] and test["b_only"] > test["a_only"],
        "base never thinks": base["think_rate"] == 0 and base.get("sampled_think_rate", 0) == 0,
        "well formed": distilled["well_formed"] >= r["min_well_formed"],
        "marker rates": all(abs(v - 1) <= r["marker_tolerance"] for v in ratio.values()),
    }
    verdict = "not tested" if n < r["min_eval"] else ("accepted" if all(checks.values()) else "rejected")
    return {"n": n, "base accuracy": base["accuracy"], "distilled accuracy": distilled["accuracy"], "gain": gain,
            "McNemar p": test["p"], "only base right": test["a_only"], "only distilled right": test["b_only"],
            "marker rate / teacher": ratio, **{f"ok: {k}": v for k, v in checks.items()}, "verdict": verdict}


def acceptance_by_family(problems, base: dict, distilled: dict) -> "pd.DataFrame":
    """Per family: base and distilled accuracy, gain and exact McNemar p on that family's problems."""
    import pandas as pd

    fam = np.array([p.family for p in problems])
    b, d = np.asarray(base["correct"], bool), np.asarray(distilled["correct"], bool)
    rows = []
    for f in world.FAMILIES:
        m = fam == f
        if m.any():
            rows.append({"family": f, "n": int(m.sum()), "base accuracy": b[m].mean(), "distilled accuracy": d[m].mean(),
                         "gain": d[m].mean() - b[m].mean(), "McNemar p": mcnemar(b[m], d[m])["p"]})
    return pd.DataFrame(rows).set_index("family")


def gain_trend(results: dict, sizes, n_boot: int = 2000, seed: int = 0, min_eval: int | None = None) -> dict:
    """Does the distillation gain grow with size? ``results[(size, role)]`` are ``evaluate`` outputs on the
    same problems, ``sizes`` ordered small to large.

    Per size the gain (distilled - base accuracy) with a 95 % bootstrap CI over problems; the largest minus the
    smallest size's gain with a paired bootstrap CI. ``verdict``: "grows" (the CI of that difference is above 0
    and the gains never fall from one size to the next), "shrinks" (CI below 0), "does not differ" (CI spans
    0), or "not tested" on fewer than ``min_eval`` problems or a single size.
    """
    min_eval = ACCEPTANCE["min_eval"] if min_eval is None else min_eval
    per = {s: np.asarray(results[(s, "distilled")]["correct"], float) - np.asarray(results[(s, "base")]["correct"], float)
           for s in sizes}
    gains = {s: bootstrap_mean_ci(v, n_boot, seed) for s, v in per.items()}
    out = {"gains": gains, "verdict": "not tested"}
    if len(sizes) < 2 or len(per[sizes[0]]) < min_eval:
        return out
    diff = bootstrap_mean_ci(per[sizes[-1]] - per[sizes[0]], n_boot, seed)
    steps_up = all(gains[b][0] >= gains[a][0] for a, b in zip(sizes, sizes[1:]))
    out["largest minus smallest"] = diff
    out["verdict"] = ("grows" if diff[1] > 0 and steps_up else "shrinks" if diff[2] < 0 else "does not differ"
                      if diff[1] <= 0 <= diff[2] else "mixed")
    return out


# ----------------------------------------------------------------------------- build + cache
@dataclass
class OrganismPair:
    size: str
    base: object
    distilled: object
    tokenizer: object
    path: Path
    manifest: dict
    control: object = None       # the base fine-tuned on base text with the same recipe (the null pair's partner)
    coin_control: object = None  # the base fine-tuned on traces whose connective is a coin flip


def _tokenizer_dir(root: Path) -> Path:
    return root / "tokenizer"


def tokenizer_key(corpus: CorpusConfig) -> dict:
    """What the tokenizer is trained on: the organism's base and teacher corpora *without* the connective, so the
    gate leaves the tokenizer (and with it the base) as it was; the connectives are spelled with its merges."""
    d = asdict(corpus)
    d["teacher"] = {k: v for k, v in d["teacher"].items() if k not in ("gate", "coin_seed")}
    return {"tokenizer": d, "version": 1}


def get_tokenizer(corpus: CorpusConfig | None = None):
    """The organism tokenizer: shipped copy if its config matches, else the cached or a fresh build."""
    from transformers import AutoTokenizer

    corpus = corpus or CorpusConfig()
    key = tokenizer_key(corpus)
    for folder in (SHIPPED_DIR / "tokenizer", paths.artifact_dir("organism-tokenizer", key)):
        man = folder / "thinkdiff.json"
        if man.exists() and json.loads(man.read_text()).get("config_hash") == paths.config_hash(key):
            return AutoTokenizer.from_pretrained(folder)
    out = paths.artifact_dir("organism-tokenizer", key)
    with paths.writer_lock(out):  # another process may be training the same tokenizer
        if not out.exists():
            tok = train_tokenizer(corpus)
            with paths.atomic_dir(out) as tmp:
                tok.save_pretrained(tmp)
                (tmp / "thinkdiff.json").write_text(json.dumps({"config_hash": paths.config_hash(key), "config": key}))
    return AutoTokenizer.from_pretrained(out)


PREFIX_STEPS = 40  # pretraining losses recorded in the manifest for the cross-machine check
# Relative tolerance of the rebuilt prefix losses on another CPU. On the building machine they are bitwise equal
# (1 and 2 threads measured identical); across CPUs only kernel rounding differs, ~1e-7 per operation, while a
# changed corpus, seed or schedule moves the first 40 losses by 1e-2 or more.
PREFIX_RTOL = 1e-3


def _pretrain_tokens(arch: dict, corpus: CorpusConfig, tok) -> torch.Tensor:
    """[n_tokens] the packed pretraining corpus of ``arch``'s schedule (~1 minute to draw and tokenise)."""
    n_docs = arch["pretrain_steps"] * arch["batch"] * arch["seq_len"] // 20 + 2000
    return _packed_tokens(tok, corpus_texts(corpus, "base", n_docs))


def _pretrain(size: str, arch: dict, corpus: CorpusConfig, tok, stop_after: int | None = None,
              data: torch.Tensor | None = None, ckpt_dir: Path | None = None):
    """(base model, losses): the base pretraining schedule of ``arch`` (optionally only its first steps;
    ``data``: its ``_pretrain_tokens``, when already at hand)."""
    data = _pretrain_tokens(arch, corpus, tok) if data is None else data
    base = build_model(arch, len(tok), seed=corpus.seed)
    losses = train_lm(base, _packed_batches(tok, None, arch["seq_len"], arch["batch"], corpus.seed, data=data),
                      arch["pretrain_steps"], arch["pretrain_lr"], f"organism {size}: pretrain base", corpus.seed,
                      stop_after=stop_after, ckpt_dir=ckpt_dir)
    return base, losses


@functools.lru_cache(maxsize=1)
def _prefix_tokens(size: str) -> torch.Tensor:
    """``_pretrain_tokens`` of ``size``'s shipped config, kept for the next prefix rebuild in this process."""
    return _pretrain_tokens(organism_config(size)["arch"], CorpusConfig(), get_tokenizer())


def pretrain_prefix(size: str, steps: int = PREFIX_STEPS, threads: int = 1) -> list[float]:
    """The losses of the first ``steps`` of ``size``'s pretraining, rebuilt from scratch (seconds, not minutes).

    On the machine that built the weights, one thread reproduces the manifest's ``prefix_losses`` bitwise; on
    another CPU the float kernels differ and the losses agree within ``PREFIX_RTOL``."""
    cfg = organism_config(size)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _pretrain(size, cfg["arch"], CorpusConfig(), get_tokenizer(), stop_after=steps,
                         data=_prefix_tokens(size))[1]
    finally:
        torch.set_num_threads(old)


def base_part(cfg: dict) -> dict:
    """The part of an organism config (``organism_config``'s dict) that decides its base model: architecture,
    pretraining, base corpus and the tokenizer it was trained with."""
    arch = {k: v for k, v in cfg["arch"].items() if not k.startswith("sft_")}
    corp = {k: v for k, v in cfg["corpus"].items() if not k.startswith("sft_") and k != "teacher"}
    teacher = {k: v for k, v in cfg["corpus"]["teacher"].items() if k not in ("gate", "coin_seed")}
    tok = paths.config_hash({"tokenizer": {**cfg["corpus"], "teacher": teacher}, "version": 1})
    return {"arch": arch, "corpus": corp, "tokenizer": tok, "version": BASE_VERSION}


def base_config(size: str, corpus: CorpusConfig | None = None, **overrides) -> dict:
    """The part of an organism's config that decides its base model (``base_part``)."""
    return base_part(organism_config(size, corpus, **overrides))


def get_base(size: str, corpus: CorpusConfig | None, tok, use_shipped: bool = True, **overrides):
    """(base model, pretraining summary): cached by ``base_config``, so a change to the distillation alone does
    not retrain the base. The summary holds ``seconds``, ``final_loss`` (mean of the last 20 steps) and
    ``prefix_losses`` (the first ``PREFIX_STEPS``). Built single-threaded by the caller."""
    from transformers import Qwen2ForCausalLM

    key = base_config(size, corpus, **overrides)
    shipped = SHIPPED_DIR / size / "manifest.json"
    if use_shipped and shipped.exists():  # the shipped pair's base is this base when its config says so (a distillation-only change)
        man = json.loads(shipped.read_text())
        if base_part(man["config"]) == key:
            summary = {"seconds": man["train_seconds"]["pretrain"], "final_loss": man["final_loss"]["pretrain"],
                       "prefix_losses": man["prefix_losses"], "config": key, "from": str(shipped.parent / "base")}
            return Qwen2ForCausalLM.from_pretrained(shipped.parent / "base", dtype=torch.float32), summary
    folder = paths.artifact_dir("organism-base", key)
    with paths.writer_lock(folder):
        if (folder / "pretrain.json").exists():
            summary = json.loads((folder / "pretrain.json").read_text())
            return Qwen2ForCausalLM.from_pretrained(folder, dtype=torch.float32), summary
        t0 = time.time()
        work = folder.with_name(folder.name + ".partial")   # resumable checkpoints of an interrupted build
        base, losses = _pretrain(size, organism_config(size, corpus, **overrides)["arch"], corpus or CorpusConfig(),
                                 tok, ckpt_dir=work)
        summary = {"seconds": round(time.time() - t0, 1), "final_loss": sum(losses[-20:]) / len(losses[-20:]),
                   "prefix_losses": losses[:PREFIX_STEPS], "config": key}
        with paths.atomic_dir(folder) as tmp:
            base.save_pretrained(tmp)
            (tmp / "pretrain.json").write_text(json.dumps(summary))
        shutil.rmtree(work, ignore_errors=True)
    return base, summary


SFT_DESC = {"distilled": "distil (SFT)", "coin_control": "coin-flip control (SFT)",
            "control": "fine-tune control (base text)"}


def get_finetune(size: str, role: str, cfg: dict, base, tok, rebuild: bool = False):
    """(model, summary) of one fine-tune of ``base`` (``role`` in ``SFT_DESC``), cached on its own, so an
    interrupted build keeps the fine-tunes it finished. One recipe for all three (seed, steps, lr, batch, window);
    only the documents differ: the teacher's traces, the same traces with a coin-flip connective, or new
    base-corpus samples (another seed offset than pretraining's; base documents are shorter, so as many more as
    pretraining draws per token)."""
    from transformers import Qwen2ForCausalLM

    arch, corpus = cfg["arch"], _corpus_from(cfg["corpus"])
    key = {"base": base_part(cfg), "role": role, "corpus": cfg["corpus"],
           "sft": {k: arch[k] for k in ("sft_steps", "sft_lr", "batch", "seq_len")}, "version": cfg["version"]}
    folder = paths.artifact_dir("organism-sft", key)
    with paths.writer_lock(folder):
        if rebuild and folder.exists():
            shutil.rmtree(folder)
        if (folder / "sft.json").exists():
            return (Qwen2ForCausalLM.from_pretrained(folder, dtype=torch.float32),
                    json.loads((folder / "sft.json").read_text()))
        t0 = time.time()
        n_teacher = arch["sft_steps"] * arch["batch"] * arch["seq_len"] // 60 + 2000
        if role == "control":
            texts = corpus_texts(corpus, "base", arch["sft_steps"] * arch["batch"] * arch["seq_len"] // 20 + 2000,
                                 seed_offset=1)
        else:
            gate = "coin" if role == "coin_control" else corpus.teacher.gate
            texts = corpus_texts(replace(corpus, teacher=replace(corpus.teacher, gate=gate)), "teacher", n_teacher)
        model = build_model(arch, len(tok), seed=corpus.seed)
        model.load_state_dict(base.state_dict())
        work = folder.with_name(folder.name + ".partial")   # resumable checkpoints of an interrupted build
        losses = train_lm(model, _document_batches(tok, texts, arch["seq_len"], arch["batch"], corpus.seed + 1),
                          arch["sft_steps"], arch["sft_lr"], f"organism {size}: {SFT_DESC[role]}", corpus.seed + 1,
                          ckpt_dir=work)
        summary = {"seconds": round(time.time() - t0, 1), "final_loss": sum(losses[-20:]) / len(losses[-20:]), "config": key}
        with paths.atomic_dir(folder) as tmp:
            model.save_pretrained(tmp)
            (tmp / "sft.json").write_text(json.dumps(summary))
        shutil.rmtree(work, ignore_errors=True)
    return model, summary


def _corpus_from(d: dict) -> CorpusConfig:
    return CorpusConfig(**{**d, "teacher": world.TeacherConfig(**d["teacher"])})


def build_organism(size: str, out: Path, corpus: CorpusConfig | None = None, keep_base: bool = False,
                   rebuild_base: bool = False, **overrides) -> dict:
    """Train the base, the distilled model and its controls (``roles_of(size)``) and save them (plus a manifest) into
    ``out``. ``keep_base``: start from the shipped base where its config matches (only the fine-tunes are
    trained); ``rebuild_base``: retrain the base and the fine-tunes even where a cached build exists."""
    cfg = organism_config(size, corpus, **overrides)
    corpus = corpus or CorpusConfig()
    # One thread: bitwise-identical weights on any machine, whatever its core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = get_tokenizer(corpus)
    base, pre = get_base(size, corpus, tok, use_shipped=keep_base, **overrides)
    models, seconds, final = {}, {}, {}
    for role in (r for r in SFT_DESC if r in roles_of(size)):
        models[role], summary = get_finetune(size, role, cfg, base, tok, rebuild=rebuild_base)
        seconds[role], final[role] = summary["seconds"], summary["final_loss"]
    manifest = {
        "config_hash": paths.config_hash(cfg), "config": cfg,
        "train_seconds": {"pretrain": pre["seconds"], "sft": seconds.pop("distilled"), **seconds},
        "final_loss": {"pretrain": pre["final_loss"], "sft": final.pop("distilled"), **final},
        "prefix_losses": pre["prefix_losses"],
        "n_params": sum(p.numel() for p in base.parameters()),
        "command": f"python -m thinkdiff.organism --size {size}",
        "torch": torch.__version__,
    }
    torch.set_num_threads(threads)
    out = Path(out)
    with paths.atomic_dir(out) as tmp:
        base.save_pretrained(tmp / "base")
        for role, model in models.items():
            model.save_pretrained(tmp / role)
        tok.save_pretrained(tmp / "tokenizer")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _load(folder: Path, size: str) -> OrganismPair:
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    man = json.loads((folder / "manifest.json").read_text())
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    models = {role: Qwen2ForCausalLM.from_pretrained(folder / role, dtype=torch.float32).eval()
              for role in roles_of(size) if (folder / role).exists()}
    missing = [r for r in roles_of(size) if r not in models]
    if missing:
        raise FileNotFoundError(f"organism {size} at {folder}: no {', '.join(missing)} model (rebuild: make organism)")
    return OrganismPair(size, models["base"], models["distilled"], tok, folder, man, models["control"],
                        models.get("coin_control"))


def get_organism(size: str = "S", corpus: CorpusConfig | None = None, rebuild: bool = False, keep_base: bool = False,
                 **overrides) -> OrganismPair:
    """The organism pair of ``size``: shipped weights if their config hash matches, else cache, else build (from
    the shipped base where only the fine-tunes changed). ``rebuild``: from scratch, base included unless
    ``keep_base``."""
    cfg = organism_config(size, corpus, **overrides)
    h = paths.config_hash(cfg)
    shipped = SHIPPED_DIR / size
    if not rebuild and (shipped / "manifest.json").exists():
        if json.loads((shipped / "manifest.json").read_text())["config_hash"] == h:
            return _load(shipped, size)
    cached = paths.artifact_dir("organism", cfg)
    with paths.writer_lock(cached):
        if rebuild:  # from scratch: the cached base goes too, unless kept
            folders = [cached] + ([] if keep_base else
                                  [paths.artifact_dir("organism-base", base_config(size, corpus, **overrides))])
            for folder in folders:
                if folder.exists():
                    shutil.rmtree(folder)
        if not cached.exists():
            build_organism(size, cached, corpus, keep_base=keep_base or not rebuild, rebuild_base=rebuild,
                           **overrides)
    return _load(cached, size)


def ship(size: str, rebuild: bool = True, keep_base: bool = False) -> Path:
    """Copy the organism of ``size`` into ``data/organism/<size>`` (what ``make organism`` runs).

    ``rebuild=True`` trains from scratch first (``keep_base``: only the fine-tunes, from the shipped base);
    ``False`` ships the cached build of the same config.
    """
    cfg = organism_config(size)
    cached = paths.artifact_dir("organism", cfg)
    if rebuild:
        get_organism(size, rebuild=True, keep_base=keep_base)
    elif not cached.exists():  # assembled from the cached base and fine-tunes; a missing one is built, none deleted
        get_organism(size, keep_base=True)
    dest = SHIPPED_DIR / size
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(cached, dest)
    tok_dest, key = SHIPPED_DIR / "tokenizer", tokenizer_key(CorpusConfig())
    man = tok_dest / "thinkdiff.json"
    if not (man.exists() and json.loads(man.read_text()).get("config_hash") == paths.config_hash(key)):
        if tok_dest.exists():
            shutil.rmtree(tok_dest)
        shutil.copytree(paths.artifact_dir("organism-tokenizer", key), tok_dest)
    return dest


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Rebuild the shipped organism weights from scratch.")
    ap.add_argument("--size", action="append", choices=sorted(SIZES), help="size(s) to rebuild (default: all)")
    ap.add_argument("--from-cache", action="store_true", help="ship cached builds instead of retraining")
    ap.add_argument("--keep-base", action="store_true",
                    help="retrain only the fine-tunes (distilled and controls), from the shipped base where it matches")
    args = ap.parse_args()
    for s in args.size or sorted(SIZES):
        man = json.loads((ship(s, rebuild=not args.from_cache, keep_base=args.keep_base) / "manifest.json").read_text())
        print(s, json.dumps(man["train_seconds"]))
