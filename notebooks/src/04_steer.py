# %% [markdown]
# # 04 · Steering: over-thinking and incisive thinking, measured
#
# The paper's most striking anecdote: add a distilled-specific **self-reflection** feature's decoder
# direction to the distilled model's residual stream and it **over-thinks** (longer traces, more
# "Wait"); add a **deductive** feature and it thinks **incisively** (shorter, same answer). Its protocol
# was one sampled generation per condition at coefficient 1 with no control, so the effect cannot be
# told from sampling noise ([paper-notes §9](../docs/paper-notes.md#9-steering-protocol-and-example-numbers-15b)).
#
# Here the same intervention becomes a measurement:
#
# * **held-out prompts** (the organism's evaluation problems), **greedy** decoding, so every difference
#   is caused by the intervention, and each steered generation is **paired** with the unsteered one on
#   the same prompt;
# * an **α sweep in both signs**, in units that mean the same for every latent: α = 1 adds
#   `a_max · d_i`, what the crosscoder reconstructs when latent *i* fires at its maximum on the store
#   (`d_i` is the decoder row in the model's **raw** residual units);
# * the top distilled-specific self-reflection latent, the top distilled-specific deductive latent, a
#   **shared** latent (relative norm ≈ 0.5) and **random directions of equal norm** to the self-reflection
#   and to the deductive vector (the controls the paper lacks: α = 1 means a different push for each latent);
# * the **Activation Difference Lens** direction (`03d_adl`: the mean activation difference of the two models over
#   the first tokens of many texts) at the self-reflection vector's norm: a baseline that needs no dictionary;
# * per-generation metrics, means with 95 % bootstrap CIs of the paired difference, dose-response plots.
#
# Which prompts, strengths and thresholds: the run config's `[steer]` table, fixed before any steering ran.
#
# Runtime: the default (128 prompts, 29 conditions, a 128-token cap) takes about 1-2 minutes on one CPU
# thread once the store and crosscoder are cached. The cap is ~1.5× the unsteered mean length, so lengthening is
# visible up to there and beyond it shows as truncation.

# %% [parameters]
RUN = "organism-m"           # the run config: configs/<RUN>.toml ([steer]: prompts, alpha grids, thresholds)
BATCH_SIZE = 64
N_BOOT = 2000
BENCH_TOKENS = 48            # tokens per row in the hook-overhead benchmark
THREADS = None              # torch CPU threads (None: one per core; 1 where other jobs share the cores)

# %%
from thinkdiff import session
session.start(globals(), threads=THREADS)  # hub offline, papermill parameters checked, torch threads
import time
import numpy as np
import pandas as pd
import torch
import matplotlib.pyplot as plt
from IPython.display import HTML, display
from thinkdiff import paths, pipeline, plots, records, steer

run = pipeline.load_run(RUN)
S = run.config.steer
N_PROMPTS, MAX_NEW_TOKENS, POSITIONS, SEED = S["n_prompts"], S["max_new_tokens"], S["positions"], S["seed"]
ALPHAS, CONTROL_ALPHAS, CLAIM_ALPHA, SPECIFIC_NRN = S["alphas"], S["control_alphas"], S["claim_alpha"], S["specific_nrn"]
torch.manual_seed(SEED)   # the run config checked the strengths when it was read (runconfig._check_steer)

# %% [markdown]
# ## 1. The pair, its activation store and its crosscoder
# All three come from the run (`pipeline.load_run`, built and cached on first use); the crosscoder is the
# run's main scheme. We encode the whole store once: the sparse codes give every latent's maximum activation
# (our unit of strength) and its score for each category.

# %%
t0 = time.time()
pair, store, cc = run.pair, run.store, run.crosscoder()
codes = run.codes()
nrn = run.relative_norms()
print(f"{run.name}: layer {pair.layer}, d_model {pair.d_model}, {store.n_tokens:,} store tokens, "
      f"{cc.W_dec.shape[0]} latents ({run.config.schemes[0]}); loaded and encoded in {time.time() - t0:.0f} s")

