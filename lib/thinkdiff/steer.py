"""Steered generation: add ``alpha * v`` to the residual stream at resid_pre of block ``layer``.

The mechanism is a plain torch forward hook on ``model.model.layers[layer - 1]`` (whose output is
resid_pre of block ``layer``; a plain tensor under transformers 5). It gives token-identical output to the
nnsight ``tracer.iter`` pattern (checked on a tiny Qwen2: docs/install.md, "nnsight 0.8.1 with transformers 5");
the hook is simpler to batch and lets us decide per sequence and per step which positions are steered.

Generation is our own short KV-cached loop (greedy or sampled) over left-padded batches. Each row
gets its own seeded ``torch.Generator``, so a prompt's sample does not depend on which batch it
lands in, and steered and unsteered runs of the same (prompt, seed) are paired.

Units. ``steering_vector`` returns ``v`` in RAW residual units (the crosscoder's ``W_dec`` is folded
to raw units), scaled so that ``alpha`` means the same across latents and models:

- ``"raw"``: ``v = W_dec[latent, m]`` (the paper's mode, coefficient 1 = the bare decoder row).
- ``"max_act"``: ``v = a_max * W_dec[latent, m]``, with ``a_max`` the latent's maximum (or quantile ``q``)
  activation on the store: alpha = 1 adds what the crosscoder reconstructs when the latent fires at its max.
- ``"resid_norm"``: ``v = mean||x_m|| * W_dec[latent, m] / ||W_dec[latent, m]||``: alpha = 1 adds a vector as
  long as the average residual of model ``m`` at the hook.

Position policies (``positions=``), decided from attention masks and prompt lengths, never raw indices:

- ``"all"``: every real (non-pad) position, prompt and generated (the paper's setting).
- ``"generated"``: only positions holding a generated token; the prompt is untouched, so the first new
  token is produced unsteered.
- ``"think"``: positions inside ``<think> ... </think>``, tracked per sequence over prompt and generated
  tokens: a position is steered if, after reading its token, a ``<think>`` is open. So the ``<think>``
  position is steered (it predicts the first thought) and the ``</think>`` position is not.
"""
from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .crosscoder import decoder_weights
from .hooks import decoder_layers, resid_hook
from .norms import DISTILLED_SPECIFIC
from .stats import bootstrap_mean_ci

POSITION_POLICIES = ("all", "generated", "think")
UNITS = ("raw", "max_act", "resid_norm")
# Single words per category from the lexicon (docs/prior-art.md §3; "so" is low-precision there): the default
# marker counter.
DEFAULT_MARKER_WORDS = {
    "self_reflection": ("wait", "hmm"),
    "deductive": ("therefore", "thus", "so", "hence"),
    "alternative": ("alternatively",),
    "contrastive": ("but", "however"),
}
# token regions of a generation: before any <think>, inside <think>...</think> (delimiters included), after
BEFORE, THINK, AFTER = 0, 1, 2


# ----------------------------------------------------------------------------- vectors

def _decoder(crosscoder) -> torch.Tensor:
    """[n_latents, n_models, d_model] float32 decoder in raw units (what is added to the model)."""
    return decoder_weights(crosscoder, "raw").float()


