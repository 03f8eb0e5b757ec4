"""The Activation Difference Lens (ADL; Minder et al. 2025, "Narrow finetuning leaves clearly readable traces in
activation differences", docs/prior-art.md §4): what a fine-tune changed, read from the mean activation difference.

    delta = mean over the first k tokens of n texts of  h_distilled - h_base       [d_model], raw units

taken at the hook layer (resid_pre of block L) on the same token ids. It is read three ways: through each model's
unembedding (the logit lens: the model's final norm, then its ``lm_head``), by its cosine with every crosscoder
latent's decoder difference ``W_dec[:, 1] - W_dec[:, 0]`` (raw units), and against random unit directions: is
delta closer to a chosen set of latents than a random direction is? Index 0 = base, 1 = distilled everywhere.
"""
from __future__ import annotations

import numpy as np
import torch

from .crosscoder import decoder_weights
from .hooks import find_module
from .stats import random_directions

FINAL_NORM_PATHS = ("model.norm", "model.final_layernorm", "transformer.ln_f", "gpt_neox.final_layer_norm")


def first_token_rows(doc_id, pos, first_tokens: int, n_texts: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows [n], offset [n]): the store rows holding each document's first ``first_tokens`` stored positions,
    for the first ``n_texts`` documents (by id) that have any; ``offset`` = position - the store's first stored
    position (0 .. first_tokens - 1). A store that dropped position 0 (an attention sink) starts at 1."""
    doc_id, pos = np.asarray(doc_id), np.asarray(pos)
    if first_tokens < 1 or n_texts < 1:
        raise ValueError(f"first_tokens = {first_tokens} and n_texts = {n_texts} must both be >= 1")
    if len(pos) == 0:
        raise ValueError("the store is empty: no first tokens to average")
    offset = pos - int(pos.min())
    cand = np.nonzero(offset < first_tokens)[0]
    docs = np.unique(doc_id[cand])[:n_texts]
    rows = cand[np.isin(doc_id[cand], docs)]
    return rows, offset[rows]


def mean_difference(acts, offset, first_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(delta [d], per_position [first_tokens, d], counts [first_tokens]) of ``acts`` [n, 2, d]: the mean of
    distilled - base over all n rows, and per position offset (a position with no row: NaN, count 0). float64."""
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 3 or acts.shape[1] != 2 or len(acts) == 0:
        raise ValueError(f"acts must be [n > 0, 2, d] (base, distilled), got {acts.shape}")
    diff = acts[:, 1] - acts[:, 0]
    offset = np.asarray(offset)
    counts = np.bincount(offset, minlength=first_tokens)[:first_tokens]
    per = np.full((first_tokens, acts.shape[-1]), np.nan)
    for j in np.nonzero(counts)[0]:
        per[j] = diff[offset == j].mean(0)
    return diff.mean(0), per, counts


def final_norm(model) -> torch.nn.Module:
    """The model's final norm (applied to the last hidden state before ``lm_head``)."""
    return find_module(model, FINAL_NORM_PATHS, what="final norm")[1]


@torch.no_grad()
def logit_lens(model, direction) -> np.ndarray:
    """[vocab] logits of ``direction`` [d] read as a last hidden state: the model's final norm, then its
    unembedding, as the model itself does at its output."""
    head = model.get_output_embeddings()
    p = next(head.parameters())
    h = torch.as_tensor(np.asarray(direction), dtype=p.dtype, device=p.device)[None, None]
    return head(final_norm(model)(h))[0, 0].float().cpu().numpy()


def top_tokens(logits, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(promoted [k], suppressed [k]) token ids: the largest logits first, and the smallest first."""
    order = np.argsort(-np.asarray(logits), kind="stable")
    return order[:k], order[::-1][:k]


def token_ranks(logits, ids) -> np.ndarray:
    """[len(ids)] rank of each token among the promoted ones (0 = the most promoted; ties share the best rank)."""
    logits = np.asarray(logits)
    return np.array([int((logits > logits[i]).sum()) for i in ids], dtype=np.int64)


def decoder_differences(crosscoder) -> np.ndarray:
    """[n_latents, d] ``W_dec[:, 1] - W_dec[:, 0]`` in raw units: what a latent adds to distilled minus base."""
    W = decoder_weights(crosscoder, "raw")
    if W.shape[1] != 2:
        raise ValueError(f"the decoder must have 2 models (base, distilled), got {tuple(W.shape)}")
    return (W[:, 1] - W[:, 0]).numpy()


def cosines(direction, vectors) -> np.ndarray:
    """[n] cosine of ``direction`` [d] with each row of ``vectors`` [n, d] (a zero row: NaN)."""
    v, V = np.asarray(direction, np.float64), np.asarray(vectors, np.float64)
    n = np.linalg.norm(V, axis=-1) * np.linalg.norm(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, V @ v / np.where(n > 0, n, 1.0), np.nan)


def closeness(direction, vectors, n_random: int, seed: int = 0) -> dict:
    """Is ``direction`` closer to ``vectors`` [m, d] (e.g. the distilled-only latents' decoder differences) than
    random unit directions are? The statistic is the mean |cosine| with the m vectors. Returns ``stat``,
    ``random`` [n_random] (the same statistic of each random direction), ``n_higher`` (random directions at or
    above ``stat``) and ``p`` = (1 + n_higher) / (1 + n_random), the one-sided permutation p."""
    V = np.asarray(vectors, np.float64)
    if V.ndim != 2 or len(V) == 0:
        raise ValueError(f"vectors must be [m > 0, d], got shape {V.shape}")
    V = V[np.linalg.norm(V, axis=1) > 0]
    if len(V) == 0:
        raise ValueError("every vector is zero: no direction to compare with")
    stat = float(np.abs(cosines(direction, V)).mean())
    U = V / np.linalg.norm(V, axis=1, keepdims=True)
    rand = np.abs(random_directions(V.shape[1], n_random, seed) @ U.T).mean(1)
    n_higher = int((rand >= stat).sum())
    return {"stat": stat, "random": rand, "n_higher": n_higher, "p": (1 + n_higher) / (1 + n_random)}


def plot_against_random(closeness: dict, xlabel: str, title: str, color: str = "tab:red"):
    """The histogram of the random directions' statistic (``closeness``: an ``adl.closeness`` result) with the
    ADL direction's own marked; ``xlabel`` names the statistic. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.hist(closeness["random"], bins=40, color="grey", label=f"{len(closeness['random'])} random unit directions")
    ax.axvline(closeness["stat"], color=color, lw=2, label=f"the mean difference (p = {closeness['p']:.3g})")
    ax.set_xlabel(xlabel); ax.set_ylabel("directions"); ax.set_title(title); ax.legend(fontsize=8)
    return fig


def word_token_ids(tokenizer, words) -> list[int]:
    """Token ids standing for ``words`` in a logit lens: each word's single-token forms (as written, and with a
    leading space); a word with none gives the first token of its form as written, the token a model emits first
    when it starts the word. Distinct, in order."""
    out = []
    for w in words:
        forms = [tokenizer.encode(f, add_special_tokens=False) for f in dict.fromkeys((w, " " + w.lstrip()))]
        single = [ids[0] for ids in forms if len(ids) == 1]
        for i in single or [ids[0] for ids in forms[:1] if ids]:
            if i not in out:
                out.append(i)
    return out
