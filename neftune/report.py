"""The sweep report: report/index.html (self-contained: inline CSS, figures as base64 data URIs, no
external URL, opens offline), report/report.md (same content, figures as relative PNG links) and
report/*.png (matplotlib, Agg).

The content is built once as a list of small blocks (heading, paragraph, table, figure, code,
examples) and rendered twice, so the HTML and the Markdown can never disagree. Every string that
comes from data (prompts, answers, names, configs) is escaped for the format it lands in. Each
figure is one function (FIGURES) and each section is one function (SECTIONS); the report reads the
sweep's files through neftune.rundir and the table compare.json holds.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from . import rundir
from .figures import FIGURES, draw_figures, main_columns  # noqa: F401  (importable from here)
from .report_sections import (  # noqa: F401  (importable from here)
    DIGITS,
    MAX_ANSWER,
    MAX_PROMPT,
    _truncate,
    fmt,
    section_alternatives,
    section_capped,
    section_data_size,
    section_decision,
    section_main,
    section_results,
    section_title,
    section_training,
    section_wall_time,
)

# ----------------------------------------------------------------------------- sections
# Each section function takes (sweep, table, cfg, figs) and returns its blocks; the result sections
# (title .. wall time) are in report_sections.py.
PLACED = ("forest", "clean_epochs", "data_size")  # drawn inside their own sections


def section_figures(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    return [("h", 2, "Figures")] + [
        ("fig", figs[k], caption) for k, (_, caption) in FIGURES.items() if k in figs and k not in PLACED
    ]


def examples(sweep: Path, table: dict, k: int = 4) -> list[dict]:
    """The first k prompts answered by both the first seed's baseline and the chosen variant, with the verdict."""
    main, by = table["main_set"], {r["name"]: r for r in table["rows"]}
    name = table["selection"].get("chosen") or next(iter(table.get("data_study") or []), None)
    if not name or "baseline" not in by:
        return []
    base_dir, var_dir = sweep / by["baseline"]["runs"][0], sweep / by[name]["runs"][0]
    base, var = rundir.read_generations(base_dir, main), rundir.read_generations(var_dir, main)
    res = rundir.read_results(var_dir)
    verdicts = ((res.get("sets", {}).get(main) or {}).get("judge") or {}).get("verdicts") or []
    word = {1.0: f"{name} wins", 0.0: "baseline wins", 0.5: "draw", None: "no verdict"}
    out = []
    for i, (a, v) in enumerate(zip(base, var)):
        if a["instruction"] != v["instruction"]:
            continue
        out.append(
            {
                "prompt": _truncate(a["instruction"], MAX_PROMPT),
                "baseline": _truncate(a["output"], MAX_ANSWER),
                "variant": _truncate(v["output"], MAX_ANSWER),
                "name": name,
                "verdict": word.get(verdicts[i] if i < len(verdicts) else None, "no verdict"),
            }
        )
        if len(out) == k:
            break
    return out


