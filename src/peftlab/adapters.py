"""Saving, loading, merging and exporting what a run trained, as one unit with its own description.

Every saved adapter directory holds `peftlab_adapter.json` (method, arguments, base model and its
head), so a user can load it back without the experiment file:

    model, tokenizer = peftlab.adapters.load("runs/<run-id>")        # or a run id and store=
    report = peftlab.adapters.merge("runs/<run-id>", "merged/")        # a plain Hugging Face model dir

A plain PEFT adapter directory (`PeftModel.save_pretrained`, or one downloaded from the hub:
`adapter_config.json` + `adapter_model.safetensors`) works everywhere a run does: its description is
read from `adapter_config.json` (`peft_meta`): the method from `peft_type` (LoRA with `use_dora` is
`dora`; types peftlab does not register load through peft generically) and the base model from
`base_model_name_or_path`, resolved through peftlab's aliases and caches (`resolve_base`; `base=`
overrides it, and is needed when the recorded base cannot be found here). `export` writes the
other direction: a run's adapter as a directory plain peft loads, with a model card.

What merging means per method:

* weight adapters (LoRA, DoRA, IA3, LoHa, LoKr, VeRA, OFT, …, and the LoRA half of `lora+prompt`):
  the update is folded into the base weights; the result is an ordinary transformers model.
* `qlora`: the base it was trained on is NF4. Merging into 4-bit layers re-quantizes W + ΔW and
  changes the outputs, so peftlab de-quantizes the NF4 base to the compute dtype, merges there
  (a full-precision model of exactly the weights the adapter was trained against) and reports the
  drift against the 4-bit adapter model, next to the drift the 4-bit kernel alone causes and the
  drift a merge into the 4-bit layers would have caused.
* `prompt` and `prefix` change no weight: their trained tensors are virtual-token embeddings
  (prompt tuning) or per-layer key/value prefixes (prefix tuning) that exist only in the input
  sequence or the attention cache. They cannot be merged; peftlab writes the base model and
  exports the tensors beside it (`soft_prompt.safetensors`, `prefix_kv.safetensors`) with a note
  on how plain transformers uses them. The hybrid keeps its soft prompt the same way.

Every merge is checked: the written directory is loaded back with plain transformers (no peft)
and its logits on sample inputs are compared with the adapter model's (soft prompt / prefix
applied by hand), and the maximum absolute difference is printed and stored in
`peftlab_merge.json`. An encoder-decoder model (T5) is checked on its decoder's logits, the sample
text in its encoder and, shifted right, in its decoder; its soft prompt goes before the encoder's
input. Its prefixes sit in the decoder's self- and cross-attention caches, so merging a prefix-tuned
encoder-decoder model is refused (`export` writes it for plain peft).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from peftlab.measure import directory_bytes
from peftlab.methods import get_method
from peftlab.methods.base import UNTRAINED_METHOD
from peftlab.methods.hybrid import SOFT_PROMPT_FILE, LoraPromptModel
from peftlab.methods.virtual_tokens import cache_argument, prefix_cache, prefix_of, soft_prompt_of, unwrap
from peftlab.models import ModelArchitecture

META_FILE = "peftlab_adapter.json"
PEFT_CONFIG = "adapter_config.json"  # what makes a directory a plain PEFT adapter
MERGE_REPORT = "peftlab_merge.json"
EXPORT_REPORT = "peftlab_export.json"
PREFIX_FILE = "prefix_kv.safetensors"
ATOL = 1e-4  # merged vs adapter logits, both float32: |Δ| <= ATOL + RTOL · max|logit|
RTOL = 1e-5  # float32 rounding of W + ΔW grows with the logits' scale (SmolLM2's reach ~40)

SAMPLE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Question: What is the capital of France?\nAnswer:",
    "def add(a, b):\n    return a + b\n",
    "Once upon a time, a small model learned to count: 1 2 3 4 5",
)


def base_of(model: nn.Module) -> nn.Module:
    """The transformers model under peft and peftlab wrappers."""
    model = unwrap(model)
    get_base = getattr(model, "get_base_model", None)  # peft's PeftModel and peftlab's hybrid
    return get_base() if callable(get_base) else model


def _head_meta(model: nn.Module) -> dict:
    """The base model's class and head, so a sequence-classification base reloads as one."""
    base = base_of(model)
    config = getattr(base, "config", None)
    meta: dict[str, Any] = {"model_class": type(base).__name__}
    if config is not None and not type(base).__name__.endswith("ForCausalLM"):
        meta["num_labels"] = getattr(config, "num_labels", None)
        id2label = getattr(config, "id2label", None)
        if id2label:
            meta["id2label"] = {str(k): v for k, v in id2label.items()}
    return meta


def save_adapter(model: nn.Module, method_name: str, path: str | Path, meta: dict) -> int:
    """Save the trained part (full weights for a full fine-tune, nothing for a method that trains
    nothing); returns the bytes written for weights."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = unwrap(model)
    if get_method(method_name).trains:
        model.save_pretrained(path)
    size = directory_bytes(path)
    record = {"method": method_name, **_head_meta(model), **meta}
    (path / META_FILE).write_text(json.dumps(record, indent=2, default=str))
    return size


def read_meta(path: str | Path, base: str | None = None, strict: bool = True) -> dict:
    """The adapter's description: `peftlab_adapter.json`, or for a plain PEFT directory what its
    `adapter_config.json` says (`peft_meta`). `base` replaces the recorded base model (checked
    without loading it); `strict=False` describes a plain adapter whose base cannot be resolved
    here instead of raising (its problem is in `meta["source"]["base_problem"]`)."""
    path = Path(path)
    meta_path = path / META_FILE
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if base:
            meta = {**meta, "model": {**meta.get("model", {}), "name": resolve_base(None, base, path)[0]}}
        return meta
    if (path / PEFT_CONFIG).exists():
        return peft_meta(path, base, strict)
    raise FileNotFoundError(f"{path} is neither a peftlab adapter directory (no {META_FILE}) nor a PEFT adapter "
                            f"directory (no {PEFT_CONFIG})")


# ------------------------------------------------------------------------------------ plain PEFT directories
#: peft types with a method of their own in peftlab's registry (others go through `peftlab.methods.generic`).
PEFT_TYPE_METHODS = {"LORA": "lora", "IA3": "ia3", "PROMPT_TUNING": "prompt", "PREFIX_TUNING": "prefix"}
#: peft task types that are not a causal LM, and the transformers class their base loads as.
TASK_TYPE_CLASSES = {"SEQ_CLS": "AutoModelForSequenceClassification", "TOKEN_CLS": "AutoModelForTokenClassification",
                     "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM", "QUESTION_ANS": "AutoModelForQuestionAnswering"}


def read_peft_config(path: str | Path) -> dict:
    """`adapter_config.json` of a PEFT adapter directory as a dict; one clear sentence when it is unusable."""
    file = Path(path) / PEFT_CONFIG
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: cannot be read as JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file}: holds {type(config).__name__}, not a PEFT config object")
    return config


def method_for_peft_type(peft_type: str, config: dict | None = None, where: str = PEFT_CONFIG) -> str:
    """peftlab's method name for a peft type: its own entry (LoRA with `use_dora` is `dora`), else the
    generic method of that type; a type this peft does not know is an error naming the valid ones."""
    from peftlab.methods.generic import peft_type_names

    key = str(peft_type or "").upper()
    if key == "LORA" and (config or {}).get("use_dora"):
        return "dora"
    if key in PEFT_TYPE_METHODS:
        return PEFT_TYPE_METHODS[key]
    if key in peft_type_names():
        return key.lower()
    import peft

    raise ValueError(f"{where}: peft_type {peft_type!r} is not a type peft {peft.__version__} knows; "
                     f"valid: {', '.join(peft_type_names())}")


def _peft_args(method: str, peft_type: str, config: dict) -> dict:
    """The adapter's arguments in peftlab's terms: the method's own argument names where it has
    defaults, else the config fields that differ from the peft config class's defaults."""
    from peftlab.methods.generic import config_fields

    try:
        defaults = get_method(method).defaults
    except ValueError:
        defaults = {}
    if defaults:
        return {k: config[k] for k in defaults if k in config}
    try:
        from peft import PeftType
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        cls = PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(peft_type)]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        names = config_fields(peft_type)
    except (KeyError, ValueError, TypeError):
        return {}
    out = {}
    for name in names:
        if name not in config:
            continue
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if config[name] != default:
            out[name] = config[name]
    return out


