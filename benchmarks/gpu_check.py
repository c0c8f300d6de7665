"""GPU check: every method family trains on CUDA in bf16, memory is accounted right, merges hold on the GPU.

For each method (default: lora, qlora, prompt, prefix, full), in a fresh process: load the model
on the GPU (qlora: NF4 4-bit base through bitsandbytes), train a few steps with peftlab's loop
(`mixed_precision: auto`, which must pick bf16 on a bf16 GPU), then check and print:

* tokens/s (the steps after the warm-up) and MFU against the datasheet peak of the dtype used;
* memory accounting: the run's recorded peak (`PeakMemory`, what result.json keeps) equals
  `torch.cuda.max_memory_allocated()` read independently after training, holds at least the
  weights + gradients + optimizer state it reports, and a known 256 MiB allocation inside a
  `PeakMemory` window is seen in full;
* the merge check on the GPU: the adapter is saved as a run saves it and merged with
  `peftlab.adapters.merge(..., device="cuda")`, which reloads the merged model with plain
  transformers and compares logits (prompt/prefix: exported virtual tokens; full: nothing to merge).

No download: the model is the offline alias when its cache is there; else a model with the alias's
architecture and tokenizer and random weights, built from the files `--prepare` copies into
`.gpu_check/` (the real weights, 517 MB, are too big to carry): throughput, memory and MFU are
the real architecture's, losses are not meaningful. Training data are synthetic chat examples of
varied length rendered with the tokenizer (the sentiment task's format).

    python benchmarks/gpu_check.py --prepare          # here: copy config + tokenizer into .gpu_check/
    bash benchmarks/gpu_check.sh                      # on the GPU machine (see the script's header)
    python benchmarks/gpu_check.py --cpu-smoke        # this script's logic on CPU with a tiny model (~2 min)

Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from train_real_data import Counter, quick_records, run_peftlab
from train_throughput import MARK, _gb, _quick_model_dir, _spawn, _table

ALIAS = "smollm2-135m-instruct"
PREPARED = Path(__file__).resolve().parents[1] / ".gpu_check" / ALIAS
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja")
DEFAULT_METHODS = "lora,qlora,prompt,prefix,full"
PROBE_BYTES = 256 * 2**20


# --------------------------------------------------------------------------------------------
# the model: cached alias, or its architecture with random weights, or a tiny one
# --------------------------------------------------------------------------------------------

def prepare(out: Path = PREPARED) -> None:
    """Copy the alias's small files (config, tokenizer) to `out`, for a machine without the weights."""
    from peftlab.models import alias_dir, prepare_alias

    source = prepare_alias(ALIAS)
    out.mkdir(parents=True, exist_ok=True)
    copied = [name for name in MODEL_FILES if (Path(source) / name).exists()]
    for name in copied:
        shutil.copy2(Path(source) / name, out / name)
    exclude = Path(__file__).resolve().parents[1] / ".git" / "info" / "exclude"  # keep the copy out of `git status`
    if out == PREPARED and exclude.parent.is_dir() and "/.gpu_check/" not in (exclude.read_text() if exclude.exists() else ""):
        with exclude.open("a") as fh:
            fh.write("/.gpu_check/\n")
    size = sum((out / n).stat().st_size for n in copied)
    print(f"copied {', '.join(copied)} from {alias_dir(ALIAS)} to {out} ({size / 1e6:.1f} MB); "
          f"carry '.gpu_check' (and '.whl' with a bitsandbytes wheel for qlora) to the GPU machine")


def resolve_model(cpu_smoke: bool) -> tuple[str, str]:
    """(what to load, what it is) without any download."""
    from peftlab.models import alias_dir, is_cached

    if cpu_smoke:
        return _quick_model_dir(), "tiny random llama (--cpu-smoke)"
    if is_cached(ALIAS):
        return ALIAS, f"{ALIAS} (real weights, {alias_dir(ALIAS)})"
    if (PREPARED / "config.json").exists():
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        out = Path(tempfile.mkdtemp(prefix="gpu-check-model-"))
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(PREPARED), dtype=torch.float32)
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(PREPARED).save_pretrained(out)
        return str(out), f"{ALIAS}'s architecture and tokenizer, random weights (from {PREPARED})"
    raise SystemExit(f"no model: {ALIAS} is not cached and {PREPARED} is missing; run "
                     f"`python benchmarks/gpu_check.py --prepare` where the alias is cached and carry .gpu_check")


# --------------------------------------------------------------------------------------------
# one method, in a worker process
# --------------------------------------------------------------------------------------------