# %% [markdown]
# ## 2. Choosing the latents, by a fixed rule
# For the organism every store token carries the teacher's category label, so we score each latent by its
# AUROC for "this token lies in a self-reflection (deductive) move" (`label.ground_truth_auroc`) and take the
# best one among distilled-specific latents (relative norm ≥ `SPECIFIC_NRN`: `norms.DISTILLED_SPECIFIC` = 0.9, the
# one definition every notebook uses, unless the run config overrides it). The shared latent is the best
# self-reflection latent with relative norm in [0.45, 0.55]. The rule is fixed before any steering is run.
# A real pair has no planted labels: there the score is the category's ReasonScore (`03_label`, with the
# run's `[label]` settings), the paper's kind of evidence.
#
# If a pair has no latent at all in a category's distilled-specific band (claim 1 in `03_label` counts them),
# the paper's procedure has nothing to steer with: that category's claim is reported **not tested**, and the
# band is not widened after the fact to make room.

# %%
latent_scores, score_name = run.category_scores()
if run.has_labels:
    display(run.ground_truth().best)
candidates = steer.pick_latents(latent_scores, nrn, specific=SPECIFIC_NRN, strict=False)
untested = steer.claims_without_latents(candidates)
for _, r in candidates[~candidates.found].iterrows():
    print(f"{r['role']}: {r['missing']} - claims {[k for k, v in steer.CLAIM_ROLES.items() if v == r['role']]} "
          "are not tested")
chosen = candidates[candidates.found].drop(columns=["found", "missing"]).reset_index(drop=True)
assert len(chosen), f"no latent in any band (relative norm >= {SPECIFIC_NRN} or shared): nothing to steer with"
chosen["max_act"] = [steer.latent_activation_scale(cc, codes.column(j), j) for j in chosen["latent"]]
chosen["fires_on"] = [float(codes.frequency()[j]) for j in chosen["latent"]]
chosen

# %% [markdown]
# How good are these latents as detectors? An AUROC near 0.5 means the latent barely tracks its
# category; steering with it tests the paper's *procedure* (pick a latent by its label, add its direction),
# which is what a user of the paper's method would do.

# %%
fig, ax = plt.subplots(figsize=(6, 3.6))
for cat, col in (("self_reflection", "tab:red"), ("deductive", "tab:blue")):
    ax.scatter(nrn, latent_scores[cat], s=5, alpha=0.4, color=col, label=cat)
for _, r in chosen.iterrows():
    ax.scatter(r["relative_norm"], r["score"], s=80, facecolor="none", edgecolor="black")
    ax.annotate(f"{r['role']} #{r['latent']}", (r["relative_norm"], r["score"]), xytext=(4, 4),
                textcoords="offset points", fontsize=8)
ax.axvline(SPECIFIC_NRN, color="grey", ls=":", lw=1)
ax.set_xlabel("relative norm (1 = distilled-only)"); ax.set_ylabel(score_name)
ax.set_title("Candidate latents and the chosen ones (circled)"); ax.legend(fontsize=7)
plots.savefig(fig, "04_latent_choice"); plt.show()

# %% [markdown]
# ## 3. Steering vectors in raw units
# `steering_vector(..., "max_act")` returns `a_max · W_dec[i, distilled]`; the crosscoder is folded, so this
# is already in the model's residual units. The claims are judged against a **matched latent**: another live
# latent of similar relative norm and max activation, steered the same way (`steer.matched_control_latent`).
# The seeded Gaussian directions with exactly the self-reflection (deductive) vector's norm are shown too, and the
# ADL direction (`Run.adl_difference`, read from the store) scaled to the same norm, steered at ± the claims'
# strength (both signs: which way the difference points is part of what it says). We print each norm next to the
# typical residual norm at the hook.

