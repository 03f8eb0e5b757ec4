# %% [markdown]
# # 03 · Finding and labelling reasoning features
#
# `02_train` gave us a crosscoder: one dictionary of latents, each with a decoder vector **per model**
# (index 0 = base, 1 = distilled). This notebook asks which latents belong to which model and what they
# mean (the paper's causal check is `03b_ablation`, the feature cards and browser `03c_browser`):
#
# 1. **Relative decoder norm** `||d_distilled|| / (||d_base|| + ||d_distilled||)`: 1 = distilled-only,
#    0.5 = shared, 0 = base-only (L2 by default, the paper's L1 for comparison), and the decoder cosine of
#    shared latents.
# 2. **Latent scaling** (Minder et al.): are the "distilled-only" latents real, or artefacts of the L1
#    penalty (Complete Shrinkage, Latent Decoupling)?
# 3. **What latents mean**: the reasoning lexicon (validated against the organism's planted labels),
#    per-category ReasonScore, the paper's marker-token histograms, and the **ground truth**: the AUROC of
#    each latent against the teacher's token labels.
# 4. A features table: every number per latent, with a label and its provenance.
#
# Everything runs on the ReLU crosscoder (the paper's); the relative-norm histogram and the
# ground-truth table are repeated for BatchTopK (claim 10: does the picture survive the sparsity scheme?).

# %% [parameters]
RUN = "organism-m"          # the run config: configs/<RUN>.toml ([label]: scaling and ReasonScore settings)
THREADS = None              # torch CPU threads (None: one per core; 1 where other jobs share the cores)

# %%
from thinkdiff import session
session.start(globals(), threads=THREADS)  # hub offline, papermill parameters checked, torch threads
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import torch
from IPython.display import HTML, display
from thinkdiff import browser, codes, label, lexicon, norms, organism, pipeline, planted, plots, probes, records, report, world
from thinkdiff import claims as claim_rules
CATS = list(lexicon.CATEGORIES)
figures = plots.Figures()   # every figure this notebook saves, for the run report

# %% [markdown]
# ## 1. Upstream artifacts
# The run's pair, its activation store and one crosscoder per sparsity scheme (`pipeline.load_run`), each
# built and cached if missing. The labelling settings come from the run config's `[label]` table, fixed
# before any latent was looked at. Crosscoders are *folded*: they take and return raw activations, so every analysis
# below uses the crosscoder's own normalisation (the original code scored raw activations against a
# normalised encoder; we do not).

# %%
run = pipeline.load_run(RUN)
L = run.config.label
SCHEMES = run.config.schemes          # the first is the main one (the paper's ReLU)
N_SCALING, ALPHA, WINDOW = L["n_scaling"], L["reasonscore_alpha"], tuple(L["window"])
LABELS = run.has_labels               # planted token labels: the organism only
pair, store = run.pair, run.store
ccs = run.crosscoders
cc = ccs[SCHEMES[0]]
print(run)
if not LABELS:
    print(f"{RUN}: the store has no planted labels; the ground-truth sections (4, 7) are skipped and marker "
          "tokens are every occurrence of the marker words.")
tok, meta = pair.tokenizer, store.meta
heldout = meta["split"] == 1
print(store)
for s, c in ccs.items():
    print(s, c)
print(f"{store.n_tokens} tokens, {heldout.sum()} held out; hook: resid_pre of block {pair.layer}")

# %% [markdown]
# ## 2. Which latents belong to which model: relative decoder norms
# One pass of each crosscoder over the store, kept sparse, gives every latent's firing frequency; latents
# that never fire are dead and are left out of the counts (their decoders carry no information).
# The histogram uses log counts, as in the paper and in Anthropic's crosscoder work.

# %%
acts, nrn, alive = {}, {}, {}
for s, c in ccs.items():
    acts[s] = run.codes(s)
    nrn[s] = run.relative_norms(s)
    alive[s] = acts[s].frequency() > 0
    assert np.nanmin(nrn[s]) >= 0 and np.nanmax(nrn[s]) <= 1
nrn_l1 = norms.relative_norm(cc, p=1)
A, NRN = acts[SCHEMES[0]], nrn[SCHEMES[0]]
pd.DataFrame({s: {"live latents": int(alive[s].sum()), "dead": int((~alive[s]).sum()),
                  "mean L0 (tokens)": len(acts[s].vals) / acts[s].n_tokens,
                  "mean relative norm (live)": np.nanmean(nrn[s][alive[s]]),
                  "std": np.nanstd(nrn[s][alive[s]]),
                  f"relative norm >= {norms.DISTILLED_SPECIFIC}": int((nrn[s][alive[s]] >= norms.DISTILLED_SPECIFIC).sum()),
                  f"relative norm <= {norms.BASE_SPECIFIC}": int((nrn[s][alive[s]] <= norms.BASE_SPECIFIC).sum())}
              for s in SCHEMES}).round(3)

