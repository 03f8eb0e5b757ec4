"""Which precision the matmuls run in: chosen by what the machine does fast, never hard-coded for a CPU.

Two dtypes are kept apart everywhere in thinkdiff:

- the **storage dtype**: what is written and loaded (a preset's ``dtype``, a store's ``dtype``); bf16 weights and
  activation stores may stay bf16 on disk;
- the **compute dtype**: what the matmuls run in (the models' weights in memory, the harvest's and the trainer's
  autocast).

On a GPU, bf16 compute is used where the device supports it. On a CPU it depends on the processor: with native
bf16 (AVX-512 BF16, AMX) a bf16 matmul is several times faster than fp32; without it (AVX2 only) bf16 is
emulated and can be 50x slower. So on a CPU, ``"auto"`` runs bf16 only where ``cpu_bf16_probe`` (a small
matmul in each precision, timed once per process) says bf16 is at least ``BF16_MIN_SPEEDUP`` times faster, and
computes in fp32 otherwise. Every record this module returns says what was asked, what was chosen and why, with
the probe's timings; the harvest manifest, the crosscoder's summary, the report records and the distillation
adapter's manifest carry it.

``THINKDIFF_CPU_BF16=0`` (or ``1``) forces the probe's answer, e.g. to reproduce on a CPU with native bf16 what a
machine without it does (read here only). ``ONEDNN_MAX_CPU_ISA=AVX2`` really makes oneDNN emulate bf16 on such a
CPU; the probe then measures the slow path and answers "no" by itself.
"""
from __future__ import annotations

import functools
import os
import time

import torch

ENV_FORCE = "THINKDIFF_CPU_BF16"
COMPUTE_CHOICES = ("auto", "float32", "bfloat16")
# bf16 is used on a CPU only when the probe's bf16 matmul runs at least this many times the fp32 rate: below it,
# the precision lost buys too little time. Measured on one thread: native bf16 (AVX-512 BF16) 1.8-3.5x, emulated
# bf16 (AVX2 only, or ONEDNN_MAX_CPU_ISA=AVX2) 0.02-0.05x; the threshold sits far from both.
BF16_MIN_SPEEDUP = 1.2
PROBE_SIZE = 256      # the probe multiplies two [PROBE_SIZE, PROBE_SIZE] matrices
PROBE_REPS = 5        # timed repetitions per precision (best of), after one warm-up
# How far results computed in bf16 may be from float32's (tests/integration/test_smollm2.py checks them on the SmolLM2
# smoke pair; measured there: activations 0.4-0.5 %, codes 0.4 %, 99.9 % of active latents the same). Greedy tokens
# are compared only where float32's two best logits are more than ``greedy_tie_margin`` apart: a near-tie may go
# either way.
AGREEMENT = {"activations_rel_l2": 0.02, "codes_rel_l2": 0.05, "codes_active_agreement": 0.99,
             "greedy_tie_margin": 0.5}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def forced_answer() -> bool | None:
    """``THINKDIFF_CPU_BF16`` read as a boolean (None when unset); a clear error for any other value."""
    raw = os.environ.get(ENV_FORCE)
    if raw is None or raw.strip() == "":
        return None
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"environment variable {ENV_FORCE}={raw!r}: use 1 (compute in bf16 on the CPU) or 0 (fp32); "
                     "unset it to let the probe decide")


def _gflops(dtype: torch.dtype, n: int, reps: int) -> float:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    a @ b                                               # warm-up: kernel selection, first-touch
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / max(best, 1e-9) / 1e9


def cpu_flags() -> dict:
    """The CPU's model name and the flags that decide bf16 speed (from ``/proc/cpuinfo`` where it exists)."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                if flags and model:
                    break
    except OSError:
        pass
    return {"cpu": model, **{f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}}


@functools.lru_cache(maxsize=None)
def _measure(n: int, reps: int) -> dict:
    # one thread: a per-core rate, steady when other processes share the machine (two test workers, a notebook)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        fp32, bf16 = _gflops(torch.float32, n, reps), _gflops(torch.bfloat16, n, reps)
    finally:
        torch.set_num_threads(threads)
    # Four significant figures, not fixed decimals: emulated bf16 runs at about 0.03x fp32, where three decimals
    # leave the ratio 1-2 % away from the one its own (rounded) GFLOP/s give.
    return {"fp32_gflops": _sig(fp32), "bf16_gflops": _sig(bf16), "bf16_speedup": _sig(bf16 / fp32),
            "shape": [n, n, n], "threads": 1, "seconds": round(time.perf_counter() - t0, 3)}


def _sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant figures."""
    return float(f"{x:.{digits}g}")