def latent_activation_scale(crosscoder, acts, latent: int, q: float = 1.0, batch_size: int = 4096) -> float:
    """The latent's max (``q=1``) or ``q``-quantile activation.

    ``acts``: either that latent's activations ``[n]`` or raw activations ``[n, n_models, d_model]``
    that are encoded here with ``crosscoder.encode`` (batched, no grad).
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile q must be in (0, 1], got {q}")
    acts = torch.as_tensor(np.asarray(acts) if not isinstance(acts, torch.Tensor) else acts)
    if acts.ndim == 3:
        W = _decoder(crosscoder)
        if acts.shape[1:] != W.shape[1:]:
            raise ValueError(f"activations {tuple(acts.shape)} do not match W_dec [_, n_models, d] {tuple(W.shape)}")
        with torch.no_grad():
            f = torch.cat([crosscoder.encode(acts[i:i + batch_size].float())[:, latent]
                           for i in range(0, len(acts), batch_size)])
    elif acts.ndim == 1:
        f = acts.float()
    else:
        raise ValueError(f"acts must be [n] latent activations or [n, n_models, d] raw activations, got {tuple(acts.shape)}")
    if f.numel() == 0:
        raise ValueError("acts is empty: cannot calibrate the steering strength")
    scale = float(torch.quantile(f.double(), q)) if q < 1.0 else float(f.max())
    if not scale > 0:
        raise ValueError(f"latent {latent} never fires on these activations (scale {scale}); pick another latent or unit")
    return scale


def steering_vector(crosscoder, latent: int, model_index: int, unit: str = "raw", *, max_act: float | None = None,
                    acts=None, q: float = 1.0, resid_norm: float | None = None, resid=None) -> torch.Tensor:
    """Latent ``latent``'s decoder direction for model ``model_index`` (0 base, 1 distilled), ``[d_model]`` raw units.

    Scaled per ``unit`` (module docstring) so the added vector is ``alpha * v``. ``"max_act"`` needs
    ``max_act`` (a scalar) or ``acts`` (see ``latent_activation_scale``, quantile ``q``); ``"resid_norm"``
    needs ``resid_norm`` (a scalar) or ``resid`` (raw activations of that model ``[n, d]`` or
    ``[n, n_models, d]``, averaged here).
    """
    W = _decoder(crosscoder)
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if not 0 <= latent < W.shape[0]:
        raise ValueError(f"latent {latent} out of range [0, {W.shape[0]})")
    if not 0 <= model_index < W.shape[1]:
        raise ValueError(f"model_index {model_index} out of range [0, {W.shape[1]}) (0 = base, 1 = distilled)")
    d = W[latent, model_index].clone()
    norm = float(d.norm())
    if norm == 0.0:
        raise ValueError(f"latent {latent} has a zero decoder row for model {model_index}: nothing to steer with")
    if unit == "raw":
        return d
    if unit == "max_act":
        if (max_act is None) == (acts is None):
            raise ValueError('unit="max_act" needs exactly one of max_act (scalar) or acts (array)')
        scale = float(max_act) if max_act is not None else latent_activation_scale(crosscoder, acts, latent, q)
        if not scale > 0:
            raise ValueError(f"max_act must be positive, got {scale}")
        return scale * d
    if (resid_norm is None) == (resid is None):
        raise ValueError('unit="resid_norm" needs exactly one of resid_norm (scalar) or resid (activations)')
    if resid is not None:
        r = torch.as_tensor(np.asarray(resid) if not isinstance(resid, torch.Tensor) else resid).float()
        if r.ndim == 3:
            r = r[:, model_index]
        if r.ndim != 2 or r.shape[-1] != W.shape[-1] or len(r) == 0:
            raise ValueError(f"resid must be [n, d] or [n, n_models, d] with d={W.shape[-1]}, got {tuple(r.shape)}")
        resid_norm = float(r.norm(dim=-1).mean())
    if not resid_norm > 0:
        raise ValueError(f"resid_norm must be positive, got {resid_norm}")
    return float(resid_norm) * d / norm


def random_direction(vector: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded random Gaussian direction with exactly the norm of ``vector`` (the control), ``[d]``."""
    v = torch.as_tensor(vector).float()
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randn(v.shape, generator=g, dtype=torch.float64)
    return (r / r.norm() * v.double().norm()).float()


def matched_control_latent(target: int, nrn, max_act, live, exclude=(), seed: int = 0, pool: int = 10,
                           band: float = 0.1) -> int:
    """A control for steering with latent ``target``: another live latent's decoder direction, on the data
    manifold as the target's is (at equal norm any decoder direction beats an isotropic Gaussian, which is off
    it). Candidates are live latents (``live`` [F] bool) not in ``exclude`` with relative norm within ``band``
    of the target's (``nrn`` [F]); the ``pool`` nearest in log max activation (``max_act`` [F], the scale the
    steering vector uses) are kept and one is drawn, seeded. Raises when no candidate exists."""
    nrn, max_act, live = np.asarray(nrn, float), np.asarray(max_act, float), np.asarray(live, bool)
    ok = live & (np.abs(nrn - nrn[target]) <= band) & (max_act > 0)
    ok[[int(target), *map(int, exclude)]] = False
    cand = np.nonzero(ok)[0]
    if not len(cand):
        raise ValueError(f"no live latent within {band} of latent {target}'s relative norm {nrn[target]:.2f} to "
                         "serve as its matched control")
    dist = np.abs(np.log(max_act[cand]) - np.log(max(max_act[target], 1e-12)))
    near = cand[np.argsort(dist, kind="stable")[:pool]]
    return int(np.random.default_rng(seed).choice(near))


