"""Where peftlab keeps what it downloads and converts (never inside the repository)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of peftlab's cache: `$PEFTLAB_CACHE`, else `~/.cache/peftlab`."""
    root = os.environ.get("PEFTLAB_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "peftlab"
    path.mkdir(parents=True, exist_ok=True)
    return path
