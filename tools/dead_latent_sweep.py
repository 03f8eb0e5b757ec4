"""Why does BatchTopK leave latents dead, and which knob brings them back? Train BatchTopK crosscoders that
differ in one dead-latent setting on the same store and measure each on the held-out split.

Usage: python tools/dead_latent_sweep.py [--run organism-m] [--out docs/dead-latent-sweep.md]
Dead = never active on the held-out tokens (what ``02_train`` reports). The knobs: ``dead_tokens`` (how long a latent
must be silent before the auxiliary loss trains it), ``auxk_alpha`` (that loss's weight), ``k_aux`` (latents per
token it may use) and the step budget. Every crosscoder is cached by its key (``runs/``).
"""
import time

import pandas as pd

from sweeps import arguments, markdown
from thinkdiff import metrics, pipeline

# One knob at a time against the run's BatchTopK, then the promising pair together.
VARIANTS = [
    {}, {"dead_tokens": 20_000}, {"dead_tokens": 5_000}, {"auxk_alpha": 0.125}, {"auxk_alpha": 0.5},
    {"auxk_alpha": 1.0}, {"auxk_alpha": 2.0}, {"k_aux": 256}, {"n_steps": 4000},
    {"dead_tokens": 20_000, "auxk_alpha": 1.0}, {"auxk_alpha": 1.0, "k_aux": 256},
]


def main() -> None:
    args = arguments(__doc__, "docs/dead-latent-sweep.md", "a run config (configs/<run>.toml)", scheme="batchtopk")
    rows = []
    for over in VARIANTS:
        t0 = time.time()
        run = pipeline.load_run(args.run, overrides={f"train.{args.scheme}.{k}": x for k, x in over.items()})
        cc = run.crosscoder(args.scheme)
        e = metrics.evaluate(cc, run.store, split="heldout", progress=False)
        row = {"change": ", ".join(f"{k}={x}" for k, x in over.items()) or "default",
               "dead fraction (held out)": round(float(e["dead_frac"]), 3), "L0": round(float(e["l0"]), 1),
               "FVU base": round(float(e["fvu"][0]), 4), "FVU distilled": round(float(e["fvu"][1]), 4),
               "seconds (train, or load if cached)": round(time.time() - t0)}
        rows.append(row)
        print(row, flush=True)
    cfg = pipeline.load_run(args.run).train_config(args.scheme)
    with open(args.out, "w") as f:
        f.write(f"# Dead latents by knob ({args.run}, {args.scheme})\n\n"
                "Written by `python tools/dead_latent_sweep.py`; dead = never active on the store's held-out tokens. "
                f"Default: {cfg.n_latents} latents, k = {cfg.k}, {cfg.n_steps} steps of {cfg.batch_size} tokens, "
                f"dead_tokens = {cfg.dead_tokens}, auxk_alpha = {cfg.auxk_alpha}, k_aux = {cfg.k_aux or 'd_model // 2'}.\n\n"
                + markdown(pd.DataFrame(rows)) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
