"""science-of-finetuning's crosscoder_learning layout (the dictionary_learning fork diffing-toolkit trains with):
its ``CrossCoder`` (ReLU) and ``BatchTopKCrossCoder``, as defined in science-of-finetuning/crosscoder_learning,
``dictionary_learning/dictionary.py`` at commit b2363ed54590074ef4667ca6152094800a65f9aa (February 2026).

Files: a folder saved by huggingface_hub's ``PyTorchModelHubMixin`` (``config.json``: the init arguments
``activation_dim``, ``dict_size``, ``num_layers``, ``code_normalization``, ``k``, and since February 2026
``dict_class``; ``model.safetensors``), or a ``torch.save(state_dict)`` file (``model_final.pt``,
``checkpoint_<step>.pt``; keys may start with ``_orig_mod.``) beside the training's ``config.json``
(``{"trainer": {"dict_class", "layer", ...}}``). Keys: ``encoder.weight [L, d, F]``, ``encoder.bias [F]``,
``decoder.weight [L, F, d]``, ``decoder.bias [L, d]``, ``code_normalization_id``, ``target_rms``,
``activation_mean [L, d]``, ``activation_std [L, d]``, ``activation_global_scale [L]``; BatchTopK adds ``k`` and
``threshold``.

Their forward pass (``NormalizableMixin``; ``CrossCoder`` never turns ``keep_relative_variance`` off)::

    x'_l   = (x_l - activation_mean[l]) * activation_global_scale[l]       (no normaliser: mean/std all NaN)
    f      = relu(sum_l x'_l @ encoder.weight[l] + encoder.bias)
    f      = f * (f * c > threshold)                                       (BatchTopK, use_threshold=True)
    xhat_l = (f @ decoder.weight[l] + decoder.bias[l]) / (activation_global_scale[l] + 1e-8) + activation_mean[l]

with ``c`` the CROSSCODER code normalisation ``sum_l ||decoder.weight[l, i]||``. Folded into thinkdiff's weights
(g = global scale, mu = mean): ``W_enc = g * encoder.weight``, ``b_enc = encoder.bias - sum_l g mu_l @
encoder.weight[l]``, ``W_dec = decoder.weight / (g + 1e-8)``, ``b_dec = decoder.bias / (g + 1e-8) + mu`` and
``norm_scale = g + 1e-8``, so the decoder in training units is theirs exactly: the threshold, the relative norms
and the BatchTopK ranking are unchanged.

Code normalisations (``CodeNormalization``: CROSSCODER=1, SAE=2, MIXED=3, NONE=4, DECOUPLED=5): a ``CrossCoder``'s
encode and decode never use it (only its training loss and scaled codes do), so every id is accepted. A
``BatchTopKCrossCoder`` is imported with CROSSCODER only, thinkdiff's BatchTopK score; the others are refused:
SAE, MIXED and NONE weight a latent's score by another decoder norm, which moves a fixed threshold by a different
factor per latent, and DECOUPLED keeps one code per layer, which one shared code cannot hold.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .. import paths
from ..crosscoder import CHECKSUM_KEY, CrossCoder
from .common import CheckpointError, build, check_finite, check_keys, read_json, read_tensors

NAME = "crosscoder_learning"
NEEDS_SCALE = False     # the checkpoint carries its own activation normaliser
EXPECTS = ("a folder with config.json + model.safetensors, or with model_final.pt / checkpoint_<step>.pt, or a "
           ".safetensors / .pt file")
CODE_NORMALIZATION = {1: "CROSSCODER", 2: "SAE", 3: "MIXED", 4: "NONE", 5: "DECOUPLED"}
CLASSES = {"relu": "CrossCoder", "batchtopk": "BatchTopKCrossCoder"}   # thinkdiff scheme -> their class
EPS = 1e-8              # denormalize_activations divides by (activation_global_scale + 1e-8)
CONFIG, WEIGHTS, FINAL = "config.json", "model.safetensors", "model_final.pt"
KEYS = {"encoder.weight": ("L", "d", "F"), "encoder.bias": ("F",), "decoder.weight": ("L", "F", "d"),
        "decoder.bias": ("L", "d"), "code_normalization_id": (), "target_rms": (), "activation_mean": ("L", "d"),
        "activation_std": ("L", "d"), "activation_global_scale": ("L",)}
BATCHTOPK_KEYS = {**KEYS, "k": (), "threshold": ()}
REFUSED = {"SAE": "ranks a latent by f * ||its decoder rows concatenated||",
           "MIXED": "ranks a latent by f * (a mix of the concatenated and the summed decoder norms)",
           "NONE": "ranks a latent by f alone",
           "DECOUPLED": "keeps a threshold and a code per layer, so each model decodes its own set of latents"}


def resolve(path: Path) -> dict | None:
    """The checkpoint's files ``{"weights", "config"}`` if ``path`` is in this layout, else None."""
    if path.is_dir():
        if (path / WEIGHTS).is_file() and (path / CONFIG).is_file() and not _ours(path / CONFIG):
            return {"weights": path / WEIGHTS, "config": path / CONFIG}
        if (path / FINAL).is_file():
            return {"weights": path / FINAL, "config": _beside(path / FINAL)}
        steps = sorted(path.glob("checkpoint_*.pt"))
        if len(steps) > 1:
            raise CheckpointError(f"{path} holds {len(steps)} training checkpoints and no {FINAL}; name the one to "
                                  f"import (e.g. {steps[-1]})")
        return {"weights": steps[0], "config": _beside(steps[0])} if steps else None
    kissane = path.name == "cc_weights.pt" or path.with_name(f"{path.stem}_cfg.json").is_file()   # Kissane's names
    if path.suffix == ".safetensors" or (path.suffix == ".pt" and not kissane):
        return {"weights": path, "config": _beside(path)}
    return None