def pick_latents(scores: pd.DataFrame, nrn, categories: Sequence[str] = ("self_reflection", "deductive"),
                 specific: float = DISTILLED_SPECIFIC, shared: tuple[float, float] = (0.45, 0.55),
                 shared_category: str = "self_reflection", strict: bool = True) -> pd.DataFrame:
    """Which latents to steer with, by a fixed rule (no peeking at steering results).

    scores: ``[F x categories]`` latent scores, higher = more category-like (e.g. ``label.ground_truth_auroc(...).auroc``
    or ReasonScores); nrn: ``[F]`` relative norms (1 = distilled-only). For each of ``categories``: the
    best-scoring latent with ``nrn >= specific`` (distilled-specific); plus the best ``shared_category`` latent
    with ``shared[0] <= nrn <= shared[1]`` (a shared counterpart). Returns one row per role:
    ``role, latent, category, score, relative_norm, found``.

    A role whose band holds no latent with a finite score raises (``strict``), or, with ``strict=False``, gets
    ``found = False``, ``latent = -1`` and the reason in ``missing``: a pair without distilled-specific latents
    leaves the paper's procedure nothing to steer with, and the claims that need it are not tested
    (``claims_without_latents``). The band is never widened to make room.
    """
    nrn = np.asarray(nrn, dtype=float)
    if len(nrn) != len(scores):
        raise ValueError(f"scores has {len(scores)} latents but nrn has {len(nrn)}")
    missing = [c for c in list(categories) + [shared_category] if c not in scores.columns]
    if missing:
        raise ValueError(f"scores lacks columns {missing}; it has {list(scores.columns)}")
    if not 0.0 <= specific <= 1.0 or not 0.0 <= shared[0] <= shared[1] <= 1.0:
        raise ValueError(f"bad relative-norm bands: specific={specific}, shared={shared}")

    def best(cat, mask, what):
        s = scores[cat].to_numpy(dtype=float)
        s = np.where(mask & np.isfinite(s), s, -np.inf)
        j = int(np.argmax(s))
        if not np.isfinite(s[j]):
            reason = f"no {what} latent with a finite {cat} score"
            if strict:
                raise ValueError(f"{reason}: widen the relative-norm band")
            return dict(latent=-1, category=cat, score=np.nan, relative_norm=np.nan, found=False, missing=reason)
        return dict(latent=j, category=cat, score=float(s[j]), relative_norm=float(nrn[j]), found=True, missing="")

    rows = [dict(role=cat, **best(cat, nrn >= specific, f"distilled-specific (nrn >= {specific:g})"))
            for cat in categories]
    rows.append(dict(role="shared", **best(shared_category, (nrn >= shared[0]) & (nrn <= shared[1]),
                                           f"shared ({shared[0]:g} <= nrn <= {shared[1]:g})")))
    return pd.DataFrame(rows)


# The paper's steering claims and the role each one steers with (claim 6: over-thinking, claim 7: incisive).
CLAIM_ROLES = {"6": "self_reflection", "7": "deductive"}


def claims_without_latents(chosen: pd.DataFrame) -> dict:
    """``{claim: {verdict: "not tested", evidence}}`` for each steering claim whose latent ``pick_latents``
    (``strict=False``) found no candidate for; ``{}`` when every claim has its latent."""
    out = {}
    for claim, role in CLAIM_ROLES.items():
        row = chosen[chosen["role"] == role]
        if row.empty:
            raise ValueError(f"chosen has no row for role {role!r} (claim {claim}); roles: {list(chosen['role'])}")
        if not bool(row["found"].iloc[0]):
            out[claim] = dict(verdict="not tested", evidence=f"nothing to steer with: {row['missing'].iloc[0]}")
    return out


# ----------------------------------------------------------------------------- positions

