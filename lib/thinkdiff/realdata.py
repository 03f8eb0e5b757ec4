"""Real data for the real pairs: the harvest corpus, math eval prompts with answer checking, word relations.

Harvest corpus (docs/paper-notes.md §2): OpenThoughts-114k rows become ``question + "\\n" + trace`` with the
begin/end-of-thought markers turned into ``<think>`` / ``</think>`` and the begin/end-of-solution markers
deleted; no chat template, no system prompt. They are mixed with a general-text corpus at a configurable
ratio, truncated to a configurable token length and shuffled deterministically (seeded buffer shuffle).
The formatting, mixing, shuffling and truncation are pure functions over row iterables, so they are tested
on in-memory rows; the ``stream_*`` loaders only add ``datasets.load_dataset(..., streaming=True)``.

Offline, every loader raises a ``RuntimeError`` naming the dataset and how to get it before touching the
network (the organism corpus stays the default elsewhere). Each loader also takes ``data_files=`` (local
json/jsonl/parquet files with the same columns), which works offline.
"""
from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path
from typing import Iterable, Iterator

from .hf import offline


OPENTHOUGHTS = "open-thoughts/OpenThoughts-114k"
# The paper used togethercomputer/RedPajama-Data-1T-Sample; that repo is a loading-script dataset, which
# datasets >= 4 no longer runs. FineWeb's 10BT sample is plain parquet and streams; any ("id", "config",
# "text column") triple can be passed instead.
GENERAL_CORPUS = ("HuggingFaceFW/fineweb", "sample-10BT", "text")
MATH500 = "HuggingFaceH4/MATH-500"
GSM8K = "openai/gsm8k"

# OpenThoughts-114k (Bespoke-Stratos format) markers and what the paper turned them into.
THOUGHT_MARKERS = {
    "<|begin_of_thought|>": "<think>",
    "<|end_of_thought|>": "</think>",
    "<|begin_of_solution|>": "",
    "<|end_of_solution|>": "",
}
KINDS = ("teacher", "base")


@dataclasses.dataclass
class RealDocument:
    """One harvest document. ``input_ids`` are truncated to the corpus length; no labels on real data."""
    text: str
    input_ids: list[int]
    kind: str              # "teacher" (OpenThoughts trace) or "base" (general text)
    source: str = ""


# ---------------------------------------------------------------------------------------------
# Offline guard and streaming loaders.
# ---------------------------------------------------------------------------------------------

def datasets_offline() -> bool:
    """True when datasets must not touch the network (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / hub constant)."""
    return offline(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def require_online(dataset_id: str) -> None:
    """Raise a clear ``RuntimeError`` at once if ``dataset_id`` cannot be streamed (offline mode)."""
    if datasets_offline():
        raise RuntimeError(
            f"dataset {dataset_id} cannot be streamed: the Hugging Face hub is offline here (HF_HUB_OFFLINE / "
            f"HF_DATASETS_OFFLINE is set). On a connected machine either unset the offline variables, or download "
            f"it with `huggingface-cli download {dataset_id} --repo-type dataset --local-dir <dir>` and pass the "
            f"downloaded files as data_files=... . Offline runs use a pair whose corpus ships with thinkdiff (the organism, SmolLM2).")


def _load(dataset_id: str, config: str | None, split: str, data_files, streaming: bool):
    from datasets import load_dataset

    if data_files is not None:
        files = [str(f) for f in ([data_files] if isinstance(data_files, (str, Path)) else data_files)]
        missing = [f for f in files if not Path(f).exists()]
        if missing:
            raise FileNotFoundError(f"data_files for {dataset_id} not found: {missing}")
        ext = Path(files[0]).suffix.lstrip(".")
        builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}.get(ext)
        if builder is None:
            raise ValueError(f"data_files must be .json/.jsonl/.parquet/.csv, got {files[0]}")
        return load_dataset(builder, data_files=files, split="train", streaming=streaming)
    require_online(dataset_id)
    return load_dataset(dataset_id, config, split=split, streaming=streaming)


def stream_openthoughts(split: str = "train", data_files=None) -> Iterator[dict]:
    """Rows of OpenThoughts-114k (streamed). Default config: ``system`` + ``conversations`` columns."""
    return iter(_load(OPENTHOUGHTS, None, split, data_files, streaming=True))


