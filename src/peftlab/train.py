"""The one explicit training loop (torchtune-style recipe: read it top to bottom).

Built on `accelerate` for device placement, mixed precision, gradient accumulation and
multi-GPU (`accelerate launch`); everything else is plain PyTorch so that every method runs under
exactly the same protocol: AdamW, warm-up then linear/cosine decay, weight decay off for biases
and norms, gradient clipping, a seeded shuffle per epoch. It never knows which task it trains:
it receives examples (token ids + labels) and returns a curve and its costs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from peftlab.config import TrainConfig
from peftlab.data.batching import bucket_batches, collate
from peftlab.evaluation.scoring import mean_loss
from peftlab.measure import PeakMemory, memory_breakdown

log = logging.getLogger("peftlab.train")


class Diverged(RuntimeError):
    """The loss became NaN or infinite: the run stops and is recorded as `diverged`."""


@dataclass
class TrainOutcome:
    steps: int = 0
    tokens: int = 0
    train_time_s: float = 0.0
    epoch_times_s: list[float] = field(default_factory=list)
    val_time_s: float = 0.0
    curves: dict[str, list] = field(default_factory=lambda: {"train_loss": [], "val_loss": [], "lr": []})
    memory: dict[str, Any] = field(default_factory=dict)
    memory_breakdown: dict[str, int] = field(default_factory=dict)


def mixed_precision(cfg: TrainConfig, device: str) -> str:
    """`auto`: bf16 autocast on GPUs that support it, none on CPU (fp32 is the CPU reference)."""
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices; leave biases, norms and other 1-D tensors alone (standard AdamW practice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum))


def _epoch_loader(examples: list[dict], cfg: TrainConfig, pad_id: int, seed: int) -> DataLoader:
    lengths = [len(e["input_ids"]) for e in examples]
    batches = bucket_batches(lengths, cfg.batch_size, seed, shuffle=True, bucketing=cfg.bucketing)
    return DataLoader(examples, batch_sampler=batches, collate_fn=lambda rows: collate(rows, pad_id))


def train(
    model: torch.nn.Module,
    examples: list[dict],
    val_batches: list[dict[str, torch.Tensor]],
    cfg: TrainConfig,
    seed: int,
    pad_id: int,
    device: str,
    on_step: Callable[[torch.nn.Module, int], None] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    trackers: list[str] | None = None,
    project_dir: str | None = None,
) -> TrainOutcome:
    """Train `model` in place on `examples`; returns the loss curves and measured costs."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import get_scheduler

    AcceleratorState._reset_state(reset_partial_state=False)  # a sweep runs many runs per process
    accelerator = Accelerator(
        mixed_precision=mixed_precision(cfg, device), gradient_accumulation_steps=cfg.grad_accum,
        cpu=device == "cpu", log_with=trackers or None, project_dir=project_dir,
    )
    if trackers:
        accelerator.init_trackers("peftlab", config={"lr": cfg.lr, "batch_size": cfg.batch_size, "seed": seed})
    groups = param_groups(model, cfg.weight_decay)
    # the fused kernel (Trainer's default too) is ~6x faster than the per-tensor loop on CPU for full fine-tuning
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)
    batches_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    steps = total_steps(cfg, batches_per_epoch)
    scheduler = get_scheduler(cfg.schedule if cfg.schedule != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=min(cfg.warmup_steps, steps), num_training_steps=steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    outcome = TrainOutcome()
    memory = PeakMemory(device).start()
    eval_every = cfg.eval_every or batches_per_epoch // cfg.grad_accum or 1
    start = time.perf_counter()
    epoch = 0
    try:
        while outcome.steps < steps:
            epoch_start = time.perf_counter()
            loader = accelerator.prepare(_epoch_loader(examples, cfg, pad_id, seed + epoch))
            model.train()
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    if not torch.isfinite(loss):
                        raise Diverged(f"loss became {loss.item()} at step {outcome.steps + 1}")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss.detach()  # free this step's autograd graph before the next forward (~0.5 GB RSS)
                outcome.tokens += int(accelerator.gather(batch["attention_mask"].sum()).sum())
                if not accelerator.sync_gradients:
                    continue
                outcome.steps += 1
                _record_step(outcome, float(loss.detach()), scheduler.get_last_lr()[0], cfg, accelerator)
                if on_step:
                    on_step(accelerator.unwrap_model(model), outcome.steps)
                if progress:
                    progress(outcome.steps, steps, float(loss.detach()))
                if val_batches and outcome.steps % eval_every == 0:
                    _validate(model, val_batches[: cfg.eval_batches], outcome, accelerator)
                if outcome.steps >= steps:
                    break
            outcome.epoch_times_s.append(time.perf_counter() - epoch_start)
            epoch += 1
        if val_batches and (not outcome.curves["val_loss"] or outcome.curves["val_loss"][-1][0] != outcome.steps):
            _validate(model, val_batches[: cfg.eval_batches], outcome, accelerator)
    finally:
        outcome.train_time_s = time.perf_counter() - start - outcome.val_time_s
        outcome.memory = memory.stop()
        outcome.memory_breakdown = memory_breakdown(accelerator.unwrap_model(model), optimizer,
                                                    outcome.memory["peak_memory_bytes"])
        if trackers:
            accelerator.end_training()
    model.eval()
    return outcome


def _record_step(outcome: TrainOutcome, loss: float, lr: float, cfg: TrainConfig, accelerator: Any) -> None:
    if outcome.steps % cfg.log_every == 0 or outcome.steps == 1:
        outcome.curves["train_loss"].append([outcome.steps, loss])
        outcome.curves["lr"].append([outcome.steps, lr])
        accelerator.log({"train_loss": loss, "lr": lr}, step=outcome.steps)
        log.info("step %d loss %.4f lr %.2e", outcome.steps, loss, lr)


def _validate(model: torch.nn.Module, batches: list[dict], outcome: TrainOutcome, accelerator: Any) -> None:
    """Validation loss; its seconds are kept out of the training time (and so out of tokens/s)."""
    t0 = time.perf_counter()
    model.eval()
    loss = mean_loss(model, batches, accelerator.device)
    model.train()
    outcome.val_time_s += time.perf_counter() - t0
    if not math.isfinite(loss):
        raise Diverged(f"validation loss became {loss} at step {outcome.steps}")
    outcome.curves["val_loss"].append([outcome.steps, loss])
    accelerator.log({"val_loss": loss}, step=outcome.steps)
    log.info("step %d val_loss %.4f", outcome.steps, loss)