def _num_labels(path: Path, config: dict) -> int | None:
    """Rows of a saved classification head (`modules_to_save`), read from the weights' header."""
    from safetensors import safe_open

    weights = path / "adapter_model.safetensors"
    if not weights.exists():
        return None
    with safe_open(str(weights), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
            if key.endswith(".weight") and any(m in key for m in (config.get("modules_to_save") or [])):
                return int(fh.get_slice(key).get_shape()[0])
    return None


def peft_meta(path: str | Path, base: str | None = None, strict: bool = True) -> dict:
    """A peftlab description (as `peftlab_adapter.json` holds) of a plain PEFT adapter directory.

    `source` records where it came from: `{"kind": "peft", "path", "peft_type",
    "base_model_name_or_path"}` plus `base_note` when the base resolved to something other than the
    recorded name, or `base_problem` (with `strict=False`) when it did not resolve.
    """
    path = Path(path)
    config = read_peft_config(path)
    where = str(path / PEFT_CONFIG)
    peft_type = str(config.get("peft_type") or "")
    if not peft_type:
        raise ValueError(f"{where}: no peft_type, so this is not a PEFT adapter config")
    try:
        method = method_for_peft_type(peft_type, config, where)
    except ValueError:
        if strict:
            raise
        method = peft_type.lower()
    recorded = config.get("base_model_name_or_path")
    source: dict[str, Any] = {"kind": "peft", "path": str(path.resolve()), "peft_type": peft_type,
                              "base_model_name_or_path": recorded}
    try:
        name, note = resolve_base(recorded, base, path)
        if note:
            source["base_note"] = note
    except ValueError as exc:
        if strict or base:  # a bad --base is always an error
            raise
        name, source["base_problem"] = str(recorded or ""), str(exc)
    model: dict[str, Any] = {"name": name, "dtype": "auto"}
    if config.get("revision") and name == recorded:
        model["revision"] = config["revision"]
    meta: dict[str, Any] = {"method": method, "args": _peft_args(method, peft_type, config), "model": model,
                            "source": source}
    task_type = str(config.get("task_type") or "CAUSAL_LM").upper()
    if task_type != "CAUSAL_LM":
        meta["model_class"] = TASK_TYPE_CLASSES.get(task_type, task_type)
        labels = _num_labels(path, config) if task_type == "SEQ_CLS" else None
        if labels:
            meta["num_labels"] = labels
    if (path / "tokenizer_config.json").exists():
        meta["tokenizer_in_adapter"] = True  # trained with its own tokenizer (e.g. added tokens)
    return meta


def resolve_base(recorded: str | None, override: str | None = None, where: str | Path = "") -> tuple[str, str | None]:
    """(the base model name peftlab loads, a note when it is not the recorded name) for an adapter.

    `override` (`--base`) wins and is checked like any model name. Otherwise the recorded name is
    used when it resolves here (an offline alias, a local directory, a hub id that is cached or
    reachable); a hub id peftlab has an offline alias of falls back to that alias (with a note: the
    alias is converted from a quantized GGUF, close to but not bit-identical with the hub weights), as
    does a path into another machine's peftlab model cache. Anything else raises, naming the
    recorded value and what `--base` takes, before any model is loaded.
    """
    from peftlab.models import ALIASES, HUB_IDS, ModelResolutionError, check_model_name

    choices = f"an offline alias ({', '.join(ALIASES)}), a local model directory, or a hub id (owner/name)"
    if override:
        try:
            check_model_name(override)
        except ModelResolutionError as exc:
            raise ValueError(f"--base {override}: {exc}") from None
        return override, None
    if not recorded:
        raise ValueError(f"{where}: {PEFT_CONFIG} records no base_model_name_or_path, so the base model is unknown; "
                         f"pass --base MODEL: {choices}")
    try:
        check_model_name(recorded)
        return recorded, None
    except ModelResolutionError as exc:
        problem = str(exc)
    alias = next((a for a, hub in HUB_IDS.items() if hub.lower() == str(recorded).lower()), None)
    if alias is None and Path(recorded).name in ALIASES and Path(recorded).parent.name == "models":
        alias = Path(recorded).name  # another machine's peftlab model cache
    if alias is not None:
        return alias, (f"base {recorded} is not available here, so peftlab's offline copy {alias!r} is used "
                       f"({ALIASES[alias].source}; converted from a quantized GGUF: close to, not bit-identical "
                       "with, the original weights); pass --base to choose another")
    raise ValueError(f"{where}: the adapter's base model {recorded!r} ({PEFT_CONFIG} base_model_name_or_path) cannot "
                     f"be loaded here ({problem.rstrip('.')}); pass --base MODEL: {choices}")


def _seq2seq_class(name: str) -> bool:
    """Whether a recorded model class is an encoder-decoder LM (`AutoModelForSeq2SeqLM` or one it maps to)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    return name == "AutoModelForSeq2SeqLM" or name in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES.values()


def _load_base(meta: dict, quantize: bool, device: str | None, dtype: str | None = None) -> nn.Module:
    """The base model an adapter was trained on: a causal or encoder-decoder LM as `load_model` loads it
    (NF4 when `quantize`), or the recorded head class."""
    from peftlab.models import load_model, resolve_path, torch_dtype

    model_cfg = meta.get("model", {})
    model_class = meta.get("model_class") or ""
    dtype = dtype or model_cfg.get("dtype", "auto")
    if model_class and not model_class.endswith("ForCausalLM") and not _seq2seq_class(model_class):
        import transformers

        cls = getattr(transformers, model_class, None)
        if cls is None:
            raise ValueError(f"adapter was trained on a {model_class}, which this transformers version lacks")
        path, _ = resolve_path(model_cfg["name"])
        kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype, device or "cpu")}
        if meta.get("num_labels"):
            kwargs["num_labels"] = int(meta["num_labels"])
        if meta.get("id2label"):
            kwargs["id2label"] = {int(k): v for k, v in meta["id2label"].items()}
        model = cls.from_pretrained(path, **kwargs)
        return model.to(device or "cpu")
    return load_model(model_cfg["name"], dtype=dtype, load_in_4bit=quantize, device=device,
                      revision=model_cfg.get("revision"), trust_remote_code=bool(model_cfg.get("trust_remote_code")),
                      gguf_file=model_cfg.get("gguf_file"))


def load_adapter(path: str | Path, base_model: nn.Module | None = None, device: str | None = None,
                 is_trainable: bool = False, base: str | None = None) -> nn.Module:
    """Rebuild the adapted model a run saved (or a plain PEFT directory holds): base model + its
    adapter, in eval mode. `base` names another base model than the recorded one."""
    from peftlab.models import load_model

    path = Path(path)
    meta = read_meta(path, base)
    if "method" not in meta:
        raise ValueError(f"{path / META_FILE}: names no method, so the adapter cannot be loaded")
    name = meta["method"]
    method = get_method(name)
    model_cfg = meta.get("model", {})
    if method.full:  # the saved model is complete: no base to load
        model_class = meta.get("model_class", "ForCausalLM")
        if model_class.endswith("ForCausalLM") or _seq2seq_class(model_class):
            model = load_model(str(path), dtype=model_cfg.get("dtype", "auto"), device=device)
        else:
            model = _load_base({**meta, "model": {**model_cfg, "name": str(path)}}, False, device)
        return model.eval()
    if base_model is None:
        base_model = _load_base(meta, method.quantize_base, device)
    return method.load(base_model, path, is_trainable).eval()


# ------------------------------------------------------------------------------------ runs
@dataclass
class RunRef:
    """Where a run's files are: its directory (None for a bare adapter dir) and its adapter dir."""

    name: str
    run_dir: Path | None
    adapter_dir: Path
    result: dict | None = None

    @property
    def plain(self) -> bool:
        """A plain PEFT adapter directory (no peftlab description: `adapter_config.json` only)."""
        return not (self.adapter_dir / META_FILE).exists()


def locate(run: str | Path, store: str | Path = "runs") -> RunRef:
    """A run id in `store` (or a unique prefix of one), a run directory, a peftlab adapter directory,
    or a plain PEFT adapter directory (`adapter_config.json`, e.g. `PeftModel.save_pretrained`'s)."""
    candidates = [Path(run), Path(store) / str(run)]
    for path in candidates:
        if (path / META_FILE).exists():  # an adapter directory
            parent = path.parent if (path.parent / "result.json").exists() else None
            return RunRef(str(run), parent, path, _read_result(parent))
        if path.is_dir() and ((path / "adapter").is_dir() or (path / "result.json").exists()):
            return _ref_from_run_dir(path, str(run))
        if (path / PEFT_CONFIG).is_file():  # a plain PEFT adapter directory
            return RunRef(str(run), None, path, None)
    store_path = Path(store)
    if store_path.is_dir() and "/" not in str(run):
        matches = sorted(p for p in store_path.iterdir() if p.is_dir() and p.name.startswith(str(run)))
        if len(matches) == 1:
            return _ref_from_run_dir(matches[0], str(run))
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches[:5])
            raise ValueError(f"run {run!r} is ambiguous in {store_path}: {names}{' …' if len(matches) > 5 else ''}")
    raise FileNotFoundError(f"no run {str(run)!r}: not a run directory, an adapter directory (peftlab's or plain "
                            f"PEFT's, with {PEFT_CONFIG}), or a run id in {store_path}/ (see `peftlab ls runs "
                            f"--store {store_path}`)")


