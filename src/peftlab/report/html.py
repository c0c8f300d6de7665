"""A single self-contained HTML page: inline CSS, base64 images, no scripts, no network.

Per task: what to use (the recommendation and the best quality at each budget), how sure, the
results table (each row links to the configuration behind it), the plots, the configurations (the
shared fields once, then what differs per row; every field expands from its row), the per-example
view and sample outputs side by side.

Reports get mailed, archived next to papers and opened years later on air-gapped machines, so
the page must not depend on a server, a CDN or the files next to it.
"""

from __future__ import annotations

import base64
import html
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .aggregate import Aggregate, Winner, how_sure, winners
from .pareto import Recommendation, recommend, recommendation_details, recommendation_headline
from .plots import Plot
from .tables import Cell, Table

CSS = """
:root { --fg:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#ffffff; --soft:#f5f7fa;
        --accent:#2f5d8a; --best:#e3f4e8; --bad:#fdecea; --badfg:#a61b1b; }
* { box-sizing: border-box; }
body { margin:0; background:var(--soft); color:var(--fg);
       font:14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header.top { background:#1f3a56; color:#fff; padding:28px 0 22px; }
header.top h1 { margin:0 0 6px; font-size:26px; font-weight:600; letter-spacing:.2px; }
header.top .sub { color:#c7d3df; font-size:13px; }
.wrap { max-width:1240px; margin:0 auto; padding:0 20px; }
nav.toc { background:#fff; border-bottom:1px solid var(--line); padding:10px 0; font-size:13px; }
nav.toc a { color:var(--accent); text-decoration:none; margin-right:18px; }
nav.toc a:hover { text-decoration:underline; }
main { padding:8px 0 40px; }
section.card { background:#fff; border:1px solid var(--line); border-radius:8px;
               padding:20px 24px; margin:22px 0; box-shadow:0 1px 2px rgba(0,0,0,.04); }
h2 { margin:0 0 12px; font-size:19px; color:#102a43; }
h3 { margin:22px 0 8px; font-size:15px; color:#243b53; }
p.caption, .muted { color:var(--muted); font-size:12.5px; }
.stats { display:flex; flex-wrap:wrap; gap:12px; margin:6px 0 16px; }
.stat { background:var(--soft); border:1px solid var(--line); border-radius:6px;
        padding:10px 16px; min-width:120px; }
.stat .v { font-size:22px; font-weight:600; color:#102a43; }
.stat .k { font-size:11.5px; color:var(--muted); text-transform:uppercase; letter-spacing:.4px; }
.stat.bad .v { color:var(--badfg); }
ul.findings { margin:4px 0 4px 18px; padding:0; }
ul.findings li { margin:4px 0; }
.tablewrap { overflow-x:auto; margin:6px 0 4px; }
table { border-collapse:collapse; font-size:12px; width:auto; min-width:50%; }
th, td { padding:5px 8px; border-bottom:1px solid var(--line); white-space:nowrap; }
th { background:#f0f4f8; text-align:left; font-weight:600; color:#243b53; white-space:normal;
     vertical-align:bottom; border-bottom:2px solid #cbd2d9; min-width:3.5em; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
tbody tr:nth-child(even) td { background:#fafbfc; }
tbody tr:hover td { background:#eef4fb; }
td.best { background:var(--best) !important; font-weight:700; }
td .note { color:var(--muted); font-size:11px; font-weight:400; margin-left:4px; }
td.err { white-space:normal; max-width:460px; color:var(--badfg); }
td.txt { white-space:pre-wrap; min-width:10em; max-width:34em; vertical-align:top; overflow-wrap:anywhere; }
a { color:var(--accent); } td a { text-decoration:none; } td a:hover { text-decoration:underline; }
tbody tr:target td { background:#fff4c2 !important; }
details summary { cursor:pointer; color:var(--accent); font-size:11.5px; font-weight:400; }
details pre { white-space:pre-wrap; overflow-wrap:anywhere; max-width:64em; max-height:30em; overflow:auto;
              background:var(--soft); border:1px solid var(--line); border-radius:4px; padding:6px 8px;
              margin:4px 0; color:var(--fg); font:11.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
div.rec { background:#eef7f0; border-left:4px solid #3c8d52; padding:9px 14px; margin:8px 0 12px; }
div.rec p { margin:0 0 4px; } div.rec ul { margin:4px 0 2px 18px; padding:0; } div.rec li { margin:3px 0; }
p.howsure { background:var(--soft); border-left:4px solid #9fb3c8; padding:9px 14px; margin:8px 0 12px; }
.figs { display:grid; grid-template-columns:repeat(auto-fill, minmax(480px, 1fr)); gap:16px;
        margin-top:18px; }
figure { margin:0; background:#fff; border:1px solid var(--line); border-radius:6px; padding:10px;
         display:flex; flex-direction:column; }
figure.wide { grid-column:1 / -1; }
figure img { width:100%; height:auto; display:block; margin:0 auto; }
figcaption { font-size:12px; color:var(--muted); margin-top:6px; }
figcaption b { color:var(--fg); }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:11.5px;
         font-weight:600; }
.badge.yes { background:#d7f0de; color:#1b6b34; } .badge.no { background:#eceff1; color:#52606d; }
.badge.fail { background:var(--bad); color:var(--badfg); }
dl.prov { display:grid; grid-template-columns:180px 1fr; gap:6px 16px; margin:0; font-size:13px; }
dl.prov dt { color:var(--muted); } dl.prov dd { margin:0; }
code { font:12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
       background:var(--soft); padding:1px 5px; border-radius:4px; }
.warn { color:#8a5a00; }
footer { color:var(--muted); font-size:12px; padding:10px 0 30px; }
@media print { body { background:#fff; } section.card { box-shadow:none; break-inside:avoid; } }
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def slug_id(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in str(text)).strip("-").lower() or "x"


# ---------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------


def _cell_html(c: Cell, numeric: bool) -> str:
    body = esc(c.text) + (f" ± {esc(c.pm)}" if c.pm is not None else "")
    if c.link:
        body = f'<a href="#{esc(c.link)}">{body}</a>'
    if c.kind == "status":
        body = f'<span class="badge fail">{body}</span>'
    if c.kind == "verdict":
        cls = "yes" if c.text in ("better", "tied") else "fail" if c.text == "worse" else "no"
        body = f'<span class="badge {cls}">{body}</span>'
    if c.note:
        warn = " warn" if c.kind == "degenerate" else ""
        body += f'<span class="note{warn}">({esc(c.note)})</span>'
    if c.details:
        label = "traceback" if c.kind == "error" else "show all"
        body += f"<details><summary>{label}</summary><pre>{esc(c.details)}</pre></details>"
    cls = [x for x in ("num" if numeric else "", "best" if c.bold else "",
                       "err" if c.kind == "error" else "", "txt" if c.kind == "text" else "") if x]
    return f'<td class="{" ".join(cls)}">{body}</td>' if cls else f"<td>{body}</td>"


def table_html(t: Table) -> str:
    """A Table as HTML; best cells get a green background as well as bold."""
    head = "".join(f'<th class="num">{esc(c.title)}</th>' if c.numeric else f"<th>{esc(c.title)}</th>"
                   for c in t.columns)
    ids = t.row_ids or [""] * len(t.rows)
    rows = [(f'<tr id="{esc(rid)}">' if rid else "<tr>")
            + "".join(_cell_html(c, col.numeric) for c, col in zip(row, t.columns)) + "</tr>"
            for row, rid in zip(t.rows, ids)]
    cap = f'<p class="caption">{esc(t.caption)}</p>' if t.caption else ""
    return (f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>{cap}')


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG IHDR chunk (bytes 16..24), no imaging library needed."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        return 0, 0
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def image_html(plot: Plot, dpi: int = 150) -> str:
    """Embed the PNG as base64 so the page needs nothing next to it.

    The image is capped at its natural size (PNG pixels at ``dpi`` → CSS pixels at 96/in) so a
    small heatmap is not blown up to the column width, and wide figures span the whole grid row.
    """
    raw = Path(plot.png).read_bytes()
    w, h = png_size(raw)
    css_w = round(w * 96 / dpi) if w else 0
    wide = " wide" if w and h and w / h > 2.0 else ""
    style = f' style="max-width:{css_w}px"' if css_w else ""
    size = f' width="{w}" height="{h}"' if w and h else ""  # reserves the space: no layout shift, links land right
    data = base64.b64encode(raw).decode("ascii")
    return (f'<figure class="fig{wide}" id="fig-{slug_id(plot.name)}"><img alt="{esc(plot.title)}"{style}{size} '
            f'src="data:image/png;base64,{data}"><figcaption><b>{esc(plot.title)}.</b> '
            f"{esc(plot.caption)}</figcaption></figure>")


def findings(agg: Aggregate, ws: list[Winner] | None = None) -> list[str]:
    """One "how sure" paragraph per task, in plain words: who wins, what is resolved, what is not
    and what would resolve it (sample sizes included)."""
    return [how_sure(w) for w in (winners(agg) if ws is None else ws)]


def provenance(agg: Aggregate) -> dict[str, Any]:
    """What produced these numbers: commits, packages, machines, data fingerprints."""
    commits: Counter = Counter()
    packages: dict[str, Counter] = defaultdict(Counter)
    pythons: Counter = Counter()
    hosts: Counter = Counter()
    hardware: Counter = Counter()
    data: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in agg.results:
        prov = r.get("provenance") or {}
        if prov.get("git_commit"):
            commits[(str(prov["git_commit"]), bool(prov.get("git_dirty")))] += 1
        for name, ver in (prov.get("packages") or {}).items():
            packages[str(name)][str(ver)] += 1
        if prov.get("python"):
            pythons[str(prov["python"])] += 1
        if prov.get("hostname"):
            hosts[str(prov["hostname"])] += 1
        hw = prov.get("hardware")
        if isinstance(hw, dict) and hw:
            hardware[_hardware_line(hw)] += 1
        for split, info in (r.get("data") or {}).items():
            if isinstance(info, dict):
                key = (str(info.get("task") or r.get("task")), str(split))
                data[key][(str(info.get("source", "?")), str(info.get("origin", "?")),
                           str(info.get("fingerprint", "?"))[:12], info.get("count"))] += 1
    stamps = sorted(str(r[k]) for r in agg.results for k in ("started_at", "finished_at") if r.get(k))
    return {
        "commits": commits, "packages": packages, "pythons": pythons, "hosts": hosts,
        "hardware": hardware, "data": data,
        "models": Counter(str(r.get("model")) for r in agg.results if r.get("model")),
        "experiments": Counter(str(r.get("experiment")) for r in agg.results if r.get("experiment")),
        "time_range": (stamps[0], stamps[-1]) if stamps else None,
    }


def _hardware_line(hw: dict) -> str:
    """Compact one-line hardware description from whatever keys the runner recorded."""
    parts = []
    for k in ("gpu", "gpu_name", "device", "cuda_device", "cpu", "cpu_model", "platform"):
        if hw.get(k):
            parts.append(str(hw[k]))
    if not parts:
        parts = [f"{k}={v}" for k, v in sorted(hw.items()) if not isinstance(v, (dict, list))][:5]
    return " · ".join(parts) or "?"


def _counts(c: Counter, code: bool = False) -> str:
    if not c:
        return '<span class="muted">not recorded</span>'
    fmt = (lambda x: f"<code>{esc(x)}</code>") if code else esc
    return ", ".join(f"{fmt(k)} <span class='muted'>×{n}</span>" for k, n in c.most_common())


def _provenance_html(agg: Aggregate) -> str:
    p = provenance(agg)
    commits = Counter({f"{c[:12]}{' (dirty)' if dirty else ''}": n for (c, dirty), n in p["commits"].items()})
    rows = [
        ("Git commits", _counts(commits, code=True)
         + (' <span class="warn">— several commits: numbers may not be comparable</span>'
            if len({c for c, _ in p["commits"]}) > 1 else "")),
        ("Experiments", _counts(p["experiments"])),
        ("Models", _counts(p["models"])),
        ("Python", _counts(p["pythons"])),
        ("Hosts", _counts(p["hosts"])),
        ("Hardware", _counts(p["hardware"])),
    ]
    if p["time_range"]:
        rows.append(("Time span", f"{esc(p['time_range'][0])} → {esc(p['time_range'][1])}"))
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in rows)
    pk = "".join(
        f"<tr><td><code>{esc(name)}</code></td><td>{_counts(vers, code=True)}"
        + (' <span class="warn">(mixed versions)</span>' if len(vers) > 1 else "") + "</td></tr>"
        for name, vers in sorted(p["packages"].items()))
    data = "".join(
        f"<tr><td>{esc(t)}</td><td>{esc(s)}</td><td>"
        + "<br>".join(f"{esc(src)} · <code>{esc(origin)}</code> · n={esc(cnt)} · "
                      f"<code>{esc(fp)}</code> <span class='muted'>×{n}</span>"
                      for (src, origin, fp, cnt), n in c.most_common())
        + (' <span class="warn">(several datasets)</span>' if len(c) > 1 else "") + "</td></tr>"
        for (t, s), c in sorted(p["data"].items()))
    out = f'<dl class="prov">{dl}</dl>'
    if pk:
        out += ("<h3>Packages</h3><div class='tablewrap'><table><thead><tr><th>Package</th>"
                f"<th>Versions seen</th></tr></thead><tbody>{pk}</tbody></table></div>")
    if data:
        out += ("<h3>Data</h3><div class='tablewrap'><table><thead><tr><th>Task</th><th>Split</th>"
                "<th>Source · origin · count · fingerprint</th></tr></thead>"
                f"<tbody>{data}</tbody></table></div>")
    return out


def _failures_html(agg: Aggregate, failures: Table | None) -> str:
    if failures is None:
        text = '<p class="muted">No failed, diverged or cancelled runs.</p>'
    else:
        text = table_html(failures)
    if agg.running:
        text += (f'<p class="muted">{len(agg.running)} run(s) still marked "running" are not '
                 "included anywhere.</p>")
    return text


def _stat_boxes(agg: Aggregate) -> str:
    statuses = Counter(str(r.get("status")) for r in agg.results)
    n_failed = len(agg.failures)
    boxes = [("Runs", len(agg.results), ""), ("OK", statuses.get("ok", 0), ""),
             ("Failed / excluded", n_failed, "bad" if n_failed else ""),
             ("Tasks", len(agg.tasks), ""), ("Methods", len({g.label for g in agg.groups}), ""),
             ("Configurations", len(agg.groups), "")]
    return '<div class="stats">' + "".join(
        f'<div class="stat {cls}"><div class="v">{v}</div><div class="k">{esc(k)}</div></div>'
        for k, v, cls in boxes) + "</div>"


# ---------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------


def render_html(agg: Aggregate, tables: list[Table], plots: list[Plot], title: str,
                ws: list[Winner] | None = None, recs: list[Recommendation] | None = None) -> str:
    """The whole page as a string."""
    by_name = {t.name: t for t in tables}
    ws = winners(agg) if ws is None else ws
    recs = [recommend(agg, w) for w in ws] if recs is None else recs
    by_task = {r.winner.task: r for r in recs}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    toc = ['<a href="#summary">Summary</a>'] + [
        f'<a href="#task-{slug_id(t)}">{esc(t)}</a>' for t in agg.tasks] + [
        '<a href="#failures">Failed runs</a>', '<a href="#provenance">Provenance</a>']
    parts = [f'<section class="card" id="summary"><h2>Summary</h2>{_stat_boxes(agg)}']
    if recs:
        parts.append('<h3>What to use</h3><ul class="findings">' + "".join(
            f'<li>{esc(recommendation_headline(r))} <a href="#task-{slug_id(r.winner.task)}">why, and the cheaper '
            "choices</a></li>" for r in recs) + "</ul>")
    fs = findings(agg, ws)
    if fs:
        parts.append('<h3>How sure?</h3><ul class="findings">' + "".join(f"<li>{esc(s)}</li>" for s in fs) + "</ul>")
    elif not agg.results:
        parts.append('<p class="muted">No results were given to the report.</p>')
    for name in ("winners", "method_by_task"):
        if name in by_name:
            parts.append(f"<h3>{esc(by_name[name].title)}</h3>{table_html(by_name[name])}")
    parts.append("</section>")
    for task in agg.tasks:
        sure = [how_sure(w) for w in (ws if ws is not None else []) if w.task == task]
        rec = by_task.get(task)
        parts.append(_task_section(agg, task, by_name, [p for p in plots if p.task == task], sure,
                                   None if rec is None else (recommendation_headline(rec),
                                                             recommendation_details(agg, rec))))
    parts.append(f'<section class="card" id="failures"><h2>Failed runs</h2>'
                 f"{_failures_html(agg, by_name.get('failed_runs'))}</section>")
    if agg.notes:
        parts.append('<section class="card" id="notes"><h2>Data notes</h2><ul class="findings">'
                     + "".join(f'<li class="warn">{esc(n)}</li>' for n in agg.notes) + "</ul></section>")
    parts.append(f'<section class="card" id="provenance"><h2>Provenance</h2>{_provenance_html(agg)}</section>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style></head>
<body>
<header class="top"><div class="wrap"><h1>{esc(title)}</h1>
<div class="sub">peftlab comparison report · generated {esc(now)} · {len(agg.results)} runs ·
means over seeds with 95% intervals over seeds × test examples (two-level bootstrap)</div></div></header>
<nav class="toc"><div class="wrap">{"".join(toc)}</div></nav>
<main><div class="wrap">
{"".join(parts)}
<footer>Generated by <code>peftlab.report</code>. Only runs with status <code>ok</code> enter
means, intervals and plots. CSV (raw numbers), LaTeX tables, and PNG/SVG figures are written next
to this file in <code>tables/</code> and <code>plots/</code>.</footer>
</div></main></body></html>
"""


