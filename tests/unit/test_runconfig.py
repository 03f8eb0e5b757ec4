"""Run configs (configs/*.toml) and pipeline.load_run: one declaration of a run, validated up front, whose cache
keys chain so that a changed setting reaches every stage downstream of it and no stage upstream."""
from __future__ import annotations

import pytest

from thinkdiff import harvest, pipeline, runconfig, train


def write(tmp_path, name: str, text: str):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_every_committed_run_loads():
    names = runconfig.available()
    assert {"organism-s", "organism-m", "organism-l", "smoke", "qwen-1.5b"} <= set(names)
    for n in names:
        cfg = runconfig.load(n)
        assert cfg.name == n and cfg.schemes and cfg.preset
        for g in cfg.geometry["runs"]:
            assert g in names, f"{n}: [geometry] runs names {g!r}, which has no config"


def test_default_run_is_the_organism_default_the_demo_always_ran():
    run = pipeline.load_run(runconfig.DEFAULT_RUN)
    assert run.config.preset == "organism-m" and run.tested
    assert run.train_config("relu") == train.ORGANISM["relu"]
    assert run.train_config("batchtopk") == train.ORGANISM["batchtopk"]
    assert run.config.harvest["n_docs"] == runconfig.CORPUS_DEFAULTS["n_docs"]
    assert run.config.harvest["teacher_fraction"] == runconfig.CORPUS_DEFAULTS["teacher_fraction"]


def test_smoke_run_is_not_tested_and_only_smaller():
    smoke, full = runconfig.load("smoke"), runconfig.load("organism-m")
    assert smoke.smoke and not smoke.tested and full.tested and smoke.preset == full.preset
    assert smoke.harvest["n_docs"] < full.harvest["n_docs"] and smoke.train["relu"]["n_steps"] < full.train["relu"]["n_steps"]
    same = {k: v for k, v in smoke.harvest.items() if k != "n_docs"}
    assert same == {k: v for k, v in full.harvest.items() if k != "n_docs"}


@pytest.mark.parametrize("name,text,match", [
    ("typo", 'preset = "organism-m"\n[train.relu]\nn_step = 10\n', r"typo\.toml.*n_step"),
    ("top", 'preset = "organism-m"\nlayers = 3\n', r"top\.toml.*layers"),
    ("sect", 'preset = "organism-m"\n[steer]\nalpha = [1]\n', r"sect\.toml.*alpha"),
    ("kind", 'preset = "organism-m"\n[steer]\nn_prompts = "many"\n', r"kind\.toml.*n_prompts"),
    ("neg", 'preset = "organism-m"\n[train.relu]\nn_steps = -5\n', r"neg\.toml.*n_steps"),
    ("nopreset", '[harvest]\nn_docs = 5\n', "no 'preset'"),
    ("who", 'preset = "gpt-9"\n', "gpt-9"),
    ("scheme", 'preset = "organism-m"\n[train]\nschemes = ["topk"]\n', "topk"),
    ("corpus", 'preset = "organism-m"\n[harvest.corpus]\nmax_tokens = 64\n', "real-data"),
    ("broken", 'preset = "organism-m\n', "not valid TOML"),
    ("claimalpha", 'preset = "organism-m"\n[steer]\nalphas = [-1, 2]\ncontrol_alphas = [1, 2]\nclaim_alpha = 1\n',
     r"claimalpha\.toml.*claim_alpha = 1 must be in both"),
    ("zeroalpha", 'preset = "organism-m"\n[steer]\ncontrol_alphas = [0, 1]\n', r"zeroalpha\.toml.*holds 0"),
    ("band", 'preset = "organism-m"\n[steer]\nspecific_nrn = 1.5\n', r"band\.toml.*specific_nrn"),
    ("margin", 'preset = "organism-m"\n[steer]\nnoninferiority_margin = 0\n', r"margin\.toml.*noninferiority_margin"),
    ("minprompts", 'preset = "organism-m"\n[steer]\nmin_prompts = 1\n', r"minprompts\.toml.*min_prompts"),
    ("kverdict", 'preset = "organism-m"\n[label]\nablation_ks = [0.1, 0.5]\nk_verdict = 0.2\n', r"kverdict\.toml.*k_verdict = 0.2 must be one of"),
    ("sets", 'preset = "organism-m"\n[label]\nablation_random_sets = 1\n', r"sets\.toml.*ablation_random_sets"),
    ("where", 'preset = "organism-m"\n[steer]\npositions = "prompt"\n', r"where\.toml.*positions"),
    ("strlayer", 'preset = "organism-m"\n[harvest]\nlayer = "3"\n', r"strlayer\.toml.*layer = .3. must be an integer"),
    ("deep", 'preset = "organism-m"\n[harvest]\nlayer = 99\n', r"deep\.toml.*layer = 99 is out of range for organism-m \(6 blocks\)"),
    ("nodocs", 'preset = "organism-m"\n[harvest]\nn_docs = 0\n', r"nodocs\.toml.*n_docs = 0"),
    ("xl", 'preset = "organism-m"\n[evaluate]\nsizes = ["XL"]\n', r"xl\.toml.*sizes = \[.XL.\]"),
    ("dims", 'preset = "organism-m"\n[geometry]\ndims = [0]\nclaim_dim = 0\n', r"dims\.toml.*dims = \[0\]"),
    ("claimdim", 'preset = "organism-m"\n[geometry]\nclaim_dim = 3\n', r"claimdim\.toml.*claim_dim = 3 must be one of"),
    ("georuns", 'preset = "organism-m"\n[geometry]\nruns = ["organism-q"]\n', r"georuns\.toml.*organism-q"),
])
def test_unknown_keys_and_bad_values_name_the_file(tmp_path, name, text, match):
    with pytest.raises(runconfig.RunConfigError, match=match):
        runconfig.load(write(tmp_path, name, text))


