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

import numpy as np

from peftlab.formatting import fmt_sig, human_bytes, human_count, human_duration, human_pct, human_rate

from .aggregate import (
    Aggregate,
    ExampleView,
    Group,
    Stats,
    Varies,
    Winner,
    best_per_label,
    binary_top,
    comparison_size,
    config_text,
    cost_direction,
    error_line,
    example_values,
    example_view,
    first_seed,
    format_grid,
    format_value,
    is_better,
    sample_gold,
    sample_input,
    sample_of,
    sample_output,
    sample_set,
    short_key,
    winners,
)
from .forgetting import base_value, retained
from .pareto import BUDGETS, Recommendation, cost_per_point, gain_over_base, recommend

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
    kind: str | None = None  # semantic tag for renderers that style cells (HTML badges, wrapped text)
    link: str | None = None  # an anchor on the page this cell points at (HTML only), e.g. "cfg-lm-lora"
    details: str | None = None  # the full text behind a shortened cell (HTML: expandable), e.g. a traceback


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
    row_ids: list[str] = field(default_factory=list)  # HTML ids of the rows (link targets), when set
    latex: bool = True  # False: free text (model outputs, configurations) that has no place in a paper table


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
    body = md_escape(c.text).replace("\n", "<br>") + (f" ± {md_escape(c.pm)}" if c.pm is not None else "")
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
    ("mfu", "MFU", lambda v: human_pct(None if v is None else 100 * v), False),
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


def config_anchor(g: Group) -> str:
    """The HTML id of a configuration's row in its task's configuration table."""
    return "".join(ch if ch.isalnum() else "-" for ch in f"cfg-{g.task}-{g.model}-{g.name}").lower()


def _id_cells(g: Group, keys: list[str], with_model: bool) -> list[Cell]:
    cells = [Cell(g.label, note="⚠ degenerate" if g.degenerate else None, kind="degenerate" if g.degenerate else None,
                  link=config_anchor(g))]
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
    per_point = bool(primary) and any(g.is_base and g.n_ok for g in groups) and any("train_time_s" in g.costs
                                                                                     for g in groups)
    if per_point:
        cols.append(Column("Train time / point", "lower", numeric=True))
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
        if per_point:
            row.append(_per_point_cell(agg, g, primary))  # type: ignore[arg-type]
        rows.append(row)
    caption = _STATS_CAPTION + (" ⚠ degenerate: see the data notes (constant predictions, identical to base "
                                "or a loss that never fell)." if any(g.degenerate for g in groups) else "")
    if per_point:
        caption += (f" Train time / point: mean training time per point of {primary} gained over the base model "
                    "(means; the note gives the gain), the price of each point of quality.")
    header, csv_rows = _task_csv(agg, task, groups, keys, metrics)
    return mark_best(Table(f"task_{task}", f"Task: {task}", cols, rows, caption, header, csv_rows))


def _per_point_cell(agg: Aggregate, g: Group, metric: str) -> Cell:
    """Training seconds per point of the primary metric gained over base (the gain as the note)."""
    gain = gain_over_base(agg, g, metric)
    if g.is_base or gain is None:
        return Cell()
    note = f"{'+' if gain > 0 else ''}{fmt_sig(gain, 3)} over base"
    if gain <= 0:
        return Cell("no gain", note=note)
    cpp = cost_per_point(agg, g, metric, "train_time_s")
    return Cell(human_duration(cpp), note=note, value=cpp)


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
    primary = agg.primary.get(task)
    header = ["task", "model", "label", "method", *keys, "seeds", "n_ok", "n_failed", "degenerate"]
    for name in [*metrics, *costs]:
        header += [f"{name}_{s}" for s in STAT_FIELDS]
    header += ["gain_over_base", "train_s_per_point", "peak_gib_per_point"]
    rows = []
    for g in groups:
        grid = g.grid_dict
        row = [task, g.model, g.label, g.method, *[grid.get(k, "") for k in keys],
               " ".join(str(s) for s in g.seeds), g.n_ok, g.n_failed, "; ".join(g.degenerate)]
        for m in metrics:
            row += _stat_fields(g.metrics.get(m))
        for c in costs:
            row += _stat_fields(g.costs.get(c))
        gain = gain_over_base(agg, g, primary) if primary else None
        per_s = cost_per_point(agg, g, primary, "train_time_s") if primary else None
        per_gib = cost_per_point(agg, g, primary, "peak_memory_bytes", 1 / 1024**3) if primary else None
        row += ["" if x is None else x for x in (gain, per_s, per_gib)]
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
            if g is not None:
                c.link = config_anchor(g)
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
                         Cell(w.best.name, bold=w.resolved, note="⚠ degenerate" if w.best.degenerate else None,
                              link=config_anchor(w.best)),
                         stat_cell(bst),
                         Cell(v.other.name if v else "—", note="⚠ degenerate" if v and v.other.degenerate else None,
                              link=config_anchor(v.other) if v else None),
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