# %%
directions, role_name = {}, {}
for _, r in chosen.iterrows():
    role_name[r["role"]] = f"{r['role']} #{r['latent']}"
    directions[role_name[r["role"]]] = steer.steering_vector(cc, int(r["latent"]), 1, "max_act",
                                                              max_act=float(r["max_act"]))
SR, DED = role_name.get("self_reflection"), role_name.get("deductive")   # None: not found, its claim not tested
# Two controls per steered category: an isotropic Gaussian of the same norm (off the data manifold, so any
# decoder direction beats it), and the claims' control: another live latent's decoder direction with a similar
# relative norm and max activation, pushed the same way (alpha x its max activation x its decoder row).
max_act = codes.max_activation()
live = codes.frequency() > 0
controls = {}
for role, name, seed in (("self_reflection", SR, SEED), ("deductive", DED, SEED + 1)):
    if not name:
        continue
    try:
        j = steer.matched_control_latent(int(chosen.set_index("role").loc[role, "latent"]), nrn, max_act, live,
                                         exclude=chosen["latent"], seed=seed)
    except ValueError as err:   # nothing comparable to steer with instead: the claim cannot be judged
        claim = next(k for k, v in steer.CLAIM_ROLES.items() if v == role)
        untested[claim] = dict(verdict="not tested", evidence=f"no matched control: {err}")
        print(f"claim {claim} not tested: {err}")
        continue
    controls[role] = f"matched latent #{j} (for {role})"
    directions[controls[role]] = steer.steering_vector(cc, j, 1, "max_act", max_act=float(max_act[j]))
if SR:
    directions["random"] = steer.random_direction(directions[SR], SEED)              # Gaussian, SR's norm
if DED:
    directions["random (deductive norm)"] = steer.random_direction(directions[DED], SEED + 1)  # same push as DED
ADL_NORM_OF = SR or DED or next(iter(directions))   # the ADL direction is pushed as hard as this vector
delta = torch.as_tensor(run.adl_difference["delta"], dtype=torch.float32)
directions["ADL direction"] = delta / delta.norm() * directions[ADL_NORM_OF].norm()
resid = np.asarray(store.acts(np.arange(min(4000, store.n_tokens))))[:, 1]
resid_norm = float(np.linalg.norm(resid, axis=-1).mean())
norms = pd.Series({k: float(v.norm()) for k, v in directions.items()}, name="||v|| (alpha = 1)")
print(f"mean residual norm of the distilled model at layer {pair.layer}: {resid_norm:.3f}")
if SR:
    assert abs(norms["random"] - norms[SR]) < 1e-4 * norms[SR], "control has the self-reflection vector's norm"
if DED:
    assert abs(norms["random (deductive norm)"] - norms[DED]) < 1e-4 * norms[DED]
assert abs(norms["ADL direction"] - norms[ADL_NORM_OF]) < 1e-4 * norms[ADL_NORM_OF]
(norms / resid_norm).rename("||v|| / mean ||resid||").to_frame().join(norms)

# %% [markdown]
# ## 4. Two checks before the sweep
# α = 0 must reproduce the unsteered greedy generations token for token (the hook adds an exact zero),
# and a non-zero α must change something (the hook does act).

# %%
task = run.task   # held-out problems of the pair's task, prompted as it was evaluated (a math set: raw, no template)
problems = task.problems(run.config.evaluate, n=N_PROMPTS, seed=SEED)
prompts = [task.prompt(p) for p in problems]
few = prompts[:4]
g_plain = steer.generate_steered(pair.distilled, pair.tokenizer, few, None, layer=pair.layer,
                                 max_new_tokens=24, batch_size=BATCH_SIZE, progress=False)
g_zero = steer.generate_steered(pair.distilled, pair.tokenizer, few, next(iter(directions.values())), alpha=0.0, layer=pair.layer,
                                max_new_tokens=24, batch_size=BATCH_SIZE, progress=False)
