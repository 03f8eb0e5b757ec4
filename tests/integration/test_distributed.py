"""torch.distributed scale-out: a rank-sliced harvest merges into the 1-rank store, DDP training equals 1-rank
training on the same global batches (also across a resume between world sizes). The torchrun test runs
``torchrun --standalone --nproc_per_node=2`` with gloo on the CPU on the tiny random Qwen2 pair."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import tiny_documents
from thinkdiff import distributed as D
from thinkdiff.harvest import HarvestConfig, harvest_pair
from thinkdiff.store import ActivationStore, StoreWriter
from thinkdiff.train import TrainConfig, train

HARVEST = dict(layer=2, batch_size=3, shard_tokens=60, heldout_fraction=0.25, outlier_norm_multiple=1.5)
K_STOP = 7   # the interrupted runs stop after 7 steps; checkpoint_every=5, so they resume at step 5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved_pair(tiny_pair, tiny_tokenizer, tmp_path_factory):
    """The tiny pair saved to disk and loaded back (so every process holds identical models and keys)."""
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM
    root = tmp_path_factory.mktemp("dist")
    for name, m in zip(("base", "distilled"), tiny_pair):
        m.save_pretrained(root / name)
    tiny_tokenizer.save_pretrained(root / "tok")
    (root / "docs.json").write_text(json.dumps(tiny_documents(tiny_tokenizer)))
    (root / "harvest_cfg.json").write_text(json.dumps(HARVEST))
    tok = PreTrainedTokenizerFast.from_pretrained(root / "tok")
    base, distilled = (Qwen2ForCausalLM.from_pretrained(root / n).eval() for n in ("base", "distilled"))
    return root, base, distilled, tok, json.loads((root / "docs.json").read_text())


def assert_same_store(a: ActivationStore, b: ActivationStore):
    """Token for token: same key, rows in the same order with the same metadata and both models' activations."""
    assert a.key == b.key and a.n_tokens == b.n_tokens and a.manifest["n_tokens_split"] == b.manifest["n_tokens_split"]
    for name in a.meta:
        assert np.array_equal(a.meta[name], b.meta[name]), name
    rows = np.arange(a.n_tokens)
    np.testing.assert_allclose(a.acts(rows), b.acts(rows), rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.norm_scale, b.norm_scale, rtol=1e-9)
    for k in ("n_positions_seen", "n_dropped_first", "n_dropped_outlier", "median_norm"):
        assert a.manifest["exclusions"][k] == b.manifest["exclusions"][k], k
    for s in (a, b):   # shards never mix splits
        for e in s.shards:
            assert set(s.shard_meta(e["index"])["split"]) == {int(e["split"] == "heldout")}


def test_simulated_ranks_merge_into_the_one_rank_store_and_merge_resumes(saved_pair, tmp_path, monkeypatch):
    """Both ranks' halves run in this process (no process group): part stores, merge, interrupted merge."""
    _, base, distilled, tok, docs = saved_pair
    cfg = HarvestConfig(**HARVEST)
    ref = harvest_pair(base, distilled, tok, tok, docs, cfg, out_dir=tmp_path / "one", progress=False)
    assert ref.manifest["exclusions"]["n_dropped_outlier"] > 0   # the broadcast calibration matters
    out = tmp_path / "two"
    calls = {"n": 0}
    real = StoreWriter.adopt_shard

    def dying_adopt(self, *a, **k):
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed during the merge")
        calls["n"] += 1
        return real(self, *a, **k)
    monkeypatch.setattr(StoreWriter, "adopt_shard", dying_adopt)
    r1 = D.World(rank=1, world_size=2)
    with pytest.raises(FileNotFoundError):   # rank 1 alone: its part is written, nobody merged yet
        D.harvest_pair(base, distilled, tok, tok, docs, cfg, out_dir=out, world=r1, progress=False)
    assert (D.part_dir(out, 1, 2) / "manifest.json").exists() and not out.exists()
    with pytest.raises(KeyboardInterrupt):
        D.harvest_pair(base, distilled, tok, tok, docs, cfg, out_dir=out, world=D.World(rank=0, world_size=2),
                       progress=False)
    assert not out.exists() and (tmp_path / "two.partial").exists()
    monkeypatch.setattr(StoreWriter, "adopt_shard", real)
    merged = D.harvest_pair(base, distilled, tok, tok, docs, cfg, out_dir=out, world=D.World(rank=0, world_size=2),
                            progress=False)
    assert_same_store(ref, merged)
    assert merged.manifest["distributed"]["world_size"] == 2 and not D.ranks_dir(out).exists()
    assert [e["index"] for e in merged.shards] == list(range(len(merged.shards)))
    ActivationStore(out, verify=True)   # every checksum holds after linking
    # the merged store is the cached store for the 1-rank harvest too (same key): reused, not rebuilt
    again = harvest_pair(base, distilled, tok, tok, docs, cfg, out_dir=out, progress=False)
    assert again.manifest["distributed"]["world_size"] == 2


