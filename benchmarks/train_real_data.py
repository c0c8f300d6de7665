"""Training throughput on real, variable-length SFT data: peftlab's loop against `transformers.Trainer`, twice.

For each task (default: sentiment and instruct, their real training records, chat-rendered with
loss on the answer only, exactly as `peftlab run` builds them), three sides train the *same*
adapted model (peftlab's method registry, default LoRA) from the *same* pool of training examples
(`--pool`, a seeded subsample, as `task.limit_train` gives a run; each side's sampler draws its
batches from it), with the same batch size, optimizer settings (AdamW, lr 5e-4, weight decay
0.01, linear schedule with warm-up, clipping at 1.0) and number of optimizer steps:

* peftlab: `peftlab.train.train(...)` as the runner calls it (`mixed_precision: auto`, length
  bucketing, padding-free rows and targets-only logits when its check passes);
* trainer-default: `Trainer` as a user would run it: `TrainingArguments` with those settings and
  everything else at its defaults (fp32, random batches), `DataCollatorForSeq2Seq` padding each
  batch to its longest example;
* trainer-tuned: the same with `bf16=True` where the hardware has native bf16 (a GPU that supports
  it, a CPU with AMX or AVX-512 bf16: `peftlab.measure.cpu_bf16_support`) and `group_by_length=True`.

Every (task, side, repeat) runs in a fresh process, the order of the sides rotates from one
repeat to the next, and repeat r uses seed `--seed + r` on every side (the spread over repeats is
the noise the losses are compared against). Measured per worker: tokens/s (non-padding tokens /
wall time of the steps after the warm-up), peak memory (CUDA allocator peak on a GPU, else the
process's peak RSS), MFU (`peftlab.measure.training_cost`: the dense-transformer FLOPs estimate
over the peak of the dtype the matmuls ran in), the padding share of the positions computed,
the mean training loss of the last 5 steps, and the loss on held-out examples (records of the
same split not trained on) after training, scored the same way for every side (padded, fp32).

    HF_HUB_OFFLINE=1 python benchmarks/train_real_data.py                       # the real benchmark
    HF_HUB_OFFLINE=1 python benchmarks/train_real_data.py --quick               # tiny random model, ~1 min
    HF_HUB_OFFLINE=1 python benchmarks/train_real_data.py --tasks sentiment --steps 10 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from train_throughput import MARK, _gb, _Meter, _quick_model_dir, _spawn, _table

DEFAULT_MODEL = "smollm2-135m-instruct"
SIDES = ("peftlab", "trainer-default", "trainer-tuned")
LR, WEIGHT_DECAY = 5e-4, 0.01
QUICK_WORDS = ("the a movie film good bad fun boring plot actor scene story what is the capital of france paris "
               "write a short answer about the weather today list three colors explain why the sky is blue").split()


# --------------------------------------------------------------------------------------------
# inside a worker
# --------------------------------------------------------------------------------------------

def quick_records(task: str, n: int) -> list[dict]:
    """Records in the task's own schema, of varied length (so padding matters), for --quick."""
    rng = random.Random(0)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(QUICK_WORDS) for _ in range(rng.randint(lo, hi)))

    if task == "sentiment":
        return [{"text": words(3, 40), "label": i % 2} for i in range(n)]
    return [{"id": str(i), "instruction": words(4, 30), "input": words(0, 20), "output": words(2, 40)} for i in range(n)]