# %% [markdown]
# Side by side: L2 relative norms of both schemes, and the paper's L1 variant for the ReLU crosscoder.
# L1 and L2 agree on which side a latent leans to but not on how far.

# %%
fig, axes = plt.subplots(1, len(SCHEMES) + 1, figsize=(4.2 * (len(SCHEMES) + 1), 3.4), sharey=True)
panels = [(f"{s}, L2", nrn[s][alive[s]]) for s in SCHEMES] + [(f"{SCHEMES[0]}, L1 (paper)", nrn_l1[alive[SCHEMES[0]]])]
for ax, (name, v) in zip(axes, panels):
    ax.hist(v, bins=50, range=(0, 1), log=True, color="tab:purple")
    ax.set_title(f"{name}: {len(v)} live latents")
    ax.set_xlabel("relative norm (0 base-only, 1 distilled-only)"); ax.set_ylabel("latents (log scale)")
fig.suptitle(f"Relative decoder norms, {run.name}")
fig.tight_layout()
figures.save(fig, "03_relative_norms")

# %% [markdown]
# **Decoder cosine of shared latents.** A latent can be shared in norm yet point different ways in the
# two models; the cosine of its two decoder vectors tells. Near 1: the same direction in both models.

# %%
cos = norms.decoder_cosine(cc)
fig = norms.plot_decoder_cosine(np.where(alive[SCHEMES[0]], cos, np.nan), NRN)
figures.save(fig, "03_decoder_cosine")
shared_sel = alive[SCHEMES[0]] & (NRN >= norms.SHARED_BAND[0]) & (NRN <= norms.SHARED_BAND[1])
print(f"shared live latents: {shared_sel.sum()}, median decoder cosine {np.nanmedian(cos[shared_sel]):.3f}, "
      f"share with cosine > 0.9: {(cos[shared_sel] > 0.9).mean():.2f}")

# %% [markdown]
# ## 3. Latent scaling: are the distilled-only latents real?
# For each of the top distilled-only latents, least-squares scalars β fit the latent's distilled decoder
# direction to (a) each model's reconstruction error with the latent's own term added back and (b) each
# model's reconstruction, over **held-out** tokens. `nu_error = β_err_base / β_err_distilled` high means the
# base model does carry the direction but the L1 pushed its decoder to 0 (**Complete Shrinkage**);
# `nu_reconstruction` high means other latents rebuild it in the base (**Latent Decoupling**).

# %%
top_d = label.scaling_latents(NRN, alive[SCHEMES[0]], N_SCALING)
scaling = label.latent_scaling(cc, store, top_d, mask=heldout)
fig = label.plot_latent_scaling(scaling)
figures.save(fig, "03_latent_scaling")
n_genuine, n_checked = label.scaling_counts(scaling)
print(scaling["flag"].value_counts().to_string())
print(f"{n_genuine} of the {n_checked} top distilled-only latents active on held-out tokens survive latent scaling "
      f"(relative norms {NRN[top_d].min():.2f}-{NRN[top_d].max():.2f})")

# %% [markdown]
# ## 4. The reasoning lexicon, validated against planted labels
# The lexicon (`lib/thinkdiff/lexicon.py`) merges the published word lists into the four categories;
# matching is tokenizer-aware (case and leading-space variants, multi-token phrases as sequences, word
# boundaries). The organism's teacher planted a category on every token of each reasoning move, so we can
# measure each entry's **precision** (matched tokens that carry the entry's category) and recall. The
# contrastive list beyond "however"/"but" is ours and must earn its place here.

# %%
def lexicon_validation():
    lex_all = lexicon.Lexicon(tok, tiers=("core", "extended", "ours", "low_precision", "ambiguous"))
    val = label.lexicon_validation(lex_all, meta)
    per_tier = val[val.entry == "*"].pivot_table(index=["category", "tier"], values=["n_matched_tokens", "precision", "recall"])
    display(per_tier.round(3))
    contrast = val[(val.category == "contrastive") & (val.entry != "*")]
    display(contrast[["entry", "tier", "n_matched_tokens", "precision", "recall", "marker_recall"]].round(3))
    ours = contrast[contrast.tier == "ours"]
    n_seen = int((ours.n_matched_tokens > 0).sum())
    print(f"contrastive 'ours' entries: {len(ours)}, occurring in the organism corpus: {n_seen}; "
          + ("validated precision of those: " + ", ".join(f"{e} {p:.2f}" for e, p in zip(ours.entry, ours.precision) if np.isfinite(p))
             if n_seen else "none occurs, so the organism cannot validate them (only 'however'/'but' are tested)"))

