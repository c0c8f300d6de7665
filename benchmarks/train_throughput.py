"""Training throughput: peftlab's loop against a plain Hugging Face `Trainer` + PEFT, side by side.

For each method (default: lora, prompt, prefix, full) both sides train the *same* adapted model
(built by peftlab's method registry), on the *same* packed `lm` examples, with the same batch
size, optimizer settings (AdamW, lr 5e-4, weight decay 0.01, linear schedule with warm-up,
gradient clipping 1.0) and number of optimizer steps:

* peftlab: `peftlab.train.train(...)` called the way `peftlab.runner` calls it (the runner's
  seeding, a `TrainConfig`, no validation batches);
* baseline: `transformers.Trainer` with `TrainingArguments(...)` at their defaults otherwise
  (no evaluation, no saving, no reporting; note its default optimizer is `adamw_torch_fused`).

Every (method, side, repeat) runs in a fresh subprocess, so one side's peak RSS or allocator
state never pollutes the other's; the two sides alternate order (A/B, then B/A, ...).

Measured: tokens/s = non-padding tokens seen by the model's forward / wall time, over the steps
after the warm-up steps (model loading, data preparation and the first steps are excluded); the
"whole run" rate over every step (including setup of each loop) is reported as well. Peak
memory = the worker process's peak RSS (`ru_maxrss`), i.e. model load + data + training.

    HF_HUB_OFFLINE=1 python benchmarks/train_throughput.py                  # the real benchmark
    HF_HUB_OFFLINE=1 python benchmarks/train_throughput.py --quick          # tiny random model, seconds
    HF_HUB_OFFLINE=1 python benchmarks/train_throughput.py --threads 1 --repeats 2   # on a busy machine
    HF_HUB_OFFLINE=1 python benchmarks/train_throughput.py --methods lora,full --steps 10 --repeats 2

Defaults (2 warm-up + 4 measured steps, one A/B pair per method) keep the four-method run near
8 minutes on the idle 2-core development machine; raise --steps/--repeats for tighter numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_METHODS = "lora,prompt,prefix,full"
SIDES = ("peftlab", "trainer")
MARK = "@@TRAIN_THROUGHPUT_RESULT@@ "

QUICK_CORPUS = [
    "the quick brown fox jumps over the lazy dog", "a movie that is good and fun to watch",
    "a film that is bad and boring", "what is the capital of france ? paris",
    "def add(a, b):\n    return a + b\n", "the answer is 42 . final answer : 42",
    "once upon a time there was a small model that learned to count 1 2 3 4 5 6 7 8 9 10",
]


# --------------------------------------------------------------------------------------------
# shared by both sides (runs inside a worker)
# --------------------------------------------------------------------------------------------

def _examples(spec: dict, tokenizer: Any) -> list[dict]:
    """Packed `lm` windows, built exactly as the runner builds them (`training_examples`)."""
    from peftlab.tasks import get_task
    from peftlab.tasks.examples import training_examples

    if spec["quick"]:
        records = [{"text": f"{QUICK_CORPUS[i % len(QUICK_CORPUS)]} number {i}"} for i in range(400)]
    else:
        from peftlab.data import load_records

        records, _ = load_records("lm", "train", source="offline", limit=spec["limit"], seed=0)
    task = get_task("lm")
    examples = training_examples(task, tokenizer, records, spec["seq_len"], True, task.resolve_args({}))
    examples = [e for e in examples if any(label != -100 for label in e["labels"])]
    needed = spec["batch_size"] * (spec["warmup"] + spec["steps"])
    if len(examples) < needed:
        raise SystemExit(f"only {len(examples)} packed examples, {needed} needed: raise --limit")
    return examples[:needed]  # one pass over exactly the examples both sides train on


def _adapted_model(spec: dict, tokenizer: Any) -> Any:
    from peftlab.methods import ApplyContext, get_method
    from peftlab.models import load_model

    method = get_method(spec["method"])
    base = load_model(spec["model"], "auto", method.quantize_base, "cpu")
    return method.apply(base, method.resolve_args({}), ApplyContext(tokenizer=tokenizer))


class _Meter:
    """Counts the non-padding tokens every training forward sees and stamps each optimizer step."""

    def __init__(self, model: Any):
        self.tokens = 0
        self.steps: list[tuple[float, int, float]] = []  # end of step k: (perf_counter, tokens so far, CPU s)
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not module.training:
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += int(mask.sum()) if mask is not None else int(ids.numel())

    def step(self) -> None:
        self.steps.append((time.perf_counter(), self.tokens, time.process_time()))


def _run_peftlab(spec: dict, model: Any, tokenizer: Any, examples: list[dict], meter: _Meter) -> None:
    from peftlab.config import TrainConfig
    from peftlab.runner import _seed_everything  # the runner's own seeding (deterministic algorithms on)
    from peftlab.train import train

    cfg = TrainConfig(lr=5e-4, weight_decay=0.01, warmup_steps=spec["warmup"], max_steps=spec["warmup"] + spec["steps"],
                      batch_size=spec["batch_size"], save_adapter=False, num_threads=spec["threads"])
    _seed_everything(spec["seed"], cfg.num_threads)
    train(model, examples, [], cfg, spec["seed"], tokenizer.pad_token_id, "cpu",
          progress=lambda step, total, loss: meter.step())


def _run_trainer(spec: dict, model: Any, tokenizer: Any, examples: list[dict], meter: _Meter) -> str:
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])

    class Stamp(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            meter.step()

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(examples)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": examples[i]["input_ids"]}

    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=spec["batch_size"], max_steps=spec["warmup"] + spec["steps"],
            learning_rate=5e-4, weight_decay=0.01, warmup_steps=spec["warmup"], lr_scheduler_type="linear",
            max_grad_norm=1.0, logging_steps=1, report_to=[], save_strategy="no", eval_strategy="no",
            use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=spec["seed"],
            remove_unused_columns=False,
        )
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        trainer = Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collator, callbacks=[Stamp()])
        trainer.train()
        return str(args.optim.value if hasattr(args.optim, "value") else args.optim)


def worker(spec: dict) -> dict:
    import torch

    from peftlab.measure import PeakMemory, count_parameters
    from peftlab.models import load_tokenizer

    load_start = time.perf_counter()
    tokenizer = load_tokenizer(spec["model"])
    examples = _examples(spec, tokenizer)
    model = _adapted_model(spec, tokenizer)
    params = count_parameters(model)
    meter = _Meter(model)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    setup_s = time.perf_counter() - load_start

    # import each side's modules before the clock starts (importing `transformers.trainer` alone
    # takes about a second: it pulls in `datasets` and `pandas`), so "whole run" times the loops only
    import accelerate  # noqa: F401
    import transformers.trainer  # noqa: F401

    import peftlab.train  # noqa: F401

    memory = PeakMemory("cpu").start()
    start, cpu_start = time.perf_counter(), time.process_time()
    extra: dict[str, Any] = {}
    if spec["side"] == "peftlab":
        _run_peftlab(spec, model, tokenizer, examples, meter)
        extra["optimizer"] = "torch.optim.AdamW (defaults)"
    else:
        extra["optimizer"] = _run_trainer(spec, model, tokenizer, examples, meter)
    end = time.perf_counter()
    window_peak = memory.stop()["peak_rss_bytes"]

    steps = meter.steps
    n = spec["warmup"] + spec["steps"]
    if len(steps) != n:
        raise RuntimeError(f"{spec['side']}: {len(steps)} optimizer steps recorded, {n} expected")
    marks = [(start, 0, cpu_start)] + steps  # marks[k]: the end of step k (marks[0]: the call into the loop)
    (t0, k0, c0), (t1, k1, c1) = marks[spec["warmup"]], marks[-1]
    step_times = [b[0] - a[0] for a, b in pairwise(marks)]
    window = marks[spec["warmup"]:]
    per_step = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in pairwise(window)]
    return {
        **{k: spec[k] for k in ("method", "side", "repeat")},
        "tokens_per_s": (k1 - k0) / (t1 - t0),
        "measured_tokens": k1 - k0, "measured_s": t1 - t0,
        "tokens_per_cpu_s": (k1 - k0) / max(c1 - c0, 1e-9), "measured_cpu_s": c1 - c0,
        "best_step_tokens_per_s": max(per_step), "median_step_tokens_per_s": statistics.median(per_step),
        "whole_tokens_per_s": meter.tokens / (end - start), "whole_s": end - start,
        "step_s": step_times, "setup_s": setup_s,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "load_rss_bytes": rss_before, "train_window_peak_rss_bytes": window_peak,
        "threads": torch.get_num_threads(), "trainable_params": params["trainable_params"], **extra,
    }


# --------------------------------------------------------------------------------------------
# orchestration (parent process)
# --------------------------------------------------------------------------------------------

def _quick_model_dir() -> str:
    """A tiny random Llama and a BPE tokenizer trained here: no download, seconds to train."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(tempfile.mkdtemp(prefix="peftlab-bench-tiny-"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(QUICK_CORPUS * 20, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=0))
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


