"""Saving, loading, merging and exporting what a run trained, as one unit with its own description.

Every saved adapter directory holds `peftlab_adapter.json` (method, arguments, base model and its
head), so a user can load it back without the experiment file:

    model, tokenizer = peftlab.adapters.load("runs/<run-id>")        # or a run id and store=
    report = peftlab.adapters.merge("runs/<run-id>", "merged/")        # a plain Hugging Face model dir

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
`peftlab_merge.json`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from peftlab.measure import directory_bytes
from peftlab.methods import get_method
from peftlab.methods.base import UNTRAINED_METHOD
from peftlab.methods.hybrid import SOFT_PROMPT_FILE, LoraPromptModel
from peftlab.methods.virtual_tokens import cache_argument, prefix_cache, prefix_of, soft_prompt_of, unwrap

META_FILE = "peftlab_adapter.json"
MERGE_REPORT = "peftlab_merge.json"
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


def read_meta(path: str | Path) -> dict:
    meta_path = Path(path) / META_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} is not a peftlab adapter directory (no {META_FILE})")
    return json.loads(meta_path.read_text())


def _load_base(meta: dict, quantize: bool, device: str | None, dtype: str | None = None) -> nn.Module:
    """The base model an adapter was trained on (causal LM, or the recorded head class)."""
    from peftlab.models import load_model, resolve_path, torch_dtype

    model_cfg = meta.get("model", {})
    model_class = meta.get("model_class") or ""
    dtype = dtype or model_cfg.get("dtype", "auto")
    if model_class and not model_class.endswith("ForCausalLM"):
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
                 is_trainable: bool = False) -> nn.Module:
    """Rebuild the adapted model a run saved: base model + its adapter, in eval mode."""
    from peftlab.models import load_model

    path = Path(path)
    meta = read_meta(path)
    name = meta["method"]
    method = get_method(name)
    model_cfg = meta.get("model", {})
    if method.full:  # the saved model is complete: no base to load
        if meta.get("model_class", "ForCausalLM").endswith("ForCausalLM"):
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


def locate(run: str | Path, store: str | Path = "runs") -> RunRef:
    """A run id in `store` (or a unique prefix of one), a run directory, or an adapter directory."""
    candidates = [Path(run), Path(store) / str(run)]
    for path in candidates:
        if (path / META_FILE).exists():  # an adapter directory
            parent = path.parent if (path.parent / "result.json").exists() else None
            return RunRef(str(run), parent, path, _read_result(parent))
        if path.is_dir() and ((path / "adapter").is_dir() or (path / "result.json").exists()):
            return _ref_from_run_dir(path, str(run))
    store_path = Path(store)
    if store_path.is_dir() and "/" not in str(run):
        matches = sorted(p for p in store_path.iterdir() if p.is_dir() and p.name.startswith(str(run)))
        if len(matches) == 1:
            return _ref_from_run_dir(matches[0], str(run))
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches[:5])
            raise ValueError(f"run {run!r} is ambiguous in {store_path}: {names}{' …' if len(matches) > 5 else ''}")
    raise FileNotFoundError(f"no run {str(run)!r}: not a run directory, an adapter directory, or a run id in "
                            f"{store_path}/ (see `peftlab ls runs --store {store_path}`)")


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


def load_tokenizer_for(meta: dict) -> Any:
    from peftlab.models import load_tokenizer

    model_cfg = meta.get("model", {})
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
             is_trainable: bool = False) -> LoadedRun:
    """A run's adapted model (eval mode) and its tokenizer. `base:MODEL` gives an untrained model."""
    from peftlab.models import default_device

    device = device or default_device()
    if str(run).startswith("base:"):
        name = str(run)[len("base:"):]
        meta = {"method": UNTRAINED_METHOD, "args": {}, "model": {"name": name, "dtype": "auto"}}
        return LoadedRun(_load_base(meta, False, device).eval(), load_tokenizer_for(meta), meta)
    ref = locate(run, store)
    meta = read_meta(ref.adapter_dir)
    model = load_adapter(ref.adapter_dir, device=device, is_trainable=is_trainable)
    if isinstance(model, LoraPromptModel):
        model.to(device)
    return LoadedRun(model, load_tokenizer_for(meta), meta, ref)


def load(run: str | Path, store: str | Path = "runs", device: str | None = None) -> tuple[Any, Any]:
    """`model, tokenizer = load("runs/<run-id>")`: a trained run, ready to generate with."""
    loaded = load_run(run, store, device)
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
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{out}")
tokenizer = AutoTokenizer.from_pretrained("{out}")
soft = load_file("{out}/{file}")["soft_prompt"].to(model.dtype)