lexicon_validation() if LABELS else print("lexicon validation needs planted labels: skipped on", RUN)

# %% [markdown]
# ## 5. Per-category ReasonScore
# Galichin et al.'s score: a latent's mean activation inside the category's lexicon windows (1 token before,
# 2 after) as a share of all latents', times the normalised entropy over the category's words to the power
# α (demotes single-word detectors), minus its share outside. The default lexicon tiers ("core" + "ours")
# are used. Ranked tables per category, with the relative norm.

# %%
lex = lexicon.Lexicon(tok)
scores = label.reason_scores(A, lex, meta, alpha=ALPHA, before=WINDOW[0], after=WINDOW[1], special_ids=tok.all_special_ids)
ranked = pd.concat({c: scores.ranked(c, n=5, nrn=NRN) for c in CATS}, names=["category", "rank"])
ranked.round(3)

# %% [markdown]
# ## 6. The paper's view: latents active at each category's marker tokens
# Marker tokens are the paper's single-token words (" Wait"; " Therefore", " Thus"; " Alternatively";
# " However", " But"), restricted on the organism to uses inside a planted move of that category. The
# histogram takes every latent firing on more than 10 % of the category's top count, as the paper did;
# red bars are the extreme bins.

# %%
marker_ids = lexicon.marker_token_ids(tok)
masks = label.marker_masks(meta, marker_ids, use_labels=LABELS)
counts = label.marker_counts(A, masks)
cat_lat = label.category_latents(counts, NRN)
print("marker tokens per category:", counts.attrs["n_markers"])
figures.save(label.plot_category_relative_norms(cat_lat), "03_marker_latent_norms")
cat_lat.groupby("category")["relative_norm"].describe().round(3)

# %% [markdown]
# ## 7. Ground truth, scored honestly
# The organism planted three kinds of truth: every token of a reasoning **move** carries its category
# (spans), the move's **marker** word opens it, and at the closing "." of each written operation, **is this the
# last operation?** (`00_evaluate`; the base reads this one too, from the question's tags: the distilled-only
# concept is the gated connective of §7b). Two questions per target:
#
# 1. **Is it there?** A logistic-regression probe on each model's raw activations at the hook layer, and one
#    on both models' activations together (what a crosscoder latent reads), fit on the store's training
#    documents and scored on its held-out documents: the *ceiling* any dictionary feature could reach, and
#    (base vs distilled) whether the target is shared or distilled-only. Move spans are scored among the
#    tokens inside `<think>` blocks, where the moves are told apart from each other, not from base text.
# 2. **Does the crosscoder isolate it?** The best single latent, and the best distilled-specific one
#    (relative norm ≥ 0.9), are **chosen on training tokens and scored on held-out tokens**; a 5-sparse
#    probe (the 5 latents with the best training AUROC, then a logistic regression) is compared with the
#    dense ceiling, as in sparse probing.
#
# The planted quantity is scored among operation ends only (the hard contrast: every other "." of an
# operation looks the same). Targets, fixed in `probes.TARGETS` before any crosscoder was scored: (a) a
# marker latent with held-out AUROC ≥ 0.95; (b) a 5-sparse probe within 0.05 of the dense ceiling on spans;
# (c) a distilled-specific latent with held-out AUROC ≥ 0.90 for the planted quantity, once the probes
# confirm it is distilled-only. Each verdict comes with a 95 % CI over documents of the quantity it compares,
# and says when the threshold lies inside it. A smoke run reports "not tested". A run without planted labels
# skips this section (and its plots) with a sentence.

# %%
docs = run.documents()
seqs = [d.input_ids for d in docs]
sample = np.random.default_rng(0).choice(store.n_tokens, size=min(2000, store.n_tokens), replace=False)
assert all(seqs[meta["doc_id"][i]][meta["pos"][i]] == meta["token_id"][i] for i in sample), "documents != store tokens"
verdicts, ceiling = {}, pd.DataFrame()
if LABELS:
    step_end = organism.step_end_labels(docs, meta)
    # spans are scored among <think>-block tokens: every base-corpus token would be an easy negative
    think_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in (world.THINK_OPEN, world.THINK_CLOSE)]
    in_think = probes.think_mask(meta, *think_ids) if all(len(i) == 1 for i in think_ids) else None
    print("spans scored among", "tokens inside <think> blocks" if in_think is not None else
          "all labelled tokens (the tokenizer splits the think tags)")
    targets = probes.organism_targets(meta, step_end, CATS, in_think=in_think)
    ceiling = probes.probe_ceiling(store, targets)
    recovery = {s: probes.latent_recovery(acts[s], meta["split"], targets, nrn[s], ks=(2, probes.TARGETS["sparse_k"]),
                                          doc=meta["doc_id"]) for s in SCHEMES}
    verdicts = {s: probes.ground_truth_verdicts(ceiling, recovery[s], tested=run.tested) for s in SCHEMES}
    cols = ["probe base", "probe distilled", "probe pair", "best latent", "latent AUROC", "latent relative norm",
            "5-sparse probe", "specific latent", "specific latent AUROC", "ci_lo", "ci_hi", "verdict"]
    display(pd.concat({s: v[cols] for s, v in verdicts.items()}, names=["scheme"]).round(3))
