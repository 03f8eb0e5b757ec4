"""Crosscoder trainer: it learns, exact resume, checkpoints, caching, divergence and bad input."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from thinkdiff import metrics, norms
from thinkdiff.crosscoder import CrossCoder, decoder_weights
from thinkdiff.train import (LOG_NAME, PAPER, TensorStore, TrainConfig, Trainer, get_crosscoder, load_log,
                             train)

torch.set_num_threads(1)


def planted_store(n_tokens=6000, d=16, n_feat=64, seed=0, layer=2) -> TensorStore:
    """Activations built from planted sparse features: shared, base-only and distilled-only directions."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n_feat, 2, d, generator=g), dim=-1)
    dirs[: n_feat // 4, 1] = 0                    # base-only features
    dirs[n_feat // 4: n_feat // 2, 0] = 0         # distilled-only features
    on = torch.rand(n_tokens, n_feat, generator=g) < 4 / n_feat
    mag = torch.rand(n_tokens, n_feat, generator=g) * 3 * on
    acts = torch.einsum("tf,fmd->tmd", mag, dirs) * torch.tensor([2.0, 7.0])[None, :, None]
    return TensorStore(acts + 0.01 * torch.randn(acts.shape, generator=g), layer=layer, name=f"planted{seed}")


SMALL = TrainConfig(n_latents=128, batch_size=256, n_steps=300, lr=3e-3, l1_coeff=0.3, k=4,
                    dead_tokens=20_000, checkpoint_every=0)


@pytest.fixture(scope="module")
def store():
    return planted_store()


@pytest.mark.parametrize("activation", ["relu", "batchtopk"])
def test_both_schemes_learn_the_planted_features(store, activation):
    res = train(store, SMALL.replace(activation=activation, k=6), progress=False)
    ev = metrics.evaluate(res.crosscoder, store, progress=False)
    assert max(ev["fvu"]) < 0.2, ev["fvu"]          # measured: relu 0.045, batchtopk (k=6) 0.125
    assert res.log[-1]["loss"] < 0.5 * res.log[0]["loss"]
    if activation == "batchtopk":       # the inference threshold gives about k active latents per token
        assert 4 <= ev["l0"] <= 9, ev["l0"]
    assert res.crosscoder.folded and not res.crosscoder.training
    # Which model each planted feature belongs to comes out in the relative norm of the latent that finds it.
    # Measured medians (base-only / shared / distilled-only): relu 0.17 / 0.52 / 1.00, batchtopk 0.33 / 0.50 / 0.72.
    med = planted_relative_norms(res.crosscoder)
    assert med["base-only"] < med["shared"] < med["distilled-only"], med
    if activation == "relu":            # the L1 on the sum of decoder norms drives exclusive latents to the ends
        assert med["base-only"] <= 0.3 and med["distilled-only"] >= 0.9, med


def planted_relative_norms(cc, seed=0, d=16, n_feat=64) -> dict:
    """Median relative norm of the latents whose decoder best matches each group of planted features."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n_feat, 2, d, generator=g), dim=-1)   # as planted_store draws
    W, nrn = decoder_weights(cc, "training"), norms.relative_norm(cc)
    groups = {"base-only": (range(0, n_feat // 4), 0), "distilled-only": (range(n_feat // 4, n_feat // 2), 1),
              "shared": (range(n_feat // 2, n_feat), 1)}
    out = {}
    for name, (feats, m) in groups.items():
        cos = torch.nn.functional.normalize(W[:, m], dim=-1) @ dirs[list(feats), m].double().T     # [F, n_group]
        out[name] = float(np.median(nrn[cos.argmax(0).numpy()]))
    return out


def _weights(cc: CrossCoder):
    return {k: v.clone() for k, v in cc.state_dict().items()}


def _same(a, b) -> bool:
    """Bitwise equal, NaN == NaN (the ReLU crosscoder's unused BatchTopK threshold is NaN)."""
    return a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("activation", ["relu", "batchtopk"])
def test_resume_is_bitwise_exact(store, tmp_path, activation):
    # batch 1000 over 5400 training tokens: 6 batches per epoch (last one partial), so 40 steps cross epochs
    cfg = SMALL.replace(activation=activation, n_steps=40, batch_size=1000, checkpoint_every=7, dead_tokens=3000)
    full = train(store, cfg, ckpt_dir=tmp_path / "a", progress=False)
    part = train(store, cfg, ckpt_dir=tmp_path / "b", stop_after=17, progress=False)   # dies after step 17
    assert len(part.log) == 17
    rest = train(store, cfg, ckpt_dir=tmp_path / "b", progress=False)                  # resumes at step 14
    assert rest.log[0]["step"] == 1 and len(rest.log) == 40
    for name, w in _weights(full.crosscoder).items():
        assert _same(w, rest.crosscoder.state_dict()[name]), name
    logged = [json.loads(x) for x in (tmp_path / "b" / LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 41))
    assert [r["loss"] for r in logged] == [r["loss"] for r in full.log]


def test_checkpoint_from_another_config_is_refused(store, tmp_path):
    cfg = SMALL.replace(n_steps=6, checkpoint_every=3)
    train(store, cfg, ckpt_dir=tmp_path, stop_after=4, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="another training config.*lr"):
        train(store, cfg.replace(lr=1e-4), ckpt_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="trained on store"):
        train(planted_store(seed=1), cfg, ckpt_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_divergence_stops_and_keeps_last_checkpoint(store, tmp_path):
    cfg = SMALL.replace(n_steps=20, checkpoint_every=5)
    train(store, cfg, ckpt_dir=tmp_path, stop_after=10, progress=False)
    good = (tmp_path / "checkpoint.pt").read_bytes()

    class Poisoned(TensorStore):          # a store that serves a NaN batch from the 3rd batch on
        def loader(self, *a, **kw):
            for i, x in enumerate(super().loader(*a, **kw)):
                yield x * float("nan") if i >= 2 else x

    bad = Poisoned(store.acts, layer=store.layer, name="planted0")
    assert bad.config_hash == store.config_hash
    with pytest.raises(FloatingPointError, match="loss became nan.*last checkpoint .* written at FVU 0.* is kept"):
        train(bad, cfg, ckpt_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == good


def test_a_checkpoint_written_while_diverging_is_never_kept(store, tmp_path):
    """From the 3rd batch on the store serves activations shifted far from the data (FVU ~ 900, finite): 20 steps
    above the bar stop training, and the checkpoints written during them are not left to resume from."""
    cfg = SMALL.replace(n_steps=60, checkpoint_every=5)

    class Shifted(TensorStore):
        def loader(self, *a, **kw):
            for i, x in enumerate(super().loader(*a, **kw)):
                yield x + 30.0 if i >= 2 else x

    with pytest.raises(FloatingPointError, match="FVU above 10.0 for 20 steps.*checkpoint written at FVU .* removed"):
        train(Shifted(store.acts, layer=store.layer, name="planted0"), cfg, ckpt_dir=tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()

    class Exploding(TensorStore):
        def loader(self, *a, **kw):
            for i, x in enumerate(super().loader(*a, **kw)):
                yield x + 1e4 if i >= 2 else x

    with pytest.raises(FloatingPointError, match="diverged at step 3: loss .* FVU"):   # at once, not 20 steps on
        train(Exploding(store.acts, layer=store.layer, name="planted0"), cfg, progress=False)



def test_a_one_token_batch_has_an_undefined_fvu_not_a_divergence(store):
    """The last batch of an epoch can hold a single token: its variance is 0, so its FVU is NaN (logged as such),
    not err / 1e-12, which would read as a divergence of 1e13 and stop a healthy run."""
    trainer = Trainer(store, SMALL.replace(n_steps=4))
    x = next(iter(store.loader(SMALL.batch_size, SMALL.buffer_tokens, SMALL.seed, split="train")))
    one = trainer.step(x[:1])
    assert all(np.isnan(v) for v in one["fvu"]) and np.isfinite(one["loss"])
    many = trainer.step(x)
    assert all(0 < v < 10 for v in many["fvu"])

    class OneTokenLast(TensorStore):      # every other batch is a single token
        def loader(self, *a, **kw):
            for i, b in enumerate(super().loader(*a, **kw)):
                yield b[:1] if i % 2 else b

    res = train(OneTokenLast(store.acts, layer=store.layer, name="planted0"), SMALL.replace(n_steps=8), progress=False)
    assert len(res.log) == 8 and sum(np.isnan(r["fvu"][0]) for r in res.log) == 4

@pytest.mark.parametrize("bad,match", [
    (dict(n_latents=0), "n_latents"), (dict(activation="batchtopk", k=0), "k"),
    (dict(activation="batchtopk", k=500), "exceeds"), (dict(lr=-1.0), "lr"), (dict(activation="topk"), "activation"),
    (dict(lr_warmup_frac=0.9, lr_decay_frac=0.2), "must not exceed"), (dict(batch_size=0), "batch_size"),
])
def test_bad_config_is_refused_before_training(store, bad, match):
    with pytest.raises(ValueError, match=match):
        train(store, SMALL.replace(**bad), progress=False)


def test_bad_store_and_unwritable_folder(store, tmp_path):
    broken = TensorStore(store.acts)
    broken.norm_scale = [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="norm_scale has 3 entries"):
        train(broken, SMALL, progress=False)
    broken.norm_scale = [1.0, 0.0]
    with pytest.raises(ValueError, match="positive and finite"):
        train(broken, SMALL, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot write"):
        train(store, SMALL, ckpt_dir=blocker / "ckpt", progress=False)
    with pytest.raises(PermissionError, match="cannot write"):
        get_crosscoder(store, SMALL, out_root=blocker, progress=False)


def test_get_crosscoder_trains_once_then_loads(store, tmp_path):
    cfg = SMALL.replace(n_steps=30, checkpoint_every=10)
    cc = get_crosscoder(store, cfg, out_root=tmp_path, progress=False)
    folders = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]   # lock files are hidden
    assert len(folders) == 1 and not folders[0].name.endswith(".partial")
    assert {p.name for p in folders[0].iterdir()} == {"config.json", "model.safetensors", LOG_NAME,
                                                        "train_summary.json"}
    mtime = os.path.getmtime(folders[0] / "model.safetensors")
    again = get_crosscoder(store, cfg, out_root=tmp_path, progress=False)
    assert os.path.getmtime(folders[0] / "model.safetensors") == mtime
    for name, w in cc.state_dict().items():
        assert _same(w, again.state_dict()[name]), name
    assert cc.config.norm_scale == pytest.approx(store.norm_scale.tolist())
    assert cc.config.store_hash == store.config_hash and cc.config.train_config == cfg.to_dict()
    log = load_log(cc)
    assert list(log["step"]) == list(range(1, 31)) and {"fvu_0", "fvu_1", "l0", "lr"} <= set(log.columns)
    with pytest.raises(ValueError, match="d_model"):
        cc.check_compatible(planted_store(d=8))


def test_schedules_and_paper_config(store):
    tr = Trainer(store, SMALL.replace(n_steps=100, lr_warmup_frac=0.1, lr_decay_frac=0.2, l1_warmup_frac=0.05))
    f = [tr.lr_factor(s) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[79] == 1.0
    assert f[80] == 1.0 and f[99] == pytest.approx(0.05) and all(a >= b for a, b in zip(f[9:], f[10:]))
    assert tr.l1_coeff_at(0) == 0.0 and tr.l1_coeff_at(5) == SMALL.l1_coeff
    assert (PAPER.n_latents, PAPER.l1_coeff, PAPER.lr, PAPER.batch_size) == (32768, 2.0, 5e-5, 1024)
    assert PAPER.n_steps * PAPER.batch_size == pytest.approx(400e6, rel=0.01)
    PAPER.validate()


@pytest.mark.parametrize("activation", ["relu", "batchtopk"])
def test_fast_kernels_train_as_well_as_the_dense_reference(store, activation, monkeypatch):
    """Equal tokens, equal held-out FVU: the fast step is the dense reference step computed another way.
    (ReLU: the switch is moved to 40 % density so that this short run starts on the fused dense kernel and
    crosses to the sparse kernels as the L1 bites; both branches and the switch are exercised.)"""
    from thinkdiff.schemes import relu_l1

    monkeypatch.setattr(relu_l1, "SPARSE_MAX_DENSITY", 0.4)
    cfg = SMALL.replace(activation=activation, k=6, n_steps=200)
    fast = train(store, cfg, progress=False)
    dense = train(store, cfg, progress=False, dense_reference=True)
    ev_fast, ev_dense = (metrics.evaluate(r.crosscoder, store, progress=False) for r in (fast, dense))
    assert fast.log[-1]["tokens"] == dense.log[-1]["tokens"]
    for a, b in zip(ev_fast["fvu"], ev_dense["fvu"]):
        assert abs(a - b) <= 0.1 * b + 0.005, (ev_fast["fvu"], ev_dense["fvu"])
    if activation == "relu":
        dens = [r["l0"] / cfg.n_latents for r in fast.log]
        assert dens[0] > relu_l1.SPARSE_MAX_DENSITY > dens[-1], (dens[0], dens[-1])


@pytest.mark.parametrize("activation", ["relu", "batchtopk"])
def test_bf16_autocast_trains_like_float32(store, activation):
    """compute_dtype="bfloat16" (the GPU presets' setting) reaches the float32 held-out FVU; weights stay fp32."""
    cfg = SMALL.replace(activation=activation, k=6, n_steps=200)
    runs = {dt: train(store, cfg.replace(compute_dtype=dt), progress=False) for dt in ("float32", "bfloat16")}
    fvu = {dt: metrics.evaluate(r.crosscoder, store, progress=False)["fvu"] for dt, r in runs.items()}
    assert runs["bfloat16"].crosscoder.W_enc.dtype == torch.float32
    assert not torch.equal(runs["bfloat16"].crosscoder.W_enc, runs["float32"].crosscoder.W_enc)   # bf16 really ran
    for a, b in zip(fvu["bfloat16"], fvu["float32"]):
        assert abs(a - b) <= 0.15 * b + 0.01, fvu
    with pytest.raises(ValueError, match="compute_dtype"):
        cfg.replace(compute_dtype="float16").validate()