def special_ids(tokenizer) -> dict:
    """Ids of ``<think>`` / ``</think>`` (None when the tokenizer lacks them as single tokens) and the EOS."""
    out = {}
    for name, tok in (("open", "<think>"), ("close", "</think>")):
        ids = tokenizer.encode(tok, add_special_tokens=False)
        out[name] = ids[0] if len(ids) == 1 else None
    out["eos"] = tokenizer.eos_token_id
    out["pad"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return out


def think_states(ids: Sequence[int], open_id, close_id, start_open: bool = False) -> list[bool]:
    """For each token, whether a ``<think>`` is open after reading it (the "think" steering mask)."""
    state, out = start_open, []
    for t in ids:
        if t == open_id:
            state = True
        elif t == close_id:
            state = False
        out.append(state)
    return out


def token_regions(ids: Sequence[int], open_id, close_id, start: int = BEFORE) -> list[int]:
    """Region of each token: BEFORE any ``<think>``, THINK (delimiters included) or AFTER ``</think>``."""
    region, out = start, []
    for t in ids:
        if t == open_id:
            region = THINK
            out.append(THINK)
        elif t == close_id:
            out.append(THINK if region == THINK else region)
            region = AFTER
        else:
            out.append(region)
    return out


# ----------------------------------------------------------------------------- generation

@dataclass
class Generations:
    """Output of ``generate_steered``; every list is in prompt order.

    ``ids[i]``: generated tokens (EOS excluded); ``regions[i]``: BEFORE/THINK/AFTER per generated token;
    ``steered[i]`` / ``prompt_steered[i]``: whether the residual at each generated / prompt position was
    (or, for the last token, would be) steered; ``truncated[i]``: no EOS within ``max_new_tokens``.
    """
    prompt_ids: list[list[int]]
    ids: list[list[int]]
    texts: list[str]
    regions: list[list[int]]
    steered: list[list[bool]]
    prompt_steered: list[list[bool]]
    truncated: list[bool]
    seeds: list[int]
    seconds: float
    n_forward_tokens: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def n_new(self) -> int:
        return sum(len(x) for x in self.ids)

    @property
    def tokens_per_s(self) -> float:
        return self.n_new / self.seconds if self.seconds > 0 else float("nan")


def _make_cache(model):
    try:
        from transformers import DynamicCache
        return DynamicCache(config=model.config)
    except Exception:  # a non-HF stand-in model (tests) brings its own cache handling
        return None


def generate_steered(model, tokenizer, prompts, vector=None, alpha: float = 1.0, layer: int | None = None,
                     positions: str = "all", max_new_tokens: int = 128, do_sample: bool = False,
                     temperature: float = 1.0, seed: int | Sequence[int] = 0, batch_size: int = 16,
                     eos_ids: Sequence[int] | None = None, progress: bool = True) -> Generations:
    """Generate from ``prompts`` with ``alpha * vector`` added at resid_pre of block ``layer``.

    prompts: strings (tokenised without added specials) or lists of token ids. vector: ``[d_model]`` raw
    units, or None for the unsteered run. seed: one int (row i uses ``seed + i``) or one per prompt;
    it seeds sampling only (greedy ignores it). eos_ids: tokens that end a sequence (default the
    tokenizer's EOS; ``()`` never stops early, for benchmarks). Batches are left-padded with attention
    masks and position ids from the mask; prompts are length-sorted into batches, results unsorted.
    """
    n_layers = len(decoder_layers(model))
    layer = n_layers // 2 if layer is None else int(layer)
    if not 1 <= layer <= n_layers:
        raise ValueError(f"layer must be in [1, {n_layers}] (resid_pre of block L = output of layers[L-1]), got {layer}")
    if positions not in POSITION_POLICIES:
        raise ValueError(f"positions must be one of {POSITION_POLICIES}, got {positions!r}")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be >= 1")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings or of token-id lists, not one string")
    sp = special_ids(tokenizer)
    if positions == "think" and (sp["open"] is None or sp["close"] is None):
        raise ValueError('positions="think" needs <think> and </think> to be single tokens of this tokenizer')
    prompt_ids = [list(map(int, p)) if not isinstance(p, str) else tokenizer.encode(p, add_special_tokens=False)
                  for p in prompts]
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt must have at least one token")
    n = len(prompt_ids)
    seeds = [int(seed) + i for i in range(n)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} prompts")
    eos = set(int(e) for e in (([sp["eos"]] if sp["eos"] is not None else []) if eos_ids is None else eos_ids))
    pad = sp["pad"] if sp["pad"] is not None else 0
    p0 = next(model.parameters())
    dev, dtype = p0.device, p0.dtype
    add = None
    if vector is not None:
        vec = torch.as_tensor(vector).detach().float().flatten()
        d_model = getattr(model.config, "hidden_size", vec.numel())
        if vec.numel() != d_model:
            raise ValueError(f"vector has {vec.numel()} entries but the model's d_model is {d_model}")
        if not torch.isfinite(vec).all():
            raise ValueError("steering vector has non-finite entries")
        add = (float(alpha) * vec).to(dev, dtype)

    # the hook reads the current step's [B, T] steering mask from here; None = leave untouched
    state = {"mask": None}

    def steer_h(h):
        if add is None or state["mask"] is None:
            return None
        return h + state["mask"].unsqueeze(-1).to(h.dtype) * add

    order = sorted(range(n), key=lambda i: len(prompt_ids[i]))
    res_ids: list = [None] * n
    res_trunc: list = [None] * n
    res_steer: list = [None] * n
    res_psteer: list = [None] * n
    n_fwd = 0
    t0 = time.perf_counter()
    with resid_hook(model, layer, steer_h):
        batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        for rows in tqdm(batches, desc=f"generate ({positions}, alpha={alpha:g})", disable=not progress or len(batches) < 2):
            out = _generate_batch(model, [prompt_ids[i] for i in rows], [seeds[i] for i in rows], state, positions,
                                  sp, eos, pad, max_new_tokens, do_sample, temperature, dev)
            for k, i in enumerate(rows):
                res_ids[i], res_trunc[i], res_steer[i], res_psteer[i] = (x[k] for x in out[:4])
            n_fwd += out[4]
    seconds = time.perf_counter() - t0
    texts = [tokenizer.decode(x, skip_special_tokens=False) for x in res_ids]
    regions = []
    for p, g in zip(prompt_ids, res_ids):
        start = token_regions(p, sp["open"], sp["close"])[-1] if sp["open"] is not None else BEFORE
        regions.append(token_regions(g, sp["open"], sp["close"], start=start) if sp["open"] is not None else [BEFORE] * len(g))
    return Generations(prompt_ids, res_ids, texts, regions, res_steer, res_psteer, res_trunc, seeds, seconds, n_fwd,
                       meta=dict(alpha=float(alpha), layer=layer, positions=positions, steered=vector is not None,
                                 do_sample=do_sample, temperature=temperature, max_new_tokens=max_new_tokens))


