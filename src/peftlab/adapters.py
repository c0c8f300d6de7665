"""Saving and loading what a run trained, as one unit with its own description.

Every saved adapter directory holds `peftlab_adapter.json` (method, arguments, base model), so a
user can load it back without the experiment file: `load_adapter(path)` returns a ready model.
"""

from __future__ import annotations

import json
from pathlib import Path
import torch.nn as nn

from peftlab.measure import directory_bytes
from peftlab.methods import get_method
from peftlab.methods.hybrid import LoraPromptModel

META_FILE = "peftlab_adapter.json"


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def save_adapter(model: nn.Module, method_name: str, path: str | Path, meta: dict) -> int:
    """Save the trained part (full weights for `full`); returns the bytes written for weights."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    if method_name != "base":
        model.save_pretrained(path)
    size = directory_bytes(path)
    (path / META_FILE).write_text(json.dumps({"method": method_name, **meta}, indent=2, default=str))
    return size


def read_meta(path: str | Path) -> dict:
    meta_path = Path(path) / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} is not a peftlab adapter directory (no {META_FILE})")
    return json.loads(meta_path.read_text())


def load_adapter(path: str | Path, base_model: nn.Module | None = None, device: str | None = None,
                 is_trainable: bool = False) -> nn.Module:
    """Rebuild the adapted model a run saved: base model + its adapter, in eval mode."""
    from peftlab.models import load_model

    path = Path(path)
    meta = read_meta(path)
    name = meta["method"]
    method = get_method(name)
    model_cfg = meta.get("model", {})
    if name == "full":
        model = load_model(str(path), dtype=model_cfg.get("dtype", "auto"), device=device)
        return model.eval()
    if base_model is None:
        base_model = load_model(model_cfg["name"], dtype=model_cfg.get("dtype", "auto"),
                                load_in_4bit=method.quantize_base, device=device,
                                revision=model_cfg.get("revision"), gguf_file=model_cfg.get("gguf_file"))
    if name == "base":
        return base_model.eval()
    if name == "lora+prompt":
        return LoraPromptModel.from_pretrained(base_model, path, is_trainable=is_trainable).eval()
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, path, is_trainable=is_trainable).eval()
