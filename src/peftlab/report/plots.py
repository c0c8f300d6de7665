"""Report figures, drawn with matplotlib's Agg canvas (no display, no pyplot global state).

Figures are built on ``matplotlib.figure.Figure`` + ``FigureCanvasAgg`` instead of pyplot so a
report can be written from a worker thread or a notebook without switching the user's backend.
Every plot is skipped when its data is missing; nothing here raises on an incomplete result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .aggregate import Aggregate, Group, Stats, best_per_label, cost_direction, format_value, short_key
from .forgetting import gain_forgetting_front, retained
from .pareto import pareto_front
from .tables import fmt_interval, fmt_mean_pm

STYLE: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "svg.hashsalt": "peftlab-report",  # deterministic SVG ids → reproducible files
    "svg.fonttype": "none",
}

MARKERS = "osD^vP*Xh<>p"


@dataclass(frozen=True)
class Plot:
    """A written figure: files plus the words the HTML page shows around it."""

    name: str
    title: str
    caption: str
    task: str | None
    png: Path
    svg: Path


def slug(text: str) -> str:
    """File-name-safe version of a task or label."""
    out = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text))
    return out.strip("_") or "x"


class Palette:
    """One colour and marker per label across every figure, so lora is always the same blue."""

    def __init__(self, labels: Sequence[str]):
        cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
        self._style = {lab: (cmap(i % cmap.N), MARKERS[i % len(MARKERS)]) for i, lab in enumerate(labels)}

    def color(self, label: str) -> Any:
        return self._style.get(label, ("0.4", "o"))[0]

    def marker(self, label: str) -> str:
        return self._style.get(label, ("0.4", "o"))[1]


def new_figure(w: float = 6.4, h: float = 4.2, ncols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, (axes[0] if ncols == 1 else axes)


def save_figure(fig: Figure, out_dir: Path, name: str) -> tuple[Path, Path]:
    """PNG for the HTML page and SVG for papers; metadata stripped so reruns give equal files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
    fig.savefig(png, dpi=150, metadata={"Software": None})
    fig.set_layout_engine("none")  # layout is already solved; don't pay for it twice
    fig.savefig(svg, metadata={"Date": None, "Creator": None})
    return png, svg


def direction_note(direction: str | None) -> str:
    return " (higher is better)" if direction == "higher" else " (lower is better)" if direction == "lower" else ""


# ---------------------------------------------------------------------------------------------
# Quality vs cost scatter with Pareto front
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostAxis:
    """How one cost field is drawn: unit scaling, label and whether to try a log scale."""

    field: str
    label: str
    scale: float = 1.0
    log: bool | None = None  # None = decide from the data's spread
    slug: str = ""


COST_AXES = [
    CostAxis("trainable_pct", "Trainable parameters (% of model, log scale)", 1.0, True, "params"),
    CostAxis("train_time_s", "Training time (s)", 1.0, False, "time"),  # linear from 0: the base model trains 0 s
    CostAxis("peak_memory_bytes", "Peak memory (GiB)", 1 / 1024**3, False, "memory"),  # from 0: no truncated axis
]

#: Points closer than this share of the x axis are spread apart so their error bars stay visible.
SPREAD = 0.025


def _use_log(xs: Sequence[float], axis: CostAxis) -> bool:
    pos = [x for x in xs if x > 0]
    if len(pos) < 1:
        return False
    if axis.log is not None:
        return axis.log
    return max(pos) / min(pos) > 50


def yerr(q: Stats) -> list[list[float]]:
    """Asymmetric error bar [[below], [above]] from the interval, which stats.estimate already clipped
    to the metric's range (so no bar leaves [0, 100] or goes below a perplexity of 1); 0 without one."""
    if q.ci_low is None or q.ci_high is None:
        return [[0.0], [0.0]]
    lo, hi = q.ci_low, q.ci_high
    if q.estimate is not None and q.estimate.metric_range is not None:
        lo, hi = max(lo, q.estimate.metric_range[0]), min(hi, q.estimate.metric_range[1])
    return [[max(0.0, q.mean - lo)], [max(0.0, hi - q.mean)]]