else:
    print(f"ground truth: {RUN} has no planted labels, so there is nothing to score latents against.")

# %% [markdown]
# Each target next to its ceiling: the dense probes of both models, the train-selected latent, and the
# 5-sparse latent probe (held-out AUROC throughout). A bar far below the probes means the information is in
# the activations but the dictionary does not isolate it.

# %%
def ground_truth_plot(v0):
    fig, ax = plt.subplots(figsize=(11, 3.8))
    show_cols = ["probe base", "probe distilled", "probe pair", "latent AUROC", "5-sparse probe", "specific latent AUROC"]
    v0[show_cols].astype(float).plot.bar(ax=ax, width=0.85)
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_ylim(0.4, 1.02); ax.set_xlabel("planted target"); ax.set_ylabel("held-out AUROC")
    ax.set_title(f"Ground truth: probe ceilings vs crosscoder latents ({SCHEMES[0]}, train-selected)")
    ax.tick_params(axis="x", rotation=35); ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    figures.save(fig, "03_ground_truth")
    for s in SCHEMES:
        print(f"{s}:")
        for name, r in verdicts[s].iterrows():
            print(f"  {name}: {r.verdict} ({r.reason})")

v0 = verdicts[SCHEMES[0]] if LABELS else None
ground_truth_plot(v0) if LABELS else print("no planted labels: no ground-truth plot")

# %% [markdown]
# ## 7b. A known answer for "distilled-only": the gated connective
# Every target above is read by the base model too, so none of them can show that a latent belonging to the
# distilled model only is found when there is one. The organism plants such a concept on purpose. After every
# operation but the last, the teacher writes " Next" or " Then", chosen by **parity of the result just written
# XOR parity of the question's first number**. To predict it at the step's closing "." the distilled model must
# compute that XOR; the base never sees a connective and has no reason to. Five checks, fixed in
# `planted.GATE_CHECKS` before any model was trained on it:
#
# - **(a) audit, no model:** an additive model of every visible quantity (numbers, operands, results, tags,
#   earlier connectives, position) must not predict the bit (held-out AUROC ≤ 0.55), and must once it is given
#   the parity interaction (≥ 0.95), so the audit could have seen a giveaway;
# - **(b) behaviour:** the distilled model picks the right connective (teacher-forced, held-out problems, ≥ 0.95);
# - **(c) probe gap:** a dense probe reads the bit from the distilled model at the analysis layer (≥ 0.90), from
#   the base at *no* layer (≤ 0.60), and the gap's 95 % CI (bootstrap over problems) starts at ≥ 0.25;
# - **(d) control fine-tune:** a model fine-tuned on the same traces with a coin-flip connective does not read
#   it (≤ 0.60): the representation follows the need, not fine-tuning on traces as such;
# - **(e) shared control:** the parity of the result, read on the result's own token, where both models hold
#   the number, is read by both (≥ 0.90).
#
# Where in depth the distilled model computes the bit is not known in advance, so the **analysis layer** is chosen
# on training problems alone: the shallowest layer whose cross-validated training probe reaches 0.90
# (`planted.analysis_layer`), unless the run config fixes it beforehand (`[label] gate_layer`). (c)-(e) are then
# scored there on held-out problems, and the run's hook layer is shown beside it.