def _policy_mask(ids: list[int], n_prompt: int, positions: str, sp: dict, start_open: bool = False) -> list[bool]:
    """Steering mask for ``ids`` (a sequence's real tokens, prompt first) under ``positions``."""
    if positions == "all":
        return [True] * len(ids)
    if positions == "generated":
        return [i >= n_prompt for i in range(len(ids))]
    return think_states(ids, sp["open"], sp["close"], start_open)


# Finished rows leave a generating batch (their KV-cache rows dropped): same tokens, fewer forwards.
DROP_FINISHED_ROWS = True


@torch.no_grad()
def _generate_batch(model, prompts, seeds, state, positions, sp, eos, pad, max_new, do_sample, temperature, dev):
    """One left-padded batch through the KV-cached loop. Rows that finish leave the batch (their cache rows are
    dropped once at least an eighth of the batch is finished), so a batch costs about the sum of its rows'
    lengths rather than its size times the longest. Each row samples from its own generator, so what a row
    generates depends neither on its batch nor on when the others finish."""
    B = len(prompts)
    lens = [len(p) for p in prompts]
    T = max(lens)
    ids = torch.full((B, T), pad, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    pmask = torch.zeros((B, T), dtype=torch.bool)
    psteer = []
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = torch.tensor(p)
        attn[b, T - len(p):] = 1
        m = _policy_mask(p, len(p), positions, sp)
        pmask[b, T - len(p):] = torch.tensor(m)
        psteer.append(m)
    think_open = [think_states(p, sp["open"], sp["close"])[-1] if positions == "think" else False for p in prompts]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    ids, attn = ids.to(dev), attn.to(dev)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)  # positions from the mask: left padding shifts nothing
    cache = _make_cache(model)
    can_drop = DROP_FINISHED_ROWS and cache is not None and hasattr(cache, "batch_select_indices")
    state["mask"] = pmask.to(dev)
    out_tok = [[] for _ in range(B)]
    steer = [[] for _ in range(B)]
    done = [False] * B
    rows = list(range(B))          # the original row of each row still in the batch
    n_fwd = B * T
    inp, step_pos = ids, pos
    for step in range(max_new):
        out = model(input_ids=inp, attention_mask=attn, position_ids=step_pos, cache=cache, use_cache=True,
                    logits_to_keep=1)
        logits = out.logits[:, -1].float()
        if do_sample:
            probs = torch.softmax(logits / temperature, -1).cpu()
            nxt = [int(torch.multinomial(probs[k], 1, generator=gens[b])) for k, b in enumerate(rows)]
        else:
            nxt = logits.argmax(-1).tolist()
        new_mask = []
        for k, b in enumerate(rows):
            if done[b]:
                nxt[k] = pad
                new_mask.append(False)
                continue
            t = nxt[k]
            if t in eos:
                done[b] = True
                new_mask.append(False)
                continue
            out_tok[b].append(t)
            if positions == "think":
                think_open[b] = think_states([t], sp["open"], sp["close"], think_open[b])[0]
                m = think_open[b]
            else:
                m = positions in ("all", "generated")
            steer[b].append(m)
            new_mask.append(m)
        if all(done) or step == max_new - 1:
            break
        inp = torch.tensor(nxt, device=dev).unsqueeze(1)
        # finished rows feed pads, masked out, until they are dropped; they no longer affect anything we record
        attn = torch.cat([attn, torch.tensor([[0 if done[b] else 1] for b in rows], device=dev, dtype=attn.dtype)], 1)
        step_pos = step_pos[:, -1:] + 1
        step_mask = torch.tensor(new_mask, device=dev).unsqueeze(1)
        n_done = sum(done[b] for b in rows)
        if can_drop and n_done and n_done * 8 >= len(rows):
            keep = [k for k, b in enumerate(rows) if not done[b]]
            index = torch.tensor(keep, device=dev)
            cache.batch_select_indices(index)
            inp, attn, step_pos, step_mask = inp[index], attn[index], step_pos[index], step_mask[index]
            rows = [rows[k] for k in keep]
        state["mask"] = step_mask
        n_fwd += len(rows)
    state["mask"] = None
    truncated = [not d for d in done]
    return out_tok, truncated, steer, psteer, n_fwd