def test_a_missing_run_lists_the_committed_ones():
    with pytest.raises(runconfig.RunConfigError, match="does not exist.*organism-m"):
        runconfig.load("no-such-run")


def test_extends_merges_tables_key_by_key_and_refuses_loops(tmp_path):
    write(tmp_path, "parent", 'preset = "organism-m"\n[train.relu]\nn_steps = 300\nl1_coeff = 3.0\n')
    child = write(tmp_path, "child", 'extends = "parent.toml"\n[train.relu]\nn_steps = 40\n')
    cfg = runconfig.load(child)
    assert cfg.train["relu"]["n_steps"] == 40 and cfg.train["relu"]["l1_coeff"] == 3.0
    write(tmp_path, "a", 'extends = "b.toml"\npreset = "organism-m"\n')
    write(tmp_path, "b", 'extends = "a.toml"\n')
    with pytest.raises(runconfig.RunConfigError, match="loops"):
        runconfig.load(tmp_path / "a.toml")


def test_overrides_are_visible_in_the_name_and_the_hash():
    base = runconfig.load("organism-m")
    changed = runconfig.load("organism-m", {"train.relu.n_steps": 500})
    assert changed.name == "organism-m[train.relu.n_steps=500]"
    assert changed.hash != base.hash and changed.train["relu"]["n_steps"] == 500
    assert runconfig.load("organism-m").hash == base.hash            # same settings, same hash
    assert runconfig.load("organism-s").hash != base.hash


class FakeStore:
    """What the cache keys read from a store: its identity."""
    def __init__(self, h: str):
        self.config_hash = h


def _run(cfg, store_hash="store-a"):
    run = pipeline.Run(cfg)
    run.__dict__["store"] = FakeStore(store_hash)    # stands in for the harvested store (cached_property slot)
    return run


def test_a_training_change_reaches_every_downstream_key_and_nothing_upstream(tmp_path):
    a = _run(runconfig.load("organism-m"))
    b = _run(runconfig.load(write(tmp_path, "b", 'extends = "organism-m"\n[train.relu]\nl1_coeff = 3.0\n')))
    assert a.crosscoder_key("relu") != b.crosscoder_key("relu")
    assert a.crosscoder_key("batchtopk") == b.crosscoder_key("batchtopk")
    for stage in ("train", "label", "steer", "geometry"):
        assert a.key_hash(stage) != b.key_hash(stage), stage
    for stage in ("evaluate", "harvest"):
        assert a.key_hash(stage) == b.key_hash(stage), stage


def test_a_store_change_reaches_every_key_but_the_evaluation():
    cfg = runconfig.load("organism-m")
    a, b = _run(cfg, "store-a"), _run(cfg, "store-b")
    assert a.crosscoder_key() != b.crosscoder_key()
    for stage in ("harvest", "train", "label", "steer", "geometry"):
        assert a.key_hash(stage) != b.key_hash(stage), stage
    assert a.key_hash("evaluate") == b.key_hash("evaluate")


def test_an_analysis_setting_changes_only_its_own_stage(tmp_path):
    a = _run(runconfig.load("organism-m"))
    b = _run(runconfig.load(write(tmp_path, "c", 'extends = "organism-m"\n[steer]\nclaim_alpha = 4\n')))
    assert a.key_hash("steer") != b.key_hash("steer")
    for stage in ("evaluate", "harvest", "train", "label", "geometry"):
        assert a.key_hash(stage) == b.key_hash(stage), stage
    with pytest.raises(ValueError, match="unknown stage"):
        a.key("plotting")


def test_harvest_settings_reach_the_harvest_config(tmp_path):
    p = write(tmp_path, "h", 'extends = "organism-m"\n[harvest]\nheldout_fraction = 0.2\nshard_tokens = 4096\n')
    cfg = runconfig.load(p)
    assert cfg.harvest["heldout_fraction"] == 0.2
    hc = harvest.HarvestConfig(**runconfig.harvest_fields(cfg.harvest)).validate()
    assert hc.shard_tokens == 4096 and hc.heldout_fraction == 0.2


def test_a_run_without_planted_labels_refuses_ground_truth():
    run = pipeline.Run(runconfig.load("organism-m"))
    import numpy as np

    class Unlabelled:
        config_hash = "x"
        meta = {"label": np.full(10, -1)}

    run.__dict__["store"] = Unlabelled()
    assert not run.has_labels
    with pytest.raises(ValueError, match="no planted labels"):
        run.ground_truth()


def test_the_order_of_schemes_reaches_every_downstream_key(tmp_path):
    """The first scheme is the main one: swapping the order changes what label, steer and geometry report."""
    a = _run(runconfig.load("organism-m"))
    b = _run(runconfig.load(write(tmp_path, "swap", 'extends = "organism-m"\n[train]\nschemes = ["batchtopk", "relu"]\n')))
    for stage in ("train", "label", "steer", "geometry"):
        assert a.key_hash(stage) != b.key_hash(stage), stage
    for stage in ("evaluate", "harvest"):
        assert a.key_hash(stage) == b.key_hash(stage), stage
