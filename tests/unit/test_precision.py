"""Precision chosen by capability: the CPU probe, its forced answer, and what each answer makes thinkdiff load,
train and record (both answers, whatever this machine's own)."""
from __future__ import annotations

import pytest
import torch

from thinkdiff import pairs, precision, train
from thinkdiff.train import TensorStore, TrainConfig


def _probe(bf16: bool) -> dict:
    return {"bf16": bf16, "why": f"test probe: {'native' if bf16 else 'emulated'}", "bf16_speedup": 3.0 if bf16 else 0.02}


@pytest.fixture(params=[True, False], ids=["bf16-native", "bf16-emulated"])
def probe_answer(request, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_probe", lambda: _probe(request.param))
    return request.param


def test_probe_measures_both_precisions_and_records_the_cpu():
    p = precision.cpu_bf16_probe()
    assert p["fp32_gflops"] > 0 and p["bf16_gflops"] > 0 and p["shape"] == [precision.PROBE_SIZE] * 3
    assert p["bf16_speedup"] == pytest.approx(p["bf16_gflops"] / p["fp32_gflops"], rel=0.01)
    assert p["cpu"] and isinstance(p["avx512_bf16"], bool) and p["seconds"] < 5
    if p["forced_by"] is None:
        assert p["bf16"] == (p["bf16_speedup"] >= precision.BF16_MIN_SPEEDUP)


def test_environment_forces_either_answer(monkeypatch):
    for value, answer in (("0", False), ("no", False), ("1", True), ("true", True)):
        monkeypatch.setenv(precision.ENV_FORCE, value)
        p = precision.cpu_bf16_probe()
        assert p["bf16"] is answer and p["forced_by"] == precision.ENV_FORCE and precision.ENV_FORCE in p["why"]
    monkeypatch.setenv(precision.ENV_FORCE, "maybe")
    with pytest.raises(ValueError, match=precision.ENV_FORCE):
        precision.cpu_bf16_probe()
    monkeypatch.delenv(precision.ENV_FORCE)
    assert precision.forced_answer() is None


def test_auto_follows_the_probe_and_a_config_forces_either(probe_answer):
    auto = precision.resolve("auto", "cpu")
    assert auto["dtype"] == ("bfloat16" if probe_answer else "float32") and auto["cpu_probe"]["bf16"] is probe_answer
    for forced in ("float32", "bfloat16"):
        assert precision.resolve(forced, "cpu")["dtype"] == forced
    with pytest.raises(ValueError, match="compute_dtype"):
        precision.resolve("float16", "cpu")


def test_stored_bf16_weights_are_upcast_only_where_bf16_is_slow(probe_answer):
    w = precision.weights_dtype("bfloat16")
    assert w["storage"] == "bfloat16" and w["dtype"] == ("bfloat16" if probe_answer else "float32")
    assert ("upcast" in w["why"]) is (not probe_answer)
    assert precision.weights_dtype("float32")["dtype"] == "float32"          # never downcast by "auto"
    assert precision.weights_dtype("float32", "bfloat16")["dtype"] == "bfloat16"
    assert pairs.weights_precision("smollm2-135m")["dtype"] == w["dtype"]
    assert pairs.weights_precision("organism-m")["dtype"] == "float32"


def test_tiny_stand_in_pair_loads_and_records_its_precision(probe_answer):
    pair = pairs.load("organism-s", model_dtype="bfloat16")
    assert pair.base.dtype == torch.bfloat16 and pair.precision["dtype"] == "bfloat16"
    assert pair.organism.base.dtype == torch.float32                       # the cached fp32 organism is untouched
    assert pairs.load("organism-s").precision["dtype"] == "float32"


def test_trainer_autocast_follows_the_resolved_dtype_and_records_it(probe_answer, tmp_path, monkeypatch):
    store = TensorStore(torch.randn(512, 2, 16), heldout_frac=0.0)
    cfg = TrainConfig(activation="relu", n_latents=32, batch_size=64, n_steps=2, buffer_tokens=512,
                      compute_dtype="auto", checkpoint_every=1)
    res = train.train(store, cfg, ckpt_dir=tmp_path / "ck", progress=False, stop_after=1)
    assert res.compute["dtype"] == ("bfloat16" if probe_answer else "float32") and res.compute["requested"] == "auto"
    tr = train.Trainer(store, cfg)
    assert tr.autocast().fast_dtype == torch.bfloat16 and tr.autocast()._enabled is probe_answer
    assert train.PAPER.compute_dtype == "auto"          # the paper's bf16 is a GPU setting, not a CPU one
    # a checkpoint written in one precision is not resumed in the other ("auto" resolving otherwise elsewhere)
    monkeypatch.setattr(precision, "cpu_bf16_probe", lambda: _probe(not probe_answer))
    with pytest.raises(ValueError, match="computing in"):
        train.train(store, cfg, ckpt_dir=tmp_path / "ck", progress=False)


def test_cache_key_separates_the_precisions_auto_resolves_to(monkeypatch):
    store = TensorStore(torch.randn(64, 2, 8), heldout_frac=0.0)
    cfg = TrainConfig(activation="relu", n_latents=16, compute_dtype="auto")
    keys = set()
    for answer in (True, False):
        monkeypatch.setattr(precision, "cpu_bf16_probe", lambda a=answer: _probe(a))
        keys.add(train.cache_key(store, cfg))
    assert len(keys) == 2
    assert train.cache_key(store, cfg.replace(compute_dtype="float32")) not in keys