def hook_overhead(model, tokenizer, prompts, vector, layer: int | None = None, n_tokens: int = 32,
                  repeats: int = 3, batch_size: int = 64) -> dict:
    """Generated tokens per second without and with the steering hook, same work both ways.

    EOS is ignored (``eos_ids=()``), so every row generates exactly ``n_tokens`` in both runs, and the
    steered run adds ``0 * vector`` (the hook and its masking run, the output is unchanged). Runs are
    interleaved ``repeats`` times and the median kept. Rates are per second of this process's CPU time
    (``time.process_time``), which other jobs on a shared machine barely disturb; wall-clock rates are
    returned too. Returns ``{"unsteered_tok_s", "steered_tok_s", "overhead", "unsteered_wall_tok_s",
    "steered_wall_tok_s"}`` with overhead = 1 - steered / unsteered (CPU-time rates).
    """
    if repeats < 1 or n_tokens < 1:
        raise ValueError("repeats and n_tokens must be >= 1")
    cpu = {"unsteered": [], "steered": []}
    wall = {"unsteered": [], "steered": []}
    for r in range(repeats):
        runs = (("unsteered", None), ("steered", vector))
        for name, vec in (runs if r % 2 == 0 else runs[::-1]):  # ABBA order: drifts in load cancel
            c0 = time.process_time()
            g = generate_steered(model, tokenizer, prompts, vec, 0.0, layer, "all", n_tokens, batch_size=batch_size,
                                 eos_ids=(), progress=False)
            cpu[name].append(g.n_new / max(time.process_time() - c0, 1e-9))
            wall[name].append(g.tokens_per_s)
    u, s = float(np.median(cpu["unsteered"])), float(np.median(cpu["steered"]))
    return dict(unsteered_tok_s=u, steered_tok_s=s, overhead=1.0 - s / u,
                unsteered_wall_tok_s=float(np.median(wall["unsteered"])), steered_wall_tok_s=float(np.median(wall["steered"])))


# ----------------------------------------------------------------------------- per-generation metrics

def regex_marker_counter(tokenizer, words: dict | None = None) -> Callable[[Sequence[int]], dict]:
    """Default ``count_markers``: whole-word, case-insensitive counts of each category's core words.

    Returns ``f(token_ids) -> {category: count}`` (decodes without special tokens; "but" inside
    "butter" does not match). The lexicon module's counter can replace it.
    """
    words = DEFAULT_MARKER_WORDS if words is None else words
    pats = {cat: re.compile(r"\b(?:" + "|".join(re.escape(w) for w in ws) + r")\b", re.IGNORECASE)
            for cat, ws in words.items()}

    def count(ids):
        text = tokenizer.decode(list(ids), skip_special_tokens=True)
        return {cat: len(p.findall(text)) for cat, p in pats.items()}
    return count