def _examples(spec: dict, tokenizer: Any) -> tuple[list[dict], list[dict]]:
    """(the training pool, the held-out examples), built as the runner builds them."""
    from peftlab.tasks import get_task
    from peftlab.tasks.api import DATA_SEED
    from peftlab.tasks.examples import training_examples

    task = get_task(spec["task"])
    needed = spec["pool"]
    wanted = needed + spec["eval_examples"]
    if spec["quick"]:
        records = quick_records(spec["task"], 2 * wanted)
    else:  # a seeded subsample: the same records, in the same order, on every side
        from peftlab.data import load_records

        records, _ = load_records(spec["task"], task.splits["train"], source="offline", limit=2 * wanted, seed=DATA_SEED)
    examples = training_examples(task, tokenizer, records, spec["max_length"], True, task.resolve_args({}))
    examples = [e for e in examples if any(label != -100 for label in e["labels"][1:])]
    if len(examples) < wanted:
        raise SystemExit(f"{spec['task']}: only {len(examples)} usable examples, {wanted} needed: lower --pool or "
                         f"--eval-examples")
    return examples[:needed], examples[needed:wanted]


def _adapted_model(spec: dict, tokenizer: Any, device: str) -> Any:
    from peftlab.methods import ApplyContext, get_method
    from peftlab.models import load_model

    method = get_method(spec["method"])
    base = load_model(spec["model"], "auto", method.quantize_base, device)
    return method.apply(base, method.resolve_args({}), ApplyContext(tokenizer=tokenizer, seed=spec["seed"]))


class Counter(_Meter):
    """The token meter of `train_throughput`, fed by peftlab's own batch counts (padding-free rows carry no
    attention mask for the forward hook to count) and counting every position the Trainer's forward computes."""

    def __init__(self, model: Any, hook: bool):
        self.tokens = 0
        self.positions = 0
        self.steps: list[tuple[float, int, float]] = []
        self.losses: list[float] = []
        if hook:
            model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        if module.training:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.positions += int(ids.numel())
        super()._count(module, args, kwargs)

    def add(self, batch: dict) -> dict:
        self.tokens += int(batch["num_tokens"])
        self.positions += int(batch["num_positions"])
        return batch


def run_peftlab(spec: dict, model: Any, tokenizer: Any, examples: list[dict], meter: Counter, device: str) -> Any:
    """`peftlab.train.train` as the runner calls it, every optimizer step stamped on `meter`; returns its outcome."""
    import peftlab.train as loop
    from peftlab.config import TrainConfig
    from peftlab.runner import _seed_everything

    for name in ("packed_collate", "padded_collate"):  # count each batch's real tokens as the loop builds it
        make = getattr(loop, name)
        setattr(loop, name, lambda rows, pad_id, make=make: meter.add(make(rows, pad_id)))
    cfg = TrainConfig(lr=LR, weight_decay=WEIGHT_DECAY, warmup_steps=spec["warmup"],
                      max_steps=spec["warmup"] + spec["steps"], batch_size=spec["batch_size"], save_adapter=False,
                      num_threads=spec["threads"])
    _seed_everything(spec["seed"], cfg.num_threads)

    def progress(step: int, total: int, loss: float) -> None:
        meter.losses.append(loss)
        meter.step()

    return loop.train(model, examples, [], cfg, spec["seed"], tokenizer.pad_token_id, device, progress=progress)


def _tuned_bf16(device: str) -> bool:
    import torch

    from peftlab.measure import cpu_bf16_support

    return torch.cuda.is_bf16_supported() if device == "cuda" else cpu_bf16_support()[0]


