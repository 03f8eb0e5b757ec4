"""Real-browser test kit: JupyterLab on 127.0.0.1 and headless Chromium driven by Selenium.

Used by ``tests/test_real_browser.py``. Every wait is bounded; JupyterLab runs in its own process group with a
fresh root, workspace, settings and runtime folder, and is stopped by that group's id.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ENABLE_COMMAND = "apt-get install chromium chromium-driver"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# What the session's terminal summary says about the real-browser tests (filled by conftest and the tests).
REPORT = {"skipped": 0, "reason": "", "seconds": {}, "tests": set(), "screenshots": None}


def chromium_paths() -> tuple[str | None, str | None]:
    """(browser binary, chromedriver binary) found on PATH, each None when missing."""
    binary = next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    return binary, shutil.which("chromedriver")


def missing_browser() -> str | None:
    """Why the real-browser tests cannot run here, or None when Chromium and chromedriver are installed."""
    binary, driver = chromium_paths()
    missing = [name for name, p in (("chromium", binary), ("chromedriver", driver)) if p is None]
    if missing:
        return f"{' and '.join(missing)} not found on PATH"
    try:
        import selenium
        del selenium
    except ImportError:
        return "the selenium package is not installed (pip install -e .)"
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` seconds pass (TimeoutError)."""
    end = time.monotonic() + timeout
    last_err = None
    while time.monotonic() < end:
        try:
            value = predicate()
            if value:
                return value
        except Exception as err:   # the page may be mid-render: keep polling, report the last error
            last_err = err
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last_err})" if last_err else ""))


@contextlib.contextmanager
def jupyterlab(root: Path, env: dict | None = None, start_timeout: float = 90):
    """Start JupyterLab serving ``root`` on a free 127.0.0.1 port (no token, no password, fresh workspace,
    settings, config and runtime folders under ``root/.lab``), yield its base URL, and stop its process group."""
    root = Path(root)
    lab = root / ".lab"
    dirs = {k: lab / k.lower() for k in ("JUPYTERLAB_WORKSPACES_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTER_RUNTIME_DIR",
                                         "JUPYTER_CONFIG_DIR")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    # No "get notified about Jupyter news?" prompt over the page (and no request for news).
    news = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text('{"fetchNews": "false"}')
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={root}",
           "--ServerApp.port_retries=0", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:     # CI containers run as root
        cmd.append("--allow-root")
    log = open(lab / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, **(env or {}), **{k: str(v) for k, v in dirs.items()}},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def up():
            if proc.poll() is not None:
                return "exited"
            with urllib.request.urlopen(f"{url}/api/status", timeout=2) as r:
                return r.status == 200
        try:
            state = wait_for(up, start_timeout, f"JupyterLab at {url}/api/status")
        except TimeoutError as err:
            raise TimeoutError(f"{err}; log:\n{(lab / 'jupyterlab.log').read_text()[-3000:]}") from None
        if state == "exited":
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}; log:\n{(lab / 'jupyterlab.log').read_text()[-3000:]}")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        log.close()


def chrome(width: int = 1400, height: int = 1000, page_timeout: float = 60):
    """A headless Chromium WebDriver that keeps the browser console log (``driver.get_log("browser")``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.set_capability("unhandledPromptBehavior", "accept")     # a "leave this page?" prompt never blocks a reload
    opts.page_load_strategy = "eager"                            # JupyterLab keeps loading; the tests poll instead
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(page_timeout)
    driver.set_script_timeout(page_timeout)
    return driver


def console_errors(driver, ignore=()) -> list[str]:
    """Browser console entries of level SEVERE since the last call, less those containing an ``ignore`` text."""
    return [e["message"] for e in driver.get_log("browser")
            if e.get("level") == "SEVERE" and not any(s in e["message"] for s in ignore)]