WORKER = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM
    from thinkdiff import distributed as D
    from thinkdiff.harvest import HarvestConfig
    from thinkdiff.store import ActivationStore
    from thinkdiff.train import TrainConfig, train as train_one_process

    root, K = Path(sys.argv[1]), int(sys.argv[2])
    world = D.init()
    assert world.world_size == 2 and world.backend == "gloo", world
    tok = PreTrainedTokenizerFast.from_pretrained(root / "tok")
    base, distilled = (Qwen2ForCausalLM.from_pretrained(root / n).eval() for n in ("base", "distilled"))
    docs = json.loads((root / "docs.json").read_text())
    cfg = HarvestConfig(**json.loads((root / "harvest_cfg.json").read_text()))
    store = D.harvest_pair(base, distilled, tok, tok, docs, cfg, out_dir=root / "store_w2", world=world, progress=False)
    n_train = len(store.split_indices("train"))
    # a global batch size whose last batch of an epoch has 1 row: one rank gets an empty part
    bs = next(b for b in range(40, n_train) if n_train % b == 1)
    cfgs = {"relu": TrainConfig(activation="relu", n_latents=64, batch_size=bs, n_steps=12, lr=3e-3, l1_coeff=0.3,
                                buffer_tokens=160, dead_tokens=10_000, checkpoint_every=5, lr_warmup_frac=0.1),
            "batchtopk": TrainConfig(activation="batchtopk", n_latents=64, k=4, batch_size=bs, n_steps=12, lr=3e-3,
                                     buffer_tokens=160, dead_tokens=2 * bs, checkpoint_every=5, lr_warmup_frac=0.1)}
    if world.is_main:
        (root / "train_cfgs.json").write_text(json.dumps({k: c.to_dict() for k, c in cfgs.items()}))
    for name, tc in cfgs.items():
        res = D.train(store, tc, ckpt_dir=root / f"{name}_w2", world=world, progress=False)
        if world.is_main:
            torch.save(res.crosscoder.state_dict(), root / f"{name}_w2.pt")
        if world.is_main:   # 1 -> 2: one process alone trains K steps, then both ranks resume its checkpoint
            train_one_process(store, tc, ckpt_dir=root / f"{name}_1to2", stop_after=K, progress=False)
        world.barrier()
        res = D.train(store, tc, ckpt_dir=root / f"{name}_1to2", world=world, progress=False)
        if world.is_main:
            torch.save(res.crosscoder.state_dict(), root / f"{name}_1to2.pt")
        # 2 -> 1: both ranks train K steps; the test finishes that run in one process
        D.train(store, tc, ckpt_dir=root / f"{name}_2to1", world=world, stop_after=K, progress=False)
        world.barrier()
    D.shutdown(world)
    print("worker done", world.rank, flush=True)
    # Everything is saved: leave without interpreter teardown, where a rank on a loaded machine has been seen to
    # abort in native thread cleanup ("terminate called without an active exception") after finishing its work.
    import os
    os._exit(0)
''')


def _close(a: dict, b: dict) -> None:
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5, equal_nan=True), (k, (a[k] - b[k]).abs().max())


@pytest.mark.slow
def test_torchrun_two_ranks_harvest_and_ddp_training_match_one_rank(saved_pair):
    root, base, distilled, tok, docs = saved_pair
    (root / "worker.py").write_text(WORKER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(root / "worker.py"), str(root), str(K_STOP)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.stdout.count("worker done") == 2

    # (1) the 2-rank store equals the 1-rank store token for token
    two = ActivationStore(root / "store_w2", verify=True)
    one = harvest_pair(base, distilled, tok, tok, docs, HarvestConfig(**HARVEST), out_dir=root / "store_w1",
                       progress=False)
    assert_same_store(one, two)
    assert two.manifest["distributed"]["world_size"] == 2 and not D.ranks_dir(root / "store_w2").exists()

    # (2) DDP training equals 1-rank training on the same global batches, also across resumes
    for name, c in json.loads((root / "train_cfgs.json").read_text()).items():
        cfg = TrainConfig(**{**c, "betas": tuple(c["betas"])})
        ref = train(two, cfg, progress=False)
        want = ref.crosscoder.state_dict()
        _close(want, torch.load(root / f"{name}_w2.pt"))
        _close(want, torch.load(root / f"{name}_1to2.pt"))
        finished = train(two, cfg, ckpt_dir=root / f"{name}_2to1", progress=False)   # resumes at step 5
        assert finished.log[0]["step"] == 1 and len(finished.log) == cfg.n_steps
        _close(want, finished.crosscoder.state_dict())
        # rank 0's log holds the global metrics: the same as the 1-rank log
        logged = [json.loads(x) for x in (root / f"{name}_w2" / "train_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logged] == list(range(1, cfg.n_steps + 1))
        for got, exp in zip(logged, ref.log):
            for k in ("loss", "recon", "l0", "dead_frac", "tokens"):
                assert got[k] == pytest.approx(exp[k], rel=1e-4, abs=1e-6), (name, got["step"], k)
            assert got["fvu"] == pytest.approx(exp["fvu"], rel=1e-4, nan_ok=True)
        if name == "batchtopk":
            assert any("aux" in r for r in logged)   # the dead-latent loss took part
