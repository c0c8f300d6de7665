"""Tuning as part of the experiment: trials on validation, one selection per method, final runs on test.

An experiment with `tuning:` (`peftlab.config.TuningConfig`) runs in three stages; each resumes:

1. **Trials.** Every trained method gets the same number of trials, `budget`, drawn from its search
   space (`tuning.space.<label>`) by `strategy`: `grid` (the space's points in a seeded order, the
   first `budget` of them), `random` (independent uniform draws) or `sobol` (a scrambled Sobol
   sequence from `scipy.stats.qmc`, better spread than random; balanced when `budget` is a power of
   two). Draws are seeded by `tuning.seed` and prefix-stable: a larger budget keeps the earlier trials.
   Continuous draws are rounded to 3 significant digits (lr 1.23e-4). A trial trains on train with the
   experiment's first seed and is scored on the validation split (`RunConfig.eval_split`); the runner
   refuses to read the test split for it (`check_split`). A task without a validation split gets one
   held out of train (`holdout_split`: a seeded `tuning.holdout` fraction of the whole train split,
   never the test split; the final runs train on the same remaining part). Trials are ordinary runs
   (`--t<k>` in the id) with `tuning: {stage: trial, ...}` in their result.json.
2. **Selection.** Once every trial of a (task, method) has finished (`ok`, `failed` or `diverged`),
   its best `ok` trial by the validation metric (`tuning.metric`, default the task's primary;
   ties: the lowest trial index) is selected and written to
   `<store>/tuning/<experiment>/<task>--<label>.json` (atomically, `peftlab.files.atomic_open`).
   It is recomputed from the stored trials on every sweep, so it never disagrees with them.
3. **Final runs.** Only when every method's selection is recorded, the selected configurations run
   over every seed of the experiment and are scored on the test split, once; `base` (nothing to tune)
   runs here too. Their result.json says `tuning: {stage: final, selected_trial, metric, ...}`.

Expected best score vs budget (Dodge et al. 2019) is computed from the trials' results by
`peftlab.report.budget`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import warnings
from pathlib import Path
from typing import Any

from peftlab.config import Axis, ConfigError, ExperimentConfig, RunConfig, TuningConfig, _id_part, apply_setting
from peftlab.status import RunStatus
from peftlab.tasks.api import DATA_SEED

#: Statuses with which a trial counts as spent (a diverged learning rate is a legitimate outcome).
FINISHED = (RunStatus.OK, RunStatus.FAILED, RunStatus.DIVERGED)
SIGNIFICANT_DIGITS = 3
SELECTION_DIR = "tuning"


class SealedSplitError(ValueError):
    """A tuning trial asked for the test split, which stays sealed until every method is selected."""


# ------------------------------------------------------------------------------------------ sampling
def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def draw(axis: Axis, u: float) -> dict[str, Any]:
    """The axis's setting at quantile `u` in [0, 1): `{dotted key: value}`."""
    u = min(max(float(u), 0.0), math.nextafter(1.0, 0.0))
    if axis.points:
        return dict(axis.points[int(u * len(axis.points))])
    low, high = axis.low, axis.high
    if axis.distribution == "int_uniform":
        return {axis.name: int(low) + int(u * (int(high) - int(low) + 1))}
    if axis.distribution == "log_uniform":
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        value = low + u * (high - low)
    return {axis.name: min(max(_round(value), low), high)}


def sample(axes: list[Axis], budget: int, strategy: str, seed: int, where: str = "tuning.space") -> list[dict]:
    """`budget` points of the search space, each `{dotted key: value}`; the same arguments give the same
    points, and a larger budget starts with the points of a smaller one."""
    import numpy as np

    if strategy == "grid":
        grid = list(itertools.product(*[a.points for a in axes]))
        if len(grid) < budget:
            raise ConfigError(f"{where}: the grid has {len(grid)} point(s), fewer than tuning.budget ({budget}); every "
                              "method gets the same budget: add values, lower the budget, or use strategy random or "
                              "sobol")
        order = np.random.default_rng(seed).permutation(len(grid))[:budget]
        return [{k: v for part in grid[int(i)] for k, v in part.items()} for i in order]
    if strategy == "sobol":
        from scipy.stats import qmc

        try:
            engine = qmc.Sobol(len(axes), scramble=True, rng=np.random.default_rng(seed))
        except TypeError:  # scipy < 1.15 names it `seed`
            engine = qmc.Sobol(len(axes), scramble=True, seed=np.random.default_rng(seed))
        with warnings.catch_warnings():  # "balance properties ... require n to be a power of 2": said in the docs
            warnings.filterwarnings("ignore", message=".*balance properties.*")
            quantiles = engine.random(budget)
    else:
        rng = np.random.default_rng(seed)
        quantiles = np.stack([rng.random(len(axes)) for _ in range(budget)]) if axes else np.zeros((budget, 0))
    return [{k: v for axis, u in zip(axes, row) for k, v in draw(axis, u).items()} for row in quantiles]