def _floor(xs: Sequence[float]) -> float:
    """Where zero-cost points sit on a log axis: one decade below the smallest positive value."""
    pos = [x for x in xs if x > 0]
    return 10 ** (math.floor(math.log10(min(pos))) - 1)


def spread_x(xs: Sequence[float], log: bool, frac: float = SPREAD) -> list[float]:
    """Display positions for points that would hide each other's error bars.

    Points closer than ``frac`` of the axis span (in decades on a log axis; from 0 on a linear one) form
    a cluster, spread ``frac`` apart around the cluster's centre, in the order of their true positions;
    on a linear axis a cluster never moves left of its smallest true value (every point stays >= 0).
    """
    if len(xs) < 2:
        return list(xs)
    t = [math.log10(x) if log else x for x in xs]
    span = (max(t) - (min(t) if log else min(min(t), 0.0))) or max(abs(t[0]), 1.0)
    step = frac * span
    order = sorted(range(len(t)), key=lambda i: (t[i], i))
    clusters: list[list[int]] = []
    for i in order:
        if clusters and t[i] - t[clusters[-1][-1]] < step:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    out = list(t)
    for c in clusters:
        if len(c) < 2:
            continue
        centre = sum(t[i] for i in c) / len(c)
        first = centre - (len(c) - 1) / 2 * step
        if not log:
            first = max(first, t[c[0]])
        for k, i in enumerate(c):
            out[i] = first + k * step
    return [10**v if log else v for v in out]


