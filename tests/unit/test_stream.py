"""The streaming harvest-and-train mode on the tiny random qwen-1.5b stand-in (``standins.tiny_qwen_pair``, the
models of configs/tiny-qwen.toml): every train token served exactly once per epoch, a killed run resumed without
repeating or skipping a token, the ring's disk bound, the outlier mask, the plan's refusal, and agreement with the
two-phase (store, then train) path."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from standins import tiny_qwen_pair
from thinkdiff import stream
from thinkdiff.harvest import HarvestConfig, harvest_pair
from thinkdiff.norms import relative_norm
from thinkdiff.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")
RING = stream.StreamConfig(ring_shards=4, window_shards=2, warmup_batches=1)


@pytest.fixture(scope="module")
def models():
    from transformers import Qwen2ForCausalLM

    tp = tiny_qwen_pair(hidden=64, layers=4)
    return [Qwen2ForCausalLM.from_pretrained(p).eval() for p in (tp.base_path, tp.distilled_path)], tp.layer


@pytest.fixture(scope="module")
def docs():
    """40 documents of 20-59 random regular Qwen2 ids (they carry their ids: the tokenizer gives only the pad id)."""
    rng = np.random.default_rng(0)
    return [{"input_ids": rng.integers(0, 150_000, int(rng.integers(20, 60))).tolist(), "text": ""} for _ in range(40)]


def hcfg(layer, **kw):
    # drop_first_position off and a low outlier multiple, so the norm mask has positions to drop
    return HarvestConfig(**{"layer": layer, "batch_size": 4, "max_seq_len": 64, "shard_tokens": 100,
                            "heldout_fraction": 0.25, "drop_first_position": False, "outlier_norm_multiple": 1.2,
                            **kw})


TCFG = TrainConfig(n_latents=64, batch_size=64, n_steps=30, lr=2e-3, checkpoint_every=0, seed=3)


def run(models, tiny_tokenizer, docs, work, served=None, **kw):
    """A streaming run; ``served`` (a dict) gets each step's rows as (epoch, document, position)."""
    (base, distilled), layer = models

    def on_step(step, meta, epoch):
        served[step] = [(epoch, int(d), int(p)) for d, p in zip(meta["doc_id"], meta["pos"])]
    return stream.train_stream(base, distilled, tiny_tokenizer, tiny_tokenizer, docs, kw.pop("h", hcfg(layer)),
                               kw.pop("tcfg", TCFG), work, kw.pop("scfg", RING), progress=False,
                               on_step=on_step if served is not None else None, **kw)


def test_exactly_once_resume_and_bounded_disk(models, docs, tiny_tokenizer, tmp_path):
    (base, distilled), layer = models
    store = harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs, hcfg(layer), out_dir=tmp_path / "store",
                         progress=False)
    train_tokens = Counter((int(d), int(p)) for d, p, s in zip(store.meta["doc_id"], store.meta["pos"],
                                                              store.meta["split"]) if s == 0)
    whole: dict = {}
    res = run(models, tiny_tokenizer, docs, tmp_path / "whole", whole)
    # exactly once per epoch: every complete epoch serves the store's train tokens (after the outlier mask), once
    by_epoch: dict = {}
    for s in sorted(whole):
        for e, d, p in whole[s]:
            by_epoch.setdefault(e, Counter())[(d, p)] += 1
    last = max(by_epoch)
    assert last >= 1 and all(by_epoch[e] == train_tokens for e in range(last))
    assert set(by_epoch[last]) <= set(train_tokens) and max(by_epoch[last].values()) == 1
    ex = res.report["exclusions"]
    assert ex["n_dropped_outlier"] > 0 and ex["median_norm"] == store.manifest["exclusions"]["median_norm"]
    # bounded disk: at most ring_shards shards ever on disk, and the measured peak within the plan's
    assert res.report["shards_written"] > 2 * RING.ring_shards and res.report["shards_on_disk"] <= RING.ring_shards
    assert 0 < res.report["peak_disk_bytes"] <= res.report["plan"]["peak_disk_bytes"]
    assert 0 < res.report["log_bytes"] <= res.report["plan"]["log_bytes"]

    # killed twice (a stop after 12 steps, then an error inside the harvest), resumed: the same rows, the same model
    work, parts = tmp_path / "killed", {}
    run(models, tiny_tokenizer, docs, work, parts, tcfg=TCFG.replace(checkpoint_every=7), stop_after=12)
    assert 0 < len(list((work / "ring").glob("acts_*.npy"))) <= RING.ring_shards
    real, calls = stream.Stream.harvest_shard, []

    def dies(self):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")
        return real(self)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stream.Stream, "harvest_shard", dies)
        with pytest.raises(KeyboardInterrupt):
            run(models, tiny_tokenizer, docs, work, parts, tcfg=TCFG.replace(checkpoint_every=7))
    resumed = run(models, tiny_tokenizer, docs, work, parts, tcfg=TCFG.replace(checkpoint_every=7))
    assert parts == whole          # steps redone after a checkpoint overwrite their rows: the same ones
    steps = [json.loads(line)["step"] for line in (work / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, TCFG.n_steps + 1))      # the log cut back to each checkpoint, once per step
    torch.testing.assert_close(resumed.train.crosscoder.state_dict(), res.train.crosscoder.state_dict(), rtol=0,
                               atol=0, equal_nan=True)


