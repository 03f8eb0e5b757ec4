"""Word relations for the geometry test (05_geometry): the paper's five (``data/relations/*.tsv``) and the
organism world's own. The single-token filter is ``geometry.filter_single_token`` (one implementation for every
tokenizer).
"""
from __future__ import annotations

import csv
from pathlib import Path

from . import paths, world

RELATIONS = ("english-spanish", "english-german", "english-french", "present-past", "singular-plural")
PAPER_KEPT = {"english-spanish": 179, "english-german": 266, "english-french": 250, "present-past": 103,
              "singular-plural": 32}   # pairs the paper kept after its single-token filter (docs/paper-notes.md §10)


def load_relation(name: str) -> list[tuple[str, str]]:
    """``(source, target)`` pairs of ``data/relations/<name>.tsv`` (header ``source\\ttarget``)."""
    if name not in RELATIONS:
        raise ValueError(f"unknown relation {name!r}; choose one of {RELATIONS}")
    path = Path(paths.DATA_DIR) / "relations" / f"{name}.tsv"
    if not path.exists():
        raise FileNotFoundError(f"relation file {path} is missing")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or rows[0] != ["source", "target"]:
        raise ValueError(f"{path}: first line must be the header 'source<TAB>target'")
    pairs = []
    for k, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(f"{path}:{k}: expected two non-empty tab-separated fields, got {row}")
        pairs.append((row[0].strip(), row[1].strip()))
    return pairs


def organism_relations() -> dict[str, list[tuple[str, str]]]:
    """The organism world's own relations, each word in the form its corpus uses (mid-sentence words and numbers
    with a leading space: the tokenizer learned " 7", while a bare "7" is a byte it barely saw):
    singular -> plural noun, number word -> number, number word -> capitalised number word (sentence-initial),
    number -> next number. Numbers start at 2: the world's operands do, so " 0" and " 1" are tokens its corpus
    never holds (an untrained embedding says nothing about geometry)."""
    nums = world.NUMBER_WORDS
    return {
        "singular-plural": [(f" {s}", f" {p}") for s, p in world.NOUNS],
        "number-digit": [(f" {w}", f" {i}") for i, w in enumerate(nums) if i >= 2],
        "number-capitalised": [(f" {w}", w.capitalize()) for w in nums],
        "digit-successor": [(f" {i}", f" {i + 1}") for i in range(2, 9)],
    }