def quality_vs_cost(agg: Aggregate, task: str, axis: CostAxis, palette: Palette) -> Figure | None:
    """Mean quality (± CI) against a cost, Pareto front dashed; None when there is nothing to draw."""
    metric = agg.primary.get(task)
    if not metric:
        return None
    d = agg.direction(task, metric)
    pts = []
    for g in agg.groups_for(task, with_data=True):
        q, c = g.metrics.get(metric), g.costs.get(axis.field)
        if q is not None and c is not None:
            pts.append((g, c.mean * axis.scale, q))
    if not pts:
        return None
    xs = [p[1] for p in pts]
    log = _use_log(xs, axis)
    floor = _floor(xs) if log and any(x <= 0 for x in xs) else None
    placed = spread_x([floor if (floor is not None and x <= 0) else x for x in xs], log)
    shown = {id(g): xp for (g, _, _), xp in zip(pts, placed)}
    fig, ax = new_figure()
    seen: set[str] = set()
    for g, x, q in pts:
        at_floor = floor is not None and x <= 0
        xp = shown[id(g)]
        label = g.label if g.label not in seen else None
        seen.add(g.label)
        ax.errorbar(xp, q.mean, yerr=yerr(q), fmt=palette.marker(g.label), ms=6,
                    color=palette.color(g.label), mfc="white" if at_floor else palette.color(g.label),
                    ecolor=palette.color(g.label), elinewidth=1, capsize=3, label=label, zorder=3)
        if g.degenerate:
            ax.scatter([xp], [q.mean], marker="x", s=80, color="#c0392b", lw=1.6, zorder=5,
                       label="degenerate run(s)" if "\0degenerate" not in seen else None)
            seen.add("\0degenerate")
            ax.annotate("degenerate", (xp, q.mean), textcoords="offset points", xytext=(6, 4),
                        fontsize=7, color="#c0392b")
        if at_floor:
            ax.annotate(f"{g.label}: 0", (xp, q.mean), textcoords="offset points", xytext=(6, -10),
                        fontsize=7, color="0.35")
    usable = [i for i, (g, _, _) in enumerate(pts) if not g.degenerate]  # degenerate runs never make the front
    front = [usable[i] for i in pareto_front([(pts[i][1], pts[i][2].mean) for i in usable], d or "higher",
                                             cost_direction(axis.field) or "lower")]
    if len(front) >= 1:
        fx = [shown[id(pts[i][0])] for i in front]
        fy = [pts[i][2].mean for i in front]
        ax.step(fx, fy, where="post", ls="--", lw=1.2, color="0.3", label="Pareto front", zorder=2)
        ax.scatter(fx, fy, s=110, facecolors="none", edgecolors="0.3", lw=1, zorder=4)
        multi = {g.label for g, _, _ in pts if sum(1 for h, _, _ in pts if h.label == g.label) > 1}
        for i, x, y in zip(front, fx, fy):
            g = pts[i][0]
            if g.grid and g.label in multi:
                keys = [k for k, _ in g.grid]
                txt = ", ".join(f"{short_key(k, keys)}={format_value(v)}" for k, v in g.grid)
                ax.annotate(txt, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=6.5, color="0.3")
    base = next((g for g in agg.groups_for(task, with_data=True) if g.is_base and g.metrics.get(metric)
                 and g.costs.get(axis.field) is None), None)
    if base is not None:  # the base model has no such cost recorded: show its quality as the reference
        bq = base.metrics[metric]
        ax.axhline(bq.mean, color=palette.color(base.label), ls=":", lw=1.2, zorder=1,
                   label=f"{base.label} ({axis.slug} not recorded)")
    if log:
        ax.set_xscale("log")
    else:  # from 0, with a sliver of room so a marker at 0 (the base model's training time) is not cut in half
        right = max(placed) * 1.08 if max(placed) > 0 else 1.0
        ax.set_xlim(left=-0.02 * right, right=right)
    if floor is not None:
        ax.axvline(floor * 3, color="0.75", lw=0.8, ls=":")
    xlabel = axis.label + (" — log scale" if log and "log" not in axis.label else "")
    if axis.field == "peak_memory_bytes":
        kinds = sorted({k for g, _, _ in pts for k in g.memory_kinds})
        if kinds:  # rss and cuda peaks measure different things; say which one this is
            xlabel += f" [{' + '.join(kinds)}{' — mixed kinds, not comparable' if len(kinds) > 1 else ''}]"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric}{direction_note(d)}")
    ax.set_title(f"{task}: {metric} vs {axis.label.split(' (')[0].lower()}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# ---------------------------------------------------------------------------------------------
# Loss curves
# ---------------------------------------------------------------------------------------------


def _curve_points(raw: Any) -> np.ndarray | None:
    """``[[step, value], ...]`` (or ``[{"step", "value"}]``) → sorted finite (n, 2) array."""
    if not isinstance(raw, (list, tuple)):
        return None
    pts = []
    for p in raw:
        if isinstance(p, dict):
            p = (p.get("step"), p.get("value"))
        if isinstance(p, (list, tuple)) and len(p) >= 2:
            try:
                s, v = float(p[0]), float(p[1])
            except (TypeError, ValueError):
                continue
            if math.isfinite(s) and math.isfinite(v):
                pts.append((s, v))
    if not pts:
        return None
    arr = np.array(sorted(pts))
    _, idx = np.unique(arr[:, 0], return_index=True)
    return arr[idx]


def mean_curve(curves: Sequence[np.ndarray], max_points: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Mean and std over seeds on the steps every seed covers (interpolated, never extrapolated).

    Why the overlap only: a seed that logged fewer steps would otherwise drag the tail of the
    mean toward whichever seeds ran longer.
    """
    curves = [c for c in curves if c is not None and len(c)]
    if not curves:
        return None
    lo = max(c[0, 0] for c in curves)
    hi = min(c[-1, 0] for c in curves)
    if hi < lo:
        return None
    grid = np.unique(np.concatenate([c[(c[:, 0] >= lo) & (c[:, 0] <= hi), 0] for c in curves]))
    if len(grid) > max_points:
        grid = np.linspace(lo, hi, max_points)
    vals = np.stack([np.interp(grid, c[:, 0], c[:, 1]) for c in curves])
    std = vals.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(grid))
    return grid, vals.mean(axis=0), std


#: Loss curves go on a log axis when the methods' typical losses differ by this factor or more.
LOG_LOSS_RATIO = 5.0


def log_scale_needed(curves: Sequence[np.ndarray], ratio: float = LOG_LOSS_RATIO) -> bool:
    """True when the curves' medians differ by ``ratio`` or more (one method's scale would flatten the
    others on a linear axis) and every value is positive."""
    medians = [float(np.median(y)) for y in curves if len(y)]
    if len(medians) < 2 or any(float(np.min(y)) <= 0 for y in curves if len(y)):
        return False
    return max(medians) / min(medians) >= ratio


def loss_curves(agg: Aggregate, task: str, palette: Palette) -> Figure | None:
    """Train and validation loss of each method's best configuration, mean ± 1 sd over seeds."""
    metric = agg.primary.get(task)
    groups = agg.groups_for(task, with_data=True)
    chosen = list(best_per_label(groups, metric, agg.direction(task, metric)).values()) if metric else groups
    panels = []
    for key, title in (("train_loss", "Training loss"), ("val_loss", "Validation loss")):
        series = []
        for g in chosen:
            m = mean_curve([_curve_points((r.get("curves") or {}).get(key)) for r in g.runs])
            if m is not None:
                series.append((g, m))
        if series:
            panels.append((title, series))
    if not panels:
        return None
    fig, axes = new_figure(4.4 * len(panels) + 2.6, 3.8, ncols=len(panels))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (title, series) in zip(axes, panels):
        log = log_scale_needed([y for _, (_, y, _) in series])
        for g, (x, y, sd) in series:
            c = palette.color(g.label)
            ax.plot(x, y, color=c, lw=1.4, label=g.name, marker=None if len(x) > 30 else palette.marker(g.label), ms=3)
            if np.any(sd > 0):
                lo = np.maximum(y - sd, y * 0.05) if log else y - sd  # a band below 0 has no place on a log axis
                ax.fill_between(x, lo, y + sd, color=c, alpha=0.18, lw=0)
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.LogFormatter())  # 10, 2, 0.5 rather than 10^1, 2x10^0
            ax.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
        ax.set_title(f"{task}: {title.lower()}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (log scale)" if log else "loss")
    handles, labels = axes[-1].get_legend_handles_labels()
    for ax in axes[:-1]:
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    axes[-1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# ---------------------------------------------------------------------------------------------
# Rank × learning-rate heatmap
# ---------------------------------------------------------------------------------------------


def rank_key(keys: Sequence[str]) -> str | None:
    """A grid key that is a LoRA-style rank: ``r``, ``*.r``, ``*.rank``."""
    for k in keys:
        if k in ("r", "rank") or k.endswith((".r", ".rank")):
            return k
    return None


def lr_key(keys: Sequence[str]) -> str | None:
    """The learning-rate grid key, preferring ``train.lr``."""
    if "train.lr" in keys:
        return "train.lr"
    for k in keys:
        if k in ("lr", "learning_rate") or k.endswith((".lr", ".learning_rate")):
            return k
    return None


def _sort_values(vals: set[Any]) -> list[Any]:
    return sorted(vals, key=lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))