def _ours(config: Path) -> bool:
    """A folder thinkdiff saved (its config.json holds a weights checksum): loaded, not imported."""
    try:
        return CHECKSUM_KEY in read_json(config)
    except CheckpointError:
        return False


def _beside(weights: Path) -> Path | None:
    return weights.parent / CONFIG if (weights.parent / CONFIG).is_file() else None


def _class(config: dict, trainer: dict, tensors: dict, where) -> str:
    """Which of their classes saved the checkpoint: ``dict_class`` where recorded, else its keys (only a
    ``BatchTopKCrossCoder`` has ``k`` and ``threshold``)."""
    name = config.get("dict_class") or trainer.get("dict_class")
    if name is None:
        return "BatchTopKCrossCoder" if "threshold" in tensors or "k" in tensors else "CrossCoder"
    if name not in CLASSES.values():
        raise CheckpointError(f"{where}: dict_class {name!r} is not a crosscoder thinkdiff imports "
                              f"({', '.join(CLASSES.values())}); a BatchTopKSAE reads one model, not a pair")
    return name


def _mode(tensors: dict, config: dict, path: Path, cfg_path) -> str:
    """The code normalisation's name, from ``code_normalization_id`` (and the hub config, which must agree)."""
    if "code_normalization_id" not in tensors:
        raise CheckpointError(f"{path} has no key 'code_normalization_id': without it their loader assumes "
                              "CROSSCODER with a warning; thinkdiff does not guess (save the checkpoint again)")
    cid = tensors["code_normalization_id"]
    value = int(cid.reshape(-1)[0]) if cid.numel() == 1 and not cid.is_floating_point() else cid.tolist()
    if value not in CODE_NORMALIZATION:
        raise CheckpointError(f"{path}: key 'code_normalization_id' = {value!r} is not a code normalisation id "
                              f"(CodeNormalization: {', '.join(f'{k} {v}' for k, v in CODE_NORMALIZATION.items())})")
    name = CODE_NORMALIZATION[value]
    given = config.get("code_normalization")
    if given is not None and str(given).upper() != name:
        raise CheckpointError(f"{cfg_path}: code_normalization {given!r} disagrees with {path}'s "
                              f"code_normalization_id {value} ({name}); their hub loader would use the first, their "
                              ".pt loader the second")
    return name


