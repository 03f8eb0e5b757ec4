# %% [markdown]
# # 03d · A second lens: the Activation Difference Lens
#
# The crosscoder (`02`-`03c`) explains the pair latent by latent. Minder et al. ("Narrow finetuning leaves
# clearly readable traces in activation differences") read a fine-tune from one vector instead: the **mean
# difference** of the two models' activations at the hook layer over the first few tokens of many texts,
#
# $$\delta = \operatorname{mean}_{\text{texts},\ \text{first } k \text{ tokens}} \big(h_\text{distilled} - h_\text{base}\big),$$
#
# and found that its logit lens names what the fine-tune was about (the paper's setting: the first 5 tokens of
# 10,000 texts). This notebook computes that vector for the run and reads it three ways:
#
# 1. its **logit lens** through each model's own output head (final norm, then unembedding): which tokens it
#    promotes and suppresses;
# 2. its **cosine with every latent's decoder difference** (`W_dec[:, distilled] - W_dec[:, base]`, raw units): is
#    it closer to the distilled-only latents than random directions are?
# 3. **one table** beside the crosscoder's findings (and, on the organism, the planted truth), without a verdict.
#
# `04_steer` steers with the same vector, at the self-reflection latent's norm, as a baseline beside the latents.
# Which texts and how many: the run config's `[adl]` table.

# %% [parameters]
RUN = "organism-m"          # the run config: configs/<RUN>.toml ([adl]: first tokens, texts, random directions)
THREADS = None              # torch CPU threads (None: one per core; 1 where other jobs share the cores)

# %%
from thinkdiff import session
session.start(globals(), threads=THREADS)  # hub offline, papermill parameters checked, torch threads
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from IPython.display import display
from thinkdiff import adl, claims, label, pipeline, planted, plots, records
figures = plots.Figures()   # every figure this notebook saves, for the run report

# %% [markdown]
# ## 1. The run, its crosscoder's findings, and the mean difference
# The run's store already holds both models' activations at the hook layer with each token's position, so the
# mean difference is read from it: no forward pass. A store that dropped position 0 (an attention sink in real
# models) starts at position 1. The features table is `03_label`'s (relative norms, labels, scores), built here if
# missing.

# %%
run = pipeline.load_run(RUN)
A = run.config.adl
pair, store, cc = run.pair, run.store, run.crosscoder()
tok = pair.tokenizer
features = label.run_features(run)
diff = run.adl_difference
delta = diff["delta"]
print(run)
print(f"{diff['n_texts']} texts (asked: {A['n_texts']}), {diff['n_tokens']} tokens, first {A['first_tokens']} stored "
      f"positions from position {int(store.meta['pos'].min())}; hook: resid_pre of block {pair.layer}")
print(f"||delta|| = {np.linalg.norm(delta):.4f}; mean ||h|| on the same tokens: base "
      f"{diff['mean_norm'][0]:.4f}, distilled {diff['mean_norm'][1]:.4f}")

# %% [markdown]
# How the difference varies with the position: the paper reads each position separately; we pool them, and show
# each position's norm and its cosine with the pooled vector.

# %%
per = diff["per_position"]
per_norm = np.linalg.norm(per, axis=1)
per_cos = adl.cosines(delta, per)
display(pd.DataFrame({"tokens": diff["counts"], "||delta_j||": per_norm, "cos(delta_j, delta)": per_cos},
                     index=pd.Index(range(A["first_tokens"]), name="position offset")).round(4))
fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.bar(np.arange(len(per_norm)), np.nan_to_num(per_norm), color="tab:purple")
ax.axhline(np.linalg.norm(delta), color="black", ls="--", lw=1, label="pooled ||delta||")
ax.set_xlabel("position offset (0 = first stored position)"); ax.set_ylabel("||mean difference|| (raw units)")
ax.set_title(f"Mean activation difference per position, {run.name}"); ax.legend(fontsize=8)
figures.save(fig, "03d_per_position")

# %% [markdown]
# ## 2. The logit lens: which tokens the difference promotes
# The vector is read as if it were a last hidden state: each model's final norm, then its unembedding
# (`adl.logit_lens`). The same vector goes through both models' heads: a token the fine-tune pushes towards shows
# at the top of both when the heads agree.

# %%
K = A["top_tokens"]
models = {"base": pair.base, "distilled": pair.distilled}
logits = {m: adl.logit_lens(model, delta) for m, model in models.items()}
lens, rows = {}, []
for m, lg in logits.items():
    promoted, suppressed = adl.top_tokens(lg, K)
    lens[m] = {"promoted": [tok.decode([int(i)]) for i in promoted], "suppressed": [tok.decode([int(i)]) for i in suppressed]}
    for direction, ids in (("promoted", promoted), ("suppressed", suppressed)):
        rows += [{"model": m, "direction": direction, "rank": r, "token": repr(tok.decode([int(i)])), "logit": float(lg[i])}
                 for r, i in enumerate(ids)]
top = pd.DataFrame(rows)
top.pivot_table(index="rank", columns=["model", "direction"], values="token", aggfunc="first")

# %% [markdown]
# The distilled model's lens as a bar chart: the logit each top token gets, promoted above, suppressed below.

# %%
t = top[top.model == "distilled"]
fig, ax = plt.subplots(figsize=(10, 3.6))
shown = pd.concat([t[t.direction == "promoted"], t[t.direction == "suppressed"].iloc[::-1]])
ax.bar(range(len(shown)), shown["logit"], color=np.where(shown["direction"] == "promoted", "tab:red", "tab:blue"))
ax.set_xticks(range(len(shown))); ax.set_xticklabels(shown["token"], rotation=75, fontsize=7)
ax.set_xlabel("token (promoted left, suppressed right)"); ax.set_ylabel("logit of the mean difference")
ax.set_title(f"Logit lens of the mean activation difference, distilled model's head ({run.name})")
figures.save(fig, "03d_logit_lens")

