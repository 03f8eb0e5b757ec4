"""An external crosscoder in a run: ``[train.<scheme>] from`` imports it for the run's store, checked against that
store before any work, carrying the store's provenance and keyed by the checkpoint's content, and the analysis
reads it as it reads a crosscoder thinkdiff trained (layouts: tests/unit/test_formats.py)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from .test_formats import D, acts, cl_state, kissane_state, write_kissane, write_pt

from thinkdiff import formats, label, paths, pipeline, runconfig
from thinkdiff.formats import CheckpointError
from thinkdiff.settings import RunConfigError


class Store:
    """A small activation store: what the import, the provenance check and the analysis read."""

    def __init__(self, x: torch.Tensor, layer: int = 3, name: str = "a"):
        self.x = x.numpy()
        self.n_tokens, self.n_models, self.d_model = self.x.shape
        self.layer, self.path = layer, f"<store {name}>"
        self.norm_scale = np.sqrt(self.d_model) / np.linalg.norm(self.x, axis=-1).mean(0)
        self.config_hash = paths.config_hash({"name": name, "layer": layer})
        self.meta = {"split": (np.arange(self.n_tokens) % 4 == 0).astype(np.int8)}

    def acts(self, idx):
        return self.x[np.asarray(idx)]


def test_import_carries_the_store_provenance_and_a_content_key(tmp_path):
    ckpt = write_pt(tmp_path / "cc", cl_state())
    store = Store(acts(200))
    cc = formats.import_crosscoder(ckpt, store, "relu", out_root=tmp_path / "runs")
    assert cc.config.store_hash == store.config_hash and cc.config.layer == 3
    assert cc.config.origin["sha256"] == formats.digest(formats.detect(ckpt)[1])
    with pytest.raises(ValueError, match="layer 4 \\(store\\) vs 3"):
        cc.check_compatible(Store(acts(200), layer=4, name="b"))     # another layer of the same model
    moved = shutil.copytree(tmp_path / "cc", tmp_path / "elsewhere")
    assert formats.import_key(moved, store, "relu") == formats.import_key(ckpt, store, "relu")
    sd = cl_state(seed=1)
    assert formats.import_key(write_pt(tmp_path / "other", sd), store, "relu") != formats.import_key(ckpt, store, "relu")


@pytest.mark.parametrize("case,match", [
    ("width", "reads 2 models of width 6, the store holds 2 of width 8"),
    ("layer", "trained at layer 5, the store is hooked at layer 3"),
    ("scheme", "batchtopk crosscoder \\(BatchTopKCrossCoder\\), imported as \\[train.relu\\]")])
def test_a_checkpoint_that_does_not_fit_the_store_is_refused_before_any_work(tmp_path, case, match):
    store = Store(acts(50) if case != "width" else torch.randn(50, 2, 8))
    cls = "BatchTopKCrossCoder" if case == "scheme" else "CrossCoder"
    ckpt = write_pt(tmp_path / "cc", cl_state(cls), cls, layer=5 if case == "layer" else 3)
    with pytest.raises(CheckpointError, match=f"model_final.pt does not fit.*{match}"):
        formats.import_crosscoder(ckpt, store, "relu", out_root=tmp_path / "runs")
    assert not [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]


def test_a_run_config_imports_and_the_analysis_reads_it(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    write_kissane(tmp_path / "ext" / "kissane", kissane_state())
    write_pt(tmp_path / "ext" / "btk", cl_state("BatchTopKCrossCoder"), "BatchTopKCrossCoder", layer=3)
    toml = tmp_path / "my-run.toml"
    toml.write_text('extends = "smoke"\n[train.relu]\nfrom = "ext/kissane"\n[train.batchtopk]\nfrom = "ext/btk"\n')
    run = pipeline.load_run(toml, progress=False)
    assert run.config.imports == {"relu": str(tmp_path / "ext" / "kissane"), "batchtopk": str(tmp_path / "ext" / "btk")}
    run.__dict__["store"] = store = Store(acts(400))        # stands in for the harvested store
    for s in run.config.schemes:
        cc = run.crosscoder(s)
        assert cc.config.store_hash == store.config_hash and cc.config.origin is not None
        codes, nrn = run.codes(s), run.relative_norms(s)
        assert codes.n_latents == cc.n_latents and nrn.shape == (cc.n_latents,) and 0 < codes.frequency().mean() < 1
        top = np.argsort(-codes.frequency())[:3]
        scaling = label.latent_scaling(cc, store, top, mask=store.meta["split"] == 1)
        assert len(scaling) == 3 and (scaling.n_active > 0).all() and np.isfinite(scaling.beta_err_distilled).all()
    assert not run.has_null
    with pytest.raises(ValueError, match="imports its relu crosscoder from .*kissane"):
        run.train_config("relu")
    key = run.key_hash("label")
    # the same checkpoints elsewhere: the same run and keys (content, not path)
    shutil.copytree(tmp_path / "ext", tmp_path / "moved" / "ext")
    shutil.copy(toml, tmp_path / "moved" / "my-run.toml")
    other = pipeline.load_run(tmp_path / "moved" / "my-run.toml", progress=False)
    other.__dict__["store"] = store
    assert other.key_hash("label") == key and other.config.hash == run.config.hash


def test_a_bad_from_names_the_config_and_the_key(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text('extends = "smoke"\n[train.relu]\nfrom = "nowhere"\n')
    with pytest.raises(RunConfigError, match=r"bad\.toml: \[train.relu\] from = .*nowhere.*no crosscoder checkpoint"):
        runconfig.load(toml)
