"""The one explicit training loop (torchtune-style recipe: read it top to bottom).

Built on `accelerate` for device placement, mixed precision, gradient accumulation and
multi-GPU (`accelerate launch`); everything else is plain PyTorch so that every method runs under
exactly the same protocol: AdamW, warm-up then linear/cosine decay, weight decay off for biases
and norms, gradient clipping, a seeded shuffle per epoch. It never knows which task it trains:
it receives examples (token ids + labels) and returns a curve and its costs.

Two things make a step cheaper without changing what it computes (`choose_layout` checks both on
the run's own model before training, on a few of its examples, and falls back to plain padded
batches with the reason recorded when either check fails):

* targets-only logits: the vocabulary projection and the loss run only at the positions whose
  next token is a target (`logits_to_keep`), not at prompt and padding positions; the loss is the
  same token mean as the model's own;
* padding-free rows (`train.packing`): a batch's examples are laid back to back in rows no longer
  than its longest example, position ids restarting at 0 for each, so the model's attention keeps
  them apart (transformers builds a block-diagonal mask from the position ids when there is no
  attention mask and no cache) and no position is spent on padding a shorter example could fill.
  Methods with virtual tokens (prompt, prefix, the hybrid) keep padded rows: their tokens sit in
  front of every sequence.

Both are causal-LM tricks. An encoder-decoder (seq2seq) model (`train(..., encoder_decoder=True)`)
reads each example's prompt in its encoder and predicts its target in its decoder: its batches are
padded rows of encoder input and, separately, decoder labels (padding -100), and its loss is the
model's own (`model(input_ids, attention_mask, labels).loss`, the mean over target tokens); the
layout says so (`ENCODER_DECODER_LAYOUT`) and no probe runs.

The arithmetic (`train.mixed_precision`) is chosen by `peftlab.measure.choose_precision` and
recorded with its reason.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from peftlab.config import TrainConfig
from peftlab.data.batching import bucket_batches, collate
from peftlab.evaluation.scoring import mean_loss
from peftlab.measure import PeakMemory, Precision, choose_precision, memory_breakdown

log = logging.getLogger("peftlab.train")


class Diverged(RuntimeError):
    """The loss became NaN or infinite: the run stops and is recorded as `diverged`."""


@dataclass(frozen=True)
class Layout:
    """How training batches reach the model: padding-free rows or padded ones, logits at targets only or everywhere."""

    packed: bool = False
    targets_only: bool = False
    reason: str = "padded rows, logits at every position"

    def record(self) -> dict[str, Any]:
        return {"batch_layout": "padding-free" if self.packed else "padded",
                "logits": "targets-only" if self.targets_only else "all positions", "batch_layout_reason": self.reason}


#: An encoder-decoder model's batches: padded encoder rows and decoder targets, the model's own loss.
ENCODER_DECODER_LAYOUT = Layout(reason="padded rows, logits everywhere: an encoder-decoder model reads the prompt in its "
                                       "encoder and is trained with its own loss on the target in its decoder; "
                                       "padding-free rows and targets-only logits are causal-LM layouts")


@dataclass
class TrainOutcome:
    steps: int = 0
    tokens: int = 0
    positions: int = 0  # token positions the forward passes computed (tokens + padding)
    train_time_s: float = 0.0
    epoch_times_s: list[float] = field(default_factory=list)
    val_time_s: float = 0.0
    curves: dict[str, list] = field(default_factory=lambda: {"train_loss": [], "val_loss": [], "lr": []})
    memory: dict[str, Any] = field(default_factory=dict)
    memory_breakdown: dict[str, int] = field(default_factory=dict)
    precision: Precision | None = None
    layout: Layout | None = None

    def record(self) -> dict[str, Any]:
        """What the run's `cost` gets besides time and memory: the arithmetic, the batch layout, the padding."""
        out: dict[str, Any] = dict(self.precision.record()) if self.precision else {}
        if self.layout:
            out.update(self.layout.record())
        out["padding_pct"] = 100.0 * (1 - self.tokens / self.positions) if self.positions else None
        return out


def weights_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype most of the model's parameters are stored in (4-bit weights, stored as integers, do not count)."""
    sizes: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
    return max(sizes, key=sizes.__getitem__) if sizes else torch.float32


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