# %%
GATE_TRAIN, GATE_EVAL = L["gate_problems"]
# The gated connective is planted by the organism's teacher only; other labelled pairs (smollm2-135m's natural-
# English teacher picks its connectives freely) have no gate to check.
GATE = run.has_planted_gate
gate_checks, gate_layer, gate_cv_auroc = {}, None, None
if GATE:
    gate_checks["(a) audit"] = planted.audit_verdict(planted.gate_audit())
    gate_models = {"base": pair.base, "distilled": pair.distilled}
    coin_control = getattr(pair.organism, "coin_control", None)   # shipped for organism.COIN_CONTROL_SIZES only
    if coin_control is not None:
        gate_models["coin-flip control"] = coin_control
    gate_tr = planted.gate_traces(world.problem_split(0, GATE_TRAIN, "train"), tok, seed=0)
    gate_ev = planted.gate_traces(world.problem_split(0, GATE_EVAL, "eval"), tok, seed=1)
    behaviour = planted.connective_accuracy(pair.distilled, tok, gate_ev)
    gate_checks["(b) behaviour"] = planted.behaviour_verdict(behaviour["accuracy"], behaviour["n"], run.tested)
    # the bit at each scored step's "."; the parity on the result token just before it
    gate_acts = {(m, t): (planted.gate_activations(model, gate_tr, f), planted.gate_activations(model, gate_ev, f))
                 for m, model in gate_models.items() for t, f in (("bit", "gate"), ("parity", "parity"))}
    gate_probe = {k: planted.layer_probes(*a) for k, a in gate_acts.items()}
    # chosen on training problems only; no layer reaching the bar: judged at the hook, where (c) then fails
    gate_cv_auroc = gate_probe["distilled", "bit"]["cv_auroc"]
    gate_layer = planted.chosen_layer(gate_cv_auroc, L["gate_layer"], pair.layer)
    at = gate_layer - 1                                # index of resid_pre of block `gate_layer` in the per-layer arrays
    y_ev, unit_ev = gate_acts["distilled", "bit"][1]["y"], gate_acts["distilled", "bit"][1]["doc"]
    gap = planted.gap_ci(y_ev, gate_probe["distilled", "bit"]["scores"][at], gate_probe["base", "bit"]["scores"][at],
                         unit_ev)
    gate_checks["(c) probe gap"] = planted.probe_gap_verdict(gate_probe["distilled", "bit"]["auroc"][at],
                                                             gate_probe["base", "bit"]["auroc"], gap[1], run.tested)
    coin_at = gate_probe["coin-flip control", "bit"]["auroc"][at] if "coin-flip control" in gate_models else None
    gate_checks["(d) control fine-tune"] = planted.control_verdict(coin_at, run.tested)
    gate_checks["(e) shared control"] = planted.shared_verdict(gate_probe["base", "parity"]["auroc"][at],
                                                               gate_probe["distilled", "parity"]["auroc"][at], run.tested)
    print(f"connective accuracy (teacher-forced, {behaviour['n']} held-out steps): {behaviour['accuracy']:.3f} "
          f"(between the two connectives: {behaviour['choice_accuracy']:.3f})")
    print(f"analysis layer {gate_layer} (training CV AUROC of the distilled probe per layer: "
          f"{np.round(gate_probe['distilled', 'bit']['cv_auroc'], 3).tolist()}); the run's hook layer is {pair.layer}, "
          f"where the distilled probe reads {gate_probe['distilled', 'bit']['auroc'][pair.layer - 1]:.3f} held-out")
    print(f"probe gap at layer {gate_layer}: {gap[0]:.3f}, 95% CI [{gap[1]:.3f}, {gap[2]:.3f}]")
    display(pd.DataFrame(gate_checks).T)
else:
    print(f"{RUN}: no gated connective is planted in this pair's teacher traces, so there is none to check")

# %% [markdown]
# The probes layer by layer: the gate bit should rise in the distilled model only, and stay near chance in the
# base and the coin-flip control at every depth; the result's parity, the shared control, in both.

# %%
if GATE:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    layers = np.arange(1, pair.n_layers + 1)
    for ax, t, title in ((axes[0], "bit", "gate bit (distilled-only by design)"),
                         (axes[1], "parity", "result parity (shared control)")):
        for m in gate_models:
            if t == "parity" and m == "coin-flip control":
                continue
            ax.plot(layers, gate_probe[m, t]["auroc"], marker="o", label=m)
        ax.axvline(pair.layer, color="grey", ls=":", lw=1)
        ax.axvline(gate_layer, color="tab:green", ls="--", lw=1)
        ax.axhline(0.5, color="grey", lw=0.6)
        ax.set(xlabel="resid_pre of block", ylabel="held-out probe AUROC", title=title, ylim=(0.4, 1.02))
        ax.legend(fontsize=8)
    axes[0].axhline(planted.GATE_CHECKS["probe_base_max"], color="tab:red", ls="--", lw=0.8)
    fig.suptitle(f"Dense probes per layer on held-out problems ({RUN}; dotted: hook layer, dashed: analysis layer)")
    fig.tight_layout()
    figures.save(fig, "03_gate_probes")
    plt.show()

