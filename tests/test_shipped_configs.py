"""Every shipped experiment, under every preset it declares, passes the checks `peftlab validate` runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from peftlab.config import load_experiment
from peftlab.plan import validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CASES = [(path.name, preset) for path in sorted(CONFIGS.glob("*.yaml"))
         for preset in [None, *(yaml.safe_load(path.read_text()).get("presets") or {})]]


@pytest.mark.parametrize(("name", "preset"), CASES, ids=[f"{n}:{p or '-'}" for n, p in CASES])
def test_shipped_config_validates(name: str, preset: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTLAB_ALLOW_CODE_EXECUTION", "1")  # the code experiments ask for it (validated, not run)
    # Hub ids (the paper presets' gpt2) cannot be resolved offline; everything else is checked as `validate` does.
    monkeypatch.setattr("peftlab.models.check_model_name", lambda *args, **kwargs: None)
    runs = validate(load_experiment(CONFIGS / name, preset=preset))
    assert runs


def test_every_seed_experiment_has_a_cpu_preset_with_three_seeds() -> None:
    for name in ("paper-sentiment", "paper-math", "paper-code", "ablation-rank-lr", "full-vs-lora-lm",
                 "qa-decoding"):
        exp = load_experiment(CONFIGS / f"{name}.yaml", preset="cpu")
        assert len(exp.seeds) >= 3, name
        assert str(exp.output_dir).endswith("-cpu"), name