def _group_by_length(arguments: type) -> dict:
    """`group_by_length=True`, spelled `train_sampling_strategy="group_by_length"` since transformers 5.2x."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(arguments)}
    return {"group_by_length": True} if "group_by_length" in names else {"train_sampling_strategy": "group_by_length"}


def _run_trainer(spec: dict, model: Any, tokenizer: Any, examples: list[dict], meter: Counter, device: str) -> dict:
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    tuned = spec["side"] == "trainer-tuned"
    bf16 = tuned and _tuned_bf16(device)

    class Stamp(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            meter.step()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                meter.losses.append(float(logs["loss"]))

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(examples)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": examples[i]["input_ids"], "labels": examples[i]["labels"]}

    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=spec["batch_size"], max_steps=spec["warmup"] + spec["steps"],
            learning_rate=LR, weight_decay=WEIGHT_DECAY, warmup_steps=spec["warmup"], lr_scheduler_type="linear",
            max_grad_norm=1.0, logging_steps=1, report_to=[], save_strategy="no", eval_strategy="no",
            use_cpu=device == "cpu", disable_tqdm=True, seed=spec["seed"], remove_unused_columns=False,
            **({"bf16": True} if bf16 else {}), **(_group_by_length(TrainingArguments) if tuned else {}),
        )
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collator, callbacks=[Stamp()]).train()
    return {"precision": "bf16" if bf16 else "fp32", "compute_dtype": "bf16" if bf16 else "fp32",
            "batch_layout": "padded, grouped by length" if tuned else "padded, random batches",
            "optimizer": str(getattr(args.optim, "value", args.optim))}


def worker(spec: dict) -> dict:
    import torch

    from peftlab.data.batching import make_batches
    from peftlab.evaluation.scoring import mean_loss
    from peftlab.measure import PeakMemory, count_parameters, training_cost
    from peftlab.models import default_device, load_tokenizer
    from peftlab.runner import _seed_everything

    device = default_device()
    tokenizer = load_tokenizer(spec["model"])
    examples, held_out = _examples(spec, tokenizer)
    _seed_everything(spec["seed"], spec["threads"])  # before the adapter exists: its initial weights are drawn
    model = _adapted_model(spec, tokenizer, device)  # from this RNG, so every side starts from the same adapter
    params = count_parameters(model)
    meter = Counter(model, hook=spec["side"] != "peftlab")

    import accelerate  # noqa: F401 - imports before the clock starts
    import transformers.trainer  # noqa: F401

    import peftlab.train  # noqa: F401

    memory = PeakMemory(device).start()
    start = time.perf_counter()
    if spec["side"] == "peftlab":
        outcome = run_peftlab(spec, model, tokenizer, examples, meter, device)
        extra = {**outcome.record(), "compute_dtype": outcome.precision.dtype}
    else:
        extra = _run_trainer(spec, model, tokenizer, examples, meter, device)
    end = time.perf_counter()
    mem = memory.stop()

    n = spec["warmup"] + spec["steps"]
    if len(meter.steps) != n:
        raise RuntimeError(f"{spec['side']}: {len(meter.steps)} optimizer steps recorded, {n} expected")
    marks = [(start, 0, 0.0)] + meter.steps
    (t0, k0, _), (t1, k1, _) = marks[spec["warmup"]], marks[-1]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(extra["compute_dtype"], torch.float32)
    cost = training_cost(params["total_params"], params["trainable_params"], k1 - k0, t1 - t0,
                         spec["method"] == "full", device, dtype)

    model.eval()
    eval_batches = make_batches(held_out, 8, tokenizer.pad_token_id, seed=0, shuffle=False)
    held_out_loss = mean_loss(model, eval_batches, device)
    return {
        **{k: spec[k] for k in ("task", "method", "side", "repeat", "seed")},
        "tokens_per_s": (k1 - k0) / (t1 - t0), "measured_tokens": k1 - k0, "measured_s": t1 - t0,
        "step_s": [b[0] - a[0] for a, b in pairwise(marks)], "whole_s": end - start,
        "tokens": meter.tokens, "positions": meter.positions,
        "padding_pct": 100.0 * (1 - meter.tokens / meter.positions) if meter.positions else None,
        "peak_memory_bytes": mem["peak_memory_bytes"], "memory_kind": mem["memory_kind"],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "mfu": cost["mfu"], "peak_flops": cost["peak_flops"], "peak_flops_source": cost["peak_flops_source"],
        "final_train_loss": statistics.mean(meter.losses[-5:]) if meter.losses else None,
        "held_out_loss": held_out_loss, "held_out_examples": len(held_out),
        "threads": torch.get_num_threads(), "device": device, **extra,
    }


# --------------------------------------------------------------------------------------------
# orchestration (parent process)
# --------------------------------------------------------------------------------------------

def _noise_verdict(a: list[float], b: list[float]) -> str:
    """Is the held-out loss difference within the spread between seeds?"""
    diff = statistics.mean(a) - statistics.mean(b)
    if len(a) < 2 or len(b) < 2:
        return f"{diff:+.3f} (1 repeat: noise unknown)"
    spread = max(statistics.stdev(a), statistics.stdev(b))
    return f"{diff:+.3f} ({'within' if abs(diff) <= 2 * spread else 'OUTSIDE'} 2 sd of seeds, sd {spread:.3f})"


def _summary(task: str, results: list[dict]) -> str:
    by = {s: [x for x in results if x["task"] == task and x["side"] == s] for s in SIDES}
    by = {s: xs for s, xs in by.items() if xs}
    tps = {s: statistics.median(x["tokens_per_s"] for x in xs) for s, xs in by.items()}
    rows = []
    for side, xs in by.items():
        mfu = [x["mfu"] for x in xs if x["mfu"] is not None]
        ratios = [f"{tps[side] / tps[t]:.2f}x" if t in tps else "-" for t in ("trainer-default", "trainer-tuned")]
        losses = [x["held_out_loss"] for x in xs]
        rows.append([
            side, f"{tps[side]:.1f}", *ratios, _gb(max(x["peak_memory_bytes"] for x in xs)),
            f"{100 * statistics.median(mfu):.2f}%" if mfu else "-",
            f"{statistics.median(x['padding_pct'] for x in xs):.1f}%",
            f"{statistics.mean(losses):.3f}" + (f" [{min(losses):.3f}, {max(losses):.3f}]" if len(losses) > 1 else ""),
            f"{statistics.mean(x['final_train_loss'] for x in xs):.3f}",
            _noise_verdict([x["held_out_loss"] for x in by["peftlab"]], losses) if side != "peftlab" and "peftlab" in by
            else "",
            xs[0].get("precision", "?"), str(len(xs)),
        ])
    return _table(rows, ["side", "tok/s", "vs default", "vs tuned", "peak memory", "MFU", "padding", "held-out loss",
                         "last-5 train loss", "peftlab - this (held-out)", "precision", "runs"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="sentiment,instruct", help="comma-separated chat tasks (default sentiment,instruct)")
    ap.add_argument("--method", default="lora", help="one method of the registry, the same on every side (default lora)")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {', '.join(SIDES)}")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model name, offline alias or local directory")
    ap.add_argument("--steps", type=int, default=None, help="measured optimizer steps per side (default 12; quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="unmeasured steps first, also the LR warm-up (default 2; quick 1)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256, help="tokens per example, as task.max_length (default 256)")
    ap.add_argument("--pool", type=int, default=None, help="training examples the batches are drawn from (default 400; quick 64)")
    ap.add_argument("--eval-examples", type=int, default=None,
                    help="held-out examples scored after training (default 64; quick 16)")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of all sides, seed +1 and the order rotated each round")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads in every worker (default torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per worker before it is killed")
    ap.add_argument("--json", type=Path, default=None, help="also write every worker's raw result here")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny random model, synthetic records (no download)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.worker:
        print(MARK + json.dumps(worker(json.loads(a.worker))), flush=True)
        return 0

    os.environ["HF_HUB_OFFLINE"] = "1"
    steps = a.steps if a.steps is not None else (3 if a.quick else 12)
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    eval_examples = a.eval_examples if a.eval_examples is not None else (16 if a.quick else 64)
    pool = a.pool if a.pool is not None else (64 if a.quick else 400)
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    for s in sides:
        if s not in SIDES:
            ap.error(f"--sides: {s!r} is not one of {', '.join(SIDES)}")
    if steps < 1 or warmup < 0 or a.repeats < 1 or a.batch_size < 1 or eval_examples < 1 or a.max_length < 8:
        ap.error("--steps, --repeats, --batch-size and --eval-examples must be >= 1, --warmup >= 0, --max-length >= 8")
    if pool < a.batch_size * (steps + warmup):
        ap.error(f"--pool ({pool}) must hold at least batch x steps = {a.batch_size * (steps + warmup)} examples")

    import torch

    from peftlab.methods import get_method
    from peftlab.models import default_device
    from peftlab.tasks import get_task

    get_method(a.method)  # unknown names fail here, not in a worker
    for t in tasks:
        if get_task(t).kind == "lm":
            ap.error(f"--tasks: {t!r} is a plain-text task; this benchmark compares chat (SFT) tasks")
    if a.quick:
        model, label = _quick_model_dir(), "tiny random llama (--quick)"
    else:  # fetch once up front, so no worker pays for a download
        from peftlab.data import load_records
        from peftlab.models import ALIASES, prepare_alias

        model, label = a.model, a.model
        if model in ALIASES:
            prepare_alias(model)
        for t in tasks:
            load_records(t, get_task(t).splits["train"], source="offline", limit=1, seed=0)

    device = default_device()
    print(f"train throughput on real SFT data: peftlab vs Trainer default vs Trainer tuned (model {label}, {a.method})")
    print(f"tasks {', '.join(tasks)}; pool of {pool} examples, batch {a.batch_size}, max {a.max_length} tokens, {warmup} "
          f"warm-up + {steps} measured "
          f"steps, {a.repeats} round(s) of {', '.join(sides)}, each in a fresh process; device {device}, torch "
          f"{torch.__version__}, {a.threads or torch.get_num_threads()} thread(s)")
    sys.stdout.flush()

    results: list[dict] = []
    t_all = time.perf_counter()
    try:
        for ti, task in enumerate(tasks):
            for r in range(a.repeats):
                shift = (ti + r) % len(sides)
                for side in sides[shift:] + sides[:shift]:  # rotate who goes first
                    spec = {"task": task, "method": a.method, "side": side, "repeat": r, "seed": a.seed + r,
                            "model": model, "quick": a.quick, "steps": steps, "warmup": warmup,
                            "batch_size": a.batch_size, "max_length": a.max_length, "eval_examples": eval_examples, "pool": pool,
                            "threads": a.threads}
                    res = _spawn(spec, a.timeout, script=__file__)
                    results.append(res)
                    mfu = f"{100 * res['mfu']:.2f}%" if res["mfu"] is not None else "-"
                    print(f"  {task:9s} {side:15s} run {r + 1}: {res['tokens_per_s']:8.1f} tok/s, peak "
                          f"{_gb(res['peak_memory_bytes'])}, MFU {mfu}, padding {res['padding_pct']:.1f}%, held-out "
                          f"loss {res['held_out_loss']:.4f}, {res.get('precision')}; steps "
                          f"{' '.join(f'{t:.2f}' for t in res['step_s'])} s", flush=True)
    finally:
        if a.quick:
            shutil.rmtree(model, ignore_errors=True)

    for task in tasks:
        print(f"\n{task}:")
        print(_summary(task, results))
    layouts = {x["batch_layout_reason"] for x in results if x["side"] == "peftlab" and "batch_layout_reason" in x}
    print(f"""
tok/s: non-padding tokens / wall time of the {steps} steps after the {warmup} warm-up step(s), median over rounds;
  "vs default"/"vs tuned": this side's tok/s over that Trainer side's (above 1: faster).
peak memory: {'CUDA allocator peak' if device == 'cuda' else 'peak RSS of the training loop'}; MFU against the peak of the
  dtype the matmuls ran in (peftlab.measure.peak_flops); padding: share of computed positions that were padding.
held-out loss: after training, {eval_examples} examples not trained on, scored identically for every side (mean
  [min, max] over rounds); the last column compares peftlab's with this side's against the spread between seeds.
peftlab's batches: {'; '.join(sorted(layouts)) or '?'}
{len(results)} workers, {time.perf_counter() - t_all:.0f} s in all.""")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
