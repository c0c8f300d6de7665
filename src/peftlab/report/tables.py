"""Tables in Markdown, LaTeX and CSV built from one structured model.

Every table is built once as :class:`Table` (cells know their numeric value, the column knows
its direction) and then rendered; that way "best in bold" is decided in exactly one place and the
Markdown, LaTeX and HTML versions can never disagree. CSV files hold raw numbers (mean, std, CI
bounds, n) instead of formatted text so they can be re-analysed.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from peftlab.formatting import fmt_sig, human_bytes, human_count, human_duration, human_pct, human_rate

from .aggregate import (
    Aggregate,
    Group,
    Stats,
    Winner,
    best_per_label,
    comparison_size,
    cost_direction,
    format_grid,
    format_value,
    is_better,
    short_key,
    winners,
)

# ---------------------------------------------------------------------------------------------
# Number formatting
# ---------------------------------------------------------------------------------------------


def _decimals(stats: Stats) -> int | None:
    hw = stats.half_width
    if hw is None or hw == 0 or not math.isfinite(hw):
        return None
    return min(8, max(0, 1 - math.floor(math.log10(hw))))


def fmt_mean_pm(stats: Stats | None) -> tuple[str, str | None]:
    """Mean and CI half-width rounded together: the half-width to 2 significant digits and the
    mean to the same decimal place, so no digit is shown that the interval says is noise.

    The half-width is None when there is no interval or when the interval was clipped to the
    metric's range (it is not symmetric then: show :func:`fmt_interval` instead)."""
    if stats is None:
        return "—", None
    hw = stats.half_width
    decimals = _decimals(stats)
    if decimals is None:
        return fmt_sig(stats.mean), (None if hw is None else "0")
    if not stats.symmetric:
        return f"{stats.mean:.{decimals}f}", None
    return f"{stats.mean:.{decimals}f}", f"{hw:.{decimals}f}"


def fmt_interval(stats: Stats | None) -> str | None:
    """'[lo, hi]' at the mean's precision (None without an interval)."""
    if stats is None or stats.ci_low is None or stats.ci_high is None:
        return None
    decimals = _decimals(stats)
    if decimals is None:
        return f"[{fmt_sig(stats.ci_low)}, {fmt_sig(stats.ci_high)}]"
    return f"[{stats.ci_low:.{decimals}f}, {stats.ci_high:.{decimals}f}]"


@dataclass
class Cell:
    """One cell: main text, optional ``± half-width`` and note, and the value used for ranking."""

    text: str = "—"
    pm: str | None = None
    note: str | None = None
    value: float | None = None
    bold: bool = False
    kind: str | None = None  # semantic tag for renderers that style cells (HTML badges)


@dataclass
class Column:
    """A column and how its best value is chosen.

    ``ignore_zero`` exists for cost columns where 0 means "did not train" (the base model has 0
    trainable parameters and 0 s training time); bolding that would praise the absence of
    fine-tuning rather than an efficient method.
    """

    title: str
    direction: str | None = None
    numeric: bool = False
    ignore_zero: bool = False
    latex_title: str | None = None


@dataclass
class Table:
    """A rendered-agnostic table plus its raw-number CSV twin."""

    name: str
    title: str
    columns: list[Column]
    rows: list[list[Cell]]
    caption: str = ""
    csv_header: list[str] = field(default_factory=list)
    csv_rows: list[list[Any]] = field(default_factory=list)


def mark_best(table: Table) -> Table:
    """Bold the best value of every directed column; ties are all bold."""
    for j, col in enumerate(table.columns):
        if col.direction not in ("higher", "lower"):
            continue
        vals = [r[j].value for r in table.rows
                if r[j].value is not None and not (col.ignore_zero and r[j].value == 0)]
        if len(vals) < 2:
            continue
        best = vals[0]
        for v in vals[1:]:
            if is_better(v, best, col.direction):
                best = v
        for r in table.rows:
            if r[j].value is not None and r[j].value == best and not (col.ignore_zero and best == 0):
                r[j].bold = True
    return table