def _normaliser(t: dict, path: Path):
    """(mean [L, d], global scale [L]) of the activation normaliser, or None when there is none (all NaN)."""
    mean, std = t["activation_mean"].double(), t["activation_std"].double()
    if torch.isnan(mean).all() and torch.isnan(std).all():
        return None
    for key, v in (("activation_mean", mean), ("activation_std", std)):
        if torch.isnan(v).any():
            raise CheckpointError(f"{path}: key {key!r} is partly NaN (all NaN marks no normaliser, none NaN a "
                                  "normaliser): the checkpoint is damaged")
    check_finite(t, ("activation_mean", "activation_std", "activation_global_scale", "target_rms"), path)
    g = t["activation_global_scale"].double()
    if not (g > 0).all():
        raise CheckpointError(f"{path}: key 'activation_global_scale' = {g.tolist()} must be positive")
    return mean, g


def _check_config(config: dict, dims: dict, cfg_path) -> None:
    """The hub config's sizes match the tensors; settings that change the forward pass are the defaults."""
    for key, letter in (("activation_dim", "d"), ("dict_size", "F"), ("num_layers", "L")):
        if key in config and config[key] != dims[letter]:
            raise CheckpointError(f"{cfg_path}: {key} = {config[key]!r} but the weights have {letter} = {dims[letter]}")
    if config.get("encoder_layers") not in (None, list(range(dims["L"]))):
        raise CheckpointError(f"{cfg_path}: encoder_layers = {config['encoder_layers']!r}: an encoder reading only "
                              "some layers is not supported (thinkdiff encodes every model)")
    if config.get("num_decoder_layers") not in (None, dims["L"]):
        raise CheckpointError(f"{cfg_path}: num_decoder_layers = {config['num_decoder_layers']!r} differs from "
                              f"num_layers {dims['L']}; not supported")
    if config.get("latent_processor") is not None:
        raise CheckpointError(f"{cfg_path}: a latent_processor changes the codes between encode and decode; "
                              "not supported")


