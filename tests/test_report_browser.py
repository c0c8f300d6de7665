"""Render report.html in headless Chromium and check the page actually paints.

Skipped cleanly when no chromium is installed (it is an optional system dependency).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from peftlab.report import write_report


def _load_synthetic():
    """The unit tests' synthetic results, loaded by path so it works with any import mode."""
    spec = importlib.util.spec_from_file_location("_report_fixtures", Path(__file__).with_name("test_report.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.synthetic_results


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not on PATH")
def test_report_renders_headless(tmp_path: Path) -> None:
    from matplotlib.image import imread

    synthetic_results = _load_synthetic()
    out = tmp_path / "report"
    written = write_report(synthetic_results(), out, title="Browser check")
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1280,2400", written["report.html"].resolve().as_uri()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=45)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish within 45 s")
    assert shot.is_file() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    img = imread(shot)
    assert img.shape[0] >= 2000 and img.shape[1] >= 1200
    gray = img[..., :3].mean(axis=2)
    assert float(np.var(gray)) > 1e-3, "screenshot is blank"
    # the dark title bar and the white cards must both be there
    assert gray[:60].mean() < 0.5 and (gray > 0.95).mean() > 0.3