def repeated_ngram_share(ids: Sequence[int], n: int = 4) -> float:
    """Share of the sequence's n-grams that repeat an earlier one: 0 = no repetition, -> 1 = a loop."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def generation_metrics(gens: Generations, problems=None, score=None, count_markers=None, tokenizer=None,
                       include_text: bool = True) -> pd.DataFrame:
    """One row per generation: lengths by region, marker counts and rates per 1,000 generated tokens,
    truncation, repeated-4-gram share, and whatever ``score(text, problem)`` returns (``correct``,
    ``well_formed``, ...; ``text`` is the completion only, special tokens kept)."""
    if count_markers is None:
        if tokenizer is None:
            raise ValueError("pass count_markers or a tokenizer for the default regex marker counter")
        count_markers = regex_marker_counter(tokenizer)
    if score is not None and (problems is None or len(problems) != len(gens.ids)):
        raise ValueError(f"score needs one problem per prompt ({len(gens.ids)}), got "
                         f"{None if problems is None else len(problems)}")
    rows = []
    for i, (ids, reg) in enumerate(zip(gens.ids, gens.regions)):
        n_tok = len(ids)
        counts = count_markers(ids)
        row = dict(prompt_idx=i, seed=gens.seeds[i], n_tokens=n_tok,
                   n_before=sum(r == BEFORE for r in reg), n_think=sum(r == THINK for r in reg),
                   n_after=sum(r == AFTER for r in reg), truncated=bool(gens.truncated[i]),
                   rep4=repeated_ngram_share(ids, 4))
        for cat, c in counts.items():
            row[f"markers_{cat}"] = int(c)
            row[f"rate_{cat}"] = 1000.0 * c / n_tok if n_tok else 0.0  # an empty output has no markers
        if score is not None:
            s = dict(score(gens.texts[i], problems[i]))
            if "correct" not in s:
                raise ValueError("score(text, problem) must return a dict with at least 'correct'")
            row.update({k: (float(v) if isinstance(v, (bool, np.bool_)) else v) for k, v in s.items()})
        if include_text:
            row["text"] = gens.texts[i]
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- sweep and summary

def steering_sweep(model, tokenizer, prompts, directions: dict, alphas: Sequence[float] | dict, layer: int | None = None,
                   positions: str = "all", problems=None, score=None, count_markers=None, max_new_tokens: int = 256,
                   do_sample: bool = False, temperature: float = 1.0, seeds: Sequence[int] = (0,),
                   batch_size: int = 16, include_text: bool = True) -> pd.DataFrame:
    """Generate unsteered and, for every direction x alpha, steered; one row per generation.

    directions: ``{name: vector [d_model] raw units}`` (e.g. self-reflection latent, deductive latent,
    a shared latent, and ``random_direction`` of equal norm as control). alphas: strengths in the
    directions' own units, both signs (0 is skipped: it is the unsteered run, exactly); one list for
    every direction, or ``{name: list}`` for a grid per direction. seeds: one
    replicate per entry, prompt i of replicate s sampled with seed ``s * 1_000_003 + i``; greedy
    decoding takes a single replicate. The unsteered run (condition ``"unsteered"``, alpha 0) uses the
    same prompts and seeds, so ``summarize_sweep`` can pair every steered generation with it.
    """
    if not directions:
        raise ValueError("directions is empty: give at least one {name: vector}")
    if "unsteered" in directions:
        raise ValueError('"unsteered" is reserved for the baseline condition')
    grids = alphas if isinstance(alphas, dict) else {name: alphas for name in directions}
    if set(grids) != set(directions):
        raise ValueError(f"alphas per direction must name exactly the directions {sorted(directions)}, got {sorted(grids)}")
    grids = {name: [float(a) for a in grid if float(a) != 0.0] for name, grid in grids.items()}
    if not all(grids.values()):
        raise ValueError(f"every direction needs a non-zero strength; got {grids}")
    if not do_sample and len(seeds) != 1:
        raise ValueError("greedy decoding is deterministic: pass a single seed (or do_sample=True)")
    d_model = model.config.hidden_size
    for name, v in directions.items():
        if torch.as_tensor(v).numel() != d_model:
            raise ValueError(f"direction {name!r} has {torch.as_tensor(v).numel()} entries, model d_model is {d_model}")
    if score is not None and (problems is None or len(problems) != len(prompts)):
        raise ValueError("score needs problems aligned with prompts")
    count_markers = count_markers or regex_marker_counter(tokenizer)
    conds = [("unsteered", None, 0.0)] + [(k, v, a) for k, v in directions.items() for a in grids[k]]
    frames = []
    for name, vec, alpha in tqdm(conds, desc="steering sweep"):
        for rep in seeds:
            row_seeds = [int(rep) * 1_000_003 + i for i in range(len(prompts))]
            g = generate_steered(model, tokenizer, prompts, vec, alpha, layer, positions, max_new_tokens, do_sample,
                                 temperature, row_seeds, batch_size, progress=False)
            df = generation_metrics(g, problems, score, count_markers, include_text=include_text)
            vnorm = float(torch.as_tensor(vec).float().norm()) if vec is not None else 0.0
            df.insert(0, "replicate", int(rep))
            df.insert(0, "alpha", alpha)
            df.insert(0, "condition", name)
            df["added_norm"] = abs(alpha) * vnorm
            df["positions"] = positions
            df["tokens_per_s"] = g.tokens_per_s
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


DEFAULT_METRICS = ("n_tokens", "n_think", "n_after", "rate_self_reflection", "rate_deductive", "rate_alternative",
                   "rate_contrastive", "correct", "well_formed", "truncated", "rep4")


def summarize_sweep(df: pd.DataFrame, metrics: Sequence[str] | None = None, n_boot: int = 2000, ci: float = 0.95,
                    seed: int = 0, baseline: str = "unsteered") -> pd.DataFrame:
    """Means with bootstrap CIs, and paired differences against the unsteered run.

    One row per (condition, alpha, metric): ``mean, mean_lo, mean_hi`` (bootstrap over generations)
    and ``diff, diff_lo, diff_hi`` = steered minus unsteered on the same (prompt, replicate), bootstrap
    over those pairs; ``excludes_zero`` says whether the difference CI excludes 0; ``p`` the two-sided
    Wilcoxon signed-rank p of the paired differences (1 when they are all zero), and ``p_bh`` that p adjusted
    by Benjamini-Hochberg over the ``n_comparisons`` steered conditions x strengths of the same metric.
    """
    from scipy.stats import false_discovery_control, wilcoxon

    if baseline not in set(df["condition"]):
        raise ValueError(f"no {baseline!r} rows: the sweep needs its unsteered run to pair against")
    metrics = [m for m in (metrics or DEFAULT_METRICS) if m in df.columns and df[m].notna().any()]
    if not metrics:
        raise ValueError("none of the requested metrics is in the sweep table")
    key = ["prompt_idx", "replicate"]
    base = df[df["condition"] == baseline].set_index(key)
    rows = []
    for (cond, alpha), g in df.groupby(["condition", "alpha"], sort=False):
        g = g.set_index(key)
        common = g.index.intersection(base.index)
        for m in metrics:
            x = g.loc[common, m].astype(float).to_numpy()
            d = x - base.loc[common, m].astype(float).to_numpy()
            mean, mean_lo, mean_hi = bootstrap_mean_ci(x, n_boot, seed, ci)
            diff, diff_lo, diff_hi = bootstrap_mean_ci(d, n_boot, seed, ci)   # same seed: the same resamples
            p = 1.0 if cond == baseline or not np.any(d) else float(wilcoxon(d, zero_method="zsplit").pvalue)
            rows.append(dict(condition=cond, alpha=float(alpha), metric=m, n=len(common), mean=mean,
                             mean_lo=mean_lo, mean_hi=mean_hi, diff=diff, diff_lo=diff_lo, diff_hi=diff_hi, p=p))
    out = pd.DataFrame(rows)
    out["excludes_zero"] = (out["diff_lo"] > 0) | (out["diff_hi"] < 0)
    steered = out["condition"] != baseline
    out["p_bh"], out["n_comparisons"] = out["p"], 0
    for m, g in out[steered].groupby("metric"):
        out.loc[g.index, "p_bh"] = false_discovery_control(g["p"].to_numpy(), method="bh")
        out.loc[g.index, "n_comparisons"] = len(g)
    return out


# ----------------------------------------------------------------------------- displays

def plot_dose_response(summary: pd.DataFrame, metrics: Sequence[str] = ("n_tokens", "rate_self_reflection", "correct"),
                       conditions: Sequence[str] | None = None, title: str = "Steering dose-response"):
    """One panel per metric: steered minus unsteered (paired mean, 95% CI) against alpha, a line per condition."""
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if m in set(summary["metric"])]
    if not metrics:
        raise ValueError("none of the metrics is in the summary")
    conds = [c for c in (conditions or summary["condition"].unique()) if c != "unsteered"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for c in conds:
            s = summary[(summary["condition"] == c) & (summary["metric"] == m)].sort_values("alpha")
            if s.empty:
                continue
            xs = np.r_[0.0, s["alpha"].to_numpy()]
            ys = np.r_[0.0, s["diff"].to_numpy()]
            lo = np.r_[0.0, s["diff_lo"].to_numpy()]
            hi = np.r_[0.0, s["diff_hi"].to_numpy()]
            o = np.argsort(xs)
            ax.errorbar(xs[o], ys[o], yerr=[ys[o] - lo[o], hi[o] - ys[o]], marker="o", ms=3, capsize=2, label=c)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("alpha (steering strength)")
        ax.set_ylabel(f"Δ {m} vs unsteered")
        ax.set_title(m)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def side_by_side_html(df: pd.DataFrame, prompt_indices: Sequence[int], columns: Sequence[tuple[str, float]],
                      prompts: Sequence[str] | None = None, max_chars: int = 800, replicate: int | None = None) -> str:
    """An HTML table: one row per prompt, the unsteered text then each ``(condition, alpha)`` column.

    Render in a notebook with ``IPython.display.HTML(...)``. Texts are escaped and cut to ``max_chars``.
    """
    if "text" not in df.columns:
        raise ValueError("the sweep was run with include_text=False; no texts to show")
    replicate = int(df["replicate"].min()) if replicate is None else replicate
    cols = [("unsteered", 0.0)] + [(c, float(a)) for c, a in columns]
    sub = df[df["replicate"] == replicate]
    head = "".join(f"<th>{html.escape(c)} (α={a:g})</th>" for c, a in cols)
    body = []
    for i in prompt_indices:
        cells = [f"<td><pre style='white-space:pre-wrap'>{html.escape(prompts[i]) if prompts else i}</pre></td>"]
        for c, a in cols:
            r = sub[(sub["condition"] == c) & (np.isclose(sub["alpha"], a)) & (sub["prompt_idx"] == i)]
            if r.empty:
                raise ValueError(f"no generation for prompt {i}, condition {c!r}, alpha {a}")
            r = r.iloc[0]
            t = r["text"] if len(r["text"]) <= max_chars else r["text"][:max_chars] + " …"
            extra = f"{r['n_tokens']} tok" + (f", correct={bool(r['correct'])}" if "correct" in r else "")
            cells.append(f"<td><pre style='white-space:pre-wrap'>{html.escape(t)}</pre><i>{extra}</i></td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table style='font-size:11px'><tr><th>prompt</th>{head}</tr>" + "".join(body) + "</table>")