def _read_result(run_dir: Path | None) -> dict | None:
    if run_dir is None or not (run_dir / "result.json").exists():
        return None
    from peftlab.store import validate_result

    try:
        result = json.loads((run_dir / "result.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return result if validate_result(result) is None else None


def _ref_from_run_dir(run_dir: Path, name: str) -> RunRef:
    result = _read_result(run_dir)
    adapter = run_dir / "adapter"
    if not (adapter / META_FILE).exists():
        status = (result or {}).get("status")
        why = (f"its status is {status!r}" if status not in (None, "ok") else
               "it saved no adapter (train.save_adapter was off?)")
        raise FileNotFoundError(f"run {run_dir.name} has no adapter to load: {why}")
    return RunRef(name, run_dir, adapter, result)


def load_tokenizer_for(meta: dict, adapter_dir: str | Path | None = None) -> Any:
    """The base model's tokenizer, or the adapter directory's own when it ships one."""
    from peftlab.models import load_tokenizer

    model_cfg = meta.get("model", {})
    if meta.get("tokenizer_in_adapter") and adapter_dir is not None:
        return load_tokenizer(str(adapter_dir))
    return load_tokenizer(model_cfg["name"], model_cfg.get("revision"), bool(model_cfg.get("trust_remote_code")))


@dataclass
class LoadedRun:
    model: Any
    tokenizer: Any
    meta: dict
    ref: RunRef | None = None

    @property
    def method(self) -> str:
        return self.meta.get("method", UNTRAINED_METHOD)


def load_run(run: str | Path, store: str | Path = "runs", device: str | None = None,
             is_trainable: bool = False, base: str | None = None) -> LoadedRun:
    """A run's (or a PEFT adapter directory's) adapted model, eval mode, and its tokenizer.
    `base:MODEL` gives an untrained model; `base` replaces the adapter's recorded base model."""
    from peftlab.models import default_device

    device = device or default_device()
    if str(run).startswith("base:"):
        name = str(run)[len("base:"):]
        meta = {"method": UNTRAINED_METHOD, "args": {}, "model": {"name": name, "dtype": "auto"}}
        return LoadedRun(_load_base(meta, False, device).eval(), load_tokenizer_for(meta), meta)
    ref = locate(run, store)
    meta = read_meta(ref.adapter_dir, base)
    model = load_adapter(ref.adapter_dir, device=device, is_trainable=is_trainable, base=base)
    if isinstance(model, LoraPromptModel):
        model.to(device)
    return LoadedRun(model, load_tokenizer_for(meta, ref.adapter_dir), meta, ref)


def load(run: str | Path, store: str | Path = "runs", device: str | None = None,
         base: str | None = None) -> tuple[Any, Any]:
    """`model, tokenizer = load("runs/<run-id>")`: a trained run (or a PEFT adapter directory), ready to
    generate with."""
    loaded = load_run(run, store, device, base=base)
    return loaded.model, loaded.tokenizer


# ------------------------------------------------------------------------------------ exports
SOFT_PROMPT_NOTE = """# Soft prompt ({method})

`{method}` trains {n} virtual-token embeddings that are prepended to every input. They live in the
input sequence, not in any weight, so they cannot be merged into the model: the model in this
directory is the base{lora_note}, and the trained prompt is exported beside it in
`{file}` (tensor `soft_prompt`, shape [{n}, {hidden}]).

Use it with plain transformers (no peft, no peftlab):

```python
import torch
from safetensors.torch import load_file
from transformers import {auto_class}, AutoTokenizer

model = {auto_class}.from_pretrained("{out}")
tokenizer = AutoTokenizer.from_pretrained("{out}")
soft = load_file("{out}/{file}")["soft_prompt"].to(model.dtype)

ids = tokenizer("your prompt", return_tensors="pt").input_ids
embeds = torch.cat([soft[None], model.get_input_embeddings()(ids)], dim=1)
{use}```

For generation, use `peftlab generate`, or call `model.generate(inputs_embeds=embeds,
attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long))` (one prompt at a time, or {padding}
and keep ones for the {n} virtual positions).
"""

#: The soft prompt's last usage lines: a decoder-only model scores the tokens after it; an
#: encoder-decoder model's encoder reads it before the prompt, and its decoder writes the answer.
SOFT_PROMPT_USE = {
    False: ("logits = model(inputs_embeds=embeds).logits[:, soft.shape[0]:]   # logits of your tokens\n",
            "left-pad the token part"),
    True: ("answer = tokenizer(\"the answer\", return_tensors=\"pt\").input_ids\n"
           "logits = model(inputs_embeds=embeds, labels=answer).logits   # the decoder's logits of the answer\n",
           "right-pad the token part"),
}

PREFIX_NOTE = """# Prefix (prefix tuning)

Prefix tuning trains, for every attention layer, {n} key/value vectors that every token attends to
first. They live in the attention cache, not in any weight, so they cannot be merged into the
model: the model in this directory is the base, and the trained prefixes are exported beside it in
`{file}` (tensors `layers.<i>.key` / `layers.<i>.value`, shape [kv_heads, {n}, head_dim]).

Use them with plain transformers (no peft, no peftlab) by starting from a filled cache:

```python
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

model = AutoModelForCausalLM.from_pretrained("{out}")
tokenizer = AutoTokenizer.from_pretrained("{out}")
kv = load_file("{out}/{file}")

def prefix_cache(batch=1):
    cache = DynamicCache(config=model.config)
    for i in range({layers}):
        k, v = kv[f"layers.{{i}}.key"], kv[f"layers.{{i}}.value"]
        cache.update(k[None].expand(batch, -1, -1, -1).to(model.dtype),
                     v[None].expand(batch, -1, -1, -1).to(model.dtype), i)
    return cache

ids = tokenizer("your prompt", return_tensors="pt").input_ids
out = model(input_ids=ids, {cache_arg}=prefix_cache(),   # `past_key_values=` before transformers 5.24
            attention_mask=torch.ones(1, {n} + ids.shape[1], dtype=torch.long))
```
"""


def _auto_class(encoder_decoder: bool) -> str:
    """The transformers auto class a user loads the base (or a full fine-tune) with."""
    return "AutoModelForSeq2SeqLM" if encoder_decoder else "AutoModelForCausalLM"


def saved_encoder_decoder(adapter_dir: Path) -> bool:
    """Whether a saved adapter (or full model) is of an encoder-decoder model, from its files alone: peft's
    `task_type` (the hybrid's LoRA half in `lora/` is decoder-only), or a full model's `config.json`."""
    if (adapter_dir / PEFT_CONFIG).exists():
        return str(read_peft_config(adapter_dir).get("task_type") or "").upper() == "SEQ_2_SEQ_LM"
    config = adapter_dir / "config.json"
    if config.exists():
        return ModelArchitecture.from_config(json.loads(config.read_text())).encoder_decoder
    return False


def _prefix_tuned(adapter_dir: Path) -> bool:
    return (adapter_dir / PEFT_CONFIG).exists() and \
        str(read_peft_config(adapter_dir).get("peft_type") or "").upper() == "PREFIX_TUNING"


def _merge_kind(method_name: str) -> str:
    try:
        return get_method(method_name).merge
    except ValueError:  # an adapter of a method this version does not know
        return "maybe"


def export_soft_prompt(model: nn.Module, out: str | Path, method: str = "prompt",
                       shown: str | Path | None = None) -> Path | None:
    """Write `soft_prompt.safetensors` (+ SOFT_PROMPT.md) for prompt tuning or the hybrid; None otherwise.
    `shown`: the directory the note's code loads from (default `out`)."""
    from safetensors.torch import save_file

    prompt = soft_prompt_of(model)
    if prompt is None:
        return None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SOFT_PROMPT_FILE
    save_file({"soft_prompt": prompt.contiguous()}, str(path),
              metadata={"method": method, "num_virtual_tokens": str(prompt.shape[0]), "usage": "prepend to inputs_embeds"})
    lora_note = " with its LoRA merged in" if _merge_kind(method) == "partial" else ""
    seq2seq = ModelArchitecture.of(unwrap(model)).encoder_decoder
    use, padding = SOFT_PROMPT_USE[seq2seq]
    note = SOFT_PROMPT_NOTE.format(method=method, n=prompt.shape[0], hidden=prompt.shape[1], file=SOFT_PROMPT_FILE,
                                   out=shown or out, lora_note=lora_note, auto_class=_auto_class(seq2seq), use=use,
                                   padding=padding)
    (out / "SOFT_PROMPT.md").write_text(note)
    return path


def export_prefix(model: nn.Module, out: str | Path, shown: str | Path | None = None) -> Path | None:
    """Write `prefix_kv.safetensors` (+ PREFIX.md) for prefix tuning; None otherwise. `shown`: the
    directory the note's code loads from (default `out`)."""
    from safetensors.torch import save_file

    layers = prefix_of(model)
    if layers is None:
        return None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, (k, v) in enumerate(layers):
        tensors[f"layers.{i}.key"] = k.contiguous()
        tensors[f"layers.{i}.value"] = v.contiguous()
    path = out / PREFIX_FILE
    n = layers[0][0].shape[1]
    save_file(tensors, str(path), metadata={"method": "prefix", "num_virtual_tokens": str(n), "layers": str(len(layers))})
    (out / "PREFIX.md").write_text(PREFIX_NOTE.format(n=n, file=PREFIX_FILE, out=shown or out, layers=len(layers),
                                                     cache_arg=cache_argument(model.forward)))
    return path


# ------------------------------------------------------------------------------------ merge
@dataclass
class MergeReport:
    run: str
    method: str
    out: str
    merged: bool  # weights changed by the merge (False for prompt/prefix/base)
    max_abs_diff: float  # written model (+ exported prompt/prefix) vs the adapter model, on sample inputs
    atol: float
    ok: bool
    max_abs_logit: float = 0.0
    samples: int = 0
    exported: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    qlora: dict | None = None  # drift figures for a 4-bit base
    files: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)


def sample_inputs(tokenizer: Any, max_tokens: int = 48) -> list[torch.Tensor]:
    """A few real-looking texts (one rendered with the chat template), as [1, L] id tensors."""
    from peftlab.tasks.chat import build_messages, prompt_text

    texts = list(SAMPLE_TEXTS)
    texts.append(prompt_text(tokenizer, build_messages("You are a helpful assistant.", "Name a prime number.")))
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        if ids:
            out.append(torch.tensor([ids], dtype=torch.long))
    return out


def _decoder_inputs(model: nn.Module, ids: torch.Tensor) -> dict:
    """What an encoder-decoder model's decoder reads while the encoder reads `ids`: the same text as its
    labels, which the model shifts right behind its decoder start token itself (as label scoring relies
    on), so every decoder position is checked; nothing for a decoder-only model."""
    return {"labels": ids} if ModelArchitecture.of(model).encoder_decoder else {}


def _logits(model: nn.Module, ids: torch.Tensor, soft: torch.Tensor | None = None, prefix: Path | None = None) -> torch.Tensor:
    """Logits of the text positions only (virtual positions dropped), float32 on CPU. An
    encoder-decoder model reads the text in its encoder (after the soft prompt, if any) and, shifted
    right, in its decoder: its logits are the decoder's."""
    device = next(model.parameters()).device
    ids = ids.to(device)
    length = ids.shape[1]
    decoder = _decoder_inputs(model, ids)
    with torch.no_grad():
        if soft is not None:
            embeds = model.get_input_embeddings()(ids)
            embeds = torch.cat([soft.to(device=device, dtype=embeds.dtype)[None], embeds], dim=1)
            out = model(inputs_embeds=embeds, **decoder)
        elif prefix is not None:
            cache = prefix_cache(model, prefix)
            n = cache.get_seq_length()
            out = model(input_ids=ids, **{cache_argument(model.forward): cache},
                        attention_mask=torch.ones(1, n + length, dtype=torch.long, device=device))
        else:
            out = model(input_ids=ids, **decoder)
    logits = out.logits
    if logits.dim() == 3:
        logits = logits[:, -length:]
    return logits.float().cpu()


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b)) if a else 0.0