# ---------------------------------------------------------------------------------------------
# What was run: configurations
# ---------------------------------------------------------------------------------------------


def _config_fields(groups: list[Group]) -> tuple[list[str], list[str]]:
    """(fields every configuration that has them sets alike, fields that differ), method arguments aside."""
    keys: list[str] = []
    for g in groups:
        keys += [k for k in g.config if k not in keys and k != "method" and not k.startswith("method.")]
    common, differ = [], []
    for k in keys:
        values = {config_text(g.config[k]) for g in groups if k in g.config}
        same = len(values) == 1 and not any(isinstance(g.config.get(k), Varies) for g in groups)
        (common if same else differ).append(k)
    return common, differ


def config_common_table(agg: Aggregate, task: str) -> Table | None:
    """The configuration fields shared by every configuration of a task, said once."""
    groups = agg.groups_for(task)
    common, _ = _config_fields(groups)
    if not common:
        return None
    sections: dict[tuple[str, tuple[str, ...]], list[tuple[str, str]]] = {}
    csv_rows = []
    for k in common:
        value = next(config_text(g.config[k]) for g in groups if k in g.config)
        lacking = tuple(g.name for g in groups if k not in g.config)
        section, _, rest = k.partition(".")
        sections.setdefault((section, lacking), []).append((rest, value))
        csv_rows.append([k, value, "; ".join(lacking)])
    rows = []
    for (section, lacking), fields in sections.items():
        own = [v for f, v in fields if not f]  # the section's own value: model, task, experiment...
        rest = ", ".join(f"{f}={v}" for f, v in fields if f)
        rows.append([Cell(section), Cell("; ".join(own + ([rest] if rest else [])), kind="text"),
                     Cell(", ".join(lacking) or "—")])
    return Table(f"config_common_{task}", f"Task: {task} — configuration shared by every row",
                 [Column("Section"), Column("Fields"), Column("Does not apply to")], rows,
                 "Resolved from each run's result.json (and config.yaml where the store has it), one row per "
                 "section (train: train.lr, train.batch_size, ...). 'Does not apply to': configurations without "
                 "those fields (the base model does not train).",
                 ["field", "value", "not_set_for"], csv_rows, latex=False)


def _method_args(g: Group) -> str:
    return ", ".join(f"{k.split('.', 1)[1]}={config_text(v)}" for k, v in g.config.items() if k.startswith("method."))