def section_examples(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    ex = examples(sweep, table)
    if not ex:
        return []
    return [
        ("h", 2, (f"Example answers: baseline vs {ex[0]['name']} (seed {table['seeds'][0]}, {table['main_set']} set)")),
        ("examples", ex),
    ]


def section_runs(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    return [
        ("h", 2, "Runs"),
        (
            "table",
            ["run dir", "seed", "training examples"],
            [
                [d, str(s), str(r["n_train"])]
                for r in table["rows"] + (table.get("fraction_rows") or [])
                for d, s in zip(r["runs"], r["seeds"])
            ],
        ),
    ]


def _first_summary(sweep: Path, table: dict) -> dict:
    rows = table["rows"]
    return rundir.read_summary(sweep / rows[0]["runs"][0]) if rows and rows[0]["runs"] else {}


def _judge_caveats(table: dict, cfg) -> list[str]:
    out = []
    for sname, n in (table.get("judge_notes") or {}).items():
        counts = ", ".join(f"{v} {k}" for k, v in n["verdicts_by_basis"].items() if k != "none") or "none"
        out.append(
            f"Judge on {sname}: {', '.join(n['judge'])}; verdicts by basis: {counts}. "
            + (f"{n['no_basis']} verdict(s) had no basis and are in no win rate. " if n["no_basis"] else "")
            + (
                "Prompt-proxy verdicts prefer the answer closer to the prompt (no reference answer exists): "
                "they measure topicality, not correctness. "
                if n["verdicts_by_basis"].get("prompt-proxy")
                else ""
            )
        )
        for u in n["lc_unstable"]:
            out.append(f"LC win rate unstable in {u['run']} ({sname}): {u['warning']}")
    if cfg.eval.judge == "offline":
        out.append("The offline judge is a proxy, not GPT-4/AlpacaEval: MiniLM embedding similarity, not helpfulness.")
    elif cfg.eval.judge == "llm":
        out.append(f"Judge: llm ({cfg.eval.judge_model}); LLM judges favour longer answers (hence the LC win rate).")
    return out


def section_caveats(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    seeds, rows = table["seeds"], table["rows"][1:]
    ds = [d for r in rows for d in r.get("paired", {}).values()]
    held = next((r["paired"]["heldout_nll"]["method"] for r in rows if "heldout_nll" in r.get("paired", {})), None)
    summ = _first_summary(sweep, table)
    scale = f"{summ['steps']} optimizer steps on {summ['n_train']} training examples" if summ else "unknown steps"
    notes = _judge_caveats(table, cfg) + [
        (
            f"{len(seeds)} seed(s), {scale} per run. "
            + (
                "With one seed no interval resamples seeds: seed-to-seed variation is not in any interval."
                if len(seeds) < 2
                else f"Per-item intervals resample the {len(seeds)} seeds, then items within each seed."
            )
        ),
        (
            f"The held-out loss interval resamples held-out examples (per-example NLL, paired by id): {held}."
            if held
            else "No run has per-example held-out NLL: the held-out loss is per run only (see the per-run table)."
        ),
        "The LC win rate difference is a t interval over seeds of per-run LC fits: prompts are not resampled in it.",
        f"{sum(d.get('n_dropped') or 0 for d in ds)} item pair(s) had a missing side and were dropped (counted per "
        f"metric in {rundir.compare_path('').name}, n_dropped).",
        "The decision and the reported differences use the same eval set, so the chosen variant's difference is "
        "optimistically biased.",
        "Capability retention is a small multiple-choice proxy, not the full benchmark.",
    ]
    return [("h", 2, "Caveats"), ("ul", notes)]


def section_config(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    p = rundir.config_path(sweep)
    b = [
        ("h", 2, "Resolved sweep config"),
        ("code", p.read_text(encoding="utf-8") if p.exists() else "", "yaml"),
        (
            "p",
            (
                f"Each run's exact config is its run dir's {rundir.CONFIG} (the sweep config + the variant's overrides, "
                "seed, output_dir)."
            ),
        ),
    ]
    summ = _first_summary(sweep, table)
    if summ.get("versions"):
        b += [
            ("h", 2, "Package versions"),
            ("table", ["package", "version"], [[k, str(v)] for k, v in summ["versions"].items()]),
        ]
    return b


SECTIONS = (
    section_title,
    section_decision,
    section_main,
    section_capped,
    section_alternatives,
    section_training,
    section_data_size,
    section_results,
    section_figures,
    section_examples,
    section_wall_time,
    section_runs,
    section_caveats,
    section_config,
)


def build_blocks(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    """The whole report as blocks, section by section (rendered to both HTML and Markdown)."""
    return [blk for section in SECTIONS for blk in section(sweep, table, cfg, figs)]


# ----------------------------------------------------------------------------- rendering
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:24px auto;padding:0 16px;
color:#1d1d1f;line-height:1.45}
h1{font-size:1.7em;border-bottom:2px solid #ddd;padding-bottom:6px}h2{margin-top:1.8em;border-bottom:1px solid #eee}
.tw{overflow-x:auto}table{border-collapse:collapse;margin:10px 0;font-size:.88em}
th,td{border:1px solid #d0d0d0;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f3f4f6;white-space:normal;vertical-align:bottom}
td:first-child,th:first-child{text-align:left}tr:nth-child(even) td{background:#fafafa}
figure{margin:14px 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.88em;color:#555}
pre{background:#f6f8fa;border:1px solid #e1e4e8;padding:10px;overflow-x:auto;font-size:.82em}
.ex{border:1px solid #ddd;border-radius:6px;margin:12px 0;padding:8px 10px}
.ex .q{font-weight:600;white-space:pre-wrap;margin-bottom:6px}.ex .v{font-size:.85em;color:#555}
.ex .cols{display:grid;grid-template-columns:1fr 1fr;gap:10px}
.ex .cols div{background:#f8f8f8;padding:6px 8px;white-space:pre-wrap;overflow-wrap:anywhere;font-size:.88em}
.ex h4{margin:0 0 4px 0;font-size:.85em;color:#444}
"""
# Lets a headless browser (the report test) check that every embedded figure decoded.
JS = (
    "window.addEventListener('load',function(){var im=document.images,ok=0;for(var i=0;i<im.length;i++)"
    "{if(im[i].complete&&im[i].naturalWidth>0)ok++;}document.body.dataset.imagesLoaded=ok+'/'+im.length;});"
)


def to_html(blocks, out: Path) -> str:
    e = html.escape
    parts = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            parts.append(f"<h{blk[1]}>{e(blk[2])}</h{blk[1]}>")
        elif kind == "p":
            parts.append(f"<p>{e(blk[1])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in blk[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in blk[1])
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in blk[2])
            parts.append(f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')
        elif kind == "fig":
            data = base64.b64encode((out / blk[1]).read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{e(blk[2], quote=True)}">'
                f"<figcaption>{e(blk[2])}</figcaption></figure>"
            )
        elif kind == "code":
            parts.append(f"<pre><code>{e(blk[1])}</code></pre>")
        elif kind == "examples":
            for x in blk[1]:
                parts.append(
                    f'<div class="ex"><div class="q">{e(x["prompt"])}</div><div class="v">judge: {e(x["verdict"])}</div>'
                    f'<div class="cols"><div><h4>baseline</h4>{e(x["baseline"])}</div>'
                    f"<div><h4>{e(x['name'])}</h4>{e(x['variant'])}</div></div></div>"
                )
    title = e(blocks[0][2]) if blocks and blocks[0][0] == "h" else "NEFTune report"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>\n'
        f"<body>\n" + "\n".join(parts) + f"\n<script>{JS}</script>\n</body></html>\n"
    )


def _md(text: str) -> str:
    """Escape Markdown/HTML-significant characters in a line of data text."""
    return re.sub(r"([\\`*_\[\]<>|#])", r"\\\1", text).replace("\n", " ")


def _fence(text: str, lang: str = "text") -> str:
    """A code fence longer than any backtick run inside, so data can never close it early."""
    ticks = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def to_markdown(blocks) -> str:
    parts = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            parts.append("#" * blk[1] + " " + _md(blk[2]))
        elif kind == "p":
            parts.append(_md(blk[1]))
        elif kind == "ul":
            parts.append("\n".join(f"- {_md(x)}" for x in blk[1]))
        elif kind == "table":
            lines = ["| " + " | ".join(_md(h) for h in blk[1]) + " |", "|" + "---|" * len(blk[1])]
            lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in blk[2]]
            parts.append("\n".join(lines))
        elif kind == "fig":
            parts.append(f"![{_md(blk[2])}]({blk[1]})\n\n*{_md(blk[2])}*")
        elif kind == "code":
            parts.append(_fence(blk[1], blk[2]))
        elif kind == "examples":
            for x in blk[1]:
                parts.append(
                    f"**Prompt** (judge: {_md(x['verdict'])})\n\n{_fence(x['prompt'])}\n\n**baseline**\n\n"
                    f"{_fence(x['baseline'])}\n\n**{_md(x['name'])}**\n\n{_fence(x['variant'])}"
                )
    return "\n\n".join(parts) + "\n"


def write_report(sweep_dir, table: dict, cfg) -> Path:
    """Writes report/{index.html, report.md, *.png} under the sweep dir; returns index.html's path."""
    sweep = Path(sweep_dir)
    out = rundir.report_dir(sweep)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # a figure that no longer has data must not linger
        old.unlink()
    figs = draw_figures(sweep, table, out)
    blocks = build_blocks(sweep, table, cfg, figs)
    rundir.atomic_write(out / "report.md", to_markdown(blocks))
    rundir.atomic_write(out / "index.html", to_html(blocks, out))
    return out / "index.html"