def _untie_if_needed(model: nn.Module, notes: list[str]) -> None:
    """A trained `lm_head` (modules_to_save) or embedding no longer equals its tied twin: untie them.

    Otherwise `save_pretrained` writes one matrix for both and the reload silently ties the head
    back to the embedding, losing the trained head.
    """
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not getattr(text_config, "tie_word_embeddings", False):
        return
    inp, outp = model.get_input_embeddings(), model.get_output_embeddings()
    if inp is None or outp is None:
        return
    if inp.weight is outp.weight or (inp.weight.shape == outp.weight.shape and torch.equal(inp.weight, outp.weight)):
        return
    for cfg in {id(config): config, id(text_config): text_config}.values():
        cfg.tie_word_embeddings = False
    notes.append("the output head and the input embeddings differ after training (modules_to_save), "
                 "so the merged model stores them untied (tie_word_embeddings: false)")


def _clean_config(model: nn.Module) -> None:
    """No quantization or peft leftovers in the written config."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    for attr in ("hf_quantizer",):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False


def _plain_class(out: Path) -> Any:
    """The transformers class a user would load `out` with: AutoModelForCausalLM or the named head."""
    import transformers

    arch = (json.loads((out / "config.json").read_text()).get("architectures") or [""])[0]
    if arch.endswith("ForCausalLM") or not arch:
        return transformers.AutoModelForCausalLM
    return getattr(transformers, arch, transformers.AutoModelForCausalLM)


def _dequantized_base(meta: dict, device: str) -> nn.Module:
    """The NF4 base de-quantized to its compute dtype: the weights a QLoRA adapter was trained against."""
    from peftlab.models import torch_dtype

    base = _load_base(meta, True, device)
    dtype = torch_dtype(meta.get("model", {}).get("dtype", "auto"), device)
    if getattr(base, "hf_quantizer", None) is not None:
        return base.dequantize(dtype=dtype)
    return _dequantize_manually(base, dtype)


def _dequantize_manually(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                weight = F.dequantize_4bit(child.weight.data, child.weight.quant_state).to(dtype)
                linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, dtype=dtype)
                linear.weight.data.copy_(weight)
                if child.bias is not None:
                    linear.bias.data.copy_(child.bias.data.to(dtype))
                setattr(module, child_name, linear)
    _clean_config(model)
    return model


def merge(run: str | Path, out: str | Path, store: str | Path = "runs", atol: float | None = None,
          device: str = "cpu", dtype: str | None = None, log: Callable[[str], None] = print,
          overwrite: bool = False, base: str | None = None, verbose: bool = False) -> MergeReport:
    """Merge a run's adapter into its base weights and write a plain Hugging Face model to `out`.

    The check loads `out` back with plain transformers and compares logits with the adapter model
    on sample inputs; `ok` says whether the max abs difference is within `atol` (default
    1e-4 + 1e-5 · max|logit| in float32; for QLoRA plus twice the 4-bit kernel's own noise).
    `dtype` (e.g. `bfloat16`) converts the merged model after the check, before writing.

    `out` must not hold anything yet; `overwrite` (`--force`) replaces an earlier merge there, and
    only that. The model is written into a temporary sibling directory that replaces `out` when
    it is complete, so an interrupted merge leaves no half-written model. `base` replaces the
    adapter's recorded base model; `verbose` lets peft's own warnings through.
    """
    ref = locate(run, store)
    meta = read_meta(ref.adapter_dir, base)
    name = meta["method"]
    method = get_method(name)
    out = Path(out)
    if _prefix_tuned(ref.adapter_dir) and saved_encoder_decoder(ref.adapter_dir):
        raise ValueError(f"{ref.name}: a prefix-tuned encoder-decoder model cannot be merged: its prefixes live in "
                         "the decoder's self- and cross-attention caches, which a plain transformers model is not "
                         "given by hand; `peftlab adapters export` writes it as a directory plain peft loads")
    check_out_dir(out, overwrite, (MERGE_REPORT, "config.json"), "merge")
    with staged_dir(out) as tmp:
        report = _merge_into(ref, meta, method, tmp, out, atol, device, dtype, verbose)
    return report


def _merge_into(ref: RunRef, meta: dict, method: Any, tmp: Path, out: Path, atol: float | None, device: str,
                dtype: str | None, verbose: bool) -> MergeReport:
    """`merge`'s work: everything is written into `tmp`, which becomes `out`."""
    name = meta["method"]
    notes: list[str] = []
    tokenizer = load_tokenizer_for(meta, ref.adapter_dir)
    samples = sample_inputs(tokenizer)
    meta_fp32 = {**meta, "model": {**meta.get("model", {}), "dtype": "float32"}}
    qlora_info: dict | None = None

    # 1. the adapter model and its reference logits (float32 on the CPU unless told otherwise)
    if method.quantize_base:
        adapter_model = load_adapter(ref.adapter_dir, base_model=_load_base(meta_fp32, True, device), device=device)
    elif method.full:
        adapter_model = load_adapter(ref.adapter_dir, device=device)
        adapter_model.float()
    else:
        adapter_model = load_adapter(ref.adapter_dir, base_model=_load_base(meta_fp32, False, device), device=device)
        if isinstance(adapter_model, LoraPromptModel):
            adapter_model.to(device)
    adapter_model.eval()
    reference = [_logits(adapter_model, ids) for ids in samples]

    # 2. the merged model (and exported virtual tokens)
    soft = soft_prompt_of(adapter_model)
    prefix_layers = prefix_of(adapter_model)
    exported: list[str] = []
    if method.merge == "none":
        merged_model, merged = adapter_model, False
        notes.append(method.merge_why)
    elif method.quantize_base:
        merged_model, qlora_info = _merge_qlora(adapter_model, meta_fp32, ref.adapter_dir, samples, reference, device,
                                                verbose)
        merged = True
        notes.append("QLoRA: merged into a de-quantized (NF4 → float) copy of the base, not into the 4-bit layers")
    elif soft is not None and method.merge != "partial":
        merged_model, merged = adapter_model.get_base_model(), False
        notes.append("prompt tuning changes no weight: its trained virtual-token embeddings are part of the "
                     "input sequence, so there is nothing to fold into the weights; the base model is written "
                     f"unchanged and the soft prompt is exported as {SOFT_PROMPT_FILE} (see SOFT_PROMPT.md)")
    elif prefix_layers is not None:
        merged_model, merged = adapter_model.get_base_model(), False
        notes.append("prefix tuning changes no weight: its trained key/value prefixes live in every layer's "
                     "attention cache, so there is nothing to fold into the weights; the base model is written "
                     f"unchanged and the prefixes are exported as {PREFIX_FILE} (see PREFIX.md)")
    elif method.merge == "partial":
        merged_model, merged = unwrap(adapter_model).merge_and_unload(), True
        notes.append(f"{name}: {method.merge_why} (as {SOFT_PROMPT_FILE}, see SOFT_PROMPT.md)")
    else:
        if not hasattr(adapter_model, "merge_and_unload"):
            raise ValueError(f"method {name!r}: the saved model has no adapter to merge")
        try:
            merged_model, merged = adapter_model.merge_and_unload(), True
        except (ValueError, NotImplementedError, AttributeError, TypeError) as exc:
            raise ValueError(f"method {name!r} cannot be merged by peft: {exc}") from None
    if soft is not None:
        export_soft_prompt(adapter_model, tmp, method=name, shown=out)
        exported.append(str(out / SOFT_PROMPT_FILE))
    if prefix_layers is not None:
        export_prefix(adapter_model, tmp, shown=out)
        exported.append(str(out / PREFIX_FILE))

    # 3. write a plain Hugging Face directory
    merged_model = base_of(merged_model)
    _clean_config(merged_model)
    _untie_if_needed(merged_model, notes)
    merged_model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)

    # 4. verify: load it with plain transformers, apply the exported prompt/prefix by hand
    cls = _plain_class(tmp)
    plain = cls.from_pretrained(tmp, dtype=torch.float32).to(device).eval()
    soft_file = tmp / SOFT_PROMPT_FILE if soft is not None else None
    from safetensors.torch import load_file

    soft_loaded = load_file(str(soft_file))["soft_prompt"] if soft_file else None
    prefix_file = tmp / PREFIX_FILE if prefix_layers is not None else None
    check = [_logits(plain, ids, soft=soft_loaded, prefix=prefix_file) for ids in samples]
    diff = _max_diff(check, reference)
    scale = max(float(r.abs().max()) for r in reference) if reference else 0.0
    if atol is None:
        atol = ATOL + RTOL * scale
        if qlora_info is not None:  # the 4-bit kernel's own noise sets the floor
            atol += 2 * qlora_info["kernel_noise"]
    ok = diff <= atol
    if dtype and dtype not in ("float32", "auto"):
        from peftlab.models import torch_dtype

        plain.to(torch_dtype(dtype, device)).save_pretrained(tmp)
        notes.append(f"checked in float32, then written in {dtype}")
    report = MergeReport(
        run=ref.name, method=name, out=str(out), merged=merged, max_abs_diff=diff, atol=atol, ok=ok,
        max_abs_logit=scale, samples=len(samples),
        exported=exported, notes=notes, qlora=qlora_info,
        files={p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()},
    )
    (tmp / MERGE_REPORT).write_text(json.dumps(report.to_dict(), indent=2))
    return report