# ------------------------------------------------------------------------------------------ trials
def _trains(method: Any) -> bool:
    from peftlab.methods import get_method

    return get_method(method.method).trains


def _spec(task_name: str) -> Any:
    from peftlab.tasks import get_task

    try:
        return get_task(task_name)
    except ValueError as exc:
        raise ConfigError(f"tasks: {exc}") from None


def _tuning(exp: ExperimentConfig) -> TuningConfig:
    if exp.tuning is None:
        raise ValueError(f"experiment {exp.name!r} has no tuning section")
    return exp.tuning


def check(exp: ExperimentConfig) -> None:
    """What tuning needs beyond the config's own checks: a space for every trained method and only for those,
    a validation metric every task has, and a validation set every task can give."""
    tuning = _tuning(exp)
    trained = [m for m in exp.methods if _trains(m)]
    if not trained:
        raise ConfigError(f"tuning: none of the methods ({', '.join(m.label for m in exp.methods)}) trains, so there "
                          "is nothing to tune; remove tuning:")
    for m in exp.methods:
        if m.label in tuning.space and not _trains(m):
            raise ConfigError(f"tuning.space.{m.label}: {m.label!r} trains nothing, so there is nothing to tune; "
                              "remove its space")
    missing = [m.label for m in trained if m.label not in tuning.space]
    if missing:
        raise ConfigError(f"tuning.space: no search space for {', '.join(missing)}; every trained method is tuned "
                          f"with the same budget, so give each one a space (e.g. {missing[0]}: {{train.lr: "
                          "{log_uniform: [1.0e-5, 1.0e-3]}})")
    for task in exp.tasks:
        spec = _spec(task.name)
        if tuning.metric is not None and tuning.metric not in spec.metrics:
            raise ConfigError(f"tuning.metric: {tuning.metric!r} is not a metric of task {task.name!r}; valid: "
                              f"{', '.join(sorted(spec.metrics))}")
        if spec.splits.get("validation") is None and spec.kind == "lm":
            raise ConfigError(f"tuning: task {task.name!r} has no validation split, and its training records (raw "
                              "text) are not scored like its test split, so none can be held out of train; tune on "
                              "a task with a validation split")


def trial_groups(exp: ExperimentConfig) -> dict[tuple[str, str], list[RunConfig]]:
    """Every trial, grouped by (task, method label), in trial order; checks the tuning section first."""
    tuning = _tuning(exp)
    check(exp)
    points = {m.label: sample(tuning.axes(m.label), int(tuning.budget or 0), tuning.strategy, tuning.seed,
                              f"tuning.space.{m.label}")
              for m in exp.methods if m.label in tuning.space}
    groups: dict[tuple[str, str], list[RunConfig]] = {}
    for task in exp.tasks:
        holdout = None if _spec(task.name).splits.get("validation") is not None else tuning.holdout
        for method in exp.methods:
            if method.label not in points:
                continue
            runs = groups.setdefault((task.name, method.label), [])
            for k, point in enumerate(points[method.label]):
                m, t, tr = method, task, exp.train
                for key, value in point.items():
                    m, t, tr = apply_setting(m, t, tr, key, value, where=f"tuning.space.{method.label}")
                runs.append(RunConfig(
                    experiment=exp.name, model=exp.model, task=t, method=m, train=tr, eval=exp.eval, seed=exp.seeds[0],
                    grid=dict(point), output_dir=exp.output_dir, trackers=list(exp.trackers), eval_split="validation",
                    holdout=holdout, trial=k,
                    tuning={"stage": "trial", "trial": k, "budget": tuning.budget, "strategy": tuning.strategy,
                            "eval_split": "validation", "holdout": holdout}))
    return groups