def pack_rows(lengths: list[int], width: int) -> list[list[int]]:
    """First-fit decreasing: example indices grouped into rows of at most `width` tokens (in order within a row)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        r = next((k for k, free in enumerate(room) if free >= lengths[i]), None)
        if r is None:
            rows.append([i])
            room.append(width - lengths[i])
        else:
            rows[r].append(i)
            room[r] -= lengths[i]
    return rows


def pack_batch(examples: list[dict[str, list[int]]], pad_id: int,
               width: int | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A padding-free batch, and which example each token belongs to (-1: the rows' padded tails).

    Examples go back to back in rows of at most `width` tokens (default: the longest example, so
    no row is longer than a padded batch's). Each example's position ids restart at 0, which is
    what keeps examples apart in attention, and its first label is dropped: it would be predicted
    from the previous example's last token (alone it is never a target either). No attention mask:
    a row's unused tail is one more sequence of pad tokens, positions from 0, labels -100. An
    example with `segments` (lengths summing to its own: the documents of a packed text window) is
    cut the same way at each segment.
    """
    lengths = [len(e["input_ids"]) for e in examples]
    rows = pack_rows(lengths, width or max(lengths))
    span = max(sum(lengths[i] for i in row) for row in rows)
    ids = torch.full((len(rows), span), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), span), -100, dtype=torch.long)
    positions = torch.zeros((len(rows), span), dtype=torch.long)
    owner = torch.full((len(rows), span), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e, n = examples[i], lengths[i]
            ids[r, at:at + n] = torch.tensor(e["input_ids"])
            labels[r, at:at + n] = torch.tensor(e.get("labels", e["input_ids"]), dtype=torch.long)
            segments = e.get("segments") or [n]
            if sum(segments) != n:
                raise ValueError(f"example {i}: segments {segments} do not add up to its {n} tokens")
            start = at
            for length in segments:
                positions[r, start:start + length] = torch.arange(length)
                labels[r, start] = -100
                start += length
            owner[r, at:at + n] = i
            at += n
        positions[r, at:] = torch.arange(span - at)
    return {"input_ids": ids, "position_ids": positions, "labels": labels}, owner


def packed_collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    batch, _ = pack_batch(examples, pad_id)
    batch["num_tokens"] = torch.tensor(sum(len(e["input_ids"]) for e in examples))
    batch["num_positions"] = torch.tensor(batch["input_ids"].numel())
    return batch


def padded_collate(examples: list[dict[str, list[int]]], pad_id: int, encoder_decoder: bool = False
                   ) -> dict[str, torch.Tensor]:
    """Padded rows; `encoder_decoder`: the decoder targets count as tokens and positions too."""
    batch = collate(examples, pad_id)
    batch["num_tokens"] = batch["attention_mask"].sum()
    batch["num_positions"] = torch.tensor(batch["input_ids"].numel())
    if encoder_decoder:
        batch["num_tokens"] = batch["num_tokens"] + (batch["labels"] != -100).sum()
        batch["num_positions"] = batch["num_positions"] + batch["labels"].numel()
    return batch


def forward_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], targets_only: bool) -> torch.Tensor:
    """The batch's mean next-token loss over its target tokens (the model's own loss when not `targets_only`)."""
    if not targets_only:
        return model(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    targets = batch["labels"][:, 1:]
    wanted = targets != -100
    keep = F.pad(wanted, (0, 1))  # position t is kept when token t+1 is a target
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets[wanted])


def per_example_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor], owner: torch.Tensor,
                       count: int, targets_only: bool) -> torch.Tensor:
    """Mean next-token loss of each of `count` examples in `batch`; `owner[b, t]`: the example token t of row b
    belongs to (-1: none), as `pack_batch` gives it."""
    targets = batch["labels"][:, 1:]
    wanted = targets != -100
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if targets_only:
        logits = model(**inputs, logits_to_keep=F.pad(wanted, (0, 1)), use_cache=False).logits
        logits = logits.reshape(-1, logits.shape[-1])
    else:  # no cache either: with one, transformers would not read packed rows from the position ids
        logits = model(**inputs, use_cache=False).logits[:, :-1][wanted]
    nll = F.cross_entropy(logits.float(), targets[wanted], reduction="none").cpu()
    who = owner[:, 1:][wanted].cpu()
    return torch.zeros(count).index_add_(0, who, nll) / torch.bincount(who, minlength=count).clamp(min=1)