assert g_plain.ids == g_zero.ids, "alpha = 0 must reproduce the unsteered generation exactly"
print("alpha = 0 reproduces the unsteered run:", g_plain.ids == g_zero.ids)

# %% [markdown]
# ## 5. The sweep
# Unsteered once, then every direction × α. Per generation: tokens (inside `<think>` and after), marker
# rate per 1,000 tokens for each category (the organism's single-token markers; the core lexicon words on a
# real pair), correctness and well-formedness (`world.parse_output` on the organism; math-verify and a closed
# `</think>` on a real pair), truncation at the cap, and the repeated-4-gram share (degeneration).

# %%
score = task.score
marker_words = task.marker_words or steer.DEFAULT_MARKER_WORDS
count_markers = steer.regex_marker_counter(pair.tokenizer, marker_words)
t0 = time.time()
grids = {name: (ALPHAS if name in (SR, DED) else CONTROL_ALPHAS) for name in directions}
grids["ADL direction"] = sorted({-CLAIM_ALPHA, CLAIM_ALPHA})
sweep = steer.steering_sweep(pair.distilled, pair.tokenizer, prompts, directions, grids, layer=pair.layer,
                             positions=POSITIONS, problems=problems, score=score, count_markers=count_markers,
                             max_new_tokens=MAX_NEW_TOKENS, seeds=(SEED,), batch_size=BATCH_SIZE)
sweep_seconds = time.time() - t0
print(f"{len(sweep)} generations in {sweep_seconds:.0f} s")
assert len(sweep) == N_PROMPTS * (1 + sum(len(g) for g in grids.values()))
sweep.groupby(["condition", "alpha"])[["n_tokens", "n_think", "rate_self_reflection", "rate_deductive",
                                       "correct", "truncated", "rep4"]].mean().round(3)

# %% [markdown]
# A last sanity check: the sweep's unsteered run equals a fresh unsteered run of the same prompts in the same
# batches (greedy decoding is deterministic), so no steering hook outlived its condition. The batches are the
# sweep's own: where the model computes in bf16, another batching can change the padding's rounding and so flip a
# near-tie between two tokens, which is not a steering effect.

# %%
base_rows = sweep[sweep.condition == "unsteered"].sort_values("prompt_idx")
fresh = steer.generate_steered(pair.distilled, pair.tokenizer, prompts, None, layer=pair.layer,
                               max_new_tokens=MAX_NEW_TOKENS, batch_size=BATCH_SIZE, progress=False)
assert list(base_rows["text"]) == fresh.texts, "the unsteered baseline is reproducible"
print(f"the sweep's unsteered run of {len(prompts)} prompts reproduces exactly")

# %% [markdown]
# ## 6. Paired differences with 95 % CIs
# `summarize_sweep` pairs each steered generation with the unsteered one on the same prompt and bootstraps
# the mean difference over prompts.

# %%
summary = steer.summarize_sweep(sweep, n_boot=N_BOOT, seed=SEED)
key = ["n_tokens", "rate_self_reflection", "rate_deductive", "correct", "truncated", "rep4"]
view = summary[summary.metric.isin(key) & (summary.condition != "unsteered")].copy()
view["Δ (95% CI)"] = [f"{d:+.3g} [{lo:+.3g}, {hi:+.3g}]" for d, lo, hi in zip(view["diff"], view["diff_lo"], view["diff_hi"])]
view.pivot_table(index=["condition", "alpha"], columns="metric", values="Δ (95% CI)", aggfunc="first")[key]

# %% [markdown]
# Dose-response: the paired difference against α for each direction. The grey line is "no effect"; the
# random controls (equal norm to the self-reflection and to the deductive vector) are the yardstick for
# "any push of this size".

# %%
fig = steer.plot_dose_response(summary, ["n_tokens", "rate_self_reflection", "rate_deductive", "correct", "rep4"],
                               title=f"Steering the distilled model ({run.name}, positions={POSITIONS}, n={N_PROMPTS})")
plots.savefig(fig, "04_dose_response"); plt.show()

