"""Where things live, and the config-hash cache every stage uses.

Every generated artifact goes to ``RUNS_DIR/<stage>/<config-hash>/`` (git-ignored), so an
unchanged config is reused and a changed one rebuilds. Writes go to a temporary sibling
folder that is renamed into place only when complete: nothing half-written is ever left
where a later stage would pick it up.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNS_DIR = Path(os.environ.get("THINKDIFF_RUNS", REPO_ROOT / "runs"))
FIGURES_DIR = Path(os.environ.get("THINKDIFF_FIGURES", REPO_ROOT / "figures"))
DATA_DIR = REPO_ROOT / "data"


def config_hash(cfg) -> str:
    """12 hex chars of the sha256 of the config's canonical JSON (sorted keys)."""
    blob = json.dumps(cfg, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_writable(folder: Path) -> Path:
    """Create ``folder`` if needed and check that we can write there; clear error otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"thinkdiff cannot write to the cache folder {folder!s} ({err.strerror}). "
            "Set THINKDIFF_RUNS to a writable folder."
        ) from err
    return folder


def artifact_dir(stage: str, cfg) -> Path:
    """``RUNS_DIR/stage/<config_hash(cfg)>``; the folder itself is not created."""
    return Path(RUNS_DIR) / stage / config_hash(cfg)


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder; on success rename it to ``final``, on error delete it.

    ``final`` must not exist yet (cached artifacts are never overwritten in place).
    """
    final = Path(final)
    ensure_writable(final.parent)
    if final.exists():
        raise FileExistsError(f"{final} already exists; refusing to overwrite a cached artifact")
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(final)
