"""Crosscoders trained elsewhere run through every analysis notebook via a run config (``[train.<scheme>] from``).

The checkpoints are built here in each external layout (docs/external-crosscoders.md; layouts and their forward
passes: tests/unit/test_formats.py): two small crosscoders trained by thinkdiff on a small organism store, written
as crosscoder_learning's ``BatchTopKCrossCoder`` (hub folder) and ``CrossCoder`` (``model_final.pt``,
``_orig_mod.``-prefixed keys) and as Kissane's ``cfg.json`` + ``cc_weights.pt``. Two runs import them: one with
crosscoder_learning's pair, one with Kissane's ReLU crosscoder beside a BatchTopK crosscoder it trains itself
(one imported and one trained scheme in one run: 02_train shows the trained one's curves and both ones' quality).
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from thinkdiff import formats, notebooks, pipeline

from .test_notebooks import check_record

ANALYSIS = ("02_train", "03_label", "03b_ablation", "03c_browser", "03d_adl", "04_steer", "05_geometry")
# A small store of the smoke run's pair (a quarter of its documents), small analysis settings: every notebook runs,
# nothing is judged (the smoke run's "not tested").
SMALL = '''extends = "smoke"
[harvest]
n_docs = 200
[label]
n_scaling = 8
n_occurrences = 4
gate_problems = [60, 24]
[steer]
n_prompts = 4
max_new_tokens = 24
[geometry]
runs = []
'''
OWN = {"02_train": {"N_SPLICE_DOCS": 8}, "03b_ablation": {"N_BOOT": 50}, "03c_browser": {"N_CARDS": 2}, "04_steer": {"N_BOOT": 50, "BENCH_TOKENS": 4},
       "05_geometry": {"N_BOOT": 50, "N_PERM": 20}}


def write_external(folder, trained):
    """``trained`` (scheme -> thinkdiff crosscoder) written in the three external layouts; returns their paths."""
    hub = formats.export(trained["batchtopk"], folder / "cl-batchtopk")           # config.json + model.safetensors
    relu_hub = formats.export(trained["relu"], folder / "cl-relu-hub")
    pt = folder / "cl-relu"                                                       # what their training's save writes
    pt.mkdir()
    (pt / "config.json").write_text(json.dumps({"trainer": {"dict_class": "CrossCoder", "layer": trained["relu"].config.layer}}))
    torch.save({f"_orig_mod.{k}": v for k, v in load_file(str(relu_hub / "model.safetensors")).items()},
               pt / "model_final.pt")
    kissane = folder / "kissane"                                                  # training units; no scale saved
    kissane.mkdir()
    u = trained["relu"].unfold()
    torch.save({"W_enc": u.W_enc.detach(), "b_enc": u.b_enc.detach(), "W_dec": u.W_dec.detach(),
                "b_dec": u.b_dec.detach()}, kissane / "cc_weights.pt")
    (kissane / "cfg.json").write_text(json.dumps({"d_in": u.d_model, "dict_size": u.n_latents, "enc_dtype": "fp32",
                                                  "hook_point": f"blocks.{u.config.layer}.hook_resid_pre"}))
    return {"crosscoder_learning BatchTopKCrossCoder": hub, "crosscoder_learning CrossCoder": pt / "model_final.pt",
            "kissane": kissane}


@pytest.fixture(scope="module")
def imported_runs(test_runs):
    folder = test_runs / "imported"
    folder.mkdir(exist_ok=True)
    (folder / "small.toml").write_text(SMALL + "[train.relu]\nn_steps = 100\n[train.batchtopk]\nn_steps = 100\n")
    source = pipeline.load_run(folder / "small.toml", progress=False)
    paths = write_external(folder, source.crosscoders)
    (folder / "imported-cl.toml").write_text(
        SMALL + f'[train.relu]\nfrom = "{paths["crosscoder_learning CrossCoder"].relative_to(folder)}"\n'
        f'[train.batchtopk]\nfrom = "{paths["crosscoder_learning BatchTopKCrossCoder"].relative_to(folder)}"\n')
    (folder / "imported-kissane.toml").write_text(   # the BatchTopK one is the source's own (same store and config)
        SMALL + f'[train.relu]\nfrom = "{paths["kissane"].relative_to(folder)}"\n[train.batchtopk]\nn_steps = 100\n')
    return {"source": source, "paths": paths, "configs": {n: folder / f"imported-{n}.toml" for n in ("cl", "kissane")}}


def test_the_imported_crosscoders_are_the_trained_ones(imported_runs):
    """Each layout gives back what was written: the same codes on the store's tokens (float tolerance)."""
    source = imported_runs["source"]
    x = torch.as_tensor(source.store.acts(list(range(500))))
    pairs = {"cl": {"relu": "relu", "batchtopk": "batchtopk"}, "kissane": {"relu": "relu"}}
    for name, schemes in pairs.items():
        run = pipeline.load_run(imported_runs["configs"][name], progress=False)
        for scheme in schemes:
            cc = run.crosscoder(scheme)
            assert cc.config.origin["format"] in ("crosscoder_learning", "kissane")
            with torch.no_grad():
                got, want = cc.encode(x), source.crosscoder(scheme).encode(x)
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (name, scheme, float((got - want).abs().max()))


@pytest.mark.slow
@pytest.mark.parametrize("layouts", ["cl", "kissane"])
@pytest.mark.parametrize("name", ANALYSIS)
def test_every_analysis_notebook_runs_on_imported_crosscoders(name, layouts, imported_runs, test_runs):
    cfg = imported_runs["configs"][layouts]
    out = notebooks.run(name, test_runs / f"executed-imported-{layouts}", parameters={"RUN": str(cfg), **OWN.get(name, {})})
    assert out.exists()
    record = check_record(test_runs / "runs", f"imported-{layouts}", name)
    assert record["numbers"], name
    if name == "02_train":   # every scheme's held-out quality, imported or trained; claim 9 says why it is not judged
        assert {"relu FVU base", "batchtopk FVU base"} <= set(record["numbers"]), sorted(record["numbers"])
        curves = any(f.endswith("02_training_curves.png") for f in record["figures"])
        assert curves == (layouts == "kissane"), "training curves exactly where a scheme was trained here"
        assert "imported" in record["claims"]["9"]["evidence"], record["claims"]["9"]