def trials(exp: ExperimentConfig) -> list[RunConfig]:
    """Every trial of a tuned experiment, in order (task, method, trial)."""
    return [rc for runs in trial_groups(exp).values() for rc in runs]


def final_config(trial: RunConfig, seed: int, selection: dict | None = None) -> RunConfig:
    """The final run of a selected trial's configuration under `seed`: scored on test, not a trial."""
    selection = selection or {}
    chosen = selection.get("selected") or {}
    note = {"stage": "final", "selected_trial": trial.trial, "trial_run_id": trial.run_id(),
            "metric": selection.get("metric"), "direction": selection.get("direction"),
            "validation_value": chosen.get("value"), "budget": selection.get("budget"),
            "strategy": selection.get("strategy"), "trials": [t["run_id"] for t in selection.get("trials") or []]}
    return dataclasses.replace(trial, seed=seed, eval_split="test", trial=None, tuning=note)


def count_finals(exp: ExperimentConfig) -> int:
    """How many runs the final stage has once every method is selected (base: one, trained: one per seed)."""
    per_task = sum(len(exp.seeds) if _trains(m) else 1 for m in exp.methods)
    return per_task * len(exp.tasks)


# ------------------------------------------------------------------------------------------ data guard
def check_split(rc: RunConfig, role: str) -> None:
    """Refuse the test split to a run that is not scored on it (a tuning trial): selection never sees test."""
    if role == "test" and rc.eval_split != "test":
        raise SealedSplitError(
            f"run {rc.run_id()} is a tuning trial, scored on the {rc.eval_split} split: it never reads the test split "
            "(only the final runs do, after every method's configuration is selected)")


def holdout_split(rc: RunConfig, spec: Any, role: str, limit: int | None) -> tuple[list[dict], dict]:
    """The train or validation part of a task without a validation split: a seeded `rc.holdout` fraction of the
    whole train split is held out as validation, the rest trains; each part is then subsampled to `limit`
    (seed `DATA_SEED`). The DataInfo says so under `holdout`."""
    from peftlab.data import fingerprint, load_records, subsample_indices

    if role not in ("train", "validation"):
        raise ValueError(f"holdout_split: role {role!r} is not train or validation")
    records, info = load_records(rc.task.name, spec.splits["train"], source=rc.task.source, limit=None, seed=DATA_SEED)
    n = len(records)
    held_n = max(1, round(float(rc.holdout or 0) * n))
    if held_n >= n:
        raise ValueError(f"task {rc.task.name!r}: its train split has {n} record(s), too few to hold out "
                         f"{rc.holdout:g} of them as validation and train on the rest")
    held = set(random.Random(DATA_SEED).sample(range(n), held_n))
    part = [r for i, r in enumerate(records) if (i in held) == (role == "validation")]
    keep = subsample_indices(len(part), limit, DATA_SEED)
    if keep is not None:
        part = [part[i] for i in keep]
    info = {**info, "count": len(part), "fingerprint": fingerprint(part),
            "holdout": {"role": role, "fraction": rc.holdout, "of": n, "held_out": held_n, "seed": DATA_SEED}}
    return part, info


# ------------------------------------------------------------------------------------------ selection
def selection_path(root: str | Path, experiment: str, task: str, label: str) -> Path:
    return Path(root) / SELECTION_DIR / _id_part(experiment) / f"{_id_part(task)}--{_id_part(label)}.json"


def _select(exp: ExperimentConfig, store: Any, task: str, label: str, runs: list[RunConfig]) -> dict | None:
    """The selection of one (task, method) from its stored trials; None while a trial has not finished."""
    tuning = _tuning(exp)
    spec = _spec(task)
    metric = tuning.metric or spec.primary_metric
    direction = spec.metrics.get(metric, "higher")
    rows = []
    for rc in runs:
        run_id = rc.run_id()
        status = store.status(run_id) if store is not None else None
        if status not in FINISHED:
            return None
        result = store.read_result(run_id) or {}
        value = (result.get("metrics") or {}).get(metric) if status == RunStatus.OK else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            value = None
        rows.append({"trial": rc.trial, "run_id": run_id, "status": str(status), "value": value, "point": rc.grid})
    scored = [r for r in rows if r["value"] is not None]
    best = None
    if scored:
        sign = -1.0 if direction == "lower" else 1.0
        best = max(scored, key=lambda r: (sign * r["value"], -r["trial"]))  # ties: the lowest trial index
    first = runs[0]
    return {
        "experiment": exp.name, "task": task, "label": label, "method": first.method.method,
        "metric": metric, "direction": direction,
        "validation": f"{first.holdout:g} of train, held out" if first.holdout else "the validation split",
        "budget": tuning.budget, "strategy": tuning.strategy, "seed": tuning.seed, "training_seed": first.seed,
        "trials": rows,
        "selected": None if best is None else {k: best[k] for k in ("trial", "run_id", "value", "point")},
        "reason": None if best is not None else f"no trial finished ok with a finite validation {metric}",
    }


