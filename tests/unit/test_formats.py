"""Crosscoders trained elsewhere (thinkdiff.formats): synthetic checkpoints written in exactly each external layout
give the encode, decode and relative norms of that code's own forward pass, re-implemented here from its source:

- crosscoder_learning: science-of-finetuning/crosscoder_learning, dictionary_learning/dictionary.py at commit
  b2363ed54590074ef4667ca6152094800a65f9aa (NormalizableMixin, CrossCoder, BatchTopKCrossCoder, CodeNormalization;
  config.json of huggingface_hub's PyTorchModelHubMixin; training's save_model in dictionary_learning/training.py).
- kissane: ckkissane/crosscoder-model-diff-replication, crosscoder.py and buffer.py at commit
  e221e8d2856be6a2005716d8410bf4ef9a4b8277.

Every damaged checkpoint is refused naming the file and the key; thinkdiff's export reads back the same."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from thinkdiff import formats, norms
from thinkdiff.crosscoder import CrossCoder, CrossCoderConfig
from thinkdiff.formats import CheckpointError

L, D, F = 2, 6, 24
CLASSES = {"relu": "CrossCoder", "batchtopk": "BatchTopKCrossCoder"}


# ------------------------------------------------------------------ crosscoder_learning: their forward, written out
def cl_state(cls="CrossCoder", normaliser=True, mode=1, seed=0) -> dict:
    """A state dict with the keys and shapes their classes register (``CrossCoder.__init__``, ``NormalizableMixin``)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"encoder.weight": 0.4 * torch.randn(L, D, F, generator=g), "encoder.bias": 0.3 * torch.randn(F, generator=g),
          "decoder.weight": 0.3 * torch.randn(L, F, D, generator=g), "decoder.bias": 0.1 * torch.randn(L, D, generator=g),
          "code_normalization_id": torch.tensor(mode), "target_rms": torch.tensor(1.0)}
    if normaliser:
        sd["activation_mean"] = torch.randn(L, D, generator=g)
        sd["activation_std"] = 0.5 + torch.rand(L, D, generator=g)
        sd["activation_global_scale"] = 1.0 / torch.sqrt((sd["activation_std"] ** 2).sum(-1) + 1e-8)
    else:
        sd["activation_mean"], sd["activation_std"] = torch.full((L, D), math.nan), torch.full((L, D), math.nan)
        sd["activation_global_scale"] = torch.ones(L)
    if cls == "BatchTopKCrossCoder":
        sd["k"] = torch.tensor(4, dtype=torch.int)
        sd["threshold"] = torch.tensor(-1.0)
        x = acts(seed=99)
        sd["threshold"] = cl_scores(sd, x)[cl_scores(sd, x) > 0].median()   # some latents fire, some do not
    return sd


def acts(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, L, D, generator=g) + torch.tensor([1.0, -2.0])[None, :, None]


def cl_normalize(sd, x):
    if torch.isnan(sd["activation_mean"]).any() or torch.isnan(sd["activation_std"]).any():
        return x
    return (x - sd["activation_mean"]) * sd["activation_global_scale"].unsqueeze(0).unsqueeze(-1)


def cl_scores(sd, x):
    f = torch.relu(torch.einsum("bld,ldf->blf", cl_normalize(sd, x), sd["encoder.weight"]).sum(1) + sd["encoder.bias"])
    return f * sd["decoder.weight"].norm(dim=2).sum(dim=0, keepdim=True)      # CodeNormalization.CROSSCODER


def cl_encode(sd, x):
    f = torch.relu(torch.einsum("bld,ldf->blf", cl_normalize(sd, x), sd["encoder.weight"]).sum(1) + sd["encoder.bias"])
    if "threshold" in sd:                                                         # BatchTopK, use_threshold=True
        f = f * (cl_scores(sd, x) > sd["threshold"])
    return f


def cl_decode(sd, f):
    x = torch.einsum("bf,lfd->bld", f, sd["decoder.weight"]) + sd["decoder.bias"]
    if torch.isnan(sd["activation_mean"]).any() or torch.isnan(sd["activation_std"]).any():
        return x
    return x / (sd["activation_global_scale"].unsqueeze(0).unsqueeze(-1) + 1e-8) + sd["activation_mean"]


def cl_relative_norms(sd):
    n = sd["decoder.weight"].norm(dim=-1)          # [L, F], their units
    return (n[1] / n.sum(0)).numpy()


