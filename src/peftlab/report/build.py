"""Write the full report directory from result dicts.

Layout of ``out_dir``::

    summary.md            findings + every table in Markdown
    report.html           self-contained page (tables, embedded figures, failures, provenance)
    tables/<name>.csv     raw numbers (mean, std, interval bounds, seeds, examples) per table, plus runs.csv
    tables/<name>.tex     booktabs LaTeX of every display table
    plots/<name>.png|svg  figures

The report only reads results; re-running it is cheap and never trains or evaluates anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .aggregate import Aggregate, ConfigLoader, ExampleLoader, ExampleScores, SampleLoader, Winner, aggregate, winners
from .budget import is_trial, write_budget_plots
from .html import findings, provenance, render_html
from .pareto import Recommendation, recommend, recommendation_details, recommendation_headline
from .plots import Plot, slug, write_plots
from .tables import Table, all_tables, md_escape, to_csv, to_latex, to_markdown

_OWNED = {"tables": (".csv", ".tex"), "plots": (".png", ".svg")}


def _clear_stale(out_dir: Path) -> None:
    """Drop our own old outputs so a task that disappeared doesn't leave orphan files behind."""
    for sub, exts in _OWNED.items():
        d = out_dir / sub
        if d.is_dir():
            for f in d.iterdir():
                if f.is_file() and f.suffix in exts:
                    f.unlink()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _table_file(t: Table) -> str:
    return slug(t.name)


def write_tables(tables: list[Table], out_dir: Path) -> dict[str, Path]:
    """CSV for every table, LaTeX for every table that has display rows."""
    out: dict[str, Path] = {}
    for t in tables:
        base = _table_file(t)
        out[f"tables/{base}.csv"] = _write(out_dir / "tables" / f"{base}.csv", to_csv(t))
        if t.rows and t.latex:
            out[f"tables/{base}.tex"] = _write(out_dir / "tables" / f"{base}.tex", to_latex(t))
    return out


def summary_markdown(agg: Aggregate, tables: list[Table], plots: list[Plot], title: str,
                     ws: list[Winner] | None = None, recs: list[Recommendation] | None = None) -> str:
    """The Markdown twin of the HTML page (minus embedded images, which it links instead)."""
    ok = sum(1 for r in agg.results if r.get("status") == "ok")
    lines = [f"# {md_escape(title)}", "",
             f"{len(agg.results)} runs ({ok} ok, {len(agg.failures)} failed/diverged/cancelled/interrupted, "
             f"{len(agg.running)} running) over {len(agg.tasks)} task(s). Numbers are means over seeds "
             "with 95% intervals over seeds × test examples (two-level bootstrap, clipped to the metric's range; "
             "'seeds only' where no per-example scores were kept); only `ok` runs are aggregated.", ""]
    if recs:
        lines += ["## What to use", ""]
        for r in recs:
            lines += [f"- {md_escape(recommendation_headline(r))}",
                      *[f"  - {md_escape(d)}" for d in recommendation_details(agg, r)]]
        lines.append("")
    fs = findings(agg, ws)
    if fs:
        lines += ["## How sure?", "", *[f"- {md_escape(s)}" for s in fs], ""]
    display = [t for t in tables if t.rows and t.name != "failed_runs"]
    if display:
        lines += ["## Tables", ""]
        for t in display:
            lines += [to_markdown(t)]
    failed = next((t for t in tables if t.name == "failed_runs"), None)
    lines += ["## Failed runs", "", to_markdown(failed) if failed else "None.", ""]
    if agg.notes:
        lines += ["## Data notes", "", *[f"- {md_escape(n)}" for n in agg.notes], ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"- [{md_escape(p.title)}](plots/{p.png.name}) ([svg](plots/{p.svg.name}))" for p in plots]
        lines.append("")
    lines += _provenance_md(agg)
    return "\n".join(lines).rstrip() + "\n"


def _provenance_md(agg: Aggregate) -> list[str]:
    p = provenance(agg)
    commits = ", ".join(f"`{c[:12]}`{' (dirty)' if d else ''} ×{n}" for (c, d), n in p["commits"].most_common())
    pkgs = ", ".join(f"{name} {'/'.join(v)}" for name, v in sorted(p["packages"].items()))
    return ["## Provenance", "", f"- Git commits: {commits or 'not recorded'}",
            f"- Packages: {md_escape(pkgs) or 'not recorded'}",
            f"- Models: {md_escape(', '.join(p['models'])) or 'not recorded'}", ""]


def write_report(results: list[dict], out_dir: Path, title: str | None = None,
                 examples: ExampleLoader | dict[str, ExampleScores] | None = None,
                 samples: SampleLoader | dict[str, list] | None = None,
                 configs: ConfigLoader | dict[str, dict] | None = None) -> dict[str, Path]:
    """Aggregate ``results`` and write summary.md, tables, plots and report.html.

    ``examples``: per-example scores, ``run_id -> {evaluation: {id: {metric: value}}}`` (a callable or a
    mapping); without them the intervals use the per-seed values only ("seeds only"). ``samples``:
    ``run_id -> samples.jsonl lines`` (the outputs shown side by side); ``configs``: ``run_id ->``
    config.yaml (the task and evaluation settings of each configuration).

    Returns ``{relative path: absolute path}`` for every file written, e.g.
    ``{"report.html": ..., "summary.md": ..., "tables/winners.csv": ..., "plots/....png": ...}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_stale(out_dir)
    title = title or _default_title(results)
    tuned = list(results)  # tuning trials feed the expected-best-vs-budget curves only: they are scored on
    results = [r for r in tuned if not is_trial(r)]  # validation and are never compared with test runs
    agg = aggregate(results, examples, samples, configs)
    ws = winners(agg)
    recs = [recommend(agg, w) for w in ws]
    tables = all_tables(agg, ws, recs)
    written = write_tables(tables, out_dir)
    plots = write_plots(agg, out_dir / "plots") + write_budget_plots(tuned, out_dir / "plots")
    for p in plots:
        written[f"plots/{p.png.name}"] = p.png
        written[f"plots/{p.svg.name}"] = p.svg
    written["summary.md"] = _write(out_dir / "summary.md", summary_markdown(agg, tables, plots, title, ws, recs))
    written["report.html"] = _write(out_dir / "report.html", render_html(agg, tables, plots, title, ws, recs))
    return written


def _default_title(results: list[Any]) -> str:
    exps = sorted({str(r.get("experiment")) for r in results if isinstance(r, dict) and r.get("experiment")})
    if len(exps) == 1:
        return f"peftlab report: {exps[0]}"
    return "peftlab report" + (f": {', '.join(exps[:3])}{' …' if len(exps) > 3 else ''}" if exps else "")


def write_report_from_store(store_root: str | Path, out_dir: str | Path, title: str | None = None,
                            **filters: Any) -> dict[str, Path]:
    """Same as :func:`write_report` but reads ``Store(store_root).results(**filters)`` and each run's
    per-example scores (``Store.read_examples``), samples (``Store.read_samples``) and config.yaml
    (``Store.read_config``), each where the store offers it.

    The import is deferred so the report (and its tests) work without the store module.
    """
    from peftlab.store import Store

    store = Store(store_root, readonly=True)
    return write_report(store.results(**filters), Path(out_dir), title, examples=getattr(store, "read_examples", None),
                        samples=getattr(store, "read_samples", None), configs=getattr(store, "read_config", None))
