"""The contract between the runner and a task: what a task's hooks receive and must provide.

A task is a YAML file (`peftlab.tasks.registry.TaskSpec`) plus a hooks module named by its `hooks:`
key. The hooks module implements `TaskHooks`; the runner (after training) and `peftlab evaluate`
(re-evaluation) both call its `evaluate` through `peftlab.runner.evaluate_step` with an
`EvalContext`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from peftlab.config import EvalConfig
from peftlab.evaluation.progress import EvalProgress

if TYPE_CHECKING:
    from peftlab.tasks.registry import TaskSpec

log = logging.getLogger("peftlab")

#: Subsamples are drawn with this seed for every method and seed, so comparisons are paired.
DATA_SEED = 0


@dataclass
class EvalContext:
    """What a task's `evaluate` hook receives: the model, the test records and how to score them."""

    model: Any
    tokenizer: Any
    records: list[dict]  # the test split's records (already subsampled to limit_eval)
    args: dict  # the task's resolved arguments
    max_length: int
    device: str
    eval: EvalConfig
    spec: Any  # the TaskSpec
    method: str  # the method's name (the hooks must not depend on it for scoring)
    source: str = "auto"  # where the run's data comes from: auto | hub | offline (extra splits use it too)
    data_seed: int = DATA_SEED  # the seed of every subsample (paired across methods and seeds)
    log: Callable[[str], None] = field(default=lambda msg: log.info(msg))
    progress: EvalProgress = field(default_factory=EvalProgress)  # phase(name, n) then advance(k) per batch
    # The model is an encoder-decoder (seq2seq) LM (`peftlab.models.ModelArchitecture`): prompts are plain text
    # for its encoder (`chat.render_prompt(..., encoder_decoder=True)`), targets are scored in its decoder
    # (`scoring.row_nll(..., encoder_decoder=True)`); generation returns decoder tokens only.
    encoder_decoder: bool = False

    @property
    def max_batch_tokens(self) -> int:
        """Token budget of one scoring batch (rows x longest row): `eval.batch_size` rows of `max_length`,
        so short examples share a forward pass in larger numbers than long ones."""
        return max(1, self.eval.batch_size) * max(1, self.max_length)


@runtime_checkable
class TaskHooks(Protocol):
    """The two pieces of Python a task provides (its `hooks:` module).

    `to_messages` is optional for `kind: lm` tasks (their records are raw text); chat tasks need it.
    `evaluate` returns `{"metrics": {...}, "examples": n, ...}` and optionally `evaluations` (one per
    decoding strategy), `samples` and `eval_tokens`, and per-example scores (docs/contracts.md,
    "Per-example scores"): `scores`, a list of score sets `{"evaluation": name, "ids": [example id],
    "values": {metric: [value per example]}, "statistics": {metric: statistic}}` (built with
    `peftlab.tasks.common.score_set`; ids from `common.example_ids`), and in the result and in each
    evaluation entry `per_example` {metric: statistic} and `per_example_source` {metric: score set
    name} (`common.link`). The runner writes the score sets to `<run_dir>/examples.jsonl`.
    """

    def to_messages(self, spec: "TaskSpec", record: dict, args: dict, train: bool = True) -> list[dict]: ...

    def evaluate(self, spec: "TaskSpec", ctx: EvalContext) -> dict: ...

    # Optional: `causal_only(trains: bool) -> str`, why the task cannot run on an encoder-decoder model (with a
    # method that trains when `trains`) as a clause that follows "because", "" when it can; without the hook a
    # `kind: lm` task cannot train one (`TaskSpec.causal_only`). Checked before any model loads.
    # Optional: `uses_decoding(args) -> bool`, whether decoding strategies apply with these task arguments
    # (sentiment scored by log-likelihood: no), so `peftlab evaluate --decoding` is refused before loading.