# ------------------------------------------------------------------------------------ export
@dataclass
class ExportReport:
    run: str
    method: str
    out: str
    base_model: str  # base_model_name_or_path written into the exported adapter_config.json
    max_abs_diff: float | None  # exported dir loaded with plain peft vs peftlab's model (None: not checked)
    atol: float
    ok: bool
    samples: int = 0
    notes: list[str] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


MODEL_CARD = """---
library_name: {library}
base_model: {base}
tags: [peftlab, {method}]
---
# {title}

Exported by peftlab (`peftlab adapters export`) from {origin}.

| | |
|---|---|
| method | {method}{peft_type} |
| arguments | {args} |
| base model | {base_line} |
{rows}
## Use it

{usage}
{with_peftlab}
"""

PEFT_USAGE = """```python
from peft import PeftModel
from transformers import {auto_class}, AutoTokenizer

base = {auto_class}.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "{out}")
tokenizer = AutoTokenizer.from_pretrained("{base}")
```
"""

FULL_USAGE = """A full fine-tune: this directory is a complete model (no peft needed).

```python
from transformers import {auto_class}, AutoTokenizer

model = {auto_class}.from_pretrained("{out}")
tokenizer = AutoTokenizer.from_pretrained("{out}")
```
"""

HYBRID_USAGE = """Plain peft loads the LoRA half; the soft prompt ({file}, tensor `soft_prompt`, {n} virtual
tokens) is prepended to the input embeddings by hand:

```python
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "{out}")
tokenizer = AutoTokenizer.from_pretrained("{base}")
soft = load_file("{out}/{file}")["soft_prompt"].to(model.dtype)
ids = tokenizer("your prompt", return_tensors="pt").input_ids
embeds = torch.cat([soft[None], model.get_input_embeddings()(ids)], dim=1)
logits = model(inputs_embeds=embeds).logits[:, soft.shape[0]:]
```
"""


