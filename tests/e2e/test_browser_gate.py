"""Without Chromium the real-browser tests are skipped and the summary says how to enable them; under
``CI=true`` they fail instead. Checked by running pytest on them with a PATH that holds only Python."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import realbrowser

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("ci", ["", "true"])
def test_a_missing_browser_is_skipped_with_the_enable_command_or_fails_under_ci(tmp_path, ci):
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bare), "CI": ci}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'pt'}",
                          str(HERE / "test_real_browser.py")],
                         cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    if ci:
        assert out.returncode != 0 and "CI=true but the real-browser tests cannot run" in text
        assert "passed" not in text.splitlines()[-1]
    else:
        assert out.returncode == 0, text[-2000:]
        assert "real-browser tests did not run" in text and f"Enable them with: {realbrowser.ENABLE_COMMAND}" in text
        assert "skipped" in text.splitlines()[-1]