def cpu_bf16_probe() -> dict:
    """Is bf16 compute worth it on this CPU? Measured once per process (~0.01 s with native bf16, ~0.2 s without).

    Returns ``{"bf16": bool, "why": str, "fp32_gflops", "bf16_gflops", "bf16_speedup", "shape", "threads",
    "seconds", "forced_by", "cpu", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "onednn_max_cpu_isa"}``.
    ``THINKDIFF_CPU_BF16`` overrides the answer (the timings are still measured and recorded)."""
    forced = forced_answer()
    m = dict(_measure(PROBE_SIZE, PROBE_REPS))
    fast = m["bf16_speedup"] >= BF16_MIN_SPEEDUP
    if forced is None:
        why = (f"probe: bf16 matmul {m['bf16_speedup']:.2f}x the fp32 rate "
               f"({'>=' if fast else '<'} {BF16_MIN_SPEEDUP}x needed)")
        answer = fast
    else:
        why = f"forced by {ENV_FORCE}={os.environ[ENV_FORCE]} (probe measured {m['bf16_speedup']:.2f}x)"
        answer = forced
    return {"bf16": answer, "why": why, **m, "forced_by": ENV_FORCE if forced is not None else None,
            **cpu_flags(), "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}


def _device_type(device) -> str:
    return torch.device(device).type if not isinstance(device, torch.device) else device.type


def resolve(requested: str, device="cpu", what: str = "compute_dtype") -> dict:
    """The compute dtype for ``requested`` (``"auto"``, ``"float32"`` or ``"bfloat16"``) on ``device``.

    Returns ``{"requested", "dtype", "why", "device"}``, plus ``"cpu_probe"`` where the probe decided on a CPU.
    An explicit ``"float32"`` / ``"bfloat16"`` is honoured on any device (a run config can force either)."""
    if requested not in COMPUTE_CHOICES:
        raise ValueError(f"{what} must be one of {COMPUTE_CHOICES}, got {requested!r}")
    dev = _device_type(device)
    out = {"requested": requested, "device": dev}
    if requested != "auto":
        return {**out, "dtype": requested, "why": f"set to {requested} in the config"}
    if dev == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return {**out, "dtype": "bfloat16" if ok else "float32",
                "why": "GPU " + ("supports bf16" if ok else "has no bf16 support")}
    if dev != "cpu":
        return {**out, "dtype": "float32", "why": f"no bf16 probe for device {dev!r}"}
    probe = cpu_bf16_probe()
    return {**out, "dtype": "bfloat16" if probe["bf16"] else "float32", "why": probe["why"], "cpu_probe": probe}


def weights_dtype(storage: str, requested: str = "auto", device="cpu") -> dict:
    """The dtype a pair's weights are loaded in for compute, given their storage dtype.

    ``requested="auto"``: stored bf16 weights compute in bf16 where ``resolve`` says bf16 pays on ``device`` and are
    upcast to float32 where it does not; float32 and float16 storage load as stored. An explicit ``"float32"`` or
    ``"bfloat16"`` is used as given. Returns ``resolve``'s record with ``"storage"`` added."""
    if storage not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"storage dtype must be float32, float16 or bfloat16, got {storage!r}")
    if requested == "auto" and storage != "bfloat16":
        rec = {"requested": "auto", "device": _device_type(device), "dtype": storage,
               "why": f"stored as {storage}; loaded as stored"}
    else:
        rec = resolve(requested, device, what="model compute dtype")
        if requested == "auto" and rec["dtype"] == "float32":
            rec["why"] = f"stored as bfloat16, upcast to float32: {rec['why']}"
    return {"storage": storage, **rec}