def config_table(agg: Aggregate, task: str) -> Table:
    """One row per configuration: its method arguments and the fields in which the rows differ; the full
    resolved configuration expands from the last cell. Rows are link targets of the other tables."""
    groups = agg.groups_for(task)
    _, differ = _config_fields(groups)
    cols = [Column("Method"), Column("Seeds", numeric=True), Column("Method arguments"),
            *[Column(k) for k in differ], Column("Full configuration")]
    rows, ids, csv_rows = [], [], []
    for g in groups:
        seeds = g.seeds
        full = "\n".join(f"{k} = {config_text(v)}" for k, v in g.config.items())
        run_ids = [str(r.get("run_id")) for r in g.runs]
        if run_ids:
            full += "\nruns: " + ", ".join(run_ids)
        row = [Cell(g.name, note="⚠ degenerate" if g.degenerate else None,
                    kind="degenerate" if g.degenerate else None),
               Cell(" ".join(str(x) for x in seeds) or "—", note=None if g.n_ok else "no ok run"),
               Cell(_method_args(g) or "—", kind="text"),
               *[Cell(config_text(g.config[k]) if k in g.config else "—", kind="text") for k in differ],
               Cell(f"{len(g.config)} fields", details=full)]
        rows.append(row)
        ids.append(config_anchor(g))
        csv_rows.append([g.name, " ".join(str(x) for x in seeds), _method_args(g),
                         *[config_text(g.config[k]) if k in g.config else "" for k in differ]])
    caption = ("What each row was run with: the method's resolved arguments, then only the fields in which the "
               "configurations differ (the shared ones are listed above it); the last cell expands into every "
               "field and the run ids." + ("" if differ else " Apart from the method arguments, every "
                                           "configuration was run alike."))
    return Table(f"config_{task}", f"Task: {task} — configurations", cols, rows, caption,
                 ["configuration", "seeds", "method_args", *differ], csv_rows, row_ids=ids, latex=False)


# ---------------------------------------------------------------------------------------------
# What the methods produce: samples and the per-example view
# ---------------------------------------------------------------------------------------------


def _clip(text: str | None, n: int) -> str:
    if text is None:
        return "—"
    text = str(text).strip()
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _seed_value(g: Group, metric: str | None, seed: Any, example_id: str) -> float | None:
    """One seed's per-example value of the primary metric (what :func:`example_values` says one is)."""
    data = g.data.get(("metric", metric)) if metric else None
    if data is None:
        return None
    ids = [str(i) for i in data.table.ids]
    if example_id not in ids:
        return None
    vals, _ = example_values(data)
    row = 0 if data.table.deterministic else list(data.table.seeds).index(seed) if seed in data.table.seeds else None
    return None if row is None else float(vals[row, ids.index(example_id)])


def _mark(value: float | None, top: float | None) -> str | None:
    if value is None:
        return None
    if top is not None:
        return "✓" if value == top else "✗"
    return fmt_sig(value, 3)


def samples_table(agg: Aggregate, task: str, k: int = 5, chars: int = 400) -> Table | None:
    """The same few test examples for every method: input, gold and each method's output side by side."""
    ss = sample_set(agg, task, k)
    if ss is None or not ss.ids:
        return None
    metric = agg.primary.get(task)
    datas = [g.data[("metric", metric)] for g in ss.configs if ("metric", metric) in g.data]
    top = binary_top(np.concatenate([example_values(d)[0].ravel() for d in datas])) if datas else None
    seeds = {g.name: first_seed(g) for g in ss.configs}
    cols = [Column("Example"), Column("Input"), Column("Gold")]
    cols += [Column(f"{g.name} (seed {seeds[g.name]})") for g in ss.configs]
    rows, csv_rows = [], []
    for i in ss.ids:
        line = sample_of(ss.configs[0], i) or {}
        row = [Cell(i), Cell(_clip(sample_input(line), chars), kind="text"),
               Cell(_clip(sample_gold(line), chars), kind="text")]
        csv_row: list[Any] = [i, sample_input(line) or "", sample_gold(line) or ""]
        for g in ss.configs:
            out, n = sample_output(g.samples[seeds[g.name]].get(i, {}))
            mark = _mark(_seed_value(g, metric, seeds[g.name], i), top)
            note = ", ".join(x for x in (mark, f"first of {n} outputs" if n > 1 else None) if x) or None
            row.append(Cell(_clip(out, chars), note=note, kind="text",
                            details=out if out is not None and len(out.strip()) > chars else None))
            csv_row.append(out or "")
        rows.append(row)
        csv_rows.append(csv_row)
    caption = (f"The first {len(ss.ids)} test examples (in test order) that every method's samples contain, the "
               "same for every method; each method's best configuration, its lowest seed. The note scores the "
               f"output on {metric or 'the primary metric'} (✓ right, ✗ wrong).")
    if ss.missing:
        caption += " No samples recorded for: " + ", ".join(g.name for g in ss.missing) + "."
    return Table(f"samples_{task}", f"Task: {task} — samples", cols, rows, caption,
                 ["example", "input", "gold", *[g.name for g in ss.configs]], csv_rows, latex=False)