#: A task section's parts after its results table and plots: (heading, table name prefixes, text when absent).
_TASK_PARTS = (
    ("Configurations", ("config_common_", "config_"), None),
    ("Example by example", ("head_to_head_", "disagreements_"),
     "No per-example scores for two or more methods under one statistic: nothing to compare example by example."),
    ("Samples", ("samples_",), None),
    ("Forgetting and retention", ("forgetting_",), None),
)


def _task_section(agg: Aggregate, task: str, by_name: dict[str, Table], plots: list[Plot],
                  sure: list[str] | None = None, recommendation: tuple[str, list[str]] | None = None) -> str:
    primary = agg.primary.get(task)
    d = agg.direction(task, primary) if primary else None
    sub = (f'<p class="muted">Primary metric: <b>{esc(primary)}</b> '
           f"({esc(d or '?')} is better).</p>") if primary else ""
    out = [f'<section class="card" id="task-{slug_id(task)}"><h2>Task: {esc(task)}</h2>{sub}']
    if recommendation:
        headline, details = recommendation
        out.append(f'<div class="rec"><p><b>What to use.</b> {esc(headline)}</p>'
                   + ("<ul>" + "".join(f"<li>{esc(d)}</li>" for d in details) + "</ul>" if details else "")
                   + "</div>")
    out += [f'<p class="howsure"><b>How sure?</b> {esc(s)}</p>' for s in (sure or [])]
    for name in (f"task_{task}", f"decoding_{task}", f"best_at_budget_{task}"):
        if name in by_name:
            t = by_name[name]
            out.append((f"<h3>{esc(t.title)}</h3>" if name != f"task_{task}" else "") + table_html(t))
    if plots:
        out.append('<div class="figs">' + "".join(image_html(p) for p in plots) + "</div>")
    else:
        out.append('<p class="muted">No plottable data for this task.</p>')
    for heading, prefixes, absent in _TASK_PARTS:
        found = [by_name[p + task] for p in prefixes if p + task in by_name]
        if not found and absent is None:
            continue
        out.append(f'<h3 id="{slug_id(heading)}-{slug_id(task)}">{esc(heading)}</h3>')
        out += [(f"<h4>{esc(t.title.split(' — ', 1)[-1].capitalize())}</h4>" if len(found) > 1 else "")
                + table_html(t) for t in found]
        if not found:
            out.append(f'<p class="muted">{esc(absent)}</p>')
    out.append("</section>")
    return "".join(out)