def stream_general(corpus=GENERAL_CORPUS, split: str = "train", data_files=None) -> Iterator[dict]:
    """Rows ``{"text": ...}`` of a general-text corpus (streamed); ``corpus`` = (id, config, text column)."""
    dataset_id, config, column = corpus
    for row in _load(dataset_id, config, split, data_files, streaming=True):
        yield {"text": row[column]}


# ---------------------------------------------------------------------------------------------
# Pure pieces: formatting, shuffling, mixing, truncation.
# ---------------------------------------------------------------------------------------------

def replace_markers(trace: str) -> str:
    """Thought markers -> ``<think>``/``</think>``; solution markers deleted (docs/paper-notes.md §2)."""
    for marker, new in THOUGHT_MARKERS.items():
        trace = trace.replace(marker, new)
    return trace


def format_openthoughts(row: dict) -> str:
    """One OpenThoughts row as the paper fed it: ``question + "\\n" + trace``.

    Accepts the default config (``conversations``: ``[{"from": "user", "value": q}, {"from": "assistant",
    "value": trace}]``) and the metadata config (``problem``, ``deepseek_reasoning``, ``deepseek_solution``;
    the trace is rebuilt as ``<think>reasoning</think> solution``).
    """
    if "conversations" in row:
        turns = row["conversations"]
        user = next((t["value"] for t in turns if t.get("from") in ("user", "human")), None)
        asst = next((t["value"] for t in turns if t.get("from") in ("assistant", "gpt")), None)
        if user is None or asst is None:
            raise ValueError("OpenThoughts row has no user and assistant turn in 'conversations'")
        return user + "\n" + replace_markers(asst)
    if "problem" in row and "deepseek_reasoning" in row:
        return row["problem"] + "\n" + "<think>" + row["deepseek_reasoning"] + "</think>" + row.get("deepseek_solution", "")
    raise ValueError(f"not an OpenThoughts row (columns {sorted(row)}); expected 'conversations' or "
                     "'problem' + 'deepseek_reasoning'")


def buffer_shuffle(items: Iterable, buffer_size: int, seed: int) -> Iterator:
    """Deterministic streaming shuffle: fill a buffer, emit a seeded-random slot, refill it."""
    if buffer_size < 1:
        raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
    rng, buf = random.Random(seed), []
    for x in items:
        if len(buf) < buffer_size:
            buf.append(x)
            continue
        i = rng.randrange(buffer_size)
        yield buf[i]
        buf[i] = x
    rng.shuffle(buf)
    yield from buf


def mix(teacher: Iterable, general: Iterable, teacher_fraction: float, seed: int) -> Iterator[tuple[str, object]]:
    """Interleave two streams: each item is teacher with probability ``teacher_fraction`` (seeded).

    Yields ``(kind, item)`` with kind ``"teacher"`` or ``"base"``; stops when the stream that is due runs dry.
    """
    if not 0.0 <= teacher_fraction <= 1.0:
        raise ValueError(f"teacher_fraction must be in [0, 1], got {teacher_fraction}")
    rng, its = random.Random(seed), {"teacher": iter(teacher), "base": iter(general)}
    while True:
        kind = "teacher" if rng.random() < teacher_fraction else "base"
        try:
            yield kind, next(its[kind])
        except StopIteration:
            return


def build_documents(teacher_rows: Iterable[dict], general_rows: Iterable[dict], tokenizer, n_docs: int,
                    teacher_fraction: float = 0.5, max_tokens: int = 2048, min_tokens: int = 1, seed: int = 49,
                    shuffle_buffer: int = 1000) -> list[RealDocument]:
    """The harvest corpus from row iterables (pure; the streams may be in-memory lists).

    Each stream is buffer-shuffled (``seed``), the two are mixed at ``teacher_fraction``, texts are encoded
    with ``add_special_tokens=False`` (the paper fed raw text; a BOS, if wanted, is the harvest's choice) and
    truncated to ``max_tokens``; documents shorter than ``min_tokens`` are skipped (the paper kept only
    >= 2048-token texts: pass ``min_tokens=max_tokens`` for that). Returns ``n_docs`` documents or fewer if
    the streams run out.
    """
    from tqdm.auto import tqdm

    if n_docs < 1 or max_tokens < 1 or not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"need n_docs >= 1 and 1 <= min_tokens <= max_tokens; got n_docs={n_docs}, "
                         f"min_tokens={min_tokens}, max_tokens={max_tokens}")
    teacher = buffer_shuffle((format_openthoughts(r) for r in teacher_rows), shuffle_buffer, seed)
    general = buffer_shuffle((r["text"] for r in general_rows), shuffle_buffer, seed + 1)
    docs: list[RealDocument] = []
    with tqdm(total=n_docs, desc="real corpus", leave=False) as bar:
        for kind, text in mix(teacher, general, teacher_fraction, seed + 2):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) < min_tokens:
                continue
            ids = ids[:max_tokens]
            # The text is cut to what the ids cover, so text and ids describe the same document.
            docs.append(RealDocument(text=tokenizer.decode(ids), input_ids=ids, kind=kind,
                                     source=OPENTHOUGHTS if kind == "teacher" else "general"))
            bar.update(1)
            if len(docs) == n_docs:
                break
    return docs