# %% [markdown]
# **Can the ablation see a cause at all?** Before asking whether removing a latent changes the distilled
# model's choice, a positive control: project the direction along which the two classes differ (the mean
# activation of bit-1 steps minus that of bit-0 steps, on *training* problems, at the analysis layer) out of the
# distilled model's residual stream at every position, on held-out problems, and count the connective choices
# that flip, against as many random directions. The metric and its comparison are the latent's below; if this
# flips nothing, a latent that flips nothing says nothing (`planted.causal_control_verdict`).

# %%
causal_control = None
if GATE:
    direction = planted.mean_difference_direction(gate_acts["distilled", "bit"][0], gate_layer)
    randoms = planted.random_directions(len(direction), L["gate_random"], seed=0)
    dir_margins = planted.direction_margins(pair.distilled, gate_layer, gate_ev, np.vstack([direction, randoms]), tok)
    dir_effect = planted.ablation_effect(dir_margins, L["gate_random"], unit_ev)
    causal_control = planted.causal_control_verdict(dir_effect, run.tested)
    gate_checks["positive control of the ablation"] = causal_control
    print(f"{causal_control['verdict']}: {causal_control['reason']}")
    print(f"mean connective margin (logit right - wrong), {dir_margins.shape[1]} held-out steps: clean "
          f"{dir_margins[0].mean():.2f}, mean-difference direction out {dir_margins[1].mean():.2f}, random "
          f"directions out {dir_margins[2:].mean():.2f}")

# %% [markdown]
# **Does the crosscoder find it?** The run's crosscoders, trained exactly as configured, but on a store harvested
# at the analysis layer (the same run when that is the hook layer). On the store's tokens (the gate is scored at
# the "." of scored steps), the distilled-specific latent (relative norm ≥ 0.9) with the best *training* AUROC for
# the bit is scored on held-out tokens; then it is removed from the distilled model's residual stream there (its
# contribution `f_j · W_dec[j, distilled]`) on held-out problems, and the share of connective choices that flip is
# compared with matched random latents (same firing frequency and decoder norm), CI over problems
# (`planted.crosscoder_finding`). The shared control's best latent should sit in the shared band.

# %%
gate_found, gate_margins = {}, {}
# an imported crosscoder (the run config's `from`) reads the hook layer only: at another analysis layer it has no twin
gate_schemes = [s for s in SCHEMES if gate_layer == pair.layer or s not in run.config.imports] if GATE else []
if GATE and gate_schemes != SCHEMES:
    print(f"{', '.join(s for s in SCHEMES if s not in gate_schemes)}: imported, trained on block {pair.layer}; "
          f"there is no such crosscoder at the analysis layer {gate_layer}, so this check leaves it out")
if gate_schemes:
    gate_run = run if gate_layer == pair.layer else pipeline.load_run(RUN, overrides={"harvest.layer": gate_layer})
    g_meta, g_docs = gate_run.store.meta, gate_run.documents()
    gate_y = organism.step_end_labels(g_docs, g_meta, field="gate")
    parity_y = organism.step_end_labels(g_docs, g_meta, field="parity")
    for s in gate_schemes:
        g_codes, g_nrn = gate_run.codes(s), gate_run.relative_norms(s)
        f = planted.crosscoder_finding(g_codes, g_nrn, g_meta["split"], gate_y, gate_run.crosscoders[s], pair.base,
                                       pair.distilled, gate_layer, gate_ev, tok, L["gate_random"], unit_ev,
                                       causal_control, run.tested)
        p = probes.latent_recovery(g_codes, g_meta["split"], {"parity": np.where(parity_y >= 0, parity_y == 1, np.nan)},
                                   g_nrn, ks=(1,)).loc["parity"]
        gate_margins[s] = f["margins"]
        gate_found[s] = planted.finding_summary(f, gate_layer, p)
    display(pd.DataFrame(gate_found).T)

# %% [markdown]
# The same comparison as a picture: the share of held-out connective choices that flip when each thing is
# removed from the distilled model at the analysis layer. The mean-difference direction is the positive control;
# each scheme's latent should stand above its matched random latents as the direction stands above random ones.

# %%
if GATE:
    bars = {"mean-difference direction": np.mean(np.sign(dir_margins[1]) != np.sign(dir_margins[0])),
            "random directions": np.mean(np.sign(dir_margins[2:]) != np.sign(dir_margins[0]))}
    for s, m in gate_margins.items():
        if m is not None:
            bars[f"{s} latent #{gate_found[s]['latent']}"] = np.mean(np.sign(m[1]) != np.sign(m[0]))
            bars[f"{s} matched random latents"] = np.mean(np.sign(m[2:]) != np.sign(m[0]))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.barh(list(bars), list(bars.values()), color=["tab:green", "grey"] + ["tab:blue", "lightgrey"] * len(gate_margins))
    ax.invert_yaxis()
    ax.set(xlabel="share of held-out connective choices that flip", ylabel="removed from the distilled model",
           title=f"Ablations at resid_pre of block {gate_layer} ({RUN})")
    fig.tight_layout()
    figures.save(fig, "03_gate_ablation")
    plt.show()

