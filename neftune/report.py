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

DIGITS = {
    "win_rate": 1,
    "lc_win_rate": 1,
    "avg_chars": 0,
    "diversity": 3,
    "rouge_l": 3,
    "bleu": 2,
    "heldout_loss": 4,
    "capability": 3,
    "train_loss": 4,
    "clean_loss": 4,
    "train_wall_time_s": 1,
}
MAX_PROMPT, MAX_ANSWER = 400, 700


def fmt(stat: dict, key: str) -> str:
    """mean ± 95% t-interval half-width over seeds; just the value with one seed."""
    nd = DIGITS.get(key.rsplit(".", 1)[-1], 3)
    if not stat or stat.get("mean") is None:
        return "—"
    s = f"{stat['mean']:.{nd}f}"
    return s + (f" ± {stat['half_width']:.{nd}f}" if stat.get("half_width") is not None else "")


def _truncate(text: str, n: int) -> str:
    text = text.strip()
    return text if len(text) <= n else text[:n].rstrip() + f" … [truncated, {len(text)} chars in all]"


# ----------------------------------------------------------------------------- sections
# Each section function takes (sweep, table, cfg, figs) and returns its blocks.
def section_title(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    rows, seeds = table["rows"], table["seeds"]
    return [
        ("h", 1, f"NEFTune sweep: {sweep.name}"),
        (
            "p",
            (
                f"Baseline (alpha=0) and {len(rows) - 1} variant(s) x {len(seeds)} seed(s) {seeds}; every variant is "
                f"compared with the baseline of the same seed (same data order, same init): each number below is the "
                f"paired difference variant − baseline with a 95% interval, and each interval says what it resamples."
            ),
        ),
    ]


def _di(d: dict | None, nd: int = 3) -> str:
    """`+0.123 [+0.045, +0.201]`; just the difference when there is no interval."""
    if not d or d.get("diff") is None:
        return "—"
    g = f"{{:+.{nd}g}}"
    return g.format(d["diff"]) + (
        f" [{g.format(d['ci'][0])}, {g.format(d['ci'][1])}]" if d.get("ci") else " (no interval)"
    )


def section_decision(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    sel = table["selection"]
    b = [("h", 2, "Decision"), ("p", sel["statement"])]
    if sel.get("metric"):
        b.append(
            (
                "p",
                (
                    f"Rule: {sel['rule']}. compare.select_by = {sel['select_by']} → {sel['metric']}"
                    + (
                        " (the judge's continuous margin: more power than win/lose)"
                        if ".margin." in sel["metric_key"]
                        else ""
                    )
                    + f". compare.tie_break ({cfg.compare.tie_break}) is not used: ties are read "
                    "from the intervals."
                ),
            )
        )
    return b


def section_main(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    cols, rows = main_columns(table), table["rows"][1:]
    if not cols:
        return []
    body = [[r["name"], f"{r['alpha']:g}"] + [_di(r["paired"].get(k)) for k, _ in cols] for r in rows]
    how = [f"{label}: {next((r['paired'][k]['method'] for r in rows if k in r['paired']), '—')}" for k, label in cols]
    return [
        ("h", 2, "Paired differences to the baseline (variant − baseline, 95% interval)"),
        ("table", ["variant", "alpha"] + [label for _, label in cols], body),
        ("p", "What each interval resamples:"),
        ("ul", how),
        (
            "p",
            (
                "Losses: lower is better. Win rates are points above 50 (the baseline), from verdicts with that basis "
                "only. Overlap with trained answers and answer length have no better direction: NEFTune's signature "
                "is lower overlap and longer answers."
            ),
        ),
    ]


def section_alternatives(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    rows = table["rows"][1:]
    body = [
        [
            r["name"],
            f"{r['alpha']:g}",
            d["label"],
            _di(d),
            d["resolved"],
            "—" if d.get("se_prompts") is None else f"{d['se_prompts']:.3g}",
            "—" if d.get("seed_spread") is None else f"{d['seed_spread']:.3g}",
            d["method"],
        ]
        for r in rows
        for d in r["paired"].values()
    ]
    if not body:
        return []
    words = []
    for r in rows:
        res = [
            d["label"] + " (" + d["resolved"].split(": ", 1)[1] + ")"
            for d in r["paired"].values()
            if d["resolved"].startswith("resolved")
        ]
        words.append(
            f"{r['name']}: "
            + ("resolved on " + "; ".join(res) if res else "no difference to the baseline is resolved by its interval")
        )
    b = [
        ("h", 2, "NEFTune vs the alternatives"),
        (
            "p",
            (
                "Every variant (noise variants and regularizer baselines, alpha 0) against the same baseline, by the same "
                "statistics. 'resolved' = the 95% interval excludes 0; 'not resolved' = this sweep cannot tell."
            ),
        ),
        ("ul", words),
        (
            "table",
            [
                "variant",
                "alpha",
                "metric",
                "difference [95% interval]",
                "interval says",
                "AlpacaEval-convention SE over items",
                "seed spread (std of per-seed differences)",
                "interval method (what it resamples)",
            ],
            body,
        ),
    ]
    return b + ([("fig", figs["forest"], FIGURES["forest"][1])] if "forest" in figs else [])


def section_training(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    rows = [r for r in table["rows"] if r.get("clean_loss_by_epoch")]
    eps = sorted({e for r in rows for e in r["clean_loss_by_epoch"]}, key=int)
    b = [("h", 2, "Clean training loss per epoch")]
    if not rows:
        return b + [("p", f"No run logged clean_loss ({rundir.metrics_path('').name}).")]
    b.append(
        (
            "table",
            ["variant"] + [f"epoch {e}" for e in eps],
            [
                [r["name"]]
                + [f"{r['clean_loss_by_epoch'][e]:.4f}" if e in r["clean_loss_by_epoch"] else "—" for e in eps]
                for r in rows
            ],
        )
    )
    b.append(
        (
            "p",
            (
                "Clean loss: no noise, eval mode (no dropout), same batches and weights as the step; mean over the "
                "epoch's logged steps, then over seeds. The paired last-epoch difference is in the main table."
            ),
        )
    )
    return b + ([("fig", figs["clean_epochs"], FIGURES["clean_epochs"][1])] if "clean_epochs" in figs else [])


def section_capped(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    body = [
        [d, str(s), k, f"{v:.1%}" if v is not None else "—"]
        for r in table["rows"]
        for k, vals in (r.get("capped_fraction") or {}).items()
        for d, s, v in zip(r["runs"], r["seeds"], vals)
    ]
    return [
        ("h", 2, "Answers that hit the token cap"),
        ("table", ["run", "seed", "set", "capped fraction"], body)
        if body
        else ("p", "No run reports capped_fraction."),
        (
            "p",
            f"Capped = the answer reached eval.max_new_tokens ({cfg.eval.max_new_tokens}) without EOS: its length "
            "cannot grow further, so a high fraction hides length differences.",
        ),
    ]


def section_data_size(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    b: list[tuple] = [("h", 2, "Data-size study")]
    curve = table.get("data_curve") or []
    if not curve:
        return b + [
            (
                "p",
                "Not run (compare.data_fractions is empty)."
                if not table.get("skipped_fractions")
                else "Skipped (no variant had data to select on).",
            )
        ]
    keys = [
        k
        for k in dict.fromkeys([table["selection"].get("metric_key"), "heldout_nll", "clean_loss_last_epoch"])
        if k and any(k in c["paired"] for c in curve)
    ]
    labels = [next(c["paired"][k]["label"] for c in curve if k in c["paired"]) for k in keys]
    b.append(
        (
            "p",
            f"Rerun at each fraction: {', '.join(table['data_study'])} and the baseline; each difference is to "
            "the baseline trained on the same data size, same seed (intervals as in the main table).",
        )
    )
    b.append(
        (
            "table",
            ["variant", "data fraction", "training examples"] + labels,
            [
                [c["name"], f"{c['fraction']:g}", str(c["n_train"])] + [_di(c["paired"].get(k)) for k in keys]
                for c in curve
            ],
        )
    )
    return b + ([("fig", figs["data_size"], FIGURES["data_size"][1])] if "data_size" in figs else [])


def section_wall_time(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    wt = table.get("wall_time")
    if not wt:
        return []
    rows = [[k, f"{v:.1f}"] for k, v in wt["stages_s"].items()] + [
        ["other", f"{wt['other_s']:.1f}"],
        ["total", f"{wt['total_s']:.1f}"],
    ]
    if wt.get("install_s") is not None:
        rows.append(["install (before the run)", f"{wt['install_s']:.1f}"])
    return [
        ("h", 2, "Wall time"),
        ("table", ["stage", "seconds"], rows),
        ("p", wt.get("note", "") + "; the report stage's time excludes drawing this report"),
    ]


def section_results(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    rows, sets = table["rows"], table["sets"]
    head = ["variant", "alpha", "noise"]
    for s in sets:
        head += [f"win rate % ({s})", f"LC win rate % ({s})", f"avg chars ({s})", f"diversity ({s})"]
    body = []
    for r in rows:
        cells = [r["name"], f"{r['alpha']:g}", r["distribution"] if r["alpha"] > 0 else "none"]
        for s in sets:
            m = r["metrics"]
            judge = (
                ["50 (reference)"] * 2
                if r["name"] == "baseline"
                else [fmt(m[f"{s}.win_rate"], "win_rate"), fmt(m[f"{s}.lc_win_rate"], "lc_win_rate")]
            )
            cells += judge + [fmt(m[f"{s}.avg_chars"], "avg_chars"), fmt(m[f"{s}.diversity"], "diversity")]
        body.append(cells)
    head2 = [
        "variant",
        "held-out loss",
        "capability accuracy",
        "ROUGE-L to train answers",
        "BLEU to train answers",
        "final train loss",
        "final clean loss",
        "train wall time s",
    ]
    body2 = []
    for r in rows:
        m = r["metrics"]
        clean = fmt(m["clean_loss"], "clean_loss")  # logged for every run (dropout makes it differ at alpha 0 too)
        body2.append(
            [
                r["name"],
                fmt(m["heldout_loss"], "heldout_loss"),
                fmt(m["capability"], "capability"),
                fmt(m["rouge_l"], "rouge_l"),
                fmt(m["bleu"], "bleu"),
                fmt(m["train_loss"], "train_loss"),
                clean,
                fmt(m["train_wall_time_s"], "train_wall_time_s"),
            ]
        )
    return [
        ("h", 2, "Per-run values (mean over seeds ± 95% t half-width)"),
        ("table", head, body),
        ("table", head2, body2),
        (
            "p",
            (
                "Win rates are the variant's answers against the same-seed baseline's (draws count half); the LC "
                "(length-controlled) win rate is the predicted win rate at equal answer length, so a variant that only "
                "writes longer answers does not look better. ROUGE-L/BLEU to training answers is the paper's "
                "overfitting check."
            ),
        ),
    ]


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