def _view_cell(view: ExampleView, g: Group, example_id: str) -> Cell:
    v = view.values.get(g.name, {}).get(example_id)
    if v is None:
        return Cell()
    if view.binary is None:
        return Cell(fmt_sig(float(v.mean()), 3), value=float(v.mean()))
    right = int((v == view.binary).sum())
    text = "✓" if right == len(v) else "✗" if right == 0 else f"{right}/{len(v)} seeds"
    return Cell(text, value=right / len(v))


def head_to_head_table(agg: Aggregate, task: str, view: ExampleView | None = None) -> Table | None:
    """Example by example: on how many examples the best beats each other method, and the reverse."""
    view = example_view(agg, task) if view is None else view
    if view is None:
        return None
    best = view.configs[0]
    cols = [Column("Method"), Column("Examples compared", numeric=True), Column(f"{best.name} ahead", numeric=True),
            Column("This method ahead", numeric=True), Column("Same", numeric=True),
            Column("Alone best on", numeric=True)]
    rows = [[Cell(best.name, note="best", link=config_anchor(best)), Cell("—"), Cell("—"), Cell("—"), Cell("—"),
             Cell(str(view.uniquely_best[best.name]))]]
    csv_rows: list[list[Any]] = [[best.name, "", "", "", "", view.uniquely_best[best.name]]]
    for h in view.head_to_head:
        rows.append([Cell(h.other.name, link=config_anchor(h.other)), Cell(str(h.shared)), Cell(str(h.best_ahead)),
                     Cell(str(h.other_ahead)), Cell(str(h.even)), Cell(str(view.uniquely_best[h.other.name]))])
        csv_rows.append([h.other.name, h.shared, h.best_ahead, h.other_ahead, h.even, view.uniquely_best[h.other.name]])
    caption = (f"Per test example, {view.metric} ({view.what}; mean over seeds) of each method's best configuration "
               f"against the best, {best.name}. 'Alone best on': examples on which that method scores better than "
               f"every other one ({view.n_shared} examples scored by all). Counts describe these examples; whether a "
               "difference is more than chance is in the winners table.")
    return Table(f"head_to_head_{task}", f"Task: {task} — each method against the best, example by example", cols,
                 rows, caption,
                 ["method", "examples", "best_ahead", "method_ahead", "same", "alone_best"], csv_rows, latex=False)


def disagreement_table(agg: Aggregate, task: str, view: ExampleView | None = None, chars: int = 90) -> Table | None:
    """The examples on which the methods disagree, with the input where a sample has it."""
    view = example_view(agg, task) if view is None else view
    if view is None or not view.disagreements:
        return None
    cols = [Column("Example"), Column("Input"), Column("Gold")] + [Column(g.name) for g in view.configs]
    rows, csv_rows = [], []
    for i in view.disagreements:
        line = next((x for x in (sample_of(g, i) for g in view.configs) if x), None) or {}
        row = [Cell(i), Cell(_clip(sample_input(line), chars), kind="text"), Cell(_clip(sample_gold(line), chars))]
        row += [_view_cell(view, g, i) for g in view.configs]
        rows.append(row)
        csv_rows.append([i, sample_input(line) or "", sample_gold(line) or "",
                         *[view.mean(g.name, i) if view.mean(g.name, i) is not None else "" for g in view.configs]])
    best = view.configs[0].name
    marks = ("✓ right on every seed, ✗ wrong on every seed, k/n: right on k of n seeds" if view.binary is not None
             else f"{view.what}, mean over seeds ({view.direction} is better)")
    caption = (f"{view.n_disagree} of {view.n_shared} examples are scored differently by the methods; shown: "
               f"{len(view.disagreements)}: first those another method does better on than {best}, then those "
               f"{best} alone leads on, then those it leads with others, each in test order. Cells: {marks}.")
    return Table(f"disagreements_{task}", f"Task: {task} — where the methods disagree", cols, rows, caption,
                 ["example", "input", "gold", *[g.name for g in view.configs]], csv_rows, latex=False)