def stat_cell(stats: Stats | None) -> Cell:
    """Mean ± half-width (or mean [lo, hi] when clipped to the metric's range) and the sample size
    (seeds × examples, or "seeds only") as the note."""
    if stats is None:
        return Cell()
    text, pm = fmt_mean_pm(stats)
    notes = []
    if pm is None and stats.ci_low is not None:
        notes.append(fmt_interval(stats) or "")
    notes.append(stats.short_size)
    return Cell(text, pm, ", ".join(n for n in notes if n), stats.mean)


# ---------------------------------------------------------------------------------------------
# Renderers
# ---------------------------------------------------------------------------------------------

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "—": "--",
    "Δ": r"$\Delta$",
    "×": r"$\times$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "…": r"\ldots{}",
    "·": r"$\cdot$",
    "−": r"$-$",
    "–": "--",
}


def latex_escape(text: Any) -> str:
    """Escape LaTeX specials (labels like ``lora_r8`` or ``50%`` break compilation otherwise)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def md_escape(text: Any) -> str:
    """Keep pipes and asterisks in labels from breaking Markdown table structure."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")


def _cell_md(c: Cell) -> str:
    body = md_escape(c.text) + (f" ± {md_escape(c.pm)}" if c.pm is not None else "")
    if c.bold:
        body = f"**{body}**"
    return body + (f" ({md_escape(c.note)})" if c.note else "")


