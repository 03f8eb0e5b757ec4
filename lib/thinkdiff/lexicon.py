"""The reasoning lexicon and a tokenizer-aware matcher over token-id sequences.

The lexicon merges the published lists (docs/prior-art.md §3) into the paper's four categories. Each entry is
matched with lower-case and capitalised forms, with and without a leading space, as a *token sequence*
(so "let me check" is three tokens under Qwen2), and only at word boundaries checked on the decoded
tokens ("but" inside "butter" does not match). An entry written with a capital first letter ("Another")
matches that case only; an entry starting with a non-letter ("'s correct") gets no case/space variants.

Known limit: a word glued to a preceding punctuation mark inside one token (Qwen2 pre-tokenizes "(Wait"
as one piece) is not matched; this costs recall, never precision.

Category ids follow docs/design.md: 0 none, 1 self_reflection, 2 deductive, 3 alternative, 4 contrastive.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CATEGORIES = ("self_reflection", "deductive", "alternative", "contrastive")

# category -> tier -> entries. Sources in docs/prior-art.md §3 (G Galichin, R Rethinking, S SEAL, P paper, Q cues).
LEXICON: dict[str, dict[str, tuple[str, ...]]] = {
    "self_reflection": {
        "core": ("wait", "hmm", "let me check", "let me verify", "let me double-check", "double-check",
                 "verify", "hold on", "think again", "let me think again", "let's think again", "make sure",
                 "let me make sure", "let's make sure", "to make sure"),
        "extended": ("let me think", "let me confirm", "let's confirm", "let's check", "let's verify",
                     "let me recall", "let's recall", "re-examine", "cross-verify", "going back", "looking back",
                     "to be sure", "to be thorough", "to be absolutely sure", "'s correct", "'s incorrect",
                     "seems right", "does this make sense", "reconsider"),
    },
    "deductive": {
        "core": ("therefore", "thus", "hence", "it follows that", "given that", "since"),
        "extended": ("let me compute", "let me write", "step by step", "break it down", "start by", "start with",
                     "starting from", "starting with", "let's start", "let me start", "moving on", "similarly",
                     "so now", "finally", "lastly"),
        "low_precision": ("so", "now", "then", "first", "next"),
    },
    "alternative": {
        "core": ("alternatively", "another approach", "another method", "another way", "another solution",
                 "another strategy", "another technique", "another idea", "another thought", "different approach",
                 "different method", "different way", "think differently", "let me think differently",
                 "let's think differently", "what if", "another possibility"),
        "extended": ("maybe it's better", "maybe it's easier", "perhaps it's better", "perhaps it's easier",
                     "Another"),
        "ambiguous": ("maybe", "perhaps"),
    },
    "contrastive": {
        # Only "however" and "but" have published backing (G, P); everything in "ours" must be validated
        # against planted labels (label.lexicon_validation) before it is trusted.
        "core": ("however", "but"),
        "ours": ("on the other hand", "instead", "whereas", "in contrast", "by contrast", "on the contrary",
                 "conversely", "although", "nevertheless", "nonetheless", "rather than", "unlike", "compared to"),
        "low_precision": ("yet", "while", "though"),
    },
}
DEFAULT_TIERS = ("core", "ours")

# The paper's single-token markers (docs/paper-notes.md §6), matched with a leading space.
PAPER_MARKERS: dict[str, tuple[str, ...]] = {
    "self_reflection": (" Wait",), "deductive": (" Therefore", " Thus"),
    "alternative": (" Alternatively",), "contrastive": (" However", " But"),
}


def _word_char(c: str) -> bool:
    return c.isalnum()


def variants(entry: str) -> list[str]:
    """Surface forms of one entry: {lower, Capitalised} x {no space, leading space}; see module doc."""
    if not entry or entry != entry.strip():
        raise ValueError(f"lexicon entry {entry!r} must be non-empty without surrounding spaces")
    if not entry[0].isalpha():
        return [entry]
    forms = [entry] if entry[0].isupper() else [entry, entry[0].upper() + entry[1:]]
    return forms + [" " + f for f in forms]


@dataclass(frozen=True)
class Entry:
    category: str
    tier: str
    text: str          # the entry as written in LEXICON; also its ReasonScore group name
    token_ids: tuple   # tuple of tuple[int]: one id sequence per variant


@dataclass
class Matches:
    """All matches in one flat token array. Arrays are aligned, one row per match."""
    start: np.ndarray   # [n] first token index
    length: np.ndarray  # [n] number of tokens
    entry: np.ndarray   # [n] index into Lexicon.entries


class Lexicon:
    """Tokenizer-aware matcher for the reasoning lexicon.

    ``tiers`` picks which tiers of each category are used (missing tiers are skipped);
    ``lexicon`` overrides the word lists (same nesting as ``LEXICON``).
    """

    def __init__(self, tokenizer, tiers=DEFAULT_TIERS, lexicon=None, categories=CATEGORIES):
        lexicon = LEXICON if lexicon is None else lexicon
        unknown = set(lexicon) - set(categories)
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}; expected a subset of {categories}")
        self.tokenizer = tokenizer
        self.categories = tuple(categories)
        self.tiers = tuple(tiers)
        self._text_cache: dict[int, str] = {}
        entries = []
        for cat in self.categories:
            for tier in self.tiers:
                for text in lexicon.get(cat, {}).get(tier, ()):
                    seqs = []
                    for form in variants(text):
                        ids = tuple(tokenizer.encode(form, add_special_tokens=False))
                        if ids and ids not in seqs:
                            seqs.append(ids)
                    entries.append(Entry(cat, tier, text, tuple(seqs)))
        if not entries:
            raise ValueError(f"no lexicon entries for tiers {self.tiers}")
        self.entries: list[Entry] = entries

    # -- token texts, for word-boundary checks --------------------------------------------------------
    def _texts(self, ids: np.ndarray) -> list[str]:
        missing = [int(i) for i in np.unique(ids) if int(i) not in self._text_cache]
        if missing:
            for i, t in zip(missing, self.tokenizer.batch_decode([[i] for i in missing])):
                self._text_cache[i] = t
        return [self._text_cache[int(i)] for i in ids]

    def _starts_word(self, ids: np.ndarray) -> np.ndarray:
        return np.array([bool(t) and _word_char(t[0]) for t in self._texts(ids)], dtype=bool)

    def _ends_word(self, ids: np.ndarray) -> np.ndarray:
        return np.array([bool(t) and _word_char(t[-1]) for t in self._texts(ids)], dtype=bool)

    # -- matching ----------------------------------------------------------------------------------------
    def match(self, ids, breaks=None) -> Matches:
        """Find every lexicon match in the flat token array ``ids`` [T].

        ``breaks`` [T] bool marks tokens that start a new document or contiguous run; no match spans one.
        A match needs a word boundary on both sides (checked on the decoded neighbouring tokens).
        """
        ids = np.asarray(ids, dtype=np.int64).ravel()
        T = len(ids)
        breaks = np.zeros(T, dtype=bool) if breaks is None else np.asarray(breaks, dtype=bool).ravel()
        if len(breaks) != T:
            raise ValueError(f"breaks has {len(breaks)} entries for {T} tokens")
        if T:
            breaks = breaks.copy()
            breaks[0] = True
        starts, lengths, which = [], [], []
        for e_idx, entry in enumerate(self.entries):
            for seq in entry.token_ids:
                n = len(seq)
                if n > T:
                    continue
                cand = np.nonzero(ids[: T - n + 1] == seq[0])[0]
                for k in range(1, n):
                    cand = cand[(ids[cand + k] == seq[k]) & ~breaks[cand + k]]
                if len(cand) == 0:
                    continue
                # Word boundary on the left: only when the entry itself begins with a word character.
                if _word_char(entry.text[0]):
                    first_text_word = self._starts_word(ids[cand])  # no leading space/punct in the token
                    has_prev = ~breaks[cand]
                    prev_word = np.zeros(len(cand), dtype=bool)
                    if has_prev.any():
                        prev_word[has_prev] = self._ends_word(ids[cand[has_prev] - 1])
                    cand = cand[~(first_text_word & prev_word)]
                if _word_char(entry.text[-1]) and len(cand):
                    last = cand + n - 1
                    last_word = self._ends_word(ids[last])
                    nxt = last + 1
                    has_next = nxt < T
                    has_next[has_next] &= ~breaks[nxt[has_next]]
                    next_word = np.zeros(len(cand), dtype=bool)
                    if has_next.any():
                        next_word[has_next] = self._starts_word(ids[nxt[has_next]])
                    cand = cand[~(last_word & next_word)]
                starts.append(cand)
                lengths.append(np.full(len(cand), n))
                which.append(np.full(len(cand), e_idx))
        cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, dtype=np.int64)  # noqa: E731
        return Matches(cat(starts), cat(lengths), cat(which))

    def entry_categories(self) -> np.ndarray:
        """[n_entries] category index (0-based into ``self.categories``) of each entry."""
        return np.array([self.categories.index(e.category) for e in self.entries], dtype=np.int64)

    def group_masks(self, ids, breaks=None, before: int = 0, after: int = 0) -> np.ndarray:
        """[T, n_entries] bool: token is covered by a match of entry j, widened by ``before``/``after``
        tokens (windows stop at ``breaks``). ``before=1, after=2`` is the ReasonScore window."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        T = len(ids)
        if before < 0 or after < 0:
            raise ValueError("window sizes must be >= 0")
        m = self.match(ids, breaks)
        brk = np.zeros(T, dtype=bool) if breaks is None else np.asarray(breaks, dtype=bool).copy()
        if T:
            brk[0] = True
        run = np.cumsum(brk) - 1
        run_lo = np.nonzero(brk)[0]
        run_hi = np.append(run_lo[1:], T) - 1
        lo = np.maximum(m.start - before, run_lo[run[m.start]]) if len(m.start) else m.start
        end = m.start + m.length - 1
        hi = np.minimum(end + after, run_hi[run[end]]) if len(end) else end
        diff = np.zeros((T + 1, len(self.entries)), dtype=np.int32)
        np.add.at(diff, (lo, m.entry), 1)
        np.add.at(diff, (hi + 1, m.entry), -1)
        return np.cumsum(diff[:T], axis=0) > 0

    def category_mask(self, ids, breaks=None, before: int = 0, after: int = 0) -> np.ndarray:
        """[T, n_categories] bool: token is inside a (window-widened) match of the category."""
        g = self.group_masks(ids, breaks, before, after)
        cats = self.entry_categories()
        return np.stack([g[:, cats == c].any(axis=1) for c in range(len(self.categories))], axis=1)

    def label_tokens(self, ids, breaks=None) -> np.ndarray:
        """[T] category id per token (1..4 as in design.md, 0 none); on overlaps the longer match wins."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        m = self.match(ids, breaks)
        out = np.zeros(len(ids), dtype=np.int64)
        cats = self.entry_categories()
        for i in np.argsort(m.length, kind="stable"):  # longer matches are written last, so they win
            out[m.start[i]: m.start[i] + m.length[i]] = cats[m.entry[i]] + 1
        return out


def marker_token_ids(tokenizer, markers=None) -> dict[str, list[int]]:
    """category -> token ids of its single-token markers (default: the paper's, ``PAPER_MARKERS``).

    Raises if a marker is not exactly one token under ``tokenizer`` (the paper's analyses need that).
    """
    markers = PAPER_MARKERS if markers is None else markers
    out = {}
    for cat, words in markers.items():
        ids = []
        for w in words:
            enc = tokenizer.encode(w, add_special_tokens=False)
            if len(enc) != 1:
                raise ValueError(f"marker {w!r} ({cat}) is {len(enc)} tokens under this tokenizer; markers must be single tokens")
            ids.append(enc[0])
        out[cat] = ids
    return out


def runs_from_meta(doc_id, pos) -> np.ndarray:
    """[T] bool ``breaks`` for a store's flat token order: a new document or a gap in positions."""
    doc_id, pos = np.asarray(doc_id), np.asarray(pos)
    brk = np.ones(len(doc_id), dtype=bool)
    brk[1:] = (doc_id[1:] != doc_id[:-1]) | (pos[1:] != pos[:-1] + 1)
    return brk