def load(files: dict, norm_scale, sha256: str) -> CrossCoder:
    """thinkdiff's ``CrossCoder`` equal to the checkpoint's forward pass, its normaliser folded (module doc)."""
    path, cfg_path = files["weights"], files["config"]
    if norm_scale is not None:
        raise CheckpointError(f"{path}: a {NAME} checkpoint carries its own activation normaliser; no norm_scale "
                              "is taken")
    raw = read_json(cfg_path) if cfg_path else {}
    hub = "trainer" not in raw      # a training folder's config.json nests the trainer's settings
    config = raw if hub else {}
    trainer = raw.get("trainer") if not hub else None
    if trainer is None and (path.parent / "trainer_config.json").is_file():
        trainer = read_json(path.parent / "trainer_config.json").get("trainer")
    trainer = trainer if isinstance(trainer, dict) else {}
    t = read_tensors(path)
    cls = _class(config, trainer, t, cfg_path or path)
    mode = _mode(t, config, path, cfg_path)
    if cls == "BatchTopKCrossCoder" and mode != "CROSSCODER":
        raise CheckpointError(f"{path}: a BatchTopKCrossCoder with code_normalization {mode} is not supported: it "
                              f"{REFUSED[mode]}, while thinkdiff's BatchTopK ranks f * (sum of per-model decoder "
                              "norms), CROSSCODER; no folding makes the same latents fire")
    dims = check_keys(t, BATCHTOPK_KEYS if cls == "BatchTopKCrossCoder" else KEYS, path, f"{NAME} {cls}")
    _check_config(config, dims, cfg_path)
    check_finite(t, ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"), path)
    We, be = t["encoder.weight"].double(), t["encoder.bias"].double()
    Wd, bd = t["decoder.weight"].double(), t["decoder.bias"].double()
    norm = _normaliser(t, path)
    scale = None
    if norm is not None:
        mean, g = norm
        We, be = We * g[:, None, None], be - torch.einsum("ld,ldf->f", mean * g[:, None], We)
        scale = g + EPS
        Wd, bd = Wd / scale[:, None, None], bd / scale[:, None] + mean
    extra = {}
    if cls == "BatchTopKCrossCoder":
        check_finite(t, ("threshold",), path)
        k = t["k"]
        if k.is_floating_point() or not 0 < int(k) <= dims["F"]:
            raise CheckpointError(f"{path}: key 'k' = {k.item()!r} must be an integer in [1, F={dims['F']}]")
        extra = {"activation": "batchtopk", "k": int(k), "threshold": float(t["threshold"])}
    layer = trainer.get("layer")
    origin = {"format": NAME, "file": str(path), "sha256": sha256, "scale": "none" if norm is None else "checkpoint",
              "class": cls, "code_normalization": mode}
    return build(We, be, Wd.permute(1, 0, 2), bd, norm_scale=scale, origin=origin,
                 layer=layer if isinstance(layer, int) and not isinstance(layer, bool) else None, **extra)


def save(cc: CrossCoder, folder) -> Path:
    """Write ``cc`` as their hub layout (``config.json`` + ``model.safetensors``) into the new folder ``folder``,
    atomically. Its folded scale s becomes their normaliser (mean 0, ``activation_global_scale = s``, std with
    the same total variance), so their decoder is thinkdiff's in training units and their relative norms and
    BatchTopK threshold read as thinkdiff's."""
    from safetensors.torch import save_file

    c = cc.config
    if c.activation not in CLASSES:
        raise ValueError(f"a {c.activation!r} crosscoder has no {NAME} class (they have {sorted(CLASSES)})")
    L, d, F = c.n_models, c.d_model, c.n_latents
    W_enc, b_enc = cc.W_enc.detach().double().cpu(), cc.b_enc.detach().double().cpu()
    W_dec, b_dec = cc.W_dec.detach().double().cpu().permute(1, 0, 2), cc.b_dec.detach().double().cpu()
    if c.norm_scale is None:
        nan = torch.full((L, d), math.nan, dtype=torch.float64)
        mean, std, g = nan, nan, torch.ones(L, dtype=torch.float64)
        enc, dec, dec_b = W_enc, W_dec, b_dec
    else:
        g = torch.tensor(c.norm_scale, dtype=torch.float64)
        mean = torch.zeros(L, d, dtype=torch.float64)
        std = (1 / (g * math.sqrt(d)))[:, None].expand(L, d)       # their init: g = target_rms / sqrt(sum std^2)
        enc, dec, dec_b = W_enc / g[:, None, None], W_dec * (g + EPS)[:, None, None], b_dec * (g + EPS)[:, None]
    tensors = {"encoder.weight": enc, "encoder.bias": b_enc, "decoder.weight": dec, "decoder.bias": dec_b,
               "target_rms": torch.tensor(1.0), "activation_mean": mean, "activation_std": std,
               "activation_global_scale": g}
    tensors = {k: v.float().contiguous() for k, v in tensors.items()}
    tensors["code_normalization_id"] = torch.tensor(1)             # CROSSCODER
    config = {"activation_dim": d, "dict_size": F, "num_layers": L, "code_normalization": "CROSSCODER",
              "dict_class": CLASSES[c.activation]}
    if c.activation == "batchtopk":
        if not torch.isfinite(cc.threshold):
            raise ValueError("this BatchTopK crosscoder has no inference threshold yet (train it first)")
        tensors.update(k=torch.tensor(c.k, dtype=torch.int32), threshold=cc.threshold.detach().float().cpu())
        config["k"] = c.k
    with paths.atomic_dir(Path(folder)) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    return Path(folder)