def to_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown, numeric columns right-aligned."""
    head = "| " + " | ".join(md_escape(c.title) for c in table.columns) + " |"
    sep = "|" + "|".join("---:" if c.numeric else ":---" for c in table.columns) + "|"
    body = ["| " + " | ".join(_cell_md(c) for c in row) + " |" for row in table.rows]
    out = [f"### {md_escape(table.title)}", "", head, sep, *body]
    if table.caption:
        out += ["", f"_{table.caption}_"]
    return "\n".join(out) + "\n"


def _cell_tex(c: Cell) -> str:
    body = latex_escape(c.text) + (rf" $\pm$ {latex_escape(c.pm)}" if c.pm is not None else "")
    if c.bold:
        body = rf"\textbf{{{body}}}"
    return body + (f" ({latex_escape(c.note)})" if c.note else "")


def _label_safe(name: str) -> str:
    """\\label keys must not contain escapes, so reduce them to a plain ASCII slug."""
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_:") else "-" for ch in name)


def to_latex(table: Table) -> str:
    """A booktabs ``table`` environment (needs ``\\usepackage{booktabs}``)."""
    spec = "".join("r" if c.numeric else "l" for c in table.columns)
    head = " & ".join(c.latex_title or latex_escape(c.title) for c in table.columns)
    lines = [
        "% generated by peftlab.report; requires \\usepackage{booktabs}",
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{{latex_escape(table.title)}"
        + (f". {latex_escape(table.caption)}" if table.caption else "") + "}",
        f"\\label{{tab:{_label_safe(table.name)}}}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        head + " \\\\",
        "\\midrule",
        *(" & ".join(_cell_tex(c) for c in row) + " \\\\" for row in table.rows),
        "\\bottomrule",
        "\\end{tabular}",
        "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Raw-number CSV when the table has one, otherwise the displayed text."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if table.csv_header:
        w.writerow(table.csv_header)
        w.writerows(table.csv_rows)
    else:
        w.writerow([c.title for c in table.columns])
        for row in table.rows:
            w.writerow([c.text + (f" ± {c.pm}" if c.pm else "") for c in row])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Task table
# ---------------------------------------------------------------------------------------------

#: (cost field, column title, formatter, ignore zero when bolding)
COST_COLUMNS: list[tuple[str, str, Any, bool]] = [
    ("trainable_params", "Trainable params", human_count, True),
    ("trainable_pct", "Trainable %", human_pct, True),
    ("adapter_bytes", "Adapter size", human_bytes, True),
    ("train_time_s", "Train time", human_duration, True),
    ("tokens_per_s", "Tokens/s", human_rate, False),
    ("peak_memory_bytes", "Peak memory", human_bytes, False),
]

#: Cost fields exported (mean/std/CI) in the per-task CSV.
CSV_COSTS = [
    "trainable_params", "total_params", "trainable_pct", "adapter_bytes", "train_time_s",
    "eval_time_s", "steps", "tokens_trained", "tokens_per_s", "peak_memory_bytes",
    "cuda_max_allocated_bytes", "train_flops", "mfu", "eval_tokens_per_s",
]


def grid_keys(groups: Iterable[Group]) -> list[str]:
    """All grid keys in a set of groups, in first-seen order."""
    keys: list[str] = []
    for g in groups:
        for k, _ in g.grid:
            if k not in keys:
                keys.append(k)
    return keys


def _runs_cell(g: Group) -> Cell:
    extra = []
    if g.n_failed:
        extra.append(f"+{g.n_failed} failed")
    if g.status_counts.get("running"):
        extra.append(f"+{g.status_counts['running']} running")
    return Cell(str(g.n_ok), note=", ".join(extra) or None, value=float(g.n_ok))


def _memory_cell(g: Group, mixed: bool) -> Cell:
    st = g.costs.get("peak_memory_bytes")
    kind = "/".join(sorted(g.memory_kinds)) if mixed and g.memory_kinds else None
    return Cell(human_bytes(st.mean if st else None), note=kind, value=st.mean if st else None)


def _id_columns(groups: list[Group]) -> tuple[list[Column], list[str], bool]:
    models = {g.model for g in groups}
    keys = grid_keys(groups)
    cols = [Column("Method")]
    if len(models) > 1:
        cols.append(Column("Model"))
    cols += [Column(short_key(k, keys), numeric=True) for k in keys]
    return cols, keys, len(models) > 1


def _id_cells(g: Group, keys: list[str], with_model: bool) -> list[Cell]:
    cells = [Cell(g.label, note="⚠ degenerate" if g.degenerate else None, kind="degenerate" if g.degenerate else None)]
    if with_model:
        cells.append(Cell(str(g.model)))
    grid = g.grid_dict
    cells += [Cell(format_value(grid[k])) if k in grid else Cell() for k in keys]
    return cells


def task_table(agg: Aggregate, task: str) -> Table:
    """Per-task comparison: one row per configuration, metrics then costs."""
    groups = agg.groups_for(task)
    id_cols, keys, with_model = _id_columns(groups)
    metrics = agg.metric_names(task)
    primary = agg.primary.get(task)
    cost_cols = [c for c in COST_COLUMNS if any(c[0] in g.costs for g in groups)]
    kinds = {k for g in groups for k in g.memory_kinds}
    cols = id_cols + [Column("Seeds ok", numeric=True)]
    for m in metrics:
        d = agg.direction(task, m)
        arrow = "↑" if d == "higher" else "↓" if d == "lower" else ""
        title = f"{m} {arrow}".strip() + (" (primary)" if m == primary and len(metrics) > 1 else "")
        ltitle = latex_escape(m) + (r" $\uparrow$" if d == "higher" else r" $\downarrow$" if d == "lower" else "")
        cols.append(Column(title, d, numeric=True, latex_title=ltitle))
    for name, title, _, ignore_zero in cost_cols:
        if name == "peak_memory_bytes" and len(kinds) == 1:
            title = f"{title} ({next(iter(kinds))})"
        cols.append(Column(title, cost_direction(name), numeric=True, ignore_zero=ignore_zero))
    rows = []
    for g in groups:
        row = _id_cells(g, keys, with_model) + [_runs_cell(g)]
        row += [stat_cell(g.metrics.get(m)) for m in metrics]
        for name, _, fmt, _ in cost_cols:
            if name == "peak_memory_bytes":
                row.append(_memory_cell(g, len(kinds) > 1))
                continue
            st = g.costs.get(name)
            row.append(Cell(fmt(st.mean if st else None), value=st.mean if st else None))
        rows.append(row)
    caption = _STATS_CAPTION + (" ⚠ degenerate: see the data notes (constant predictions, identical to base "
                                "or a loss that never fell)." if any(g.degenerate for g in groups) else "")
    header, csv_rows = _task_csv(agg, task, groups, keys, metrics)
    return mark_best(Table(f"task_{task}", f"Task: {task}", cols, rows, caption, header, csv_rows))


_STATS_CAPTION = ("Mean over seeds (ok runs only) with its 95% interval: ± half-width, or [low, high] where the "
                  "interval is clipped to the metric's range; the note gives the sample size, seeds × test "
                  "examples (two-level bootstrap over both; det. = deterministic, scored once), or 'seeds only' "
                  "where no per-example scores were kept (interval over the per-seed values). Best per column in "
                  "bold; zero-cost rows (no training) are not bolded for cost columns.")

STAT_FIELDS = ("n", "n_examples", "mean", "std", "ci_low", "ci_high")


def _stat_fields(st: Stats | None) -> list[Any]:
    """n (seeds), n_examples ('' = seeds only), mean, std over seeds, interval bounds."""
    if st is None:
        return ["", "", "", "", "", ""]
    return [st.n, "" if st.n_examples is None else st.n_examples, st.mean, "" if st.std is None else st.std,
            "" if st.ci_low is None else st.ci_low, "" if st.ci_high is None else st.ci_high]


def _task_csv(agg: Aggregate, task: str, groups: list[Group], keys: list[str],
              metrics: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Raw numbers: every metric and cost as n, mean, std, ci_low, ci_high."""
    costs = [c for c in CSV_COSTS if any(c in g.costs for g in groups)]
    header = ["task", "model", "label", "method", *keys, "seeds", "n_ok", "n_failed", "degenerate"]
    for name in [*metrics, *costs]:
        header += [f"{name}_{s}" for s in STAT_FIELDS]
    rows = []
    for g in groups:
        grid = g.grid_dict
        row = [task, g.model, g.label, g.method, *[grid.get(k, "") for k in keys],
               " ".join(str(s) for s in g.seeds), g.n_ok, g.n_failed, "; ".join(g.degenerate)]
        for m in metrics:
            row += _stat_fields(g.metrics.get(m))
        for c in costs:
            row += _stat_fields(g.costs.get(c))
        rows.append(row)
    return header, rows