# %% [markdown]
# The per-latent AUROC of every latent on held-out tokens (the features table's columns, and the feature
# cards' "ground truth" labels) for spans and marker tokens.

# %%
gt, gt_marker = {}, {}
marker_labels = np.where(meta["marker"], meta["label"], np.minimum(meta["label"], 0))
for s in SCHEMES if LABELS else ():
    sub = codes.restrict(acts[s], heldout)
    gt[s] = label.ground_truth_auroc(sub, meta["label"], nrn[s])
    gt_marker[s] = label.ground_truth_auroc(sub, marker_labels, nrn[s])

# %% [markdown]
# **Base-side marker latents: token detectors?** (claim 4) For every latent firing on at least 10 % of
# the " Wait" markers: does it fire on the word whatever its role (the organism's plain sentences use
# "Wait" in ordinary roles too), and are its firings mostly on that word? The claim concerns the base-side
# ones (relative norm ≤ 0.3).

# %%
n_wait = counts.attrs["n_markers"]["self_reflection"]
wait_lat = np.nonzero(counts["self_reflection"].to_numpy() >= 0.1 * n_wait)[0]
profile = label.lexical_profile(A, meta, wait_lat, marker_ids["self_reflection"], "self_reflection")
profile["relative_norm"] = NRN[profile.latent]
print(f"' Wait' tokens: {profile.attrs['n_labelled']} in reflection moves, {profile.attrs['n_unlabelled']} in ordinary roles")
profile.sort_values("relative_norm").round(3)

# %% [markdown]
# ## 8. Max-activating contexts
# For the train-selected latent of each marker target and of the planted quantity: the tokens with the highest activation (the
# crosscoder's `encode` on raw activations), split by document kind (teacher trace vs base corpus), with the
# firing token boxed and each token shaded by this latent's activation (values in tooltips and at the end).

# %%
kind = np.array([d.kind for d in docs], dtype=object)[meta["doc_id"]]
best = label.context_latents(v0 if LABELS else None, scores)   # no ground truth: the top ReasonScore latents
show = list(dict.fromkeys(best))
ctx = browser.max_activating_contexts(cc, store, A, show, k=5, context=15, group=kind)
assert (ctx.groupby(["latent", "group"])["activation"].apply(lambda a: (np.diff(a.to_numpy()) <= 0).all())).all()
for name, j in best.items():
    display(HTML(f"<h4>{name}: latent {j} (relative norm {NRN[j]:.2f})</h4>"
                 + browser.contexts_html(ctx[ctx.latent == j], tok)))

# %% [markdown]
# ## 9. The features table
# One row per latent: relative norms (L2, L1), decoder norms and cosine, frequency, latent-scaling ratios
# (for the latents checked), marker counts, ReasonScores and lexicon shares, ground-truth AUROCs, and a
# label with its provenance (ground truth > score > lexicon). It is cached with the run
# (`label.run_features`), where `03c_browser` finds it.

# %%
truth_full = label.GroundTruth(gt[SCHEMES[0]].best, gt[SCHEMES[0]].auroc) if LABELS else None
table = label.run_features(run, parts=label.LabelParts(scaling, scores, counts, truth_full))
print(table.label_source.value_counts().to_string())
cols = ["latent", "relative_norm", "relative_norm_l1", "decoder_cosine", "frequency", "nu_error", "nu_reconstruction",
        "scaling_flag"] + ([f"auroc_{c}" for c in CATS] if LABELS else []) + ["label", "label_source"]
table[alive[SCHEMES[0]]].sort_values("relative_norm", ascending=False)[cols].head(10).round(3)

# %% [markdown]
# ## 10. The paper's claims on this run
# Verdicts are computed from the numbers above (rules in `thinkdiff.claims`), never typed in, and shown in
# section 11 as the run report records them (a smoke run: "not tested").

