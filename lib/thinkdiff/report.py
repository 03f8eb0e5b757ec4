"""The run report: each notebook records its headline numbers; ``write_report`` renders Markdown.

A record is ``RUNS_DIR/report/<run>/<stage>.json`` (``run``: the run config's name, ``configs/<run>.toml``)::

    {"stage": "00_evaluate", "run": "organism-m", "config_hash": "...",
     "numbers": {"name": value, ...},              # computed this run, never typed in
     "figures": ["figures/x.png", ...],
     "links": {"feature cards": "runs/label/<hash>/cards/feature_cards.html", ...},   # pages to open
     "claims": {"6": {"verdict": "supports", "evidence": "...", "rule": "thinkdiff.claims.claim6_verdict"}}}

Claims are numbered as in ``docs/paper-notes.md`` §11. A verdict is one of
``supports``, ``contradicts``, ``mixed`` or ``not tested``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
from pathlib import Path

from . import paths, precision
from .claims import RULES_VERSION

CLAIMS = {
    1: "Exclusive features exist (latents near relative norm 0 and 1)",
    2: "Some distilled-specific latents are reasoning features",
    3: "Marker-token latents are mostly shared",
    4: "Base-side 'wait' latents are lexical token detectors",
    5: "Ablating distilled-leaning latents lowers the distilled model's marker logit more than random, base barely moves",
    6: "Over-thinking: self-reflection steering lengthens output and adds 'Wait'",
    7: "Incisive thinking: deductive steering shortens output, same answer",
    8: "Geometry improves with size (distilled lower parallelogram loss at larger size)",
    9: "Training fit: explained variance about 0.90 at the paper's settings",
    10: "Robustness: claims survive the pitfall fixes, BatchTopK and latent scaling",
}
VERDICTS = ("supports", "contradicts", "mixed", "not tested")


def _report_dir(run: str) -> Path:
    return Path(paths.RUNS_DIR) / "report" / run


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def _relative(fig) -> str:
    """Repository-relative path of a figure where possible (reports link them), else absolute."""
    fig = Path(fig).resolve()
    try:
        return fig.relative_to(paths.REPO_ROOT).as_posix()
    except ValueError:
        return fig.as_posix()


def _link(target, report_path: Path) -> str:
    """A recorded path as the report links it: relative to the report for repository paths, else absolute."""
    rel = Path(target)
    return rel.as_posix() if rel.is_absolute() else os.path.relpath(paths.REPO_ROOT / rel, report_path.parent)


def record(stage: str, run, provenance: dict, numbers: dict, figures=(), claims=None, links=None) -> Path:
    """Write (replace) this stage's record for ``run`` (a ``pipeline.Run`` or ``RunConfig``, whose config file and
    settings hash the record carries, or a bare run name). Returns the JSON path.

    ``links``: name -> path of a file the report links (e.g. the static feature-card export); each must exist.

    ``provenance``: what the numbers depend on (``pipeline.Run.key(stage)``: the pair, the store's hash, every
    crosscoder's key and the stage's settings); ``write_report`` refuses records whose provenance disagrees."""
    claims = claims or {}
    for key, val in claims.items():
        if int(key) not in CLAIMS:
            raise ValueError(f"unknown paper claim {key!r}; claims are numbered 1-{len(CLAIMS)}")
        if val.get("verdict") not in VERDICTS:
            raise ValueError(f"claim {key}: verdict must be one of {VERDICTS}, got {val.get('verdict')!r}")
        if not val.get("evidence") or not val.get("rule"):
            raise ValueError(f"claim {key}: a verdict needs its evidence (the numbers) and its rule (what decided it)")
    links = {str(k): Path(v) for k, v in (links or {}).items()}
    for name, target in links.items():
        if not target.exists():
            raise FileNotFoundError(f"link {name!r}: {target} does not exist")
    if not provenance:
        raise ValueError(f"stage {stage}: a record needs its provenance (pipeline.Run.key of the stage)")
    config = getattr(run, "config", run)
    config = {"source": str(config.source), "hash": config.hash} if hasattr(config, "hash") else None
    run = getattr(run, "name", run)
    folder = paths.ensure_writable(_report_dir(run))
    rec = {
        "stage": stage,
        "run": run,
        "config": config,
        "config_hash": paths.config_hash(provenance),
        "provenance": _jsonable(provenance),
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "numbers": _jsonable(numbers),
        "figures": [_relative(f) for f in figures],
        "links": {k: _relative(v) for k, v in links.items()},
        "claims": {str(k): v for k, v in claims.items()},
        "rules_version": RULES_VERSION,
        # where the models' dtype came from: the CPU's bf16 probe (timings, answer, CPU model and flags)
        "cpu_bf16_probe": precision.cpu_bf16_probe(),
    }
    out = folder / f"{stage}.json"
    # a temporary name of its own: two processes recording the same stage must not share one
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stage}.", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(rec, indent=1))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def load_records(run: str) -> list[dict]:
    folder = _report_dir(run)
    out = []
    for p in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            out.append(json.loads(p.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"the stage record {p} is not valid JSON ({err}); rerun that stage to write it "
                             "again") from None
    return out


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) <= 6:
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


PROVENANCE_KEYS = ("preset", "layer", "model_dtype", "store", "crosscoders")


def check_provenance(records: list[dict], run: str | None = None) -> None:
    """Every stage of one report must belong to the run ``run``, carry its provenance, come from one config file
    with one set of settings, and have used the same pair, layer, store and crosscoders: raise a ``ValueError``
    naming the stages that do not (e.g. a stage rerun after the run config was edited, or a record of another
    run file with the same name)."""
    for rec in records:
        if run is not None and rec.get("run") != run:
            raise ValueError(f"the {rec.get('stage')} record names run {rec.get('run')!r}, not {run!r}")
        if not rec.get("provenance"):
            raise ValueError(f"the {rec.get('stage')} record has no provenance (what its numbers depend on); rerun it")
    configs: dict[str, list[str]] = {}
    for rec in records:
        configs.setdefault(json.dumps(rec.get("config"), sort_keys=True), []).append(rec["stage"])
    if len(configs) > 1:
        groups = "; ".join(f"{', '.join(st)}: {v}" for v, st in configs.items())
        raise ValueError(f"the stage records come from different run configs ({groups}); rerun the stages of one "
                         "config, or give the other its own run name")
    for key in PROVENANCE_KEYS:
        seen: dict[str, list[str]] = {}
        for rec in records:
            prov = rec.get("provenance") or {}
            if key in prov:
                seen.setdefault(json.dumps(prov[key], sort_keys=True), []).append(rec["stage"])
        if len(seen) > 1:
            groups = "; ".join(f"{', '.join(st)}: {v}" for v, st in seen.items())
            raise ValueError(f"the stage records disagree on the {key} they used ({groups}); rerun the stages "
                             "of this run so that they share one (or give the changed settings a new run name)")


def write_report(run: str, out: Path | None = None) -> Path:
    """Render every stage record of the run ``run`` as one Markdown report and return its path."""
    out = Path(out) if out else _report_dir(run) / "REPORT.md"
    recs = load_records(run)
    if not recs:
        raise FileNotFoundError(f"no stage records for run {run!r} under {_report_dir(run)}; run the notebooks first")
    check_provenance(recs, run)
    lines = [f"# thinkdiff run report: run `{run}`", "",
             f"Written {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}. "
             "Every number below was computed by the run that wrote it; the claims table compares them "
             "with Baek & Tegmark (arXiv 2503.03730) as summarised in `docs/paper-notes.md` §11.", ""]
    verdicts: dict[int, list[tuple[str, dict]]] = {k: [] for k in CLAIMS}
    rules: dict[str, int] = {}
    for rec in recs:
        prov = rec.get("provenance") or {}
        used = ", ".join(f"{k} `{json.dumps(prov[k], sort_keys=True)}`" for k in ("store", "crosscoders") if k in prov)
        settings = prov.get("settings")
        lines += [f"## {rec['stage']}", "", f"config hash `{rec['config_hash']}`, written {rec['written']}"
                  + (f"; used {used}" if used else ""), ""]
        probe = rec.get("cpu_bf16_probe")
        if prov.get("model_dtype") or probe:
            lines += [f"Models computed in {prov.get('model_dtype', 'their stored dtype')}"
                      + (f"; CPU {probe['cpu']} ({'avx512_bf16' if probe['avx512_bf16'] else 'no avx512_bf16'}"
                         + (f", limited to ONEDNN_MAX_CPU_ISA={probe['onednn_max_cpu_isa']}"
                            if probe.get("onednn_max_cpu_isa") else "")
                         + f"), bf16 {'used' if probe['bf16'] else 'not used'}: {probe['why']}" if probe else ""), ""]
        if settings:   # the pre-registered settings this stage ran with (the run config's table)
            lines += [f"Settings: `{json.dumps(settings, sort_keys=True)}`", ""]
        lines += ["| quantity | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in rec["numbers"].items()]
        lines.append("")
        for fig in rec["figures"]:
            lines.append(f"![{Path(fig).stem}]({_link(fig, out)})")
        lines.append("")
        for name, target in rec.get("links", {}).items():
            lines += [f"Open: [{name}]({_link(target, out)}) (one self-contained HTML file, no kernel needed)", ""]
        rules[rec["stage"]] = rec.get("rules_version", 1)
        for k, v in rec["claims"].items():
            verdicts[int(k)].append((rec["stage"], v))
    lines += ["## The paper's claims on this run", "", "| # | claim | verdict | rule | evidence |", "|---|---|---|---|---|"]
    for k, text in CLAIMS.items():
        if not verdicts[k]:
            lines.append(f"| {k} | {text} | not tested | | no stage of this run tests it |")
        for stage, v in verdicts[k]:
            lines.append(f"| {k} | {text} | **{v['verdict']}** | {v['rule']} (rules v{rules[stage]}) | "
                         f"{stage}: {v['evidence']} |")
    out.write_text("\n".join(lines) + "\n")
    return out
