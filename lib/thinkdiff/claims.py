"""Verdicts on the paper's claims, each a fixed rule over measured numbers: latents (claims 1-4, 10) and
steering (claims 6 and 7).

A verdict is "supports", "contradicts" or "mixed", or "not tested" where the data cannot decide (too few
prompts); a smoke run reports "not tested" instead (``judged``, which ``recorded`` applies to every claim a
stage records).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .norms import BASE_SPECIFIC, DISTILLED_SPECIFIC, SHARED_BAND
from .stats import bootstrap_mean_ci, paired_proportion_diff_ci
from .train import PAPER

MIN_FREQUENCY = 1e-4        # a latent counts only if it fires on at least this share of store tokens
# The version of these rules; the report records it beside every verdict. 2: claims 2, 3, 5-10 as a reviewer
# asked (move precision, Fisher baseline, paired base contrast, both steering references, Newcombe intervals,
# size trend by parameters, claim 9's rule, claim 10 by threshold).
RULES_VERSION = 2


def judged(verdicts: dict, tested: bool, run_name: str) -> dict:
    """``verdicts`` (claim -> (verdict, evidence)) as they stand, or every one "not tested" with its evidence kept
    when the run is a smoke run (``tested`` False): a smoke run computes everything and judges nothing. The one
    place that decides it, for every notebook."""
    if tested:
        return dict(verdicts)
    return {k: ("not tested", f"smoke run ({run_name}): {e}") for k, (v, e) in verdicts.items()}


def rule_name(claim) -> str:
    """The rule that decides ``claim`` as a record names it (``thinkdiff.claims.claim9_verdict``); an error for a
    claim this module has no rule for."""
    name = f"claim{int(claim)}_verdict"
    if not callable(globals().get(name)):
        raise ValueError(f"claim {claim!r} has no rule in {__name__} (no function {name})")
    return f"{__name__}.{name}"


def recorded(verdicts: dict, tested: bool, run_name: str, evidence_prefix: str = "", rule_detail: str = "") -> dict:
    """The claims of a stage record (``report.record``): claim -> {"verdict", "evidence", "rule"} from
    ``verdicts`` (claim -> (verdict, evidence)) as ``judged`` leaves them (a smoke run: "not tested"), each
    evidence after ``evidence_prefix`` (e.g. the scheme it was measured on) and with the rule that decided it
    (followed by ``rule_detail``, e.g. the strength it was judged at)."""
    return {k: {"verdict": v, "evidence": f"{evidence_prefix}{e}", "rule": rule_name(k) + rule_detail}
            for k, (v, e) in judged(verdicts, tested, run_name).items()}


def finding_holds(verdict_: str) -> bool | None:
    """A claim's verdict as one finding for claim 10: True for "supports", None for "not tested" (nothing to
    measure), False otherwise ("mixed" and "contradicts" do not hold)."""
    if verdict_ not in ("supports", "contradicts", "mixed", "not tested"):
        raise ValueError(f"unknown verdict {verdict_!r}")
    return {"supports": True, "not tested": None}.get(verdict_, False)


def verdict(holds) -> str:
    """"supports" if every check holds, "contradicts" if none does, "mixed" otherwise. No check at all is an
    error: a rule with nothing to judge says "not tested" itself, never "supports"."""
    holds = list(holds)
    if not holds:
        raise ValueError("verdict() needs at least one check; a rule with nothing to judge reports 'not tested'")
    return "supports" if all(holds) else ("contradicts" if not any(holds) else "mixed")


def distilled_only_mask(nrn, frequency, hi: float = DISTILLED_SPECIFIC) -> np.ndarray:
    """[F] bool: the distilled-only latents as claim 1 counts them (firing on at least ``MIN_FREQUENCY`` of
    tokens, relative norm >= ``hi``)."""
    nrn, freq = np.asarray(nrn, float), np.asarray(frequency, float)
    return (freq >= MIN_FREQUENCY) & np.isfinite(nrn) & (nrn >= hi)


def exclusive_counts(nrn, frequency, lo: float = BASE_SPECIFIC, hi: float = DISTILLED_SPECIFIC,
                     genuine=None) -> dict:
    """Latents firing on at least ``MIN_FREQUENCY`` of tokens with relative norm >= ``hi`` / <= ``lo``.

    ``genuine`` [F] bool (optional): True where a latent survives latent scaling (``label.latent_scaling`` flag
    "genuine"; latents not checked are False). Then ``distilled_only_genuine`` counts the distilled-only latents
    that also survive it (latent scaling tests the distilled side only)."""
    nrn, freq = np.asarray(nrn, float), np.asarray(frequency, float)
    keep = (freq >= MIN_FREQUENCY) & np.isfinite(nrn)
    v = nrn[keep]
    out = {"live": int(len(v)), "distilled_only": int(distilled_only_mask(nrn, freq, hi).sum()), "base_only": int((v <= lo).sum()),
           "mean": float(v.mean()) if len(v) else float("nan"), "std": float(v.std()) if len(v) else float("nan")}
    if genuine is not None:
        genuine = np.asarray(genuine, bool)
        if genuine.shape != nrn.shape:
            raise ValueError(f"genuine must be one bool per latent [{len(nrn)}], got shape {genuine.shape}")
        out["distilled_only_genuine"] = int((keep & (nrn >= hi) & genuine).sum())
    return out


def claim1_verdict(nrn, frequency, null: list | None, lo: float = BASE_SPECIFIC, hi: float = DISTILLED_SPECIFIC,
                   genuine=None, pair: str = "this pair", imported: bool = False) -> tuple[str, str]:
    """Claim 1: exclusive latents exist, beyond what a pair without distillation gives.

    ``nrn``, ``frequency`` [F] of the real crosscoder; ``null``: ``exclusive_counts`` of null crosscoders (the
    same training on the base paired with its control fine-tune: the same recipe on base text, no distillation),
    one per seed. A side (distilled-only, base-only) counts as shown when the real count exceeds the null's
    largest count plus its seed-to-seed spread (max - min). With ``genuine`` (``exclusive_counts``), the
    distilled side counts only latents that survive latent scaling, on the real pair and on the null alike
    (the null's counts must then carry ``distilled_only_genuine``). supports: both sides; contradicts: neither;
    mixed otherwise; not tested when ``null`` is None: ``pair`` (its name) has no control model to train a null on,
    or the crosscoders are ``imported`` (trained elsewhere: no recipe to train the null's the same way)."""
    if null is None and imported:
        return "not tested", ("the crosscoders are imported (trained elsewhere), so no null crosscoders could be "
                              "trained the same way on the control pair")
    if null is None:
        return "not tested", (f"{pair} has no control model (the base fine-tuned the same way without "
                              "distillation), so no null could show what fine-tuning alone gives")
    if not null:
        raise ValueError("claim 1 needs at least one null crosscoder (the base paired with its control fine-tune)")
    real = exclusive_counts(nrn, frequency, lo, hi, genuine)
    sides = ("distilled_only_genuine" if genuine is not None else "distilled_only", "base_only")
    if genuine is not None and any("distilled_only_genuine" not in n for n in null):
        raise ValueError("claim 1 with latent scaling: the null's counts lack distilled_only_genuine; measure latent "
                         "scaling on the null crosscoders the same way")
    holds, parts = [], []
    for side in sides:
        vals = [n[side] for n in null]
        bar = max(vals) + (max(vals) - min(vals))
        holds.append(real[side] > bar)
        name = {"distilled_only_genuine": "distilled-only surviving latent scaling"}.get(side, side.replace("_", "-"))
        parts.append(f"{real[side]} {name} (null {vals}, bar {bar})")
    return verdict(holds), (f"{real['live']} live latents (frequency >= {MIN_FREQUENCY}): " + ", ".join(parts)
                            + f" at relative norm >= {hi} / <= {lo}; mean {real['mean']:.3f}, std {real['std']:.3f} "
                            f"(paper 1.5B/7B/14B means 0.504/0.492/0.540)")


def claim3_verdict(cat_latents: pd.DataFrame, nrn, frequency, categories=None, shared=SHARED_BAND,
                   top: float = 0.95, alpha: float = 0.05) -> tuple[str, str]:
    """Claim 3: per category, most marker-active latents are shared, more often than latents in general are.

    ``cat_latents``: ``label.category_latents`` rows (category, latent, relative_norm); ``nrn``, ``frequency`` [F]
    of the crosscoder; ``categories``: every category asked about (default: those in ``cat_latents``). Among live
    latents (frequency >= ``MIN_FREQUENCY``), a category holds when more than half of its marker latents sit in
    the ``shared`` band **and** that share beats the shared share of the other live latents (one-sided Fisher
    exact test at ``alpha``): with most of a dictionary shared, "mostly shared" alone says nothing about markers.
    A category with no live marker latent is not tested (named in the evidence); no tested category: "not
    tested". supports: every tested category holds; contradicts: none; mixed otherwise."""
    from scipy.stats import fisher_exact

    nrn, freq = np.asarray(nrn, float), np.asarray(frequency, float)
    live = (freq >= MIN_FREQUENCY) & np.isfinite(nrn)
    in_band = (nrn >= shared[0]) & (nrn <= shared[1])
    categories = list(dict.fromkeys(cat_latents["category"])) if categories is None else list(categories)
    holds, parts, untested = [], [], []
    for cat in categories:
        lat = np.unique(cat_latents.loc[cat_latents["category"] == cat, "latent"].to_numpy(int))
        lat = lat[live[lat]]
        if not len(lat):
            untested.append(cat)
            continue
        mine = np.zeros(len(nrn), bool)
        mine[lat] = True
        rest = live & ~mine
        k, n, k0, n0 = int(in_band[mine].sum()), len(lat), int(in_band[rest].sum()), int(rest.sum())
        p = float(fisher_exact([[k, n - k], [k0, n0 - k0]], alternative="greater").pvalue) if n0 else 1.0
        holds.append(k / n > 0.5 and p < alpha)
        parts.append(f"{cat}: {k / n:.0%} of {n} shared vs {k0 / max(n0, 1):.0%} of the other {n0} live latents "
                     f"(Fisher p = {p:.3g}), {int((nrn[lat] >= top).sum())} in [{top}, 1]")
    if untested:
        parts.append(f"not tested (no live marker latent): {', '.join(untested)}")
    if not holds:
        return "not tested", "; ".join(parts)
    return verdict(holds), "; ".join(parts)


def claim4_verdict(profile: pd.DataFrame, nrn, base_max: float = SHARED_BAND[0], min_purity: float = 0.8,
                   ratio=(0.5, 2.0)) -> tuple[str, str]:
    """Claim 4 on ``lexical_profile`` rows: are the base-side (relative norm <= ``base_max``) marker latents
    lexical, i.e. token purity >= ``min_purity`` and an unlabelled/labelled firing ratio within ``ratio``
    (they fire on the word whatever its role)? ``supports`` if all are, ``contradicts`` if none, else
    ``mixed``; ``not tested`` when no profiled latent is base-side, or when the corpus holds no ordinary
    (unlabelled) use of the marker words, so whether a latent fires on the word whatever its role is unmeasured."""
    nrn = np.asarray(nrn, float)
    p = profile.assign(relative_norm=nrn[profile["latent"]]).sort_values("relative_norm")
    n = f"(n = {profile.attrs.get('n_labelled', '?')} reasoning / {profile.attrs.get('n_unlabelled', '?')} ordinary uses)"
    base = p[p["relative_norm"] <= base_max]
    if base.empty:
        lo = f"; the most base-leaning has relative norm {p['relative_norm'].iloc[0]:.2f}" if len(p) else ""
        return "not tested", f"no marker latent is base-side (relative norm <= {base_max}) {n}{lo}"
    if profile.attrs.get("n_unlabelled") == 0 or base["label_ratio"].isna().all():
        return "not tested", (f"the corpus has no ordinary (unlabelled) use of the marker words {n}, so no firing "
                              f"ratio to test; {len(base)} base-side marker latent(s)")
    lex = (base["token_purity"] >= min_purity) & base["label_ratio"].between(*ratio)
    parts = [f"latent {int(r.latent)} (nrn {r.relative_norm:.2f}): purity {r.token_purity:.2f}, fires on "
             f"{r.fire_labelled:.0%} of reasoning / {r.fire_unlabelled:.0%} of ordinary uses" for r in base.head(3).itertuples()]
    return verdict(lex), f"{int(lex.sum())} of {len(base)} base-side marker latents are lexical {n}: " + "; ".join(parts)


def claim10_verdict(properties: dict) -> tuple[str, str]:
    """Claim 10: the findings survive the pitfall fixes, BatchTopK and latent scaling.

    ``properties``: ``{property: {scheme: holds}}``, each a substantive finding measured separately under every
    sparsity scheme (e.g. "exclusive latents exist", "marker latents are mostly shared"); ``holds`` is True,
    False, or None where the scheme gives nothing to measure (e.g. no distilled-only latent to put through
    latent scaling). A property survives only where it holds under **every** scheme (failing under both is not
    surviving); a property with a None is not tested. supports: every tested property survives; contradicts:
    none does; mixed otherwise; not tested when no property could be measured under every scheme."""
    if not properties:
        raise ValueError("claim 10 needs at least one property measured under the sparsity schemes")

    def word(ok):
        return "not measurable" if ok is None else ("yes" if ok else "no")

    tested = {p: all(by_scheme.values()) for p, by_scheme in properties.items()
              if by_scheme and all(v is not None for v in by_scheme.values())}
    parts = [f"{p}: " + ", ".join(f"{s} {word(ok)}" for s, ok in by_scheme.items()) for p, by_scheme in properties.items()]
    if not tested:
        return "not tested", "no property could be measured under every scheme (" + "; ".join(parts) + ")"
    return verdict(tested.values()), (f"{sum(tested.values())} of {len(tested)} tested properties hold under every "
                                      f"scheme (" + "; ".join(parts) + ")")


MOST = 0.5   # "most" distilled-only latents survive latent scaling: at least this share of those checked


def scaling_survives(n_genuine: int, n_checked: int) -> bool | None:
    """Do most distilled-only latents survive latent scaling? ``n_genuine`` of the ``n_checked`` latents active on
    held-out tokens (``label.scaling_counts``) are flagged "genuine"; None when none was checked."""
    if n_checked == 0:
        return None
    return bool(n_genuine >= MOST * n_checked)


def claim10_properties(claim1: dict, claim3: dict, scaling: dict) -> dict:
    """The findings claim 10 asks to survive every sparsity scheme (``claim10_verdict``'s ``properties``), from
    per-scheme results: ``claim1`` and ``claim3`` scheme -> that claim's verdict on the scheme's crosscoder (claim
    1 "not tested" without a null: not measurable); ``scaling`` scheme -> (genuine, checked) of its top
    distilled-only latents (``label.scaling_counts``), or None when it has none."""
    return {
        "exclusive latents exist (claim 1)": {s: finding_holds(v) for s, v in claim1.items()},
        "marker latents are mostly shared (claim 3)": {s: finding_holds(v) for s, v in claim3.items()},
        "most distilled-only latents survive latent scaling": {
            s: None if c is None else scaling_survives(*c) for s, c in scaling.items()},
    }


# The paper's training fit (docs/paper-notes.md §4, final logged batch of its three crosscoders): explained variance
# 0.895-0.926 per model at L0 608-877. A crosscoder at the paper's settings "fits about as well" when both
# models' held-out explained variance reaches the lowest logged value less 0.02 (a final training batch is not
# held-out data).
CLAIM9_EV_MIN = 0.895 - 0.02


def paper_settings(train_config, preset: str, paper_pairs) -> tuple[bool, str]:
    """(True, "") when ``train_config`` is the paper's (``train.PAPER``: scheme, width, L1, lr, batch, steps) and
    ``preset`` one of ``paper_pairs`` (the names of the paper's pairs: ``PairSpec.in_paper``); else (False, what
    differs). ``train_config`` None: the crosscoder was imported (``[train.<scheme>] from``), so how it was trained
    is not known and cannot be the paper's."""
    if train_config is None:
        return False, "the crosscoder was trained elsewhere and imported: its training settings are not known"
    fields = ("activation", "n_latents", "l1_coeff", "lr", "batch_size", "n_steps")
    diff = [f"{f} {getattr(train_config, f)!r} (paper {getattr(PAPER, f)!r})" for f in fields
            if getattr(train_config, f) != getattr(PAPER, f)]
    if preset not in paper_pairs:
        diff.insert(0, f"pair {preset!r} is not one of the paper's ({', '.join(sorted(paper_pairs))})")
    return not diff, "; ".join(diff)


def claim9_verdict(ev_base: float, ev_distilled: float, l0: float, at_paper_settings: bool,
                   why_not: str = "") -> tuple[str, str]:
    """Claim 9 (training fit): at the paper's settings, held-out explained variance about 0.90 for both models.

    not tested unless ``at_paper_settings`` (``paper_settings``; ``why_not`` says what differs: a small
    crosscoder on a tiny pair fits differently and says nothing about the paper's); then supports when both
    models reach ``CLAIM9_EV_MIN``, contradicts when neither does, mixed otherwise."""
    evidence = f"held-out explained variance base {ev_base:.3f} / distilled {ev_distilled:.3f} at L0 {l0:.1f}"
    if not at_paper_settings:
        return "not tested", f"not the paper's settings ({why_not}); {evidence}"
    holds = [ev_base >= CLAIM9_EV_MIN, ev_distilled >= CLAIM9_EV_MIN]
    return verdict(holds), f"{evidence}; the paper's logs 0.895-0.926 at L0 608-877, bar {CLAIM9_EV_MIN:.3f}"


PAPER_TOP = (100, 32_768)   # the paper inspected its top 100 distilled-specific latents of a 32,768-latent dictionary


def claim2_top_size(n_latents: int) -> int:
    """How many top distilled-specific latents to inspect: the paper's share of the dictionary (at least 3)."""
    return max(3, round(n_latents * PAPER_TOP[0] / PAPER_TOP[1]))


def claim2_verdict(nrn, frequency, is_reasoning, ground_truth: bool, alpha: float = 0.05) -> tuple[str, str]:
    """Claim 2: some distilled-specific latents are reasoning features.

    ``nrn``, ``frequency`` [F]; ``is_reasoning`` [F] bool: the latent is a reasoning feature of a move category
    (with planted labels: ``label.move_precision``, its held-out top firings precise to one category's moves and
    not merely a detector of a token used in ordinary roles too; a ReasonScore top-20 label otherwise).
    Candidates are latents with relative norm >= ``DISTILLED_SPECIFIC`` firing on >= ``MIN_FREQUENCY`` of tokens;
    the top ``claim2_top_size(F)`` by relative norm are compared with the null: the hit rate among all live
    latents (random live latents of the same count), by a one-sided exact binomial test. supports: the top set's
    hit rate exceeds the null at ``alpha`` and the evidence is ground truth; mixed: it exceeds the null by score
    evidence only, or has hits without beating the null; contradicts: no hit among the candidates; not tested:
    no distilled-specific latent to look at."""
    from scipy.stats import binomtest

    nrn, freq, hit = (np.asarray(a) for a in (nrn, frequency, is_reasoning))
    live = freq >= MIN_FREQUENCY
    cand = np.nonzero(live & (nrn >= DISTILLED_SPECIFIC))[0]
    n_top = claim2_top_size(len(nrn))
    top = cand[np.argsort(-nrn[cand], kind="stable")][:n_top]
    null = float(hit[live].mean()) if live.any() else 0.0
    k = int(hit[top].sum())
    p = float(binomtest(k, len(top), null, alternative="greater").pvalue) if len(top) and 0 < null < 1 else (
        0.0 if len(top) and k and null == 0 else 1.0)
    kind = "ground truth" if ground_truth else "ReasonScore labels (no ground truth)"
    evidence = (f"{k} of the top {len(top)} distilled-specific live latents (relative norm >= {DISTILLED_SPECIFIC}, "
                f"frequency >= {MIN_FREQUENCY}; {len(cand)} candidates) are reasoning features by {kind}; null: "
                f"{null:.3f} of all {int(live.sum())} live latents; one-sided binomial p = {p:.3g}")
    if not len(top):
        return "not tested", evidence
    if k == 0:
        return "contradicts", evidence
    if p < alpha and ground_truth:
        return "supports", evidence
    return "mixed", evidence


def _steering_arms(sweep: pd.DataFrame, arms: dict, cols, baseline: str = "unsteered") -> dict:
    """Per-generation tables of ``cols`` for the unsteered baseline (key "unsteered") and each arm (name ->
    (condition, alpha)), on the (prompt_idx, replicate) rows every one of them ran, in the same order."""
    key = ["prompt_idx", "replicate"]
    out = {"unsteered": sweep[sweep.condition == baseline].set_index(key)}
    for name, (cond, a) in arms.items():
        g = sweep[(sweep.condition == cond) & np.isclose(sweep.alpha, a)].set_index(key)
        if g.empty:
            raise ValueError(f"the sweep has no generations for {cond!r} at alpha {a}")
        out[name] = g
    common = out["unsteered"].index
    for g in out.values():
        common = common.intersection(g.index)
    return {n: g.loc[common, list(cols)].astype(float) for n, g in out.items()}


def _over_prompts(diff: pd.Series, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Mean and bootstrap CI of a per-generation difference, averaged per prompt first (prompts are the unit)."""
    return bootstrap_mean_ci(diff.groupby(level="prompt_idx").mean().to_numpy(), n_boot, seed)


def _fmt(ci) -> str:
    return f"{ci[0]:+.3g} [{ci[1]:+.3g}, {ci[2]:+.3g}]"


def claim6_verdict(sweep: pd.DataFrame, self_reflection: str, control: str, alpha: float, margin: float = 0.05,
                   min_prompts: int = 20, n_boot: int = 2000, seed: int = 0,
                   baseline: str = "unsteered") -> tuple[str, str]:
    """Claim 6 (over-thinking): steering with ``self_reflection`` lengthens the output and raises the
    self-reflection marker rate, beyond what the equal-norm random ``control`` does, without breaking the output.

    ``sweep``: one row per generation (``steer.steering_sweep``: condition, alpha, prompt_idx, replicate,
    n_tokens, rate_self_reflection, well_formed, rep4). For tokens and for the rate, both self-reflection -
    unsteered and self-reflection - control must have a CI above 0 (bootstrap over prompts). Well-formedness must
    be non-inferior (Newcombe's paired interval of the well-formed share, self-reflection - unsteered, above
    -``margin``) and repetition must not rise (the CI of the share of repeated 4-grams, self-reflection -
    unsteered, below ``margin``), so that loops do not pass as over-thinking. supports: both metrics rise beyond
    both references and the output stays well formed; contradicts: neither metric does; mixed otherwise (one of
    them, or both with broken output); not tested: fewer than ``min_prompts`` prompts."""
    cols = ["n_tokens", "rate_self_reflection", "well_formed", "rep4"]
    t = _steering_arms(sweep, {"s": (self_reflection, alpha), "c": (control, alpha)}, cols, baseline)
    n = t["s"].index.get_level_values("prompt_idx").nunique()
    if n < min_prompts:
        return "not tested", f"alpha={alpha:g}: {n} prompts, fewer than the {min_prompts} the rule needs"
    s, b, c = t["s"], t["unsteered"], t["c"]
    rises, parts = [], []
    for m, name in (("n_tokens", "tokens"), ("rate_self_reflection", "self-reflection rate/1k")):
        vb, vc = _over_prompts(s[m] - b[m], n_boot, seed), _over_prompts(s[m] - c[m], n_boot, seed)
        rises.append(vb[1] > 0 and vc[1] > 0)
        parts.append(f"Δ{name} vs unsteered {_fmt(vb)}, vs {control} {_fmt(vc)}")
    wf = paired_proportion_diff_ci(s["well_formed"].to_numpy(), b["well_formed"].to_numpy())
    loops = _over_prompts(s["rep4"] - b["rep4"], n_boot, seed)
    intact = wf[1] > -margin and loops[2] < margin
    v = ("supports" if intact else "mixed") if all(rises) else ("contradicts" if not any(rises) else "mixed")
    return v, (f"alpha={alpha:g}, n={n} prompts: " + "; ".join(parts)
               + f"; Δwell-formed share {_fmt(wf)} (non-inferiority margin {margin}), Δrepeated-4-gram share "
                 f"{_fmt(loops)} (must stay below +{margin})")


def claim7_verdict(sweep: pd.DataFrame, deductive: str, control: str, alpha: float, margin: float = 0.05,
                   min_prompts: int = 20, n_boot: int = 2000, seed: int = 0,
                   baseline: str = "unsteered") -> tuple[str, str]:
    """Claim 7 (incisive thinking): steering with ``deductive`` shortens the output, and shortens it more than the
    equal-norm random ``control`` does, without a loss of accuracy beyond ``margin``.

    ``sweep``: one row per generation (``steer.steering_sweep``: condition, alpha, prompt_idx, replicate, n_tokens,
    correct). Both deductive - unsteered and deductive - control tokens must have a CI below 0 (bootstrap over
    prompts): a control that lengthens its outputs cannot make an unchanged length look like shortening. "Same
    answer" is non-inferiority: Newcombe's paired interval of the accuracy difference (deductive - unsteered) lies
    above -``margin``. supports: shorter than both and non-inferior; mixed: shorter than both, accuracy not shown
    non-inferior; contradicts: not shorter than one of them; not tested: fewer than ``min_prompts`` prompts."""
    t = _steering_arms(sweep, {"d": (deductive, alpha), "c": (control, alpha)}, ["n_tokens", "correct"], baseline)
    n = t["d"].index.get_level_values("prompt_idx").nunique()
    if n < min_prompts:
        return "not tested", f"alpha={alpha:g}: {n} prompts, fewer than the {min_prompts} the rule needs"
    d, b, c = t["d"], t["unsteered"], t["c"]
    vb = _over_prompts(d["n_tokens"] - b["n_tokens"], n_boot, seed)
    vc = _over_prompts(d["n_tokens"] - c["n_tokens"], n_boot, seed)
    acc = paired_proportion_diff_ci(d["correct"].to_numpy(), b["correct"].to_numpy())
    unchanged = float(np.mean(d["correct"].to_numpy() == b["correct"].to_numpy()))
    shorter, non_inferior = vb[2] < 0 and vc[2] < 0, acc[1] > -margin
    v = "contradicts" if not shorter else ("supports" if non_inferior else "mixed")
    return v, (f"alpha={alpha:g}, n={n} prompts: Δtokens deductive - unsteered {_fmt(vb)}, deductive - {control} "
               f"{_fmt(vc)}; Δaccuracy {_fmt(acc)} (Newcombe paired interval, non-inferiority margin {margin}); "
               f"correctness unchanged on {unchanged:.0%} of generations")


def claim8_verdict(deltas: dict, n_params: dict, correct: dict, min_sizes: int = 4, n_boot: int = 2000,
                   seed: int = 0) -> tuple[str, str]:
    """Claim 8 (geometry improves with size): Δ = base - distilled parallelogram loss rises with model size.

    ``deltas``: size -> {relation: (Δ, bootstrap draws [B] over word pairs)} at the judged basis and PCA dim;
    ``n_params``: size -> parameter count (sizes are ordered by it, never by performance); ``correct``: size ->
    (base correct [n], distilled correct [n]) on the same problems, the measured distillation gain. The trend
    is the least-squares slope of the pooled Δ (mean over relations) against log10 parameters, with a bootstrap
    CI that resamples relations and takes each relation's own draw over pairs; the slope against the gain is
    reported beside it, its CI also resampling problems. supports: the size slope's CI is above 0; contradicts:
    below 0; mixed: it includes 0; not tested with fewer than ``min_sizes`` sizes (three points have no power: a
    strict order of three arises by chance one time in six) or without a relation measured at every size."""
    sizes = sorted(deltas, key=lambda s: n_params[s])
    parts = [f"{s} ({n_params[s]:,} parameters)" for s in sizes]
    if len(sizes) < min_sizes:
        return "not tested", (f"{len(sizes)} sizes ({', '.join(parts)}): a trend across sizes needs at least "
                              f"{min_sizes}")
    rels = sorted(set.intersection(*(set(deltas[s]) for s in sizes)))
    if not rels:
        return "not tested", "no relation was measured at every size"
    rng = np.random.default_rng(seed)
    B = min(len(deltas[s][r][1]) for s in sizes for r in rels)
    x = np.log10([n_params[s] for s in sizes])
    point = np.array([np.mean([deltas[s][r][0] for r in rels]) for s in sizes])
    gain = np.array([np.mean(np.asarray(correct[s][1], float) - np.asarray(correct[s][0], float)) for s in sizes])
    slope_size, slope_gain = [], []
    for b in range(n_boot):
        pick = rng.choice(len(rels), len(rels))
        j = rng.integers(B)
        pooled = np.array([np.mean([deltas[s][rels[i]][1][j] for i in pick]) for s in sizes])
        slope_size.append(np.polyfit(x, pooled, 1)[0])
        g = []
        for s in sizes:
            cb, cd = (np.asarray(a, float) for a in correct[s])
            idx = rng.integers(len(cb), size=len(cb))
            g.append(np.mean(cd[idx] - cb[idx]))
        if np.ptp(g) > 0:
            slope_gain.append(np.polyfit(g, pooled, 1)[0])
    lo, hi = np.percentile(slope_size, [2.5, 97.5])
    s_size = np.polyfit(x, point, 1)[0]
    gain_txt = "the gains do not vary"
    if slope_gain and np.ptp(gain) > 0:
        glo, ghi = np.percentile(slope_gain, [2.5, 97.5])
        gain_txt = f"{np.polyfit(gain, point, 1)[0]:+.3g} [{glo:+.3g}, {ghi:+.3g}] per unit of accuracy gain"
    v = "supports" if lo > 0 else ("contradicts" if hi < 0 else "mixed")
    by_size = "; ".join(f"{p}: Δ {d:+.4f}, gain {g:+.3f}" for p, d, g in zip(parts, point, gain))
    return v, (f"{len(rels)} relations at {len(sizes)} sizes by parameter count ({by_size}); slope of Δ against "
               f"log10 parameters {s_size:+.3g} [{lo:+.3g}, {hi:+.3g}]; against the distillation gain {gain_txt}")


def claim5_verdict(result, k: float | None = None, base_margin: float = 0.5, untested: dict | None = None,
                   categories=None) -> tuple[str, str]:
    """Claim 5 at ``k`` (default: the largest k) from an ``ablation.AblationResult``, or None when no category
    could be ablated (each one's reason in ``untested``): then "not tested".

    A category holds when ablating its distilled-leaning marker-active latents lowers the distilled marker logit
    more than (a) matched random latents (CI of targeted - random below 0; each replicate draws one whole random
    set) and (b) shared latents of matched distilled-side contribution (CI of targeted - shared below 0; when no
    shared control could be matched the evidence says so and (a) decides), while the base model barely moves:
    (c) the paired per-occurrence contrast base - distilled of (targeted - random) has a CI above 0, and (d) the
    base's targeted - random CI lies inside +-``base_margin`` logits (equivalence, not a missing effect). CIs are
    over documents at the summary's familywise level. Not tested per category: no latent to ablate at ``k``, or a
    reason in ``untested`` (e.g. too few held-out markers: training markers are never reused silently); with no
    category tested the verdict is "not tested". supports: every tested category holds; contradicts: none;
    mixed otherwise."""
    if result is None:
        return "not tested", "; ".join(f"{c}: not tested ({r})" for c, r in (untested or {}).items()) or (
            "no category was ablated")
    s = result.summary
    k = float(s["k"].max()) if k is None else k
    at = s[np.isclose(s["k"], k)]
    untested = dict(untested or {})
    cats = list(dict.fromkeys(list(categories or []) + list(s["category"]) + list(untested)))

    def row(cat, model, arm):
        r = at[(at["category"] == cat) & (at["model"] == model) & (at["arm"] == arm)]
        return r.iloc[0] if len(r) else None

    def ci(r):
        return f"{r['mean']:+.2f} [{r['ci_lo']:+.2f}, {r['ci_hi']:+.2f}]"

    holds, parts = [], []
    for cat in cats:
        dd, bb = row(cat, "distilled", "targeted_minus_random"), row(cat, "base", "targeted_minus_random")
        if cat in untested or dd is None or bb is None:
            parts.append(f"{cat}: not tested ({untested.get(cat, f'no distilled-leaning latent to ablate at k={k}')})")
            continue
        ds, pb = row(cat, "distilled", "targeted_minus_shared"), row(cat, "base", "base_minus_distilled")
        checks = {"distilled below random": dd["ci_hi"] < 0,
                  "distilled below shared": ds is None or ds["ci_hi"] < 0,
                  "base moves less (paired)": pb is not None and pb["ci_lo"] > 0,
                  f"base within +-{base_margin}": -base_margin <= bb["ci_lo"] and bb["ci_hi"] <= base_margin}
        ok = all(checks.values())
        holds.append(ok)
        shared = "no shared control" if ds is None else f"distilled vs shared {ci(ds)}"
        paired = "no paired contrast" if pb is None else f"base - distilled {ci(pb)}"
        failed = [c for c, v in checks.items() if not v]
        n_lat = int(dd["n_latents"]) if "n_latents" in dd and dd["n_latents"] == dd["n_latents"] else None
        parts.append(f"{cat}{'' if n_lat is None else f' ({n_lat} latents ablated)'}: distilled {ci(dd)}, "
                     f"base {ci(bb)}, {paired}, {shared} "
                     f"({'holds' if ok else 'fails: ' + ', '.join(failed)})")
    level = float(at["level"].iloc[0]) if "level" in at and len(at) else 0.95
    evidence = (f"targeted minus matched random marker-logit change at k={k} ({len(holds)} categories tested, "
                f"{100 * level:.1f}% CIs over documents): " + "; ".join(parts))
    if not holds:
        return "not tested", evidence
    return verdict(holds), evidence


ADL_ALPHA = 0.05   # the ADL direction is closer to the distilled-only latents than random when p <= this


def _closer_than_random(closeness: dict, what: str, alpha: float) -> tuple[str, str]:
    """supports: permutation p <= ``alpha``; contradicts: no closer than the median random direction; mixed in
    between. ``what`` names the statistic in the evidence."""
    stat, rand, p = closeness["stat"], np.asarray(closeness["random"]), closeness["p"]
    med = float(np.median(rand))
    evidence = (f"{what} {stat:.3f}; random unit directions median {med:.3f}, "
                f"{closeness['n_higher']} of {len(rand)} at or above it (p = {p:.3g})")
    if p <= alpha:
        return "supports", evidence
    return ("contradicts" if stat <= med else "mixed"), evidence


def adl_closeness_verdict(closeness: dict | None, n_latents: int, alpha: float = ADL_ALPHA) -> tuple[str, str]:
    """Is the Activation Difference Lens's direction closer to the ``n_latents`` distilled-only latents' decoder
    differences than random unit directions are? ``closeness``: ``adl.closeness`` (mean |cosine| ``stat``, the
    random directions' ``random``, the permutation ``p``), None when there was nothing to compare.

    supports: p <= ``alpha``; contradicts: no closer than the median random direction; mixed in between; not
    tested without a distilled-only latent."""
    if closeness is None or n_latents == 0:
        return "not tested", "no live distilled-only latent to compare the ADL direction with"
    return _closer_than_random(closeness, f"mean |cos| with {n_latents} distilled-only latents", alpha)


def adl_concept_verdict(closeness: dict | None, alpha: float = ADL_ALPHA) -> tuple[str, str]:
    """Is the Activation Difference Lens's direction closer to the planted distilled-only concept's direction
    (the gated connective's bit-1 minus bit-0 mean in the distilled model at the hook layer,
    ``planted.gate_direction``) than random unit directions are? ``closeness``: ``adl.closeness`` against that one
    direction (its ``stat`` is the |cosine|), None when the pair plants no such concept.

    supports: p <= ``alpha``; contradicts: no closer than the median random direction; mixed in between; not
    tested where nothing is planted."""
    if closeness is None:
        return "not tested", "this pair plants no distilled-only concept to compare the ADL direction with"
    return _closer_than_random(closeness, "|cos| with the planted concept's direction", alpha)