# %%
# Claim 1's control: each scheme trained the same way, twice, on the base paired with its *control* fine-tune
# (the distillation's recipe and budget on base text, no traces). Any fine-tuning moves some directions, so this
# null can show exclusive latents too; claim 1 needs more of them than it shows, seed to seed. A distilled-only
# latent counts only if it also survives latent scaling (held-out tokens), measured the same way on the null.
null_counts, null_nrn, real_genuine = {}, {}, {}
if run.has_null:
    for s in SCHEMES:
        null_counts[s], null_nrn[s] = label.claim1_null(run, s)
        real_genuine[s] = label.genuine_mask(ccs[s], store, nrn[s], acts[s].frequency())
    print({s: [(n["distilled_only"], n["distilled_only_genuine"], n["base_only"]) for n in v]
           for s, v in null_counts.items()},
          "(distilled-only, of them surviving latent scaling, base-only) live latents per null seed")
v1, e1 = claim_rules.claim1_verdict(NRN, A.frequency(), null_counts.get(SCHEMES[0]), genuine=real_genuine.get(SCHEMES[0]),
                                    pair=run.config.preset, imported=bool(run.config.imports))

# %% [markdown]
# The null's relative norms beside the real pair's: a pair that was only fine-tuned, without distillation, spreads
# its latents this far from 0.5; the real pair's exclusive tails must stand out beyond that.

# %%
if run.has_null:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bins = np.linspace(0, 1, 41)
    real_live = NRN[A.frequency() >= claim_rules.MIN_FREQUENCY]
    ax.hist(real_live, bins=bins, alpha=0.6, density=True, label=f"base vs distilled ({len(real_live)} live)")
    for k, r in enumerate(null_nrn[SCHEMES[0]]):
        ax.hist(r, bins=bins, histtype="step", lw=1.5, density=True, label=f"base vs control, seed {k + 1} ({len(r)} live)")
    ax.set_yscale("log")
    ax.set(xlabel="relative decoder norm (0 base-only, 1 distilled-only)", ylabel="density of live latents",
           title=f"Claim 1's null: relative norms, real pair vs fine-tuned control ({SCHEMES[0]})")
    ax.legend(fontsize=8)
    figures.save(fig, "03_claim1_null")
    plt.show()

# %%
# Claim 2: is a reasoning feature among the top distilled-specific latents more often than among random live
# latents? With planted labels a latent is a reasoning feature of a category when its held-out top firings lie
# inside that category's moves (precision >= 0.9, category chosen on training tokens) and it is not merely a
# detector of a token that ordinary text uses too (label.move_precision); a phase of a move (the ":" of "Wait,
# let me check:") counts, a " (" that every trace has does not. Without planted labels only the ReasonScore
# labels exist, which can give at most "mixed".
moves = label.move_precision(A, meta, np.nonzero(alive[SCHEMES[0]])[0], doc_kind=kind) if LABELS else None
v2, e2 = claim_rules.claim2_verdict(NRN, table.frequency.to_numpy(), label.reasoning_features(table, moves),
                                    ground_truth=LABELS)
d_only = None
if LABELS:   # what the distilled-only latents are: reasoning phases, trace syntax, or text both models read
    d_only = label.distilled_only_moves(moves, NRN, tok)
    display(d_only[["latent", "relative_norm", "category", "precision", "token", "lexical", "n_ordinary",
                    "base_doc_share", "reasoning"]].sort_values("relative_norm", ascending=False).round(3))
    n_reasoning, n_other, n_other_base = label.distilled_only_counts(d_only)
    print(f"{len(d_only)} live distilled-only latents: {n_reasoning} reasoning features; of the {n_other} others, "
          f"{n_other_base} fire on base documents too (more than {label.BASE_DOC_SHARE:.0%} of their top held-out "
          "activations)")
v3, e3 = claim_rules.claim3_verdict(cat_lat, NRN, A.frequency(), categories=CATS)
v4, e4 = claim_rules.claim4_verdict(profile, NRN)
claims = {"1": (v1, e1), "2": (v2, e2), "3": (v3, e3), "4": (v4, e4)}
if len(SCHEMES) > 1:   # claim 10: each substantive finding measured again under every scheme
    claims["10"] = claim_rules.claim10_verdict(label.claim10_findings(run, masks, scaling, null_counts, real_genuine))

# %% [markdown]
# ## 11. Record for the run report
# The numbers above (`records.label_numbers`) and the claims, as the report records them.

# %%
recorded = records.record_label(run, claims, figures, scaling=scaling, genuine=real_genuine, null_counts=null_counts,
                                d_only=d_only, gate_checks=gate_checks, gate_layer=gate_layer,
                                gate_cv_auroc=gate_cv_auroc, gate_found=gate_found, ceiling=ceiling, ground_truth=verdicts)
for k, c in recorded.items():
    print(f"claim {k} [{report.CLAIMS[int(k)]}]: {c['verdict'].upper()}\n    {c['evidence']}")