def harvest_corpus(tokenizer, n_docs: int, teacher_fraction: float = 0.5, max_tokens: int = 2048,
                   min_tokens: int = 1, seed: int = 49, corpus=GENERAL_CORPUS, openthoughts_files=None,
                   general_files=None, shuffle_buffer: int = 1000) -> list[RealDocument]:
    """``build_documents`` over the streamed OpenThoughts-114k and general corpus (or local ``*_files``)."""
    if teacher_fraction > 0 and openthoughts_files is None:
        require_online(OPENTHOUGHTS)
    if teacher_fraction < 1 and general_files is None:
        require_online(corpus[0])
    teacher = stream_openthoughts(data_files=openthoughts_files) if teacher_fraction > 0 else iter(())
    general = stream_general(corpus, data_files=general_files) if teacher_fraction < 1 else iter(())
    return build_documents(teacher, general, tokenizer, n_docs, teacher_fraction, max_tokens, min_tokens,
                           seed, shuffle_buffer)


# ---------------------------------------------------------------------------------------------
# Math evaluation prompts and answer checking.
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class MathProblem:
    problem: str
    answer: str            # gold answer as a LaTeX / plain string
    source: str
    id: str = ""

    def prompt(self, style: str = "raw") -> str:
        """``"raw"``: the problem and a newline, no template (the paper's steering prompts);
        ``"boxed"``: adds the Qwen2.5-Math instruction to reason step by step and box the answer."""
        if style == "raw":
            return self.problem + "\n"
        if style == "boxed":
            return self.problem + "\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
        raise ValueError(f"prompt style must be 'raw' or 'boxed', got {style!r}")


def math500_problem(row: dict) -> MathProblem:
    """A MATH-500 row (``problem``, ``answer``, ``unique_id``)."""
    return MathProblem(row["problem"], str(row["answer"]), MATH500, str(row.get("unique_id", "")))


_GSM_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


def gsm8k_problem(row: dict, index: int = 0) -> MathProblem:
    """A GSM8K row (``question``, ``answer`` ending in ``#### <number>``)."""
    m = _GSM_FINAL.search(row["answer"])
    if m is None:
        raise ValueError("GSM8K answer has no final '#### <answer>' line")
    return MathProblem(row["question"], m.group(1).replace(",", ""), GSM8K, f"gsm8k-{index}")


def math_eval_problems(dataset: str = MATH500, n: int = 100, seed: int = 0, data_files=None) -> list[MathProblem]:
    """``n`` problems from MATH-500 (split test) or GSM8K (config main, split test), seeded sample."""
    if dataset not in (MATH500, GSM8K):
        raise ValueError(f"dataset must be {MATH500!r} or {GSM8K!r}, got {dataset!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rows = list(_load(dataset, "main" if dataset == GSM8K else None, "test", data_files, streaming=False))
    probs = [math500_problem(r) if dataset == MATH500 else gsm8k_problem(r, i) for i, r in enumerate(rows)]
    random.Random(seed).shuffle(probs)
    return probs[:n]


def check_answer(generation: str, gold: str) -> bool:
    """True when ``generation`` states ``gold`` (math-verify ``parse`` + ``verify``; boxed or last expression)."""
    from math_verify import parse, verify

    gold_parsed = parse(gold if "$" in gold or "\\boxed" in gold else f"${gold}$")
    if not gold_parsed:
        raise ValueError(f"math-verify cannot parse the gold answer {gold!r}")
    return bool(verify(gold_parsed, parse(generation)))