def _portable_base(meta: dict) -> tuple[str, str | None]:
    """The base model name an exported adapter records (a hub id where peftlab used an offline alias
    of it), and a note when it is not exactly what the adapter was trained on."""
    from peftlab.models import ALIASES, HUB_IDS

    name = str(meta.get("model", {}).get("name") or "")
    if name in HUB_IDS:
        return HUB_IDS[name], (f"trained on peftlab's offline copy of {HUB_IDS[name]} ({ALIASES[name].source}, "
                               "converted from a quantized GGUF): on the original hub weights its outputs differ "
                               "slightly")
    if Path(name).expanduser().is_absolute() or Path(name).expanduser().exists():
        return name, f"the base was the local directory {name}: give your copy of it to from_pretrained"
    return name, None


def _model_card(ref: RunRef, meta: dict, peft_type: str, base: str, note: str | None, out: Path, usage: str,
                with_peftlab: str) -> str:
    result = ref.result or {}
    cost = result.get("cost") or {}
    if ref.run_dir is not None:
        origin = (f"run `{result.get('run_id') or ref.run_dir.name}` (experiment {result.get('experiment')}, label "
                  f"{result.get('label')}, task {meta.get('task') or result.get('task')}, seed {meta.get('seed')})")
    else:
        origin = f"the adapter directory `{ref.adapter_dir}`"
    rows = []
    if cost.get("trainable_params") and cost.get("total_params"):
        rows.append(f"| trainable parameters | {cost['trainable_params']:,} of {cost['total_params']:,} "
                    f"({cost.get('trainable_pct', 0):.4f}%) |")
    metrics = result.get("metrics") or {}
    if metrics:
        rows.append("| metrics | " + ", ".join(f"{k} = {v:.4g}" if isinstance(v, (int, float)) else f"{k} = {v}"
                                                for k, v in metrics.items()) + " |")
    args = ", ".join(f"{k}={v}" for k, v in (meta.get("args") or {}).items()) or "-"
    method = meta["method"]
    return MODEL_CARD.format(
        library="transformers" if not peft_type else "peft", base=base, method=method,
        title=f"{result.get('label') or method} adapter for {base}", origin=origin,
        peft_type=f" (peft {peft_type})" if peft_type else "", args=args.replace("|", "\\|"),
        base_line=base + (f" ({note})" if note else ""), rows="\n".join(rows) + ("\n" if rows else ""),
        usage=usage, with_peftlab=with_peftlab)