def eval_table(agg: Aggregate, task: str) -> Table | None:
    """Metrics per decoding strategy, only when a task evaluated more than one strategy."""
    groups = agg.groups_for(task, with_data=True)
    pairs = sorted({(e, m) for g in groups for e, ms in g.evals.items() for m in ms})
    if len({e for e, _ in pairs}) < 2:
        return None
    id_cols, keys, with_model = _id_columns(groups)
    cols = list(id_cols)
    for e, m in pairs:
        d = "higher" if m == "tokens_per_s" else agg.direction(task, m)
        cols.append(Column(f"{m} [{e}]", d, numeric=True))
    rows = [_id_cells(g, keys, with_model) + [stat_cell(g.evals.get(e, {}).get(m)) for e, m in pairs]
            for g in groups]
    return mark_best(Table(f"decoding_{task}", f"Task: {task} — by decoding strategy", cols, rows,
                           "Per decoding strategy. " + _STATS_CAPTION))


# ---------------------------------------------------------------------------------------------
# Cross-task tables
# ---------------------------------------------------------------------------------------------


def method_task_table(agg: Aggregate) -> Table | None:
    """Method × task matrix of the best configuration's primary metric."""
    tasks = [t for t in agg.tasks if agg.primary.get(t)]
    if not tasks:
        return None
    best = {t: best_per_label(agg.groups_for(t, with_data=True), agg.primary[t],  # type: ignore[arg-type]
                              agg.direction(t, agg.primary[t]))  # type: ignore[arg-type]
            for t in tasks}
    labels: list[str] = []
    for g in agg.groups:
        if g.label not in labels and any(g.label in best[t] for t in tasks):
            labels.append(g.label)
    cols = [Column("Method")]
    for t in tasks:
        d = agg.direction(t, agg.primary[t])  # type: ignore[arg-type]
        arrow = "↑" if d == "higher" else "↓"
        cols.append(Column(f"{t}: {agg.primary[t]} {arrow}", d, numeric=True,
                           latex_title=f"{latex_escape(t)}: {latex_escape(agg.primary[t])} "
                           + (r"$\uparrow$" if d == "higher" else r"$\downarrow$")))
    rows = []
    csv_rows = []
    for label in labels:
        row = [Cell(label)]
        csv_row: list[Any] = [label]
        for t in tasks:
            g = best[t].get(label)
            st = g.metrics.get(agg.primary[t]) if g else None  # type: ignore[arg-type]
            c = stat_cell(st)
            if g is not None and g.grid:
                c.note = ", ".join(x for x in (c.note, format_grid(g.grid)) if x)
            row.append(c)
            n, n_ex, mean, _, lo, hi = _stat_fields(st)
            csv_row += [n, n_ex, mean, lo, hi]
        rows.append(row)
        csv_rows.append(csv_row)
    header = ["label"] + [f"{t}_{agg.primary[t]}_{s}" for t in tasks
                          for s in ("n", "n_examples", "mean", "ci_low", "ci_high")]
    return mark_best(Table("method_by_task", "Method × task (best configuration per method)", cols,
                           rows, "Primary metric of each method's best grid configuration. " + _STATS_CAPTION,
                           header, csv_rows))


