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
import socket
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def folder_from_env(name: str, default: Path) -> Path:
    """The folder named by environment variable ``name`` (``~`` expanded, made absolute), or ``default``.

    Set but empty is refused: it would silently scatter caches into whatever the current directory is."""
    raw = os.environ.get(name)
    if raw is None:
        return Path(default)
    if not raw.strip():
        raise ValueError(f"{name} is set but empty; unset it (default {default}) or set it to a folder")
    return Path(raw.strip()).expanduser().resolve()


RUNS_DIR = folder_from_env("THINKDIFF_RUNS", REPO_ROOT / "runs")
FIGURES_DIR = folder_from_env("THINKDIFF_FIGURES", REPO_ROOT / "figures")
DATA_DIR = REPO_ROOT / "data"


def config_hash(cfg) -> str:
    """12 hex chars of the sha256 of the config's canonical JSON (sorted keys)."""
    blob = json.dumps(cfg, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


LOW_DISK_BYTES = 64 << 20  # a write that fails with less free space than this is reported as a full disk


def sha256_file(path: Path, block: int = 1 << 23) -> str:
    """Hex sha256 of a file's bytes (read in blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def disk_full_is_plain(path: Path, tmp: Path | None = None):
    """Turn a full disk while writing ``path`` into one plain error; remove the temp file ``tmp`` on any failure.

    A full disk shows up as ``OSError`` ENOSPC from Python but as other errors from some writers (torch.save:
    ``RuntimeError: ... unexpected pos``), so any failed write with under ``LOW_DISK_BYTES`` free is one too."""
    import errno

    try:
        yield
    except Exception as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
        if not full:
            try:
                full = shutil.disk_usage(Path(path).parent).free < LOW_DISK_BYTES
            except OSError:
                full = False
        if full:
            raise OSError(errno.ENOSPC, f"disk full writing {path}; free space and rerun to resume") from None
        raise
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


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


def lock_path(final: Path) -> Path:
    """The lock file guarding the writer of ``final``: ``.<name>.lock`` beside it."""
    final = Path(final)
    return final.parent / f".{final.name}.lock"


@contextlib.contextmanager
def writer_lock(final: Path, timeout: float = -1, poll: float = 0.5):
    """Hold the one-writer lock of the artifact ``final`` (``filelock``; released by the OS if the holder dies, so
    a lock from a killed process is never stale). A second process waits, saying who holds the lock (pid, host,
    start time from ``<lock>.holder``); when it gets the lock the artifact may already be finished, so callers
    check ``final.exists()`` again inside. While held, leftovers of writers that died (``.tmp-<name>-*``
    folders) are removed. ``timeout`` in seconds (-1: wait forever) raises ``TimeoutError`` naming the holder."""
    from filelock import FileLock, Timeout

    final = Path(final)
    ensure_writable(final.parent)
    lock = FileLock(str(lock_path(final)))
    holder = Path(str(lock_path(final)) + ".holder")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = holder.read_text().strip() if holder.exists() else "another process"
        print(f"waiting for {who} to finish writing {final}", flush=True)
        try:
            lock.acquire(timeout=timeout, poll_interval=poll)
        except Timeout:
            raise TimeoutError(f"{final} is being written by {who}; waited {timeout} s. Wait for it to finish "
                               f"or, if that process is gone, delete {lock_path(final)}") from None
    try:
        for leftover in final.parent.glob(f".tmp-{final.name}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        holder.write_text(f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def move_aside(folder: Path) -> Path:
    """Rename a damaged artifact ``folder`` to ``<name>.broken-<time>`` beside it (kept for inspection, never
    read again) and return the new path. Call it holding ``writer_lock(folder)``."""
    folder = Path(folder)
    aside = folder.with_name(f"{folder.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}")
    folder.rename(aside)
    return aside


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
    try:
        tmp.rename(final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():   # another writer without the writer lock finished first
            raise FileExistsError(f"{final} was written by another process meanwhile") from None
        raise
