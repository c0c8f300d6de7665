"""Render report.html in headless Chromium and check the page actually paints.

Skipped cleanly when no chromium is installed (it is an optional system dependency).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from peftlab.report import write_report


def _fixtures():
    """The unit tests' builders (synthetic results, qa runs with samples), loaded by path so it works with any
    import mode."""
    spec = importlib.util.spec_from_file_location("_report_fixtures", Path(__file__).with_name("test_report.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


def _screenshot(tmp_path: Path, url: str, shot: Path, height: int) -> np.ndarray:
    from matplotlib.image import imread

    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
           f"--screenshot={shot}", f"--window-size=1280,{height}", url]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=45)
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not finish within 45 s")
    assert shot.is_file() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    return imread(shot)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not on PATH")
def test_report_renders_headless(tmp_path: Path) -> None:
    fx = _fixtures()
    qa, examples, samples = fx._qa_runs()
    failed = fx.make_result("qa", "lora", 2, None, status="failed", error=fx.TRACEBACK)
    out = tmp_path / "report"
    lm = [r for r in fx.synthetic_results() if r["task"] == "lm" and r["label"] in ("ia3", "full", "dora", "base")]
    written = write_report(lm + qa + [failed], out, title="Browser check", examples=examples, samples=samples)
    page = written["report.html"].read_text()
    # a link from a results row goes to the configuration behind it; the page highlights the target row. Headless
    # Chromium paints nothing when it has to scroll to a fragment, so the window is as tall as the whole page.
    target = re.search(r'<tr id="(cfg-qa-[^"]*lora)"', page).group(1)
    assert f'href="#{target}"' in page
    img = _screenshot(tmp_path, written["report.html"].resolve().as_uri() + f"#{target}", tmp_path / "shot.png",
                      20000)
    assert img.shape[0] >= 2000 and img.shape[1] >= 1200
    gray = img[..., :3].mean(axis=2)
    assert float(np.var(gray)) > 1e-3, "screenshot is blank"
    # the dark title bar and the white cards must both be there
    assert gray[:60].mean() < 0.5 and (gray > 0.95).mean() > 0.3
    highlight = np.abs(img[..., :3] - np.array([0xFF, 0xF4, 0xC2]) / 255).max(axis=2) < 0.02
    rows = np.nonzero(highlight.sum(axis=1) > 300)[0]
    assert rows.size > 15 and rows.max() - rows.min() < 120, "the linked configuration row is not highlighted"