def has_virtual_tokens(model: torch.nn.Module) -> bool:
    """Prompt tuning, prefix tuning, the LoRA+prompt hybrid: tokens in front of every sequence that the ids do not show."""
    from peftlab.methods.virtual_tokens import virtual_tokens_of

    return virtual_tokens_of(model).num_virtual > 0


def choose_layout(model: torch.nn.Module, examples: list[dict], packing: bool, pad_id: int,
                  probe_examples: int = 3, probe_tokens: int = 24) -> Layout:
    """Check, on this model and a few of these examples, that the cheap layouts compute the same losses.

    Reference: each probe example alone (no padding, logits everywhere). Candidates: a padded
    batch with targets-only logits, and (when `packing`) all probe examples in one padding-free
    row. A candidate is used when every example's loss matches the reference (fp32: 1e-4
    relative; half precision: 2e-2); a mismatch or an error means padded batches (with the reason).
    Costs a few forward passes of under 100 tokens, in eval mode and without gradients.
    """
    if has_virtual_tokens(model):
        return Layout(reason="padded rows, logits everywhere: the method puts virtual tokens in front of every "
                             "sequence, so examples cannot share a row and target positions shift")
    probe = []
    for e in examples:
        ids = list(e["input_ids"][:probe_tokens])
        if len(ids) >= 4 and len(probe) < probe_examples:
            cut = max(1, len(ids) // 3 + len(probe))  # varied prompt lengths: targets start at different places
            probe.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    if len(probe) < 2:
        return Layout(reason="padded rows, logits everywhere: too few examples of 4+ tokens to check the cheap layouts")
    tolerance = 1e-4 if weights_dtype(model) == torch.float32 else 2e-2
    device = next(p.device for p in model.parameters())
    padded = collate(probe, pad_id)
    padded_owner = torch.where(padded["attention_mask"].bool(), torch.arange(len(probe))[:, None], -1)
    row, row_owner = pack_batch(probe, pad_id, width=sum(len(e["input_ids"]) for e in probe))  # all in one row
    checks = [("targets-only logits", padded, padded_owner)] + ([("padding-free rows", row, row_owner)] if packing else [])
    was_training = model.training
    model.eval()
    passed: list[str] = []
    try:
        with torch.no_grad():
            reference = torch.stack([per_example_losses(model, _on(collate([e], pad_id), device),
                                                        torch.zeros(1, len(e["input_ids"]), dtype=torch.long), 1,
                                                        False)[0] for e in probe])
            for name, batch, owner in checks:
                try:
                    losses = per_example_losses(model, _on(batch, device), owner, len(probe), True)
                except Exception as exc:  # noqa: BLE001 - whatever breaks, the cheap layout is not for this model
                    first = str(exc).splitlines()[0] if str(exc) else ""
                    return _fallback(passed, f"{name} failed on this model ({type(exc).__name__}: {first})")
                gap = float(((losses - reference).abs() / reference.abs().clamp(min=1)).max())
                if not gap <= tolerance:
                    return _fallback(passed, f"{name} changed a per-example loss by {gap:.2g} (relative) on this "
                                             f"model, above {tolerance:g}")
                passed.append(name)
    finally:
        model.train(was_training)
    return Layout(packed=packing, targets_only=True,
                  reason=("padding-free rows, logits at targets only" if packing else
                          "padded rows (train.packing is off), logits at targets only")
                  + ": per-example losses match each example alone")


def _fallback(passed: list[str], why: str) -> Layout:
    if passed:  # targets-only logits passed, padding-free rows did not
        return Layout(targets_only=True, reason=f"padded rows, logits at targets only: {why}")
    return Layout(reason=f"padded rows, logits everywhere: {why}")


def _on(batch: dict[str, torch.Tensor], device: Any) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _epoch_loader(examples: list[dict], cfg: TrainConfig, pad_id: int, seed: int, layout: Layout,
                  encoder_decoder: bool = False) -> DataLoader:
    lengths = [len(e["input_ids"]) for e in examples]
    batches = bucket_batches(lengths, cfg.batch_size, seed, shuffle=True, bucketing=cfg.bucketing)
    if layout.packed:
        return DataLoader(examples, batch_sampler=batches, collate_fn=lambda rows: packed_collate(rows, pad_id))
    return DataLoader(examples, batch_sampler=batches,
                      collate_fn=lambda rows: padded_collate(rows, pad_id, encoder_decoder))


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
    encoder_decoder: bool = False,
) -> TrainOutcome:
    """Train `model` in place on `examples`; returns the loss curves and measured costs.

    `encoder_decoder`: the model is an encoder-decoder LM and each example's `input_ids` is its encoder
    input and `labels` its decoder target (`ENCODER_DECODER_LAYOUT`: padded rows, the model's own loss).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import get_scheduler

    AcceleratorState._reset_state(reset_partial_state=False)  # a sweep runs many runs per process
    precision = choose_precision(cfg.mixed_precision, device, weights_dtype(model))
    layout = ENCODER_DECODER_LAYOUT if encoder_decoder else choose_layout(model, examples, cfg.packing, pad_id)
    log.info("precision %s; batches: %s", precision.reason, layout.reason)
    accelerator = Accelerator(
        mixed_precision=precision.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
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
    outcome = TrainOutcome(precision=precision, layout=layout)
    memory = PeakMemory(device).start()
    eval_every = cfg.eval_every or batches_per_epoch // cfg.grad_accum or 1
    start = time.perf_counter()
    epoch = 0
    try:
        while outcome.steps < steps:
            epoch_start = time.perf_counter()
            loader = accelerator.prepare(_epoch_loader(examples, cfg, pad_id, seed + epoch, layout, encoder_decoder))
            model.train()
            for batch in loader:
                counts = torch.stack([batch.pop("num_tokens"), batch.pop("num_positions")])
                with accelerator.accumulate(model):
                    loss = forward_loss(model, batch, layout.targets_only)
                    if not torch.isfinite(loss):
                        raise Diverged(f"loss became {loss.item()} at step {outcome.steps + 1}")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    if on_step and accelerator.sync_gradients:  # AdaLoRA reads this step's gradients: before they go
                        on_step(accelerator.unwrap_model(model), outcome.steps + 1)
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss.detach()  # free this step's autograd graph before the next forward (~0.5 GB RSS)
                tokens, positions = accelerator.gather(counts[None]).sum(0).tolist()
                outcome.tokens += int(tokens)
                outcome.positions += int(positions)
                if not accelerator.sync_gradients:
                    continue
                outcome.steps += 1
                _record_step(outcome, float(loss.detach()), scheduler.get_last_lr()[0], cfg, accelerator)
                if progress:
                    progress(outcome.steps, steps, float(loss.detach()))
                if val_batches and outcome.steps % eval_every == 0:
                    _validate(model, val_batches[: cfg.eval_batches], outcome, accelerator, encoder_decoder)
                if outcome.steps >= steps:
                    break
            outcome.epoch_times_s.append(time.perf_counter() - epoch_start)
            epoch += 1
        if val_batches and (not outcome.curves["val_loss"] or outcome.curves["val_loss"][-1][0] != outcome.steps):
            _validate(model, val_batches[: cfg.eval_batches], outcome, accelerator, encoder_decoder)
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


def _validate(model: torch.nn.Module, batches: list[dict], outcome: TrainOutcome, accelerator: Any,
              encoder_decoder: bool = False) -> None:
    """Validation loss; its seconds are kept out of the training time (and so out of tokens/s)."""
    t0 = time.perf_counter()
    model.eval()
    loss = mean_loss(model, batches, accelerator.device, encoder_decoder)
    model.train()
    outcome.val_time_s += time.perf_counter() - t0
    if not math.isfinite(loss):
        raise Diverged(f"validation loss became {loss} at step {outcome.steps}")
    outcome.curves["val_loss"].append([outcome.steps, loss])
    accelerator.log({"val_loss": loss}, step=outcome.steps)
    log.info("step %d val_loss %.4f", outcome.steps, loss)