def write_hub(folder, sd, cls="CrossCoder", mode="CROSSCODER"):
    """What ``Dictionary.save_pretrained`` writes: the mixin's config (defaults + passed values + dict_class)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"activation_dim": D, "dict_size": F, "num_layers": L, "same_init_for_all_layers": False,
              "norm_init_scale": None, "init_with_transpose": True, "encoder_layers": None, "latent_processor": None,
              "num_decoder_layers": None, "code_normalization": mode, "code_normalization_alpha_sae": 1.0,
              "code_normalization_alpha_cc": 0.1, "activation_mean": None, "activation_std": None, "target_rms": None,
              "dict_class": cls}
    if cls == "BatchTopKCrossCoder":
        config["k"] = int(sd["k"])
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    return folder


def write_pt(folder, sd, cls="CrossCoder", compiled=True, layer=None):
    """What training's ``save_model`` writes: ``torch.save(state_dict)`` (keys ``_orig_mod.``-prefixed when the
    model was compiled) beside ``config.json`` = {"trainer": ...}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": cls, "layer": layer, "lr": 1e-4}}))
    torch.save({("_orig_mod." if compiled else "") + k: v for k, v in sd.items()}, folder / "model_final.pt")
    return folder / "model_final.pt"


def assert_same(cc, enc, dec, rel, x):
    f = cc.encode(x)
    assert torch.allclose(f, enc(x), atol=1e-5, rtol=1e-5)
    assert (f > 0).any() and (f == 0).any()
    assert torch.allclose(cc.decode(f), dec(f), atol=1e-4, rtol=1e-5)
    assert np.allclose(norms.relative_norm(cc), rel, atol=1e-6)


@pytest.mark.parametrize("scheme", ["relu", "batchtopk"])
@pytest.mark.parametrize("layout", ["hub", "pt"])
@pytest.mark.parametrize("normaliser", [True, False])
def test_crosscoder_learning_matches_their_forward(tmp_path, scheme, layout, normaliser):
    sd = cl_state(CLASSES[scheme], normaliser)
    path = (write_hub(tmp_path / "cc", sd, CLASSES[scheme]) if layout == "hub"
            else write_pt(tmp_path / "cc", sd, CLASSES[scheme]))
    cc = formats.load(path)
    assert cc.config.activation == scheme and cc.config.origin["format"] == "crosscoder_learning"
    assert_same(cc, lambda x: cl_encode(sd, x), lambda f: cl_decode(sd, f), cl_relative_norms(sd), acts())


@pytest.mark.parametrize("mode", [2, 3, 4, 5])
def test_relu_crosscoder_takes_any_code_normalisation(tmp_path, mode):
    sd = cl_state("CrossCoder", mode=mode)      # encode/decode of their CrossCoder never read it
    cc = formats.load(write_pt(tmp_path / "cc", sd))
    assert_same(cc, lambda x: cl_encode(sd, x), lambda f: cl_decode(sd, f), cl_relative_norms(sd), acts())


@pytest.mark.parametrize("mode,name", [(2, "SAE"), (3, "MIXED"), (4, "NONE"), (5, "DECOUPLED")])
def test_batchtopk_with_another_code_normalisation_is_refused(tmp_path, mode, name):
    sd = cl_state("BatchTopKCrossCoder", mode=mode)
    if name == "DECOUPLED":
        sd["threshold"] = torch.full((L,), 0.1)
    with pytest.raises(CheckpointError, match=f"model_final.pt.*code_normalization {name} is not supported"):
        formats.load(write_pt(tmp_path / "cc", sd, "BatchTopKCrossCoder"))


# ------------------------------------------------------------------ Kissane: their forward, written out
def kissane_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": 0.4 * torch.randn(2, D, F, generator=g), "W_dec": 0.3 * torch.randn(F, 2, D, generator=g),
            "b_enc": 0.3 * torch.randn(F, generator=g), "b_dec": 0.1 * torch.randn(2, D, generator=g)}