ids = tokenizer("your prompt", return_tensors="pt").input_ids
embeds = torch.cat([soft[None], model.get_input_embeddings()(ids)], dim=1)
logits = model(inputs_embeds=embeds).logits[:, soft.shape[0]:]   # logits of your tokens
```

For generation, use `peftlab generate`, or call `model.generate(inputs_embeds=embeds,
attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long))` (one prompt at a time, or left-pad
the token part and keep ones for the {n} virtual positions).
"""

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


def _merge_kind(method_name: str) -> str:
    try:
        return get_method(method_name).merge
    except ValueError:  # an adapter of a method this version does not know
        return "maybe"


def export_soft_prompt(model: nn.Module, out: str | Path, method: str = "prompt") -> Path | None:
    """Write `soft_prompt.safetensors` (+ SOFT_PROMPT.md) for prompt tuning or the hybrid; None otherwise."""
    from safetensors.torch import save_file

    prompt = soft_prompt_of(model)
    if prompt is None:
        return None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SOFT_PROMPT_FILE
    save_file({"soft_prompt": prompt.contiguous()}, str(path),
              metadata={"method": method, "num_virtual_tokens": str(prompt.shape[0]), "usage": "prepend to inputs_embeds"})
    note = SOFT_PROMPT_NOTE.format(method=method, n=prompt.shape[0], hidden=prompt.shape[1], file=SOFT_PROMPT_FILE,
                                   out=out, lora_note=" with its LoRA merged in" if _merge_kind(method) == "partial" else "")
    (out / "SOFT_PROMPT.md").write_text(note)
    return path


def export_prefix(model: nn.Module, out: str | Path) -> Path | None:
    """Write `prefix_kv.safetensors` (+ PREFIX.md) for prefix tuning; None otherwise."""
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
    (out / "PREFIX.md").write_text(PREFIX_NOTE.format(n=n, file=PREFIX_FILE, out=out, layers=len(layers),
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


def _logits(model: nn.Module, ids: torch.Tensor, soft: torch.Tensor | None = None, prefix: Path | None = None) -> torch.Tensor:
    """Logits of the text positions only (virtual positions dropped), float32 on CPU."""
    device = next(model.parameters()).device
    ids = ids.to(device)
    length = ids.shape[1]
    with torch.no_grad():
        if soft is not None:
            embeds = model.get_input_embeddings()(ids)
            embeds = torch.cat([soft.to(device=device, dtype=embeds.dtype)[None], embeds], dim=1)
            out = model(inputs_embeds=embeds)
        elif prefix is not None:
            cache = prefix_cache(model, prefix)
            n = cache.get_seq_length()
            out = model(input_ids=ids, **{cache_argument(model.forward): cache},
                        attention_mask=torch.ones(1, n + length, dtype=torch.long, device=device))
        else:
            out = model(input_ids=ids)
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
          overwrite: bool = True) -> MergeReport:
    """Merge a run's adapter into its base weights and write a plain Hugging Face model to `out`.

    The check loads `out` back with plain transformers and compares logits with the adapter model
    on sample inputs; `ok` says whether the max abs difference is within `atol` (default
    1e-4 + 1e-5 · max|logit| in float32; for QLoRA plus twice the 4-bit kernel's own noise).
    `dtype` (e.g. `bfloat16`) converts the merged model after the check, before writing.
    """
    ref = locate(run, store)
    meta = read_meta(ref.adapter_dir)
    name = meta["method"]
    method = get_method(name)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty")
        if not (out / MERGE_REPORT).exists() and not (out / "config.json").exists():
            raise FileExistsError(f"{out} exists and does not look like a merge output; refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    tokenizer = load_tokenizer_for(meta)
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
        merged_model, qlora_info = _merge_qlora(adapter_model, meta_fp32, ref.adapter_dir, samples, reference, device)
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
        exported.append(str(export_soft_prompt(adapter_model, out, method=name)))
    if prefix_layers is not None:
        exported.append(str(export_prefix(adapter_model, out)))

    # 3. write a plain Hugging Face directory
    merged_model = base_of(merged_model)
    _clean_config(merged_model)
    _untie_if_needed(merged_model, notes)
    merged_model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    # 4. verify: load `out` with plain transformers, apply the exported prompt/prefix by hand
    cls = _plain_class(out)
    plain = cls.from_pretrained(out, dtype=torch.float32).to(device).eval()
    soft_file = out / SOFT_PROMPT_FILE if soft is not None else None
    from safetensors.torch import load_file

    soft_loaded = load_file(str(soft_file))["soft_prompt"] if soft_file else None
    prefix_file = out / PREFIX_FILE if prefix_layers is not None else None
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

        plain.to(torch_dtype(dtype, device)).save_pretrained(out)
        notes.append(f"checked in float32, then written in {dtype}")
    report = MergeReport(
        run=ref.name, method=name, out=str(out), merged=merged, max_abs_diff=diff, atol=atol, ok=ok,
        max_abs_logit=scale, samples=len(samples),
        exported=exported, notes=notes, qlora=qlora_info,
        files={p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()},
    )
    (out / MERGE_REPORT).write_text(json.dumps(report.to_dict(), indent=2))
    return report


def _merge_qlora(adapter_model: nn.Module, meta: dict, adapter_dir: Path, samples: list[torch.Tensor],
                 reference: list[torch.Tensor], device: str) -> tuple[nn.Module, dict]:
    """Merge into the de-quantized NF4 base; measure the drift against the 4-bit adapter model."""
    from peft import PeftModel

    deq = _dequantized_base(meta, device)
    base_4bit = adapter_model.get_base_model()
    with adapter_model.disable_adapter():  # the 4-bit kernel alone vs the same weights in float
        noise_4bit = [_logits(adapter_model, ids) for ids in samples]
    noise = _max_diff([_logits(deq, ids) for ids in samples], noise_4bit)
    merged = PeftModel.from_pretrained(deq, adapter_dir).eval().merge_and_unload()
    drift = _max_diff([_logits(merged, ids) for ids in samples], reference)
    in_4bit = adapter_model.merge_and_unload()  # what merging into the 4-bit layers would do (re-quantizes)
    drift_4bit = _max_diff([_logits(in_4bit, ids) for ids in samples], reference)
    del base_4bit, in_4bit
    return merged, {"drift": drift, "kernel_noise": noise, "drift_if_merged_into_4bit": drift_4bit}