def _examples(tokenizer: Any, count: int, max_length: int) -> list[dict]:
    from peftlab.tasks import get_task
    from peftlab.tasks.examples import training_examples

    task = get_task("sentiment")
    examples = training_examples(task, tokenizer, quick_records("sentiment", count), max_length, True,
                                 task.resolve_args({}))
    return [e for e in examples if any(label != -100 for label in e["labels"][1:])]


def _memory_probe(device: str) -> dict:
    """A known allocation inside a PeakMemory window: the recorded peak must hold it in full."""
    import torch

    from peftlab.measure import PeakMemory

    if device != "cuda":
        return {"ok": None, "note": "n/a on cpu"}
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    window = PeakMemory("cuda").start()
    block = torch.empty(PROBE_BYTES, dtype=torch.uint8, device="cuda")
    del block
    got = window.stop()
    independent = torch.cuda.max_memory_allocated()
    ok = got["peak_memory_bytes"] == independent and got["peak_memory_bytes"] >= before + PROBE_BYTES
    return {"ok": ok, "note": f"256 MiB block: peak {got['peak_memory_bytes']} = max_memory_allocated {independent}, "
                              f"resident before {before}"}


def worker(spec: dict) -> dict:
    import torch

    from peftlab.adapters import merge, save_adapter
    from peftlab.config import ModelConfig
    from peftlab.measure import count_parameters, training_cost
    from peftlab.methods import ApplyContext, get_method
    from peftlab.models import load_model, load_tokenizer

    device = "cuda" if torch.cuda.is_available() and not spec["cpu_smoke"] else "cpu"
    out: dict[str, Any] = {"method": spec["method"], "device": device, "checks": {}}
    method = get_method(spec["method"])
    if method.quantize_base and device != "cuda":
        return {**out, "skipped": "4-bit NF4 needs CUDA"}
    if method.quantize_base:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return {**out, "skipped": "bitsandbytes is not installed (carry its wheel in .whl: see gpu_check.sh)"}
    out["checks"]["memory probe"] = _memory_probe(device)

    tokenizer = load_tokenizer(spec["model"])
    examples = _examples(tokenizer, 4 * spec["batch_size"] * (spec["warmup"] + spec["steps"]), spec["max_length"])
    base = load_model(spec["model"], "auto", method.quantize_base, device)
    model = method.apply(base, method.resolve_args({}), ApplyContext(tokenizer=tokenizer, model_name=spec["model"],
                                                                   seed=spec["seed"]))
    params = count_parameters(model)
    meter = Counter(model, hook=False)
    outcome = run_peftlab(spec, model, tokenizer, examples, meter, device)
    independent = torch.cuda.max_memory_allocated() if device == "cuda" else None

    marks = [(0.0, 0, 0.0)] + meter.steps
    (t0, k0, _), (t1, k1, _) = marks[max(1, spec["warmup"])], marks[-1]
    dtype = outcome.precision.torch_dtype
    cost = training_cost(params["total_params"], params["trainable_params"], k1 - k0, t1 - t0, method.full, device,
                         dtype)
    mem, parts = outcome.memory, outcome.memory_breakdown
    held = parts["weights"] + parts["gradients"] + parts["optimizer"]
    if device == "cuda":
        same = mem["memory_kind"] == "cuda" and mem["peak_memory_bytes"] == mem["cuda_max_allocated_bytes"] == independent
        out["checks"]["peak memory"] = {
            "ok": same and mem["peak_memory_bytes"] >= held,
            "note": f"recorded {mem['peak_memory_bytes']}, max_memory_allocated {independent}, weights+grads+optimizer "
                    f"{held}"}
        out["checks"]["bf16"] = {"ok": outcome.precision.dtype == "bf16", "note": outcome.precision.reason}
    losses = [loss for _, loss in outcome.curves["train_loss"]]
    out["checks"]["finite loss"] = {"ok": all(math.isfinite(x) for x in losses),
                                    "note": f"{losses[0]:.3f} -> {losses[-1]:.3f}"}

    with tempfile.TemporaryDirectory(prefix="gpu-check-run-") as tmp:
        t = time.perf_counter()
        meta = {"args": method.resolve_args({}), "model": dataclasses.asdict(ModelConfig(name=spec["model"])),
                "task": "sentiment", "seed": spec["seed"]}
        save_adapter(model, method.name, Path(tmp) / "adapter", meta)
        del model, base
        if device == "cuda":
            torch.cuda.empty_cache()
        try:
            report = merge(Path(tmp) / "adapter", Path(tmp) / "merged", device=device, log=lambda *a: None)
            out["checks"]["merge"] = {"ok": report.ok, "note": f"max |dlogit| {report.max_abs_diff:.2e} (tolerance "
                                                               f"{report.atol:.2e}), merged={report.merged}, "
                                                               f"{time.perf_counter() - t:.1f} s"}
        except Exception as exc:  # noqa: BLE001 - reported as a failed check
            out["checks"]["merge"] = {"ok": False, "note": f"{type(exc).__name__}: {exc}"}
    return {**out, "tokens_per_s": (k1 - k0) / (t1 - t0), "mfu": cost["mfu"], "peak_flops_source": cost["peak_flops_source"],
            "peak_memory_bytes": mem["peak_memory_bytes"], "precision": outcome.precision.dtype,
            "batch_layout": outcome.layout.record()["batch_layout"], "logits": outcome.layout.record()["logits"],
            "trainable_params": params["trainable_params"], "step_s": [b[0] - a[0] for a, b in zip(marks[1:], marks[2:])],
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None}