def heatmap_cells(groups: Sequence[Group], metric: str, direction: str | None,
                  rk: str, lk: str) -> dict[tuple[Any, Any], Group]:
    """Best group per (rank, lr) cell; other grid coordinates are maximised over, not averaged."""
    cells: dict[tuple[Any, Any], Group] = {}
    for g in groups:
        grid, st = g.grid_dict, g.metrics.get(metric)
        if rk not in grid or lk not in grid or st is None:
            continue
        key = (grid[rk], grid[lk])
        cur = cells.get(key)
        better = cur is None or (st.mean > cur.metrics[metric].mean if direction == "higher"
                                 else st.mean < cur.metrics[metric].mean)
        if better:
            cells[key] = g
    return cells


def rank_lr_heatmap(agg: Aggregate, task: str, label: str) -> Figure | None:
    """Annotated rank × lr grid of the primary metric; brighter is always better."""
    metric = agg.primary.get(task)
    groups = [g for g in agg.groups_for(task, with_data=True) if g.label == label]
    keys = sorted({k for g in groups for k, _ in g.grid})
    rk, lk = rank_key(keys), lr_key(keys)
    if not metric or not rk or not lk:
        return None
    d = agg.direction(task, metric)
    cells = heatmap_cells(groups, metric, d, rk, lk)
    if len(cells) < 2:
        return None
    ranks = _sort_values({k[0] for k in cells})
    lrs = _sort_values({k[1] for k in cells})
    mat = np.full((len(ranks), len(lrs)), np.nan)
    for (r, lr), g in cells.items():
        mat[ranks.index(r), lrs.index(lr)] = g.metrics[metric].mean
    cmap = matplotlib.colormaps["viridis" if d != "lower" else "viridis_r"].with_extremes(bad="0.9")
    fig, ax = new_figure(2.4 + 1.1 * len(lrs), 1.6 + 0.7 * len(ranks))
    ax.grid(False)
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, origin="lower", aspect="auto")
    lo, hi = np.nanmin(mat), np.nanmax(mat)
    for (r, lr), g in cells.items():
        i, j = ranks.index(r), lrs.index(lr)
        st = g.metrics[metric]
        frac = 0.5 if hi == lo else (st.mean - lo) / (hi - lo)
        bright = frac > 0.6 if d != "lower" else frac < 0.4
        mean, pm = fmt_mean_pm(st)
        ci = fmt_interval(st)
        txt = mean + (f"\n± {pm}" if pm is not None else f"\n{ci}" if ci else f"\n{st.short_size}")
        if g.degenerate:
            txt += "\n⚠ degenerate"
        ax.text(j, i, txt, ha="center", va="center", fontsize=9, color="black" if bright else "white")
    for i in range(len(ranks)):
        for j in range(len(lrs)):
            if np.isnan(mat[i, j]):
                ax.text(j, i, "—", ha="center", va="center", color="0.5")
    ax.set_xticks(range(len(lrs)), [format_value(v) for v in lrs])
    ax.set_yticks(range(len(ranks)), [format_value(v) for v in ranks])
    ax.set_xlabel(lk)
    ax.set_ylabel(rk)
    ax.set_title(f"{task} · {label}: {metric}")
    cb = fig.colorbar(im, ax=ax, shrink=0.9)
    cb.set_label(f"{metric}{direction_note(d)}", fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def gain_vs_forgetting(agg: Aggregate, task: str, palette: Palette) -> Figure | None:
    """Each method's gain over base on the task (y) against its forgetting (x: general-text loss minus base's),
    both paired differences with their 95% intervals; the front (most gain, least forgetting) dashed."""
    rows = [r for r in retained(agg, task) if r.name == "forgetting" and r.vs_base is not None and r.gain is not None]
    if not rows:
        return None
    fig, ax = new_figure()
    for r in rows:
        f, g = r.vs_base, r.gain
        ax.errorbar(f.difference, g.difference, xerr=[[f.difference - f.lo], [f.hi - f.difference]],  # type: ignore[union-attr]
                    yerr=[[g.difference - g.lo], [g.hi - g.difference]], fmt=palette.marker(r.group.label),  # type: ignore[union-attr]
                    ms=6, color=palette.color(r.group.label), elinewidth=1, capsize=3, label=r.group.name, zorder=3)
    front = sorted(gain_forgetting_front(rows), key=lambda r: r.vs_base.difference)  # type: ignore[union-attr]
    if len(front) > 1:
        ax.plot([r.vs_base.difference for r in front], [r.gain.difference for r in front],  # type: ignore[union-attr]
                ls="--", lw=1.2, color="0.3", label="Pareto front", zorder=2)
    ax.axvline(0, color="0.6", lw=0.8, ls=":")
    ax.axhline(0, color="0.6", lw=0.8, ls=":")
    primary = agg.primary.get(task)
    ax.set_xlabel("forgetting: general-text loss − base (nats/token, lower is better)")
    ax.set_ylabel(f"gain in {primary} over base")
    ax.set_title(f"{task}: gain vs forgetting")
    ax.legend(fontsize=8)
    return fig


def _emit(out: list[Plot], fig: Figure | None, out_dir: Path, name: str, title: str,
          caption: str, task: str | None) -> None:
    if fig is None:
        return
    png, svg = save_figure(fig, out_dir, name)
    out.append(Plot(name, title, caption, task, png, svg))


def _task_plots(agg: Aggregate, task: str, palette: Palette, out_dir: Path) -> list[Plot]:
    out: list[Plot] = []
    s = slug(task)
    spread = (f" Points closer than {SPREAD:.0%} of the axis are spread apart horizontally so every error bar "
              "stays visible; the exact costs are in the table.")
    base = (" Dotted line: the base model's quality where it has no such cost recorded.")
    captions = {
        "params": "Mean primary metric with its 95% interval (seeds × test examples, clipped to the metric's "
                  "range) against the share of trainable parameters. Hollow markers at the left edge have 0 "
                  "trainable parameters (placed one decade below the smallest non-zero value). Dashed: Pareto "
                  "front. Red ×: degenerate runs (see the data notes)." + spread,
        "time": "Mean primary metric with its 95% interval (clipped to the metric's range) against mean "
                "training time, axis from 0 (the base model trains for 0 s). Dashed: Pareto front. Red ×: "
                "degenerate runs." + spread,
        "memory": "Mean primary metric with its 95% interval (clipped to the metric's range) against mean peak "
                  "memory, axis from 0. Dashed: Pareto front. Red ×: degenerate runs." + base + spread,
    }
    for axis in COST_AXES:
        fig = quality_vs_cost(agg, task, axis, palette)
        _emit(out, fig, out_dir, f"quality_vs_{axis.slug}_{s}", f"{task}: quality vs {axis.slug}",
              captions[axis.slug], task)
    fig = loss_curves(agg, task, palette)
    log = fig is not None and any(ax.get_yscale() == "log" for ax in fig.axes)
    _emit(out, fig, out_dir, f"loss_curves_{s}", f"{task}: loss curves",
          "Best configuration per method; line = mean over seeds on the steps all seeds share, "
          "band = ±1 standard deviation." + (f" Log scale: the methods' losses differ by {LOG_LOSS_RATIO:g}× or "
                                              "more, which would flatten the smaller curves on a linear axis."
                                              if log else ""), task)
    _emit(out, gain_vs_forgetting(agg, task, palette), out_dir, f"gain_vs_forgetting_{s}",
          f"{task}: gain vs forgetting",
          "Each method's best configuration: its gain over base on the task's primary metric against its "
          "forgetting (held-out general-text loss minus base's on the same paragraphs), both paired "
          "differences with 95% intervals over seeds × examples. Up and left is better; dashed: the front.", task)
    for label in sorted({g.label for g in agg.groups_for(task, with_data=True)}):
        _emit(out, rank_lr_heatmap(agg, task, label), out_dir, f"heatmap_{s}_{slug(label)}",
              f"{task}: {label} rank × learning rate",
              "Mean primary metric per (rank, learning rate) cell with its 95% interval (± half-width, or "
              "[low, high] where clipped to the metric's range); brighter is better. Other grid coordinates, "
              "if any, take their best value.", task)
    return out


def write_plots(agg: Aggregate, out_dir: Path) -> list[Plot]:
    """Draw every plot that has data; returns them in display order."""
    labels: list[str] = []
    for g in agg.groups:
        if g.label not in labels:
            labels.append(g.label)
    palette = Palette(labels)
    plots: list[Plot] = []
    with matplotlib.rc_context(STYLE):
        for task in agg.tasks:
            plots += _task_plots(agg, task, palette, Path(out_dir))
    return plots