def selections(exp: ExperimentConfig, store: Any) -> tuple[dict[tuple[str, str], dict], list[str]]:
    """Every (task, method)'s selection computed from the store (nothing is written), and `task/label` of those
    whose trials have not all finished."""
    done: dict[tuple[str, str], dict] = {}
    waiting: list[str] = []
    for (task, label), runs in trial_groups(exp).items():
        sel = _select(exp, store, task, label, runs)
        if sel is None:
            waiting.append(f"{task}/{label}")
        else:
            done[(task, label)] = sel
    return done, waiting


def read_selection(root: str | Path, experiment: str, task: str, label: str) -> dict | None:
    """A recorded selection, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(selection_path(root, experiment, task, label).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_selection(root: str | Path, selection: dict) -> Path:
    """Record one selection atomically; an unchanged selection keeps its file (and `selected_at`)."""
    from peftlab import files
    from peftlab.store import StoreWriteError, now

    path = selection_path(root, selection["experiment"], selection["task"], selection["label"])
    old = read_selection(root, selection["experiment"], selection["task"], selection["label"])
    if old is not None and {k: v for k, v in old.items() if k != "selected_at"} == _plain(selection):
        return path
    try:
        with files.atomic_open(path) as fh:
            fh.write(json.dumps({**selection, "selected_at": now()}, indent=1, sort_keys=False) + "\n")
    except OSError as exc:
        raise StoreWriteError(path, exc) from exc
    return path


def _plain(data: dict) -> dict:
    """`data` as it reads back from JSON (tuples become lists), for comparing with a recorded selection."""
    return json.loads(json.dumps(data))


def record_selections(exp: ExperimentConfig, store: Any) -> tuple[dict[tuple[str, str], dict], list[str]]:
    """Compute every selection that the stored trials allow and record it; as `selections`."""
    done, waiting = selections(exp, store)
    for selection in done.values():
        write_selection(store.root, selection)
    return done, waiting


def final_runs(exp: ExperimentConfig, chosen: dict[tuple[str, str], dict]) -> list[RunConfig]:
    """The runs scored on test: each selected configuration over every seed, and base once per task.

    Refuses to plan them before every tuned method's selection is at hand, so no run reads the test split
    while any method can still be selected."""
    groups = trial_groups(exp)
    missing = [f"{t}/{label}" for (t, label) in groups if (t, label) not in chosen]
    if missing:
        raise SealedSplitError(f"the final runs read the test split, so they wait until every method is selected; "
                               f"not selected yet: {', '.join(missing)}")
    out: list[RunConfig] = []
    for task in exp.tasks:
        for method in exp.methods:
            key = (task.name, method.label)
            if key not in groups:  # nothing to tune: the plain configuration, under the first seed
                out.append(RunConfig(experiment=exp.name, model=exp.model, task=task, method=method, train=exp.train,
                                     eval=exp.eval, seed=exp.seeds[0], output_dir=exp.output_dir,
                                     trackers=list(exp.trackers), tuning={"stage": "final"}))
                continue
            selection = chosen[key]
            if selection.get("selected") is None:
                continue
            trial = groups[key][selection["selected"]["trial"]]
            out.extend(final_config(trial, seed, selection) for seed in exp.seeds)
    return out


def describe(selection: dict) -> str:
    """One line about a selection, for the sweep's output."""
    where = f"{selection['label']} on {selection['task']}"
    n = len(selection["trials"])
    if selection.get("selected") is None:
        return f"no selection for {where}: {selection['reason']} ({n} trial(s))"
    chosen = selection["selected"]
    point = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in chosen["point"].items())
    ok = sum(1 for t in selection["trials"] if t["value"] is not None)
    return (f"selected {where}: trial {chosen['trial']} ({point}), validation {selection['metric']} "
            f"{chosen['value']:.4g}, best of {ok} ok trial(s) of {n}")