def winners_table(agg: Aggregate, ws: list[Winner] | None = None) -> Table | None:
    """Best method per task against every other method: Δ, its interval, Holm-adjusted p, verdict."""
    ws = winners(agg) if ws is None else ws
    if not ws:
        return None
    cols = [Column("Task"), Column("Metric"), Column("Best"), Column("Value", numeric=True),
            Column("vs"), Column("Value", numeric=True),
            Column("Δ [95% CI]", numeric=True, latex_title=r"$\Delta$ [95\% CI]"),
            Column("p (Holm)", numeric=True), Column("Seeds × examples", numeric=True), Column("Verdict")]
    rows, csv_rows = [], []
    for w in ws:
        bst = w.best.metrics.get(w.metric)
        arrow = "↑" if w.direction == "higher" else "↓"
        entries = list(w.others) or [None]
        for v in entries:
            ost = v.other.metrics.get(w.metric) if v else None
            c = v.comparison if v else None
            delta = Cell()
            if c is not None:
                delta = Cell(f"{fmt_sig(c.difference, 3)} [{fmt_sig(c.lo, 3)}, {fmt_sig(c.hi, 3)}]",
                             value=c.difference)
            size = "—" if v is None else comparison_size(w, v)
            verdict = "only method" if v is None else v.verdict
            if v is not None and c is not None and c.degenerate:
                verdict += " (degenerate)"
            rows.append([Cell(w.task), Cell(f"{w.metric} {arrow}"),
                         Cell(w.best.name, bold=w.resolved, note="⚠ degenerate" if w.best.degenerate else None),
                         stat_cell(bst),
                         Cell(v.other.name if v else "—", note="⚠ degenerate" if v and v.other.degenerate else None),
                         stat_cell(ost), delta, Cell("—" if v is None else f"{v.p_adjusted:.2g}",
                                                     value=None if v is None else v.p_adjusted),
                         Cell(size), Cell(verdict, kind="verdict")])
            csv_rows.append([w.task, w.metric, w.direction, w.best.name, bst.mean if bst else "",
                             v.other.name if v else "", ost.mean if ost else "",
                             c.difference if c else "", c.lo if c else "", c.hi if c else "",
                             c.p_value if c else "", v.p_adjusted if v else "",
                             c.n_seeds if c else "", c.n_examples if c else "",
                             "per-example" if w.per_example else "seeds only",
                             verdict, "; ".join(c.degenerate) if c else "", c.mde if c else ""])
    header = ["task", "metric", "direction", "best", "best_mean", "other", "other_mean",
              "diff", "diff_ci_low", "diff_ci_high", "p", "p_holm", "n_seeds", "n_examples", "pairing",
              "verdict", "degenerate", "mde"]
    return Table("winners", "Winners per task", cols, rows,
                 "Δ = best − other (each method's best configuration), paired on the shared seeds and test "
                 "examples (two-level bootstrap interval; p from a paired permutation test, Holm-adjusted over the "
                 "comparisons with the winner). Verdict: better / worse / tied / not enough evidence — never from a "
                 "zero-width interval or fewer than 2 units. 'seeds only': no per-example scores, the per-seed values "
                 "are paired (the n is seeds). The winner is bold only when it is better than every other method.",
                 header, csv_rows)