def write_kissane(folder, sd, local=False):
    """``load_from_hf``'s ``<hook>/cfg.json`` + ``<hook>/cc_weights.pt``, or ``save``'s ``<v>.pt`` + ``<v>_cfg.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"seed": 49, "d_in": D, "dict_size": F, "enc_dtype": "fp32", "dec_init_norm": 0.08, "device": "cpu",
           "hook_point": "blocks.3.hook_resid_pre", "model_name": "gemma-2-2b"}
    (folder / ("0_cfg.json" if local else "cfg.json")).write_text(json.dumps(cfg))
    torch.save(sd, folder / ("0.pt" if local else "cc_weights.pt"))
    return folder / "0.pt" if local else folder


@pytest.mark.parametrize("local", [False, True])
def test_kissane_matches_their_forward_with_the_scale_folded(tmp_path, local):
    sd, s = kissane_state(), torch.tensor([0.7, 1.9])
    cc = formats.load(write_kissane(tmp_path / "blocks.3.hook_resid_pre", sd, local), norm_scale=s)
    # their CrossCoder.encode / decode on the buffer's normalised activations x * s, mapped back to raw units
    enc = lambda x: torch.relu(torch.einsum("bmd,mdf->bf", x * s[None, :, None], sd["W_enc"]) + sd["b_enc"])  # noqa: E731
    dec = lambda f: (torch.einsum("bf,fmd->bmd", f, sd["W_dec"]) + sd["b_dec"]) / s[None, :, None]  # noqa: E731
    n = sd["W_dec"].norm(dim=-1)
    assert_same(cc, enc, dec, (n[:, 1] / n.sum(-1)).numpy(), acts())
    assert cc.config.layer == 3 and cc.config.origin["scale"] == "store"


def test_kissane_without_a_scale_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="cc_weights.pt.*do not store the activation scale"):
        formats.load(write_kissane(tmp_path / "k", kissane_state()))


# ------------------------------------------------------------------ damaged checkpoints: file and key named
def _damaged_cl(tmp_path, damage):
    sd = cl_state("BatchTopKCrossCoder")
    if damage == "missing":
        del sd["decoder.bias"]
    elif damage == "shape":
        sd["encoder.bias"] = torch.zeros(F + 1)
    elif damage == "mode":
        sd["code_normalization_id"] = torch.tensor(9)
    elif damage == "nan":
        sd["decoder.weight"][1, 2, 3] = math.nan
    return write_hub(tmp_path / "cc", sd, "BatchTopKCrossCoder")


@pytest.mark.parametrize("damage,key", [("missing", "decoder.bias"), ("shape", "encoder.bias"),
                                        ("mode", "code_normalization_id"), ("nan", "decoder.weight")])
def test_damaged_crosscoder_learning_checkpoint_names_file_and_key(tmp_path, damage, key):
    with pytest.raises(CheckpointError, match=rf"model\.safetensors.*'{key}'"):
        formats.load(_damaged_cl(tmp_path, damage))


@pytest.mark.parametrize("damage,key", [("missing", "b_dec"), ("shape", "b_enc"), ("nan", "W_dec")])
def test_damaged_kissane_checkpoint_names_file_and_key(tmp_path, damage, key):
    sd = kissane_state()
    if damage == "missing":
        del sd["b_dec"]
    elif damage == "shape":
        sd["b_enc"] = torch.zeros(F - 1)
    else:
        sd["W_dec"][0, 0, 0] = math.nan
    with pytest.raises(CheckpointError, match=rf"cc_weights\.pt.*'{key}'"):
        formats.load(write_kissane(tmp_path / "k", sd), norm_scale=[1.0, 1.0])


def test_unknown_layout_and_config_disagreement_are_named(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="no crosscoder layout.*crosscoder_learning.*kissane|kissane.*crosscoder_learning"):
        formats.load(tmp_path / "x")
    trained_like("relu").save_pretrained(tmp_path / "ours")      # thinkdiff's own folder: loaded, not imported
    with pytest.raises(CheckpointError, match="ours is in no crosscoder layout.*CrossCoder.from_pretrained"):
        formats.load(tmp_path / "ours")
    renamed = tmp_path / "renamed.pt"                              # any .pt state dict of theirs, whatever its name
    torch.save(cl_state(), renamed)
    assert formats.detect(renamed)[0].NAME == "crosscoder_learning" and formats.load(renamed).n_latents == F
    sd = cl_state()
    folder = write_hub(tmp_path / "cc", sd, mode="SAE")          # config says SAE, the buffer CROSSCODER
    with pytest.raises(CheckpointError, match="config.json: code_normalization 'SAE' disagrees"):
        formats.load(folder)


# ------------------------------------------------------------------ export: their layout, read back the same
def trained_like(scheme, seed=0, folded=True) -> CrossCoder:
    cfg = CrossCoderConfig(d_model=D, n_latents=F, activation=scheme, k=4 if scheme == "batchtopk" else None, layer=3)
    cc = CrossCoder(cfg, seed=seed)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for p in cc.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
        cc.threshold.fill_(0.05)
    return cc.fold([0.6, 1.7]).eval() if folded else cc.eval()


@pytest.mark.parametrize("scheme,folded", [("relu", True), ("batchtopk", True), ("batchtopk", False)])
def test_export_reads_back_in_their_forward_and_round_trips(tmp_path, scheme, folded):
    cc, x = trained_like(scheme, folded=folded), acts()
    folder = formats.export(cc, tmp_path / "out")
    config = json.loads((folder / "config.json").read_text())
    assert config["dict_class"] == CLASSES[scheme] and config["code_normalization"] == "CROSSCODER"
    from safetensors.torch import load_file

    sd = load_file(str(folder / "model.safetensors"))
    with torch.no_grad():
        assert_same(cc, lambda x: cl_encode(sd, x), lambda f: cl_decode(sd, f), cl_relative_norms(sd), x)
        back = formats.load(folder)
        assert_same(back, cc.encode, cc.decode, norms.relative_norm(cc), x)
    assert back.decoder_norms("train").allclose(cc.decoder_norms("train"), rtol=1e-5)


def test_export_never_overwrites_nor_leaves_half_a_folder(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        formats.export(trained_like("relu"), tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="no inference threshold"):
        cc = trained_like("batchtopk")
        cc.threshold.fill_(math.nan)
        formats.export(cc, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    import safetensors.torch

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        formats.export(trained_like("relu"), tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]           # no folder, no temp folder left