# %% [markdown]
# ## 7. Side by side
# The first three held-out prompts (not selected for effect): unsteered, then self-reflection steering
# (over-thinking?) and deductive steering (incisive?), each at α = `CLAIM_ALPHA` and at the largest α.

# %%
top_alpha = max(ALPHAS)
shown = [(name, a) for name in (SR, DED) if name for a in (CLAIM_ALPHA, top_alpha)] or \
        [(name, a) for name in directions for a in grids[name][-1:]]   # no category latent: whatever was steered
display(HTML(steer.side_by_side_html(sweep, [0, 1, 2], shown, prompts=prompts, max_chars=500)))

# %% [markdown]
# ## 8. What does the hook cost?
# Same prompts, exactly `BENCH_TOKENS` new tokens per row both ways (EOS ignored), the steered run adding
# `0 · v` so the work is identical; interleaved (ABBA) and the median kept. Rates are per second of this
# process's CPU time, which the other jobs on a shared machine barely disturb (wall-clock rates printed
# too). The per-condition tokens/s of the sweep itself are not comparable (steered runs differ in length).

# %%
bench = steer.hook_overhead(pair.distilled, pair.tokenizer, prompts[:32], next(iter(directions.values())), layer=pair.layer,
                            n_tokens=BENCH_TOKENS, repeats=4, batch_size=BATCH_SIZE)
print(f"per CPU-second: unsteered {bench['unsteered_tok_s']:.0f} tok/s, steered {bench['steered_tok_s']:.0f} tok/s, "
      f"overhead {100 * bench['overhead']:.1f} % (target < 10 %); wall clock: {bench['unsteered_wall_tok_s']:.0f} vs "
      f"{bench['steered_wall_tok_s']:.0f} tok/s")

# %% [markdown]
# ## 9. Verdicts on the paper's claims 6 and 7
# Fixed rules:
# * claim 6 (`claims.claim6_verdict`) supports if self-reflection steering raises both length and the
#   self-reflection marker rate above the unsteered run **and** above its matched-latent control (CIs over
#   prompts), while the output stays well formed (no loss beyond the run's non-inferiority margin, no rise in
#   repeated 4-grams: loops are not over-thinking); contradicts if neither rises beyond both. The control is
#   the matched latent (§3), not the Gaussian;
# * claim 7 (`claims.claim7_verdict`) supports if deductive steering shortens the output below the unsteered run
#   **and** below its matched-latent control (CIs over prompts), with accuracy non-inferior (Newcombe's
#   paired interval above −margin); contradicts if it is not shorter than both.
#
# Both need `[steer] min_prompts` prompts, else "not tested".
#
# The recorded verdict is at α = `CLAIM_ALPHA` (the run config's `[steer] claim_alpha`, 1: the latent's
# direction at its largest activation seen on the store, the strongest push that stays inside what the model
# itself produces). The verdict at every α run for all directions is shown too and goes into the evidence, and
# the summary's p-values are Benjamini-Hochberg adjusted over every steered condition and strength.
# A claim whose latent was not found (§2) is not tested.

# %%
steered = {k: ({"6": SR, "7": DED}[k], controls.get(role)) for k, role in steer.CLAIM_ROLES.items() if k not in untested}
claims, per_alpha = records.steer_claims(run, sweep, steered, {k: (v["verdict"], v["evidence"]) for k, v in untested.items()},
                                         N_BOOT)
for k, v in claims.items():
    print(f"claim {k}: {v['verdict'].upper()} - {v['evidence']}")
per_alpha

# %% [markdown]
# ## 10. Record for the run report

# %%
numbers = records.steer_numbers(run, summary, chosen, candidates, score_name, bench, sweep_seconds, per_alpha, grids)
records.record_steer(run, numbers, claims,
                     figures=[paths.FIGURES_DIR / "04_latent_choice.png", paths.FIGURES_DIR / "04_dose_response.png"])