def export(run: str | Path, out: str | Path, store: str | Path = "runs", base: str | None = None,
           overwrite: bool = False, device: str = "cpu", atol: float | None = None) -> ExportReport:
    """Write a run's adapter to `out` as a directory plain peft loads, with a model card (README.md).

    The PEFT files are copied unchanged except `adapter_config.json`'s `base_model_name_or_path`,
    which names the hub id where the run used an offline alias of it (the card says what that
    means); the hybrid `lora+prompt` exports its LoRA half and its soft prompt beside it; a full
    fine-tune exports the complete model. The export is checked: `out` is loaded with plain peft
    (or transformers) on the base and its logits on sample inputs are compared with peftlab's
    model. `out` must be empty unless `overwrite` (`--force`), which replaces an earlier export only.
    """
    ref = locate(run, store)
    meta = read_meta(ref.adapter_dir, base)
    name = meta.get("method", "")
    method = get_method(name)
    if not method.trains:
        raise ValueError(f"{ref.name}: method {name!r} trains nothing, so there is no adapter to export")
    peft_dir = ref.adapter_dir if (ref.adapter_dir / PEFT_CONFIG).exists() else ref.adapter_dir / "lora"
    if not method.full and not (peft_dir / PEFT_CONFIG).exists():
        raise ValueError(f"{ref.adapter_dir}: holds no {PEFT_CONFIG} (nor lora/{PEFT_CONFIG}) to export")
    out = Path(out)
    check_out_dir(out, overwrite, (EXPORT_REPORT,), "export")
    with staged_dir(out) as tmp:
        report = _export_into(ref, meta, method, peft_dir, tmp, out, device, atol)
    return report