# ---------------------------------------------------------------------------------------------
# What to use: the best quality at each budget
# ---------------------------------------------------------------------------------------------

_RELATION = {"better": "worse than the best", "worse": "better than the best", "tied": "tied with the best",
             "not enough evidence": "not told apart"}


def best_at_budget_table(agg: Aggregate, rec: Recommendation) -> Table | None:
    """Per budget (trainable %, peak memory, training time) the Pareto front: the best quality each budget
    buys, each point with its comparison against the overall best (None with a single usable method)."""
    w = rec.winner
    if not w.others:
        return None
    cols = [Column("Budget"), Column("Up to", numeric=True), Column("Method"),
            Column(f"{w.metric}", w.direction, numeric=True), Column("Δ vs best [95% CI]", numeric=True),
            Column("p (Holm)", numeric=True), Column("Relation")]
    rows, csv_rows = [], []
    for b in BUDGETS:
        for g in rec.fronts.get(b.field, []):
            v = rec.versus(g)
            c = v.comparison if v is not None else None
            if g is w.best:
                relation = "the best"
            elif v is None:
                relation = "not compared"
            else:
                relation = _RELATION.get(v.verdict, v.verdict) + (" (degenerate)" if c and c.degenerate else "")
            delta = Cell() if c is None else Cell(f"{fmt_sig(-c.difference, 3)} [{fmt_sig(-c.hi, 3)}, "
                                                  f"{fmt_sig(-c.lo, 3)}]", value=-c.difference)
            rows.append([Cell(b.title), Cell(b.fmt(g.mean("cost", b.field))),
                         Cell(g.name, note="no fine-tuning" if g.is_base else None, link=config_anchor(g)),
                         stat_cell(g.metrics.get(w.metric)), delta,
                         Cell("—" if v is None else f"{v.p_adjusted:.2g}"), Cell(relation)])
            csv_rows.append([b.field, g.mean("cost", b.field), g.name, g.mean("metric", w.metric),
                             "" if c is None else -c.difference, "" if c is None else -c.hi,
                             "" if c is None else -c.lo, "" if v is None else v.p_adjusted, relation])
    if not rows:
        return None
    return Table(f"best_at_budget_{w.task}", f"Task: {w.task} — the best {w.metric} at each budget", cols, rows,
                 "For each budget, the configurations no other one beats on both quality and that cost (Pareto "
                 "front, each method's best configuration, degenerate runs left out), cheapest first: the best "
                 "choice for any budget up to the next row's. Δ = this row − the best, paired on shared seeds × "
                 "examples, Holm-adjusted over the comparisons with the best.",
                 ["budget", "cost", "configuration", "value", "diff", "diff_ci_low", "diff_ci_high", "p_holm",
                  "relation"], csv_rows)


def failures_table(agg: Aggregate) -> Table | None:
    """Failed, diverged and cancelled runs: listed, never averaged."""
    if not agg.failures:
        return None
    cols = [Column("Run"), Column("Task"), Column("Method"), Column("Grid"), Column("Seed", numeric=True),
            Column("Status"), Column("Error")]
    rows = []
    for f in agg.failures:
        err = f["message"] or error_line(f["error"])
        err = err if len(err) <= 240 else err[:237] + "..."
        full = f["error"] if f["error"] and f["error"].strip() != err else None
        rows.append([Cell(str(f["run_id"])), Cell(f["task"]), Cell(f["label"]), Cell(f["grid"] or "—"),
                     Cell(str(f["seed"])), Cell(str(f["status"]), kind="status"),
                     Cell(err or "—", kind="error", details=full)])
    header = ["run_id", "experiment", "task", "label", "method", "grid", "seed", "status", "message", "error"]
    csv_rows = [[f[k] for k in header] for f in agg.failures]
    return Table("failed_runs", "Failed, diverged and cancelled runs", cols, rows,
                 "These runs are excluded from every mean, interval and plot. Error: the exception the run "
                 "ended with (the last line of its traceback); the full text is in result.json.", header, csv_rows)


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