def test_a_damaged_ring_shard_is_an_error_naming_it(models, docs, tiny_tokenizer, tmp_path):
    """A shard's rows cannot be harvested again once later ones exist: a resume refuses a damaged one."""
    run(models, tiny_tokenizer, docs, tmp_path, tcfg=TCFG.replace(checkpoint_every=2), stop_after=3)
    shard = sorted((tmp_path / "ring").glob("acts_*.npy"))[-1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{shard.name} is missing or damaged"):
        run(models, tiny_tokenizer, docs, tmp_path, tcfg=TCFG.replace(checkpoint_every=2))


def test_plan_refuses_a_run_that_does_not_fit_the_disk(models, docs, tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(stream.shutil, "disk_usage", lambda p: type("U", (), {"free": 10_000})())
    monkeypatch.setattr(stream.LayerReader, "__call__", lambda *a: pytest.fail("a forward pass ran before the refusal"))
    with pytest.raises(stream.PlanError, match=r"needs 0\.\d+ GB of disk at its peak.*Nothing was run"):
        run(models, tiny_tokenizer, docs, tmp_path / "w")
    assert not (tmp_path / "w" / "ring").exists()
    monkeypatch.undo()
    with pytest.raises(stream.PlanError, match="over the max_disk_gb = 1e-06"):      # the run's own cap
        run(models, tiny_tokenizer, docs, tmp_path / "w", scfg=stream.StreamConfig(max_disk_gb=1e-6))
    with pytest.raises(ValueError, match="at least 2 x window_shards"):
        stream.StreamConfig(ring_shards=3, window_shards=2).validate()


def test_stream_and_two_phase_crosscoders_agree(models, docs, tiny_tokenizer, tmp_path):
    """The same run, two-phase and streamed (only the shuffle differs: store windows vs ring windows, and the
    input scale: whole store vs first window): held-out FVU within 0.02 per model, relative-norm histograms
    (10 bins) within 0.06 total variation (measured: FVU 0.830 / 0.835 two-phase vs 0.819 / 0.823 streamed,
    total variation 0.016)."""
    (base, distilled), layer = models
    cfg = TCFG.replace(n_steps=80, buffer_tokens=256)
    h = hcfg(layer, batch_size=8, shard_tokens=300)      # fewer, larger forwards: 80 steps are 4 epochs
    store = harvest_pair(base, distilled, tiny_tokenizer, tiny_tokenizer, docs, h, out_dir=tmp_path / "s",
                         progress=False)
    two = train(store, cfg, progress=False).crosscoder
    streamed = run(models, tiny_tokenizer, docs, tmp_path / "w", h=h, tcfg=cfg).train.crosscoder
    x = torch.from_numpy(store.acts(store.split_indices("heldout"))).double()       # [n, 2, d] raw
    sst = (x - x.mean(0)).pow(2).sum((0, 2))
    with torch.no_grad():   # held-out FVU per model (metrics.evaluate would refuse the stream's input scale)
        fvu = [((cc(x.float()).double() - x).pow(2).sum((0, 2)) / sst).numpy() for cc in (two, streamed)]
    assert fvu[0].max() < 0.9 and np.abs(fvu[0] - fvu[1]).max() < 0.02, fvu
    hist = [np.histogram(relative_norm(cc), bins=10, range=(0, 1))[0] / cc.n_latents for cc in (two, streamed)]
    assert 0.5 * np.abs(hist[0] - hist[1]).sum() < 0.06, hist


def test_run_config_chooses_the_mode(tmp_path):
    from thinkdiff import runconfig
    from thinkdiff.settings import RunConfigError

    run = runconfig.load("tiny-qwen", {"harvest.mode": "stream", "harvest.stream": {"ring_shards": 6}})
    assert run.harvest["mode"] == "stream" and stream.StreamConfig(**run.harvest["stream"]).ring_shards == 6
    assert run.hash != runconfig.load("tiny-qwen").hash
    assert "mode" not in runconfig.load("tiny-qwen").to_dict()["harvest"]    # store runs keep their hashes
    for bad, match in (({"harvest.mode": "ring"}, "mode = 'ring'"),
                       ({"harvest.mode": "stream", "harvest.stream": {"ring_shards": 1}}, r"\[harvest.stream\].*2 x"),
                       ({"harvest.stream": {"ring": 1}}, r"\[harvest.stream\].*ring")):
        with pytest.raises(RunConfigError, match=match):
            runconfig.load("tiny-qwen", bad)


def test_streamed_crosscoder_is_cached(models, docs, tiny_tokenizer, tmp_path, monkeypatch):
    from types import SimpleNamespace

    (base, distilled), layer = models
    pair = SimpleNamespace(base=base, distilled=distilled, tokenizer=tiny_tokenizer)
    cfg = TCFG.replace(n_steps=5)
    cc = stream.get_crosscoder(pair, docs, hcfg(layer), cfg, RING, tmp_path, progress=False)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]      # the work folder is gone, the result is cached
    assert (folder / "stream_report.json").exists() and cc.n_latents == 64
    monkeypatch.setattr(stream, "train_stream", lambda *a, **k: pytest.fail("trained again"))
    again = stream.get_crosscoder(pair, docs, hcfg(layer), cfg, RING, tmp_path, progress=False)
    assert torch.equal(again.W_dec, cc.W_dec)