def _export_into(ref: RunRef, meta: dict, method: Any, peft_dir: Path, tmp: Path, out: Path, device: str,
                 atol: float | None) -> ExportReport:
    portable, note = _portable_base(meta)
    notes = [note] if note else []
    skip = {META_FILE, MERGE_REPORT, "README.md"}
    tokenizer = load_tokenizer_for(meta, ref.adapter_dir)
    seq2seq = saved_encoder_decoder(ref.adapter_dir)
    peft_type = ""
    if method.full:
        for path in ref.adapter_dir.iterdir():
            if path.is_file() and path.name not in skip:
                shutil.copy2(path, tmp / path.name)
        tokenizer.save_pretrained(tmp)
        usage = FULL_USAGE.format(out=out, auto_class=_auto_class(seq2seq))
        with_peftlab = f'With peftlab: `peftlab generate base:{out} "your prompt"`.'
    else:
        for path in peft_dir.iterdir():
            if path.is_file() and path.name not in skip:
                shutil.copy2(path, tmp / path.name)
        config = read_peft_config(tmp)
        peft_type = str(config.get("peft_type") or "")
        config["base_model_name_or_path"] = portable
        (tmp / PEFT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        usage = PEFT_USAGE.format(base=portable, out=out, auto_class=_auto_class(seq2seq))
        with_peftlab = f'With peftlab: `peftlab generate {out} "your prompt"`, `peftlab evaluate {out} --task TASK`.'
        soft = ref.adapter_dir / SOFT_PROMPT_FILE
        if peft_dir != ref.adapter_dir and soft.exists():  # the hybrid: the soft prompt goes beside the LoRA half
            shutil.copy2(soft, tmp / SOFT_PROMPT_FILE)
            from safetensors import safe_open

            with safe_open(str(soft), framework="pt") as fh:
                n = fh.get_slice("soft_prompt").get_shape()[0]
            usage = HYBRID_USAGE.format(base=portable, out=out, file=SOFT_PROMPT_FILE, n=n)
            with_peftlab = (f"With peftlab, use the run it came from (`peftlab generate {ref.name} ...`): read as a "
                            "plain PEFT directory, this one is the LoRA half alone.")
            notes.append(f"{meta['method']}: plain peft loads the LoRA half; the soft prompt is {SOFT_PROMPT_FILE} "
                         "(the model card shows how to prepend it)")
    (tmp / "README.md").write_text(_model_card(ref, meta, peft_type, portable, note, out, usage, with_peftlab))
    diff, scale, count = _check_export(ref, meta, method, tmp, tokenizer, device)
    atol = ATOL + RTOL * scale if atol is None else atol
    report = ExportReport(run=ref.name, method=meta["method"], out=str(out), base_model=portable, max_abs_diff=diff,
                          atol=atol, ok=diff <= atol, samples=count, notes=notes,
                          files={p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()})
    (tmp / EXPORT_REPORT).write_text(json.dumps(report.to_dict(), indent=2))
    return report


def _check_export(ref: RunRef, meta: dict, method: Any, tmp: Path, tokenizer: Any, device: str) -> tuple[float, float, int]:
    """(max |Δlogit|, max |logit|, samples): `tmp` loaded with plain peft (transformers for a full fine-tune,
    the soft prompt prepended by hand for the hybrid) vs peftlab's model of the run, float32."""
    samples = sample_inputs(tokenizer)
    meta_fp32 = {**meta, "model": {**meta.get("model", {}), "dtype": "float32"}}
    if method.full:
        reference_model = load_adapter(ref.adapter_dir, device=device).float().eval()
        plain = _plain_class(tmp).from_pretrained(tmp, dtype=torch.float32).to(device).eval()
        soft = None
    else:
        from peft import PeftModel

        reference_model = load_adapter(ref.adapter_dir, base_model=_load_base(meta_fp32, method.quantize_base, device),
                                       device=device)
        if isinstance(reference_model, LoraPromptModel):
            reference_model.to(device)
        plain = PeftModel.from_pretrained(_load_base(meta_fp32, method.quantize_base, device), tmp).eval()
        soft_file = tmp / SOFT_PROMPT_FILE
        from safetensors.torch import load_file

        soft = load_file(str(soft_file))["soft_prompt"] if soft_file.exists() else None
    reference = [_logits(reference_model.eval(), ids) for ids in samples]
    check = [_logits(plain, ids, soft=soft) for ids in samples]
    scale = max(float(r.abs().max()) for r in reference) if reference else 0.0
    return _max_diff(check, reference), scale, len(samples)


# ------------------------------------------------------------------------------------ output directories
def check_out_dir(out: Path, overwrite: bool, markers: tuple[str, ...], what: str) -> None:
    """Refuse an output directory that already holds something, before anything loads: unless
    `overwrite` (`--force`), and then only one holding an earlier `what` (one of `markers`)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: is a file, not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"--out {out}: already exists and is not empty; pass --force to replace the earlier "
                              f"{what} in it, or choose another directory")
    if not any((out / m).exists() for m in markers):
        raise FileExistsError(f"--out {out}: holds no earlier {what} ({' or '.join(markers)}), so --force does not "
                              "replace it; choose another directory")


def _umask_modes(root: Path) -> None:
    """Give `root` and everything under it the modes a plain `mkdir`/`open` would have under this
    process's umask: `mkdtemp` makes directories private, and writers that stage files through
    `mkstemp` (transformers' weight shards) leave them 0600."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A temporary sibling of `out` to write into; when the block ends cleanly it replaces `out`
    (an earlier `out` is removed only then), its files and directories with the modes the umask
    gives (`_umask_modes`); on any error it is removed and `out` is left as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        _umask_modes(tmp)
        if not out.exists():
            os.replace(tmp, out)
            return
        old = tmp.with_suffix(".old")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


#: peft's warning when a merge goes into 4-bit layers (LoRA and its relatives word it alike).
MERGE_4BIT_WARNING = r"Merge \S+ module to 4-bit linear"


def _merge_qlora(adapter_model: nn.Module, meta: dict, adapter_dir: Path, samples: list[torch.Tensor],
                 reference: list[torch.Tensor], device: str, verbose: bool = False) -> tuple[nn.Module, dict]:
    """Merge into the de-quantized NF4 base; measure the drift against the 4-bit adapter model."""
    from peft import PeftModel

    deq = _dequantized_base(meta, device)
    base_4bit = adapter_model.get_base_model()
    with adapter_model.disable_adapter():  # the 4-bit kernel alone vs the same weights in float
        noise_4bit = [_logits(adapter_model, ids) for ids in samples]
    noise = _max_diff([_logits(deq, ids) for ids in samples], noise_4bit)
    merged = PeftModel.from_pretrained(deq, adapter_dir).eval().merge_and_unload()
    drift = _max_diff([_logits(merged, ids) for ids in samples], reference)
    with warnings.catch_warnings():  # the 4-bit merge is only measured here, never written: its warning misleads
        if not verbose:
            warnings.filterwarnings("ignore", message=MERGE_4BIT_WARNING)
        in_4bit = adapter_model.merge_and_unload()  # what merging into the 4-bit layers would do (re-quantizes)
    drift_4bit = _max_diff([_logits(in_4bit, ids) for ids in samples], reference)
    del base_4bit, in_4bit
    return merged, {"drift": drift, "kernel_noise": noise, "drift_if_merged_into_4bit": drift_4bit}
