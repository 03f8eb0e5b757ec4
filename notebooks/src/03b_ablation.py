# %% [markdown]
# # 03b · The paper's causal check: ablating distilled-leaning latents
#
# The paper's claim 5: zero the crosscoder latents that fire at a category's marker tokens and lean to the
# distilled model, splice that reconstruction into both models at the hook layer, and the distilled model's
# logit for the marker word should fall more than when the same number of random latents are zeroed, while
# the base barely moves. Here with held-out occurrences, a random-latent control at every k, the
# reconstruction-only arm, and 95 % bootstrap CIs over documents. The random control is matched to the
# targeted latents on firing count at the markers, relative norm and decoder norms
# (`ablation.matched_random_latents`): drawing from all latents, dead ones included, would remove almost
# nothing and make any targeted effect look large. The
# ablation settings (occurrences per category, the k grid and the k the claim is judged at) are the run
# config's `[label]` table.

# %% [parameters]
RUN = "organism-m"          # the run config: configs/<RUN>.toml ([label]: n_occurrences, ablation_ks, k_verdict)
N_BOOT = 1000               # bootstrap resamples for 95% CIs
THREADS = None              # torch CPU threads (None: one per core; 1 where other jobs share the cores)

# %%
from thinkdiff import session
session.start(globals(), threads=THREADS)  # hub offline, papermill parameters checked, torch threads
import torch
from IPython.display import display
from thinkdiff import ablation, label, lexicon, pipeline, plots, records
CATS = list(lexicon.CATEGORIES)
figures = plots.Figures()   # every figure this notebook saves, for the run report

# %% [markdown]
# ## 1. The run and the latents active at each category's marker tokens
# The marker tokens are the paper's single-token words (" Wait"; " Therefore", " Thus"; " Alternatively";
# " However", " But"), on the organism restricted to uses inside a planted move of that category. For each
# latent: how many of a category's marker tokens in the store's training split it fires on
# (`label.marker_counts`), and how much it contributes to the distilled model's reconstruction there
# (`label.marker_contributions`: activation times the distilled decoder norm), which the shared control is
# matched on.

# %%
run = pipeline.load_run(RUN)
L = run.config.label
N_OCCURRENCES, KS, K_VERDICT = L["n_occurrences"], list(L["ablation_ks"]), L["k_verdict"]
LABELS = run.has_labels
pair, store, cc = run.pair, run.store, run.crosscoder()
meta, tok = store.meta, pair.tokenizer
A, NRN = run.codes(), run.relative_norms()
marker_ids = lexicon.marker_token_ids(tok)
# The latents are selected on the training split; the ablation runs at held-out occurrences (section 2).
train_masks = {c: m & (meta["split"] == 0) for c, m in label.marker_masks(meta, marker_ids, use_labels=LABELS).items()}
counts = label.marker_counts(A, train_masks)
contribution = label.marker_contributions(A, train_masks, cc)
seqs = [d.input_ids for d in run.documents()]
print(run)
print("marker tokens per category:", counts.attrs["n_markers"])

# %% [markdown]
# ## 2. Ablation
# For each category, among latents active at its marker tokens, take the most frequently active fraction k
# with relative norm > 0.5 and zero them in the crosscoder reconstruction spliced into both models at the
# hook layer (positions 1..pos-1; position 0 stays clean, as in the paper). Controls: sets of as many random
# marker-active latents matched on firing count at the markers, relative-norm bin and each model's decoder
# norm (`[label] ablation_random_sets` of them where the claim is judged, four elsewhere); as many *shared*
# latents (relative norm 0.3–0.7) matched on their contribution to the distilled reconstruction at the markers
# (is it distilled-specific latents that matter, or any latents carrying that much signal?); and the
# reconstruction with nothing zeroed. Occurrences are planted marker tokens in held-out documents, sampled at
# random (the paper took the first ones); a category with too few of them is not tested. CIs resample
# documents, not occurrences, draw one whole random set per replicate, and are widened for the number of
# categories judged (Bonferroni). The claim holds for a category when the distilled model's targeted-minus-random
# and targeted-minus-shared changes have CIs below 0, and the base "barely moves": the paired per-occurrence
# contrast base − distilled is above 0 and the base's own change stays within ±`[label] ablation_base_margin`
# (`claims.claim5_verdict`).

# %%
occ_held = ablation.marker_occurrences(meta, marker_ids, use_labels=LABELS, split=1)
# A category with too few held-out markers is not tested: its training markers chose the latents, so
# ablating there would score the selection on its own data.
occ, untested = ablation.testable_occurrences(occ_held, N_OCCURRENCES, CATS)
for c in CATS:
    print(f"{c}: {len(occ_held[c])} held-out occurrences" + (" (not tested: too few)" if c in untested else ""))
cfg = ablation.AblationConfig(ks=tuple(KS), n_occurrences=N_OCCURRENCES, n_boot=N_BOOT, k_verdict=K_VERDICT,
                              n_random_sets=L["ablation_random_sets"])
abl = (ablation.run_ablation(pair.base, pair.distilled, cc, pair.layer, seqs, occ, counts, NRN, cfg,
                             contribution=contribution) if occ else None)
if abl is not None:
    figures.save(ablation.plot_ablation(abl), "03b_ablation")
else:
    print("no category has enough held-out marker occurrences: nothing to ablate, claim 5 is not tested")

# %% [markdown]
# The numbers behind the figure (mean marker-logit change and its CI over documents), at
# k = `K_VERDICT`, with the targeted-minus-random contrast per model. The paper (7B, k = 0.2) had distilled
# targeted/random ≈ −1.7/−0.5 (self-reflection) to −5.8/−2.3 (deductive) and base changes near 0.

# %%
kmax = K_VERDICT
if abl is not None:
    sm = abl.summary
    at = sm[(sm.k == kmax) | (sm.arm == "recon")].pivot_table(index=["category", "model"], columns="arm",
                                                             values=["mean", "ci_lo", "ci_hi"])
    display(at.round(2))
    clean = abl.per_occurrence.groupby(["category", "model"])["clean_logit"].mean().unstack()
    print("clean marker logits (mean):"); display(clean.round(2))
    print("ablated latents per (category, k):", {f"{c} {k}": len(v) for (c, k), v in abl.latents.items() if k == kmax})
    tmr = sm[sm.arm == "targeted_minus_random"].pivot_table(index=["category", "model"], columns="k", values="mean")
    print("targeted minus random, mean marker-logit change per k:"); display(tmr.round(3))

# %% [markdown]
# ## 3. Record for the run report
# Each arm's mean marker-logit change and CI at k = `K_VERDICT` (`records.ablation_numbers`) and claim 5
# (`claims.claim5_verdict`, the rule above; a smoke run reports "not tested").

# %%
for k, c in records.record_ablation(run, abl, occ, untested, figures).items():
    print(f"claim {k}: {c['verdict'].upper()} - {c['evidence']}")