def _spawn(spec: dict, timeout: float, script: str | Path = __file__) -> dict:
    """Run `script --worker SPEC` in a fresh process and return the result line it prints after MARK."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
    raise RuntimeError(f"worker {spec.get('task', '')}/{spec['method']}/{spec['side']} failed (exit {proc.returncode}):"
                       f"\n{tail}")


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def _summary(methods: list[str], results: list[dict], repeats: int) -> str:
    rows = []
    for method in methods:
        by = {s: [x for x in results if x["method"] == method and x["side"] == s] for s in SIDES}
        med = {s: statistics.median(x["tokens_per_s"] for x in by[s]) for s in SIDES}
        best = {s: max(x["best_step_tokens_per_s"] for x in by[s]) for s in SIDES}
        cpu = {s: statistics.median(x["tokens_per_cpu_s"] for x in by[s]) for s in SIDES}
        whole = {s: statistics.median(x["whole_tokens_per_s"] for x in by[s]) for s in SIDES}
        rss = {s: max(x["peak_rss_bytes"] for x in by[s]) for s in SIDES}
        rows.append([
            method, f"{med['peftlab']:.1f}", f"{med['trainer']:.1f}", f"{med['peftlab'] / med['trainer']:.3f}",
            f"{best['peftlab']:.1f} / {best['trainer']:.1f}", f"{best['peftlab'] / best['trainer']:.3f}",
            f"{cpu['peftlab'] / cpu['trainer']:.3f}", f"{whole['peftlab'] / whole['trainer']:.3f}",
            _gb(rss["peftlab"]), _gb(rss["trainer"]), str(repeats),
        ])
    return _table(rows, ["method", "peftlab tok/s", "Trainer tok/s", "ratio (peftlab/Trainer)",
                         "best step tok/s (peftlab / Trainer)", "best-step ratio", "tok/CPU-s ratio", "whole-run ratio",
                         "peftlab peak RSS", "Trainer peak RSS", "repeats"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model name, offline alias or local directory")
    ap.add_argument("--steps", type=int, default=None, help="measured optimizer steps per side (default 4; quick 3)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="unmeasured steps first, also the LR warm-up (default 2; quick 1)")
    ap.add_argument("--seq-len", type=int, default=None, help="packed window in tokens (default 128; quick 32)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="A/B pairs per method (order alternates); medians reported")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads in both workers (default: torch's default); 1 is steadier on a busy machine")
    ap.add_argument("--limit", type=int, default=None, help="lm train records to pack (default all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per worker before it is killed")
    ap.add_argument("--json", type=Path, default=None, help="also write every worker's raw result here")
    ap.add_argument("--quick", action="store_true", help="smoke test on a tiny random model (no download)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.worker:
        print(MARK + json.dumps(worker(json.loads(a.worker))), flush=True)
        return 0

    os.environ["HF_HUB_OFFLINE"] = "1"
    steps = a.steps if a.steps is not None else (3 if a.quick else 4)
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    seq_len = a.seq_len or (32 if a.quick else 128)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if steps < 1 or warmup < 0 or a.repeats < 1 or a.batch_size < 1:
        ap.error("--steps, --repeats and --batch-size must be >= 1, --warmup >= 0")

    import torch

    from peftlab.methods import get_method

    for m in methods:
        get_method(m)  # unknown names fail here, not in a worker
    if a.quick:
        model, label = _quick_model_dir(), "tiny random llama (--quick)"
    else:  # fetch once up front, so no worker pays for a download
        from peftlab.data import load_records
        from peftlab.models import ALIASES, prepare_alias

        model, label = a.model, a.model
        if model in ALIASES:
            prepare_alias(model)
        load_records("lm", "train", source="offline", limit=a.limit, seed=0)

    print(f"train throughput: peftlab loop vs transformers.Trainer + PEFT (model {label})")
    print(f"batch {a.batch_size} x {seq_len} tokens (packed lm), {warmup} warm-up + {steps} measured optimizer steps, "
          f"{a.repeats} A/B repeat(s) per method, each side in a fresh subprocess")
    print(f"machine: {os.cpu_count()} CPUs; torch {torch.__version__}, {a.threads or torch.get_num_threads()} intra-op "
          f"thread(s) per worker; numbers are noisy on a shared 2-core machine: compare ratios, use --repeats")
    sys.stdout.flush()

    results: list[dict] = []
    t_all = time.perf_counter()
    try:
        for mi, method in enumerate(methods):
            for r in range(a.repeats):
                for side in SIDES if (mi + r) % 2 == 0 else SIDES[::-1]:  # alternate who goes first
                    spec = {"method": method, "side": side, "repeat": r, "model": model, "quick": a.quick,
                            "steps": steps, "warmup": warmup, "seq_len": seq_len, "batch_size": a.batch_size,
                            "threads": a.threads, "limit": a.limit, "seed": a.seed}
                    res = _spawn(spec, a.timeout)
                    results.append(res)
                    print(f"  {method:8s} {side:8s} run {r + 1}: {res['tokens_per_s']:8.1f} tok/s (best step "
                          f"{res['best_step_tokens_per_s']:.1f}, per CPU-second {res['tokens_per_cpu_s']:.1f}, whole run "
                          f"{res['whole_tokens_per_s']:.1f}), peak RSS {_gb(res['peak_rss_bytes'])}, step times "
                          f"{' '.join(f'{t:.2f}' for t in res['step_s'])} s", flush=True)
    finally:
        if a.quick:
            shutil.rmtree(model, ignore_errors=True)

    print()
    print(_summary(methods, results, a.repeats))
    optim = next((x["optimizer"] for x in results if x["side"] == "trainer"), "?")
    print(f"""
tok/s: non-padding tokens / wall time of the {steps} steps after the {warmup} warm-up step(s), median over repeats;
  ratio > 1: peftlab faster. best step: the fastest single measured step over all repeats (least disturbed by
  other load). tok/CPU-s: the same per CPU-second of the worker (inflated where OpenMP threads wait for a core).
  whole-run: all steps, each loop's own setup included (imports excluded).
peak RSS: the worker process's maximum resident set (model load + data + training).
Trainer: TrainingArguments defaults otherwise (optimizer {optim}); peftlab: torch.optim.AdamW defaults.
{len(results)} workers, {time.perf_counter() - t_all:.0f} s in all.""")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