def _delta_cell(c: Any) -> Cell:
    if c is None:
        return Cell()
    return Cell(f"{c.difference:+.3g}", note=f"[{c.lo:+.3g}, {c.hi:+.3g}], p = {c.p_value:.2g}, "
                f"{c.sample_size.replace(' x ', ' × ')}", value=c.difference)


def forgetting_table(agg: Aggregate, task: str) -> Table | None:
    """Per method: its score outside the task (general-text loss; retention tasks) against base's, paired
    on the same examples, beside its gain on the task's primary metric (report.forgetting)."""
    rows = retained(agg, task)
    if not rows:
        return None
    primary = agg.primary.get(task)
    cols = [Column("Method"), Column("Measured on"), Column("Value"), Column("Base"), Column("Δ vs base"),
            Column("Verdict"), Column(f"Gain in {primary} over base")]
    out, csv_rows = [], []
    for r in rows:
        what = "general text (loss, nats/token)" if r.name == "forgetting" else f"{r.name} ({r.metric})"
        out.append([Cell(r.group.name, link=config_anchor(r.group)), Cell(what), stat_cell(r.value),
                    stat_cell(base_value(agg, task, r.name, r.metric)), _delta_cell(r.vs_base),
                    Cell(r.words, kind="verdict"), _delta_cell(r.gain)])
        c, gain = r.vs_base, r.gain
        csv_rows.append([r.group.name, r.name, r.metric, r.value.mean if r.value else None,
                         c.difference if c else None, c.lo if c else None, c.hi if c else None,
                         c.p_value if c else None, r.words, gain.difference if gain else None,
                         gain.lo if gain else None, gain.hi if gain else None])
    return Table(f"forgetting_{task}", f"{task} — forgetting and retention", cols, out,
                 caption="What each method (its best configuration) kept outside the task, paired with the base "
                         "model on the same held-out examples: the loss on general text (lower is better; "
                         "\"forgot\" = higher than base, with the interval of the paired difference) and any "
                         "retention task; beside it, the gain on the task itself.",
                 csv_header=["method", "measured_on", "metric", "value", "delta_vs_base", "delta_lo", "delta_hi",
                             "p_value", "verdict", "gain", "gain_lo", "gain_hi"], csv_rows=csv_rows, latex=False)


def task_tables(agg: Aggregate, task: str, rec: Recommendation | None = None) -> list[Table]:
    """A task's tables in display order: results, decoding strategies, best at each budget,
    configurations, example by example, disagreements, samples (those that have rows)."""
    view = example_view(agg, task)
    out = [task_table(agg, task), eval_table(agg, task), best_at_budget_table(agg, rec) if rec is not None else None,
           config_common_table(agg, task), config_table(agg, task), head_to_head_table(agg, task, view),
           disagreement_table(agg, task, view), samples_table(agg, task), forgetting_table(agg, task)]
    return [t for t in out if t is not None]


def all_tables(agg: Aggregate, ws: list[Winner] | None = None,
               recs: list[Recommendation] | None = None) -> list[Table]:
    """Every table of the report in display order (runs table last, CSV only)."""
    ws = winners(agg) if ws is None else ws
    recs = [recommend(agg, w) for w in ws] if recs is None else recs
    by_task = {r.winner.task: r for r in recs}
    out: list[Table] = []
    for t in (winners_table(agg, ws), method_task_table(agg)):
        if t is not None:
            out.append(t)
    for task in agg.tasks:
        out += task_tables(agg, task, by_task.get(task))
    ft = failures_table(agg)
    if ft is not None:
        out.append(ft)
    out.append(runs_table(agg))
    return out
