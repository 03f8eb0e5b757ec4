"""The sparse crosscoder: one shared latent code per token, read from and written to N models.

Anthropic-style (Lindsey et al. 2024), as in Baek & Tegmark::

    f      = act( sum_m x_m @ W_enc[m] + b_enc )          x: [batch, n_models, d_model] -> f: [batch, F]
    xhat_m = f @ W_dec[:, m] + b_dec[m]                   f: [batch, F] -> xhat: [batch, n_models, d_model]

Shapes: ``W_enc [n_models, d_model, F]``, ``W_dec [F, n_models, d_model]``, ``b_enc [F]``,
``b_dec [n_models, d_model]``. Model index 0 = base, 1 = distilled.

Two sparsity schemes (``CrossCoderConfig.activation``):

- ``"relu"``: ReLU; the trainer adds an L1 penalty ``sum_i f_i * sum_m ||W_dec[i, m]||_2`` (sum of
  per-model decoder L2 norms, the term that lets a latent become model-exclusive).
- ``"batchtopk"``: ReLU, then keep the ``k * batch`` largest values of ``f_i * sum_m ||W_dec[i, m]||``
  across the whole batch (so the mean L0 is ``k`` but the budget moves between tokens). At inference
  (``eval()`` mode) a fixed threshold on the same score, estimated during training, replaces the
  batch-dependent selection, so a token's code does not depend on its batch-mates.

Initialisation (paper, Kissane replication): each per-model decoder row ``W_dec[i, m]`` is a random
direction rescaled to L2 norm ``dec_init_norm`` (0.08); ``W_enc[m] = W_dec[:, m].T``; biases zero.

Units. Training runs on normalised activations ``x_m * s_m`` with ``s_m = sqrt(d_model) / mean||x_m||``
(store.norm_scale). ``fold(s)`` bakes the scale into the weights so the saved model takes and returns
*raw* activations: ``W_enc[m] *= s_m``, ``W_dec[:, m] /= s_m``, ``b_dec[m] /= s_m``. The folded scale is
kept in ``config.norm_scale`` so ``decoder_norms(units="train")`` (used for BatchTopK ranking, the L1
penalty and relative norms as in the paper) is unchanged by folding.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import schemes
from .paths import sha256_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKSUM_KEY = "weights_sha256"   # in config.json: the sha256 of model.safetensors, checked on every load
# in config.json: the sha256 of every config field with the weights' checksum, so an edited norm_scale, layer,
# store hash or training setting is caught on load as a flipped weight is
CONFIG_CHECKSUM_KEY = "config_sha256"
ORIGIN_SCALES = ("checkpoint", "store", "none")   # where an imported crosscoder's norm_scale came from


def config_digest(fields: dict, weights_sha: str) -> str:
    """sha256 over the config's fields (canonical JSON) and the weights' sha256."""
    import hashlib

    blob = json.dumps(fields, sort_keys=True, separators=(",", ":")) + weights_sha
    return hashlib.sha256(blob.encode()).hexdigest()


class CorruptArtifactError(ValueError):
    """A saved artifact fails its integrity checks (unreadable, checksum mismatch, non-finite values)."""



@dataclass
class CrossCoderConfig:
    """Everything needed to rebuild a crosscoder; saved as ``config.json`` next to the weights."""

    d_model: int
    n_latents: int
    n_models: int = 2
    activation: str = "relu"            # "relu" or "batchtopk"
    k: int | None = None                # BatchTopK: mean active latents per token
    layer: int | None = None            # hook layer of the store it was trained on (resid_pre of block L)
    dec_init_norm: float = 0.08         # L2 norm of each per-model decoder row at init
    norm_scale: list[float] | None = None  # folded per-model scale (raw -> training units); None = unfolded
    store_hash: str | None = None       # config hash of the activation store it was trained on
    train_config: dict | None = None    # the TrainConfig it was trained with (for provenance)
    # an imported crosscoder (thinkdiff.formats): {"format", "file", "sha256" of the checkpoint, "scale": where
    # norm_scale came from, "checkpoint" (its own normaliser), "store" (the store's, folded on import) or "none"};
    # None = trained by thinkdiff
    origin: dict | None = None

    def validate(self) -> "CrossCoderConfig":
        for name in ("d_model", "n_latents", "n_models"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"crosscoder {name} must be a positive integer, got {v!r}")
        if self.activation not in schemes.SCHEMES:
            raise ValueError(f"crosscoder activation must be one of {sorted(schemes.SCHEMES)}, got {self.activation!r}")
        schemes.get(self.activation).check_config(self.k, self.n_latents, "crosscoder")
        if not (self.dec_init_norm > 0 and math.isfinite(self.dec_init_norm)):
            raise ValueError(f"dec_init_norm must be positive and finite, got {self.dec_init_norm!r}")
        if self.norm_scale is not None:
            if len(self.norm_scale) != self.n_models or not all(s > 0 and math.isfinite(s) for s in self.norm_scale):
                raise ValueError(f"norm_scale must be {self.n_models} positive finite numbers, got {self.norm_scale!r}")
        if self.origin is not None:
            keys = {"format", "file", "sha256", "scale"}
            if not isinstance(self.origin, dict) or not keys <= set(self.origin) \
                    or self.origin["scale"] not in ORIGIN_SCALES:
                raise ValueError(f"origin must be a dict with {sorted(keys)} (scale one of {ORIGIN_SCALES}), "
                                 f"got {self.origin!r}")
        return self


def decoder_weights(crosscoder, units: str = "raw") -> torch.Tensor:
    """The decoder ``[n_latents, n_models, d_model]`` as float64 on the CPU: the one way to read it.

    ``units="raw"``: as saved (folded), in each model's residual units: what steering adds to a model.
    ``"training"``: the folded scale undone (each model's activations at mean norm sqrt(d)), the units in
    which the paper takes relative decoder norms. ``crosscoder`` may be a crosscoder or a bare tensor (taken
    as given in either unit)."""
    if units not in ("raw", "training"):
        raise ValueError(f"units must be 'raw' or 'training', got {units!r}")
    W = crosscoder if isinstance(crosscoder, torch.Tensor) else getattr(crosscoder, "W_dec", None)
    if W is None:
        raise ValueError(f"{type(crosscoder).__name__} has no W_dec [n_latents, n_models, d_model]")
    W = torch.as_tensor(W).detach().double().cpu()
    if W.ndim != 3:
        raise ValueError(f"W_dec must be [n_latents, n_models, d_model], got shape {tuple(W.shape)}")
    scale = getattr(getattr(crosscoder, "config", None), "norm_scale", None)
    if units == "training" and scale is not None:
        W = W * torch.tensor([float(v) for v in scale], dtype=torch.float64)[None, :, None]
    return W


class CrossCoder(nn.Module):
    """A sparse crosscoder over ``n_models`` activation streams of width ``d_model``. See module doc."""

    def __init__(self, config: CrossCoderConfig, seed: int | None = 0):
        """Paper initialisation from its own generator (``seed``); ``seed=None`` leaves zeros for loading."""
        super().__init__()
        self.config = config.validate()
        m, d, F = config.n_models, config.d_model, config.n_latents
        if seed is None:
            w_dec = torch.zeros(F, m, d)
        else:
            w_dec = torch.randn(F, m, d, generator=torch.Generator().manual_seed(seed))
            w_dec *= config.dec_init_norm / w_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.permute(1, 2, 0).clone(memory_format=torch.contiguous_format))  # [m, d, F] = W_dec^T, own storage
        self.b_enc = nn.Parameter(torch.zeros(F))
        self.b_dec = nn.Parameter(torch.zeros(m, d))
        # BatchTopK inference threshold on f * decoder-norm-sum (training units); NaN = not estimated yet.
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self.source: str | None = None     # where from_pretrained loaded it from

    # -- shapes and units ---------------------------------------------------------------------
    @property
    def n_models(self) -> int:
        return self.config.n_models

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def n_latents(self) -> int:
        return self.config.n_latents

    @property
    def folded(self) -> bool:
        return self.config.norm_scale is not None

    def _scale(self) -> torch.Tensor:
        s = self.config.norm_scale or [1.0] * self.n_models
        return torch.tensor(s, dtype=self.W_dec.dtype, device=self.W_dec.device)

    def decoder_norms(self, units: str = "train", p: float = 2) -> torch.Tensor:
        """Per-model decoder row norms ``[F, n_models]``.

        ``units="train"``: in normalised (training) units, the norms the loss and the paper's relative
        norm use, identical before and after folding. ``units="raw"``: norms of the stored weights of a
        folded model (raw activation units; a steering vector's size).
        """
        norms = self.W_dec.norm(p=p, dim=-1)
        if units == "train":
            return norms * self._scale()
        if units == "raw":
            return norms
        raise ValueError(f"units must be 'train' or 'raw', got {units!r}")

    def _check_x(self, x: torch.Tensor):
        if x.ndim != 3 or x.shape[1:] != (self.n_models, self.d_model):
            raise ValueError(f"crosscoder expects activations [batch, {self.n_models}, {self.d_model}], "
                             f"got {tuple(x.shape)}")

    # -- forward ------------------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """``sum_m x_m @ W_enc[m] + b_enc``: [B, n_models, d] -> [B, F] (one matmul over n_models*d)."""
        self._check_x(x)
        B = x.shape[0]
        w = self.W_enc.reshape(self.n_models * self.d_model, self.n_latents)
        return torch.addmm(self.b_enc, x.reshape(B, -1).to(w.dtype), w)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent code ``f`` [B, F] (dense) of activations ``x`` [B, n_models, d].

        BatchTopK: in training mode (or before a threshold exists) the batch-level top ``k*B``;
        in eval mode the fixed threshold.
        """
        return schemes.get(self.config.activation).encode(self, self.pre_acts(x), x.shape[0])

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction [B, n_models, d] of a latent code ``f`` [B, F]."""
        if f.ndim != 2 or f.shape[1] != self.n_latents:
            raise ValueError(f"decode expects a code [batch, {self.n_latents}], got {tuple(f.shape)}")
        w = self.W_dec.reshape(self.n_latents, -1)
        out = torch.addmm(self.b_dec.reshape(-1), f.to(w.dtype), w)
        return out.view(f.shape[0], self.n_models, self.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` [B, n_models, d] (same units as x)."""
        return self.decode(self.encode(x))

    # -- folding ------------------------------------------------------------------------------
    @torch.no_grad()
    def fold(self, norm_scale) -> "CrossCoder":
        """A copy that takes and returns raw activations, for a model trained on ``x * norm_scale``."""
        if self.folded:
            raise ValueError("this crosscoder is already folded (config.norm_scale is set)")
        s = torch.as_tensor(norm_scale, dtype=torch.float64).reshape(-1)
        cfg = dataclasses.replace(self.config, norm_scale=[float(v) for v in s])
        out = CrossCoder(cfg, seed=None).to(self.W_dec.device)
        s = s.to(self.W_dec.dtype).to(self.W_dec.device)
        out.W_enc.copy_(self.W_enc * s[:, None, None])
        out.W_dec.copy_(self.W_dec / s[None, :, None])
        out.b_enc.copy_(self.b_enc)
        out.b_dec.copy_(self.b_dec / s[:, None])
        out.threshold.copy_(self.threshold)
        return out.train(self.training)

    @torch.no_grad()
    def unfold(self) -> "CrossCoder":
        """The inverse of ``fold``: a copy in training (normalised) units."""
        if not self.folded:
            raise ValueError("this crosscoder is not folded")
        s = self._scale()
        out = CrossCoder(dataclasses.replace(self.config, norm_scale=None), seed=None).to(self.W_dec.device)
        out.W_enc.copy_(self.W_enc / s[:, None, None])
        out.W_dec.copy_(self.W_dec * s[None, :, None])
        out.b_enc.copy_(self.b_enc)
        out.b_dec.copy_(self.b_dec * s[:, None])
        out.threshold.copy_(self.threshold)
        return out.train(self.training)

    # -- compatibility, save and load ---------------------------------------------------------
    def check_compatible(self, store) -> None:
        """Raise a clear ``ValueError`` if ``store``'s activations cannot feed this crosscoder."""
        problems = []
        if store.n_models != self.n_models:
            problems.append(f"n_models {store.n_models} (store) vs {self.n_models} (crosscoder)")
        if store.d_model != self.d_model:
            problems.append(f"d_model {store.d_model} (store) vs {self.d_model} (crosscoder)")
        layer = getattr(store, "layer", None)
        if self.config.layer is not None and layer is not None and layer != self.config.layer:
            problems.append(f"layer {layer} (store) vs {self.config.layer} (crosscoder)")
        theirs = getattr(store, "config_hash", None) or (getattr(store, "manifest", None) or {}).get("key_hash")
        if self.config.store_hash is not None and theirs is not None and theirs != self.config.store_hash:
            problems.append(f"store hash {theirs} (store) vs {self.config.store_hash} (the store it was trained on)")
        scale = getattr(store, "norm_scale", None)
        # an imported crosscoder with its own normaliser folds that one, not the store's: nothing to compare
        own = self.config.origin is not None and self.config.origin["scale"] != "store"
        if self.config.norm_scale is not None and scale is not None and not own and not np.allclose(
                np.asarray(self.config.norm_scale, float), np.asarray(scale, float).reshape(-1), rtol=1e-4):
            problems.append(f"norm_scale {np.round(np.asarray(scale, float), 6).tolist()} (store) vs "
                            f"{np.round(self.config.norm_scale, 6)} (folded into the crosscoder)")
        if problems:
            where = getattr(store, "path", None) or type(store).__name__
            raise ValueError(f"crosscoder {getattr(self, 'source', None) or '(in memory)'} does not match the "
                             f"activation store {where}: " + "; ".join(problems))

    def save_pretrained(self, folder) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (Hugging Face layout) into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        fields = json.loads(json.dumps(dataclasses.asdict(self.config)))   # as it will read back
        weights_sha = sha256_file(folder / WEIGHTS_NAME)
        config = {**fields, CHECKSUM_KEY: weights_sha, CONFIG_CHECKSUM_KEY: config_digest(fields, weights_sha)}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=1))
        return folder

    @classmethod
    def from_pretrained(cls, path_or_repo, revision: str | None = None, device="cpu") -> "CrossCoder":
        """Load from a local folder, or from a Hub repo id via ``huggingface_hub.snapshot_download``."""
        from safetensors.torch import load_file

        folder = Path(path_or_repo)
        if not folder.is_dir():
            s = str(path_or_repo)
            if folder.exists() or s.startswith((".", "/", "~")) or s.count("/") != 1:
                raise FileNotFoundError(f"no crosscoder folder at {s!r} (expected {CONFIG_NAME} + {WEIGHTS_NAME})")
            import huggingface_hub

            try:
                folder = Path(huggingface_hub.snapshot_download(
                    s, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
            except Exception as err:   # offline, unknown repo, no access: one clear message
                raise FileNotFoundError(
                    f"{s!r} is not a local folder and could not be fetched from the Hugging Face Hub "
                    f"({type(err).__name__}: {err}). Offline (HF_HUB_OFFLINE=1)? Pass a local folder.") from err
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; not a saved crosscoder")
        if not (folder / WEIGHTS_NAME).is_file():
            raise CorruptArtifactError(f"{folder} has {CONFIG_NAME} but no {WEIGHTS_NAME}: the crosscoder is "
                                       "incomplete; delete the folder to retrain it")
        known = {f.name for f in dataclasses.fields(CrossCoderConfig)}
        cfg_file, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        try:
            raw = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptArtifactError(f"{cfg_file} is not valid JSON ({err}); the crosscoder in {folder} is "
                                       "damaged: delete the folder to retrain it") from None
        if not isinstance(raw, dict):
            raise CorruptArtifactError(f"{cfg_file} holds {type(raw).__name__}, not a crosscoder config")
        expected = raw.pop(CHECKSUM_KEY, None)
        expected_config = raw.pop(CONFIG_CHECKSUM_KEY, None)
        unknown = set(raw) - known
        if unknown:
            raise CorruptArtifactError(f"{cfg_file} has unknown fields {sorted(unknown)}; delete {folder} to retrain")
        if expected is None or expected_config is None:
            missing = [k for k, v in ((CHECKSUM_KEY, expected), (CONFIG_CHECKSUM_KEY, expected_config)) if v is None]
            raise CorruptArtifactError(f"{cfg_file} has no {' or '.join(missing)}: nothing vouches for the weights "
                                       f"and settings it would load; delete {folder} to retrain (or save it again "
                                       "with CrossCoder.save_pretrained)")
        got = sha256_file(weights)
        if got != expected:
            raise CorruptArtifactError(f"{weights} does not match the sha256 recorded in {cfg_file}: the weights "
                                       f"are corrupted or were replaced; delete {folder} to retrain")
        if config_digest(raw, got) != expected_config:
            raise CorruptArtifactError(f"the fields of {cfg_file} do not match its {CONFIG_CHECKSUM_KEY}: a setting "
                                       "the results depend on (norm_scale, layer, store_hash, train_config, ...) was "
                                       f"edited after saving; delete {folder} to retrain")
        try:
            config = CrossCoderConfig(**raw).validate()
        except (TypeError, ValueError) as err:
            raise CorruptArtifactError(f"{cfg_file} is not a usable config ({err}); delete {folder} to retrain") from None
        model = cls(config, seed=None)
        try:
            model.load_state_dict(load_file(str(weights)))
        except Exception as err:   # truncated file, wrong shapes: name the file, not the library's internals
            raise CorruptArtifactError(f"{weights} cannot be loaded ({type(err).__name__}: {err}); delete "
                                       f"{folder} to retrain") from None
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise CorruptArtifactError(f"{weights} holds non-finite weights; delete {folder} to retrain")
        model.source = str(folder)
        return model.to(device).eval()

    def push_to_hub(self, repo_id: str, private: bool = True, token: str | None = None,
                    commit_message: str = "Upload thinkdiff crosscoder") -> str:
        """Upload ``config.json`` + ``model.safetensors`` to a Hub model repo; returns the repo URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
        return str(url)

    def extra_repr(self) -> str:
        c = self.config
        k = f", k={c.k}" if c.k is not None else ""
        return (f"n_models={c.n_models}, d_model={c.d_model}, n_latents={c.n_latents}, "
                f"activation={c.activation}{k}, layer={c.layer}, folded={self.folded}"
                + (f", imported from {c.origin['format']} {c.origin['file']}" if c.origin else ""))
