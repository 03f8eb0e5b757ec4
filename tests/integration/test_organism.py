"""Organism builds: deterministic and cached, shipped with the control models their size reads, assembled from
cached builds, and the start of the shipped schedule reproduced (the organism's pure parts are in
tests/unit/test_organism.py)."""
import json

import pytest

from thinkdiff import organism, paths


def test_build_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path)
    kw = dict(pretrain_steps=3, sft_steps=3, batch=4, seq_len=32)
    m1 = organism.build_organism("S", tmp_path / "a", **kw)
    m2 = organism.build_organism("S", tmp_path / "b", **kw)
    assert m1["config_hash"] == m2["config_hash"]
    for role in ("base", "distilled"):
        a = (tmp_path / "a" / role / "model.safetensors").read_bytes()
        b = (tmp_path / "b" / role / "model.safetensors").read_bytes()
        assert a == b
    pair = organism.get_organism("S", **kw)
    again = organism.get_organism("S", **kw)
    assert pair.path == again.path
    # SFT changed the weights: distilled differs from base
    diff = sum((p - q).abs().sum() for p, q in zip(pair.base.parameters(), pair.distilled.parameters()))
    assert diff > 0


def test_the_coin_flip_control_ships_only_where_its_check_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path)
    kw = dict(pretrain_steps=2, sft_steps=2, batch=2, seq_len=32)
    assert "XS" not in organism.COIN_CONTROL_SIZES and "M" in organism.COIN_CONTROL_SIZES
    man = organism.build_organism("XS", tmp_path / "xs", **kw)
    assert sorted(p.name for p in (tmp_path / "xs").iterdir() if p.is_dir()) == ["base", "control", "distilled",
                                                                                 "tokenizer"]
    assert set(man["train_seconds"]) == {"pretrain", "sft", "control"}
    pair = organism.get_organism("XS", **kw)
    assert pair.coin_control is None and pair.control is not None
    # a folder that lacks a model its size ships is refused, naming the model
    import shutil
    shutil.rmtree(pair.path / "control")
    with pytest.raises(FileNotFoundError, match="no control model"):
        organism.get_organism("XS", **kw)


def test_shipping_from_cache_assembles_the_cached_builds_and_deletes_none(tmp_path, monkeypatch):
    """``python -m thinkdiff.organism --from-cache`` ships the base and fine-tunes already built, one role at a
    time; it must never retrain or remove them (hours of CPU each at full size)."""
    from dataclasses import replace
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(organism, "SHIPPED_DIR", tmp_path / "data")
    monkeypatch.setitem(organism.SIZES, "XS", replace(organism.SIZES["XS"], pretrain_steps=2, sft_steps=2, batch=2,
                                                      seq_len=32))
    cfg, tok = organism.organism_config("XS"), organism.get_tokenizer()
    base, _ = organism.get_base("XS", None, tok, use_shipped=False)
    built = {}
    for role in ("distilled", "control"):
        organism.get_finetune("XS", role, cfg, base, tok)
        built[role] = next(f for f in (tmp_path / "runs" / "organism-sft").iterdir()
                           if json.loads((f / "sft.json").read_text())["config"]["role"] == role)
    stamps = {r: (f / "sft.json").stat().st_mtime_ns for r, f in built.items()}
    dest = organism.ship("XS", rebuild=False)
    assert {r: (f / "sft.json").stat().st_mtime_ns for r, f in built.items()} == stamps
    assert (dest / "distilled" / "model.safetensors").read_bytes() == \
        (built["distilled"] / "model.safetensors").read_bytes()
    assert organism.get_organism("XS").path == dest


@pytest.mark.slow
def test_pretraining_prefix_reproduces_the_shipped_manifest():
    """Same machine: two rebuilds of the start of S's schedule are bitwise equal. Any machine of this kind:
    they agree with the losses the shipped manifest recorded within ``PREFIX_RTOL`` (float kernels differ
    across CPUs, so trained bytes are not compared)."""
    shipped = organism.SHIPPED_DIR / "S"
    man = json.loads((shipped / "manifest.json").read_text())
    assert man["config_hash"] == paths.config_hash(organism.organism_config("S")), \
        "shipped S weights are stale: run `make organism`"
    full = organism.pretrain_prefix("S", organism.PREFIX_STEPS)
    start = organism.pretrain_prefix("S", organism.PREFIX_STEPS // 4)   # a second rebuild, shorter: same losses
    assert len(start) == organism.PREFIX_STEPS // 4 and start == full[:len(start)]
    assert len(man["prefix_losses"]) == organism.PREFIX_STEPS
    rel = max(abs(a - b) / abs(b) for a, b in zip(full, man["prefix_losses"]))
    assert rel <= organism.PREFIX_RTOL, f"prefix losses differ from the manifest by {rel:.2e} (relative)"