def failures_table(agg: Aggregate) -> Table | None:
    """Failed, diverged and cancelled runs: listed, never averaged."""
    if not agg.failures:
        return None
    cols = [Column("Run"), Column("Task"), Column("Method"), Column("Grid"), Column("Seed", numeric=True),
            Column("Status"), Column("Error")]
    rows = []
    for f in agg.failures:
        err = f["error"].splitlines()[0] if f["error"] else ""
        err = err if len(err) <= 140 else err[:137] + "..."
        rows.append([Cell(str(f["run_id"])), Cell(f["task"]), Cell(f["label"]), Cell(f["grid"] or "—"),
                     Cell(str(f["seed"])), Cell(str(f["status"]), kind="status"), Cell(err or "—", kind="error")])
    header = ["run_id", "experiment", "task", "label", "method", "grid", "seed", "status", "error"]
    csv_rows = [[f[k] for k in header] for f in agg.failures]
    return Table("failed_runs", "Failed, diverged and cancelled runs", cols, rows,
                 "These runs are excluded from every mean, interval and plot.", header, csv_rows)


def runs_csv_rows(agg: Aggregate) -> tuple[list[str], list[list[Any]]]:
    """One row per run (any status) with flattened metrics and costs, for ad-hoc analysis."""
    metric_names = sorted({m for r in agg.results for m in (r.get("metrics") or {})})
    cost_names = [c for c in CSV_COSTS if any(c in (r.get("cost") or {}) for r in agg.results)]
    grid_names = sorted({k for r in agg.results for k in (r.get("grid") or {})})
    header = ["run_id", "experiment", "task", "model", "label", "method", "seed", "status",
              *[f"grid.{k}" for k in grid_names], *metric_names, *[f"cost.{c}" for c in cost_names]]
    rows = []
    for r in agg.results:
        grid, m, c = r.get("grid") or {}, r.get("metrics") or {}, r.get("cost") or {}
        rows.append([r.get("run_id"), r.get("experiment"), r.get("task"), r.get("model"),
                     r.get("label"), r.get("method"), r.get("seed"), r.get("status"),
                     *[grid.get(k, "") for k in grid_names], *[m.get(k, "") for k in metric_names],
                     *[c.get(k, "") for k in cost_names]])
    return header, rows


def runs_table(agg: Aggregate) -> Table:
    """Wraps :func:`runs_csv_rows` so it travels with the other tables (CSV only)."""
    header, rows = runs_csv_rows(agg)
    return Table("runs", "All runs", [Column(h) for h in header], [], "", header, rows)


def all_tables(agg: Aggregate, ws: list[Winner] | None = None) -> list[Table]:
    """Every table of the report in display order (runs table last, CSV only)."""
    out: list[Table] = []
    for t in (winners_table(agg, ws), method_task_table(agg)):
        if t is not None:
            out.append(t)
    for task in agg.tasks:
        out.append(task_table(agg, task))
        et = eval_table(agg, task)
        if et is not None:
            out.append(et)
    ft = failures_table(agg)
    if ft is not None:
        out.append(ft)
    out.append(runs_table(agg))
    return out