# --------------------------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------------------------

def _environment() -> str:
    import importlib.metadata as md

    import torch

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "missing"

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    names = ("transformers", "peft", "accelerate", "bitsandbytes")
    return f"{gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); " + ", ".join(
        f"{n} {version(n)}" for n in names)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    ap.add_argument("--steps", type=int, default=8, help="measured optimizer steps per method (default 8)")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured steps first, also the LR warm-up (default 2)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per method before its worker is killed")
    ap.add_argument("--json", type=Path, default=None, help="also write every worker's result here")
    ap.add_argument("--prepare", action="store_true", help="copy the alias's config and tokenizer into .gpu_check/")
    ap.add_argument("--cpu-smoke", action="store_true", help="run the logic on CPU with a tiny model (qlora skipped)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.worker:
        print(MARK + json.dumps(worker(json.loads(a.worker))), flush=True)
        return 0
    if a.prepare:
        prepare()
        return 0
    if a.steps < 1 or a.warmup < 1 or a.batch_size < 1:
        ap.error("--steps, --warmup and --batch-size must be >= 1")

    from peftlab.methods import get_method

    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in methods:
        get_method(m)
    start = time.perf_counter()
    model, label = resolve_model(a.cpu_smoke)
    print(f"gpu check: {_environment()}\nmodel: {label}\n{a.warmup} warm-up + {a.steps} measured steps, batch "
          f"{a.batch_size}, each method in a fresh process", flush=True)
    results, failed = [], []
    try:
        for method in methods:
            spec = {"method": method, "model": model, "cpu_smoke": a.cpu_smoke, "steps": a.steps, "warmup": a.warmup,
                    "batch_size": a.batch_size, "max_length": a.max_length, "seed": a.seed, "threads": None,
                    "side": "peftlab"}
            try:
                res = _spawn(spec, a.timeout, script=__file__)
            except Exception as exc:  # noqa: BLE001 - one method's crash is that method's failure
                res = {"method": method, "checks": {"ran": {"ok": False, "note": str(exc)[-2000:]}}}
            results.append(res)
            if res.get("skipped"):
                print(f"  {method:7s} skipped: {res['skipped']}", flush=True)
                continue
            for name, check in res["checks"].items():
                mark = {True: "ok  ", False: "FAIL", None: "n/a "}[check["ok"]]
                if check["ok"] is False:
                    failed.append(f"{method}: {name}")
                print(f"  {method:7s} {mark} {name}: {check['note']}", flush=True)
    finally:
        if a.cpu_smoke or not model == ALIAS:
            shutil.rmtree(model, ignore_errors=True)

    rows = [[r["method"], f"{r['tokens_per_s']:.0f}", f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-",
             _gb(r["peak_memory_bytes"]), r["precision"], f"{r['batch_layout']}, {r['logits']} logits",
             f"{statistics.median(r['step_s'][a.warmup - 1:]) * 1000:.0f} ms"]
            for r in results if "tokens_per_s" in r]
    if rows:
        print()
        print(_table(rows, ["method", "tok/s", "MFU", "peak memory", "precision", "batches", "median step"]))
    print(f"\nMFU against {results[0].get('peak_flops_source', '?') if results else '?'}; "
          f"{time.perf_counter() - start:.0f} s in all; " + (f"FAILED: {'; '.join(failed)}" if failed else "all checks passed"))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