# %% [markdown]
# ## 3. The difference against the crosscoder's latents
# Each latent adds `W_dec[i, distilled] - W_dec[i, base]` to the difference of its two reconstructions (raw units),
# so a latent that explains what the fine-tune changed should point where the mean difference points. The
# distilled-only latents are the run's (relative norm ≥ 0.9, live: `claims.distilled_only_mask`, as claim 1
# counts them).

# %%
D = adl.decoder_differences(cc)
cos = adl.cosines(delta, D)
d_only = claims.distilled_only_mask(features["relative_norm"], features["frequency"])
features["cos_adl"] = cos
cols = ["latent", "relative_norm", "frequency", "label", "cos_adl"]
features.loc[np.argsort(-np.abs(np.nan_to_num(cos)))[:10], cols].round(3)

# %%
fig, ax = plt.subplots(figsize=(6, 3.4))
live = features["frequency"].to_numpy() > 0
ax.hist(cos[live & ~d_only], bins=40, range=(-1, 1), alpha=0.6, density=True, label="other live latents")
ax.hist(cos[d_only], bins=40, range=(-1, 1), alpha=0.6, density=True, label=f"distilled-only ({int(d_only.sum())})")
ax.set_xlabel("cosine(mean difference, decoder difference)"); ax.set_ylabel("density")
ax.set_title(f"The mean difference against every latent, {run.name}"); ax.legend(fontsize=8)
figures.save(fig, "03d_latent_cosines")

# %% [markdown]
# ## 4. Closer than a random direction?
# The statistic: the mean |cosine| of a direction with the distilled-only latents' decoder differences. The ADL
# direction's, against `[adl] n_random` random unit directions' (`adl.closeness`); the rule
# (`claims.adl_closeness_verdict`): supports when at most 5 % of random directions come as close (permutation p ≤
# 0.05), contradicts when it is no closer than the median random direction, mixed in between; a smoke run
# judges nothing. Random directions are isotropic, so any direction the data favours tends to beat them: this
# says the ADL vector lives where the distilled-only latents do, not that it singles them out.

# %%
close = adl.closeness(delta, D[d_only], A["n_random"], A["seed"]) if d_only.any() else None
verdict = claims.adl_closeness_verdict(close, int(d_only.sum()))
print(verdict[0].upper(), "-", verdict[1])
if close is not None:
    fig = adl.plot_against_random(close, "mean |cosine| with the distilled-only latents' decoder differences",
                                  f"The mean difference vs random directions, {run.name}")
    figures.save(fig, "03d_random_directions")

# %% [markdown]
# ## 4b. Closer to the planted distilled-only concept?
# The organism's teacher plants one concept only the distilled model needs: the gated connective (`03_label` §7b).
# Its direction in the distilled model is the mean activation of bit-1 steps minus that of bit-0 steps at the
# hook layer, on the training problems `03_label`'s probes train on (`planted.gate_direction`). The statistic is
# the |cosine| between it and the ADL direction, against the same random unit directions, judged by
# `claims.adl_concept_verdict` (the same thresholds). The comparison means most where the hook layer holds the bit:
# how well the direction separates the two bits on its own training steps is printed beside it (`03_label`'s
# probes show where in depth the bit is computed). A pair whose teacher plants no such concept skips it.

# %%
concept, concept_dir = None, None
if run.has_planted_gate:
    gate = planted.gate_direction(pair.distilled, tok, run.config.label["gate_problems"][0], pair.layer)
    concept_dir = gate["direction"]
    concept = {**adl.closeness(delta, concept_dir[None], A["n_random"], A["seed"]), "n_steps": gate["n_steps"],
               "layer": pair.layer, "auroc": gate["auroc"]}
concept_verdict = claims.adl_concept_verdict(concept)
print(concept_verdict[0].upper(), "-", concept_verdict[1])
if concept is not None:
    print(f"the concept's direction from {concept['n_steps']} scored steps at resid_pre of block {pair.layer}, "
          f"separating the two bits there with training AUROC {concept['auroc']:.3f} (0.5: the layer barely holds "
          f"the bit); cos(ADL, concept) = {adl.cosines(delta, concept_dir[None])[0]:+.4f}")
    fig = adl.plot_against_random(concept, "|cosine| with the gated connective's direction (distilled model)",
                                  f"The mean difference vs the planted concept, {run.name}", color="tab:green")
    figures.save(fig, "03d_planted_concept")

# %% [markdown]
# ## 5. One table: what each lens found
# Per category: how many distilled-only latents the crosscoder labels with it and their best score (held-out
# ground-truth AUROC on the organism, ReasonScore elsewhere), and where the category's words rank among the tokens
# the mean difference promotes (0 = the most promoted, of the whole vocabulary). On a run with planted labels the
# words are the ones the teacher planted, the gated connective (the planted distilled-only concept) among them,
# and the planted truth is counted from the store; elsewhere they are the paper's single-token markers. A word
# that is no single token is ranked by its first token (the one a model emits first), listed in the table.

# %%
tokens = {c: adl.word_token_ids(tok, ws) for c, ws in records.adl_words(run).items()}
table = records.adl_lens_table(tokens, logits, features, meta=store.meta if run.has_labels else None, decode=tok.decode)
print(f"ranks among {len(logits['distilled'])} tokens (0 = the most promoted, {len(logits['distilled']) - 1} = the "
      "most suppressed)")
table

# %% [markdown]
# ## 6. Record for the run report

# %%
numbers = records.adl_numbers(run, diff, lens, table, close, int(d_only.sum()), verdict, concept, concept_verdict)
records.record_adl(run, numbers, figures)
