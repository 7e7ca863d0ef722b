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

DIGITS = {"win_rate": 1, "lc_win_rate": 1, "avg_chars": 0, "diversity": 3, "rouge_l": 3, "bleu": 2,
          "heldout_loss": 4, "capability": 3, "train_loss": 4, "clean_loss": 4, "train_wall_time_s": 1}
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


# ----------------------------------------------------------------------------- figures
# Each figure function takes (sweep, table, colors) and returns a matplotlib figure, or None when the
# sweep has no data for it (that figure is then left out, and an old PNG of it removed).
def fig_loss(sweep: Path, table: dict, colors: dict):
    """Training loss (noisy) and clean loss, mean over seeds at the steps every seed logged."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for r in table["rows"]:
        for key, style in (("loss", {"lw": 1.5}), ("clean_loss", {"ls": "none", "marker": "o", "ms": 5})):
            per_seed = [{m["step"]: m[key] for m in rundir.read_metrics(sweep / d) if isinstance(m.get(key), (int, float))}
                        for d in r["runs"]]
            steps = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
            if steps:
                ys = [sum(p[s] for p in per_seed) / len(per_seed) for s in steps]
                label = f"{r['name']} {'train loss (noisy)' if key == 'loss' and r['alpha'] > 0 else key.replace('_', ' ')}"
                ax.plot(steps, ys, color=colors[r["name"]], label=label, **style)
    ax.set(xlabel="step", ylabel="loss", title=f"Training loss, mean over {len(table['seeds'])} seed(s)")
    ax.legend(fontsize=8)
    return fig


def fig_heldout_loss(sweep: Path, table: dict, colors: dict):
    """Held-out loss per variant with the t-interval over seeds."""
    import matplotlib.pyplot as plt

    rows = table["rows"]
    hl = [r["metrics"]["heldout_loss"] for r in rows]
    if not any(h["mean"] is not None for h in hl):
        return None
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows) + 2), 3.5))
    ax.bar(range(len(rows)), [h["mean"] or 0 for h in hl], yerr=[h["half_width"] or 0 for h in hl], capsize=4,
           color=[colors[r["name"]] for r in rows])
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=20)
    lo = min(h["mean"] - (h["half_width"] or 0) for h in hl if h["mean"] is not None)
    hi = max(h["mean"] + (h["half_width"] or 0) for h in hl if h["mean"] is not None)
    ax.set_ylim(max(0.0, lo - 0.1 * (hi - lo + 1e-3)), hi + 0.1 * (hi - lo + 1e-3))  # differences, not 0..max
    ax.set(ylabel="held-out loss (no noise)", title="Held-out loss (mean ± 95% t-interval)")
    return fig


def fig_winrate_vs_alpha(sweep: Path, table: dict, colors: dict):
    """Win rate and LC win rate vs alpha; uniform variants joined, gaussian marked differently."""
    import matplotlib.pyplot as plt

    main = table["main_set"]
    var = [r for r in table["rows"] if r["name"] != "baseline"]
    if not any(r["metrics"][f"{main}.win_rate"]["mean"] is not None for r in var):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, k, title in zip(axes, ("win_rate", "lc_win_rate"), ("win rate", "LC win rate")):
        for dist, marker, line in (("uniform", "o", "-"), ("gaussian", "D", "none")):
            pts = sorted((r["alpha"], r["metrics"][f"{main}.{k}"], r["name"]) for r in var
                         if r["distribution"] == dist and r["metrics"][f"{main}.{k}"]["mean"] is not None)
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1]["half_width"] or 0 for p in pts],
                            marker=marker, ls=line, capsize=4, label=f"{dist} noise", mfc="white" if dist == "gaussian" else None)
                for a, s, n in pts:
                    ax.annotate(n, (a, s["mean"]), textcoords="offset points", fontsize=7,  # gaussian below: same alpha
                                xytext=(5, -11) if dist == "gaussian" else (5, 5))
        ax.axhline(50, color="gray", ls="--", label="baseline (alpha=0) = 50%")
        ax.set(xlabel="NEFTune alpha", title=f"{title} vs baseline ({main})", ylim=(0, 100),  # intervals can pass 0/100
               xlim=(-0.5, 1.1 * max(r["alpha"] for r in var) + 1))
        ax.legend(fontsize=8)
    axes[0].set_ylabel("% (mean ± 95% t-interval over seeds)")
    return fig


def fig_answer_lengths(sweep: Path, table: dict, colors: dict):
    """Answer length histograms (chars), pooled over seeds."""
    import matplotlib.pyplot as plt

    main, lengths = table["main_set"], {}
    for r in table["rows"]:
        for d in r["runs"]:
            lengths.setdefault(r["name"], []).extend(len(g.get("output", "")) for g in rundir.read_generations(sweep / d, main))
    if not any(lengths.values()):
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    top = max(max(v) for v in lengths.values() if v)
    bins = [top * i / 20 for i in range(21)] if top > 0 else 20
    for name, v in lengths.items():
        if v:
            ax.hist(v, bins=bins, histtype="step", lw=1.8, color=colors[name], label=f"{name} (mean {sum(v) / len(v):.0f})")
    ax.set(xlabel="answer length (chars)", ylabel="answers", title=f"Answer lengths on {main}, pooled over seeds")
    ax.legend(fontsize=8)
    return fig


def fig_data_size(sweep: Path, table: dict, colors: dict):
    """The chosen variant's win rates against a same-size baseline, by training-set size."""
    import matplotlib.pyplot as plt

    curve = table.get("data_curve") or []
    if not curve:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [c["n_train"] for c in curve]
    for k, label in (("win_rate", "win rate"), ("lc_win_rate", "LC win rate")):
        ax.errorbar(xs, [c[k]["mean"] for c in curve], yerr=[c[k]["half_width"] or 0 for c in curve],
                    marker="o", capsize=4, label=label)
    ax.axhline(50, color="gray", ls="--", label="same-size baseline = 50%")
    ax.set(xlabel="training examples", ylabel="% (mean ± 95% t-interval over seeds)", ylim=(0, 100),
           title=f"{table['selection']['chosen']} vs baseline by data size")
    ax.legend(fontsize=8)
    return fig


# name -> (figure function, caption); the order is the report's.
FIGURES = {
    "loss": (fig_loss, "Training loss with noise (lines) and the same batches' loss without noise (clean_loss, points)."),
    "heldout_loss": (fig_heldout_loss, "Held-out loss (no noise) per variant."),
    "winrate_vs_alpha": (fig_winrate_vs_alpha,
                         "Win rate and LC win rate against the baseline vs alpha (hollow diamonds: gaussian noise)."),
    "answer_lengths": (fig_answer_lengths, "Answer length distribution per variant."),
    "data_size": (fig_data_size, "Win rate of the chosen variant against a baseline trained on the same data size."),
}


def draw_figures(sweep: Path, table: dict, out: Path) -> dict:
    """Draws every figure that has data into out/; returns {name: png filename}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {r["name"]: plt.get_cmap("tab10")(i % 10) for i, r in enumerate(table["rows"])}
    figs = {}
    for name, (draw, _) in FIGURES.items():
        fig = draw(sweep, table, colors)
        if fig is None:
            continue
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=90)
        plt.close(fig)
        figs[name] = f"{name}.png"
    return figs


# ----------------------------------------------------------------------------- sections
# Each section function takes (sweep, table, cfg, figs) and returns its blocks.
def section_title(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    rows, seeds = table["rows"], table["seeds"]
    return [("h", 1, f"NEFTune sweep: {sweep.name}"),
            ("p", (f"Baseline (alpha=0) and {len(rows) - 1} NEFTune variant(s) x {len(seeds)} seed(s) {seeds}; every "
                  f"variant is judged pairwise against the baseline of the same seed by the {cfg.eval.judge} judge. Cells "
                  "are the mean over seeds ± the 95% t-interval half-width (just the value with one seed)."))]


def section_selection(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    return [("h", 2, "Chosen alpha"), ("p", table["selection"]["statement"]),
            ("p", (f"Selection rule: the variant with the best mean {cfg.compare.select_by} over seeds on the "
                  f"{table['main_set']} set; variants within the larger of the two seed standard errors count as tied, "
                  f"and the tie is broken by the better mean {cfg.compare.tie_break}."))]


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
            judge = ["50 (reference)"] * 2 if r["name"] == "baseline" else [fmt(m[f"{s}.win_rate"], "win_rate"),
                                                                           fmt(m[f"{s}.lc_win_rate"], "lc_win_rate")]
            cells += judge + [fmt(m[f"{s}.avg_chars"], "avg_chars"), fmt(m[f"{s}.diversity"], "diversity")]
        body.append(cells)
    head2 = ["variant", "held-out loss", "capability accuracy", "ROUGE-L to train answers", "BLEU to train answers",
             "final train loss", "final clean loss", "train wall time s"]
    body2 = []
    for r in rows:
        m = r["metrics"]
        clean = fmt(m["clean_loss"], "clean_loss") if r["alpha"] > 0 else "= train loss (no noise)"
        body2.append([r["name"], fmt(m["heldout_loss"], "heldout_loss"), fmt(m["capability"], "capability"),
                      fmt(m["rouge_l"], "rouge_l"), fmt(m["bleu"], "bleu"), fmt(m["train_loss"], "train_loss"), clean,
                      fmt(m["train_wall_time_s"], "train_wall_time_s")])
    return [("h", 2, "Results"), ("table", head, body), ("table", head2, body2),
            ("p", ("Win rates are the variant's answers against the same-seed baseline's (draws count half); the LC "
                  "(length-controlled) win rate is the predicted win rate at equal answer length, so a variant that only "
                  "writes longer answers does not look better. ROUGE-L/BLEU to training answers is the paper's "
                  "overfitting check."))]


def section_figures(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    b: list[tuple] = [("h", 2, "Figures")]
    b += [("fig", figs[k], caption) for k, (_, caption) in FIGURES.items() if k in figs]
    if "data_size" not in figs:
        b.append(("p", "Data-size curve: not run (compare.data_fractions is empty)." if not table.get("skipped_fractions")
                  else "Data-size curve: skipped (no variant could be chosen)."))
    if table.get("data_curve"):
        b.append(("table", ["data fraction", "training examples", "win rate %", "LC win rate %"],
                  [[f"{c['fraction']:g}", str(c["n_train"]), fmt(c["win_rate"], "win_rate"), fmt(c["lc_win_rate"], "lc_win_rate")]
                   for c in table["data_curve"]]))
    return b


def examples(sweep: Path, table: dict, k: int = 4) -> list[dict]:
    """The first k prompts answered by both the first seed's baseline and the chosen variant, with the verdict."""
    sel, main = table["selection"], table["main_set"]
    by = {r["name"]: r for r in table["rows"]}
    if not sel.get("chosen") or "baseline" not in by:
        return []
    base_dir, var_dir = sweep / by["baseline"]["runs"][0], sweep / by[sel["chosen"]]["runs"][0]
    base, var = rundir.read_generations(base_dir, main), rundir.read_generations(var_dir, main)
    res = rundir.read_results(var_dir)
    verdicts = ((res.get("sets", {}).get(main) or {}).get("judge") or {}).get("verdicts") or []
    word = {1.0: f"{sel['chosen']} wins", 0.0: "baseline wins", 0.5: "draw", None: "no verdict"}
    out = []
    for i, (a, v) in enumerate(zip(base, var)):
        if a["instruction"] != v["instruction"]:
            continue
        out.append({"prompt": _truncate(a["instruction"], MAX_PROMPT), "baseline": _truncate(a["output"], MAX_ANSWER),
                    "variant": _truncate(v["output"], MAX_ANSWER), "name": sel["chosen"],
                    "verdict": word.get(verdicts[i] if i < len(verdicts) else None, "no verdict")})
        if len(out) == k:
            break
    return out


def section_examples(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    ex = examples(sweep, table)
    if not ex:
        return []
    return [("h", 2, (f"Example answers: baseline vs {table['selection']['chosen']} (seed {table['seeds'][0]}, "
                     f"{table['main_set']} set)")), ("examples", ex)]


def section_runs(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    return [("h", 2, "Runs"),
            ("table", ["run dir", "seed", "training examples"],
             [[d, str(s), str(r["n_train"])] for r in table["rows"] + (table.get("fraction_rows") or [])
              for d, s in zip(r["runs"], r["seeds"])])]


def _first_summary(sweep: Path, table: dict) -> dict:
    rows = table["rows"]
    return rundir.read_summary(sweep / rows[0]["runs"][0]) if rows and rows[0]["runs"] else {}


def section_caveats(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    judge_note = ("The offline judge is a proxy, not GPT-4/AlpacaEval: it prefers the answer whose MiniLM sentence "
                  "embedding is closer to the reference answer (a draw under eval.tie_margin). It measures closeness to "
                  "the reference, not helpfulness, and says nothing on prompts without a reference."
                  if cfg.eval.judge == "offline" else
                  f"Judge: {cfg.eval.judge} ({cfg.eval.judge_model}); LLM judges favour longer answers (hence the LC win rate).")
    n_eval = cfg.eval.num_samples or "all"
    summ = _first_summary(sweep, table)
    scale = f"{summ['steps']} optimizer steps on {summ['n_train']} training examples" if summ else "a short run"
    return [("h", 2, "Caveats"),
            ("ul", [judge_note,
                    (f"Scale: {len(table['seeds'])} seed(s), {n_eval} prompts per eval set, {scale} per run; intervals "
                    "over so few seeds are wide (or absent with one seed) and the LC regression is unstable on few prompts."),
                    ("The table's intervals are over seeds; each run's own bootstrap interval over prompts is in its "
                    f"{rundir.results_path('')}."),
                    "The chosen alpha is selected and reported on the same eval set, so its win rate is optimistically biased.",
                    "Capability retention is a small multiple-choice proxy, not the full benchmark."])]


def section_config(sweep: Path, table: dict, cfg, figs: dict) -> list[tuple]:
    p = rundir.config_path(sweep)
    b = [("h", 2, "Resolved sweep config"), ("code", p.read_text(encoding="utf-8") if p.exists() else "", "yaml"),
         ("p", (f"Each run's exact config is its run dir's {rundir.CONFIG} (the sweep config + the variant's overrides, "
               "seed, output_dir)."))]
    summ = _first_summary(sweep, table)
    if summ.get("versions"):
        b += [("h", 2, "Package versions"), ("table", ["package", "version"], [[k, str(v)] for k, v in summ["versions"].items()])]
    return b


SECTIONS = (section_title, section_selection, section_results, section_figures, section_examples, section_runs,
            section_caveats, section_config)


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
JS = ("window.addEventListener('load',function(){var im=document.images,ok=0;for(var i=0;i<im.length;i++)"
      "{if(im[i].complete&&im[i].naturalWidth>0)ok++;}document.body.dataset.imagesLoaded=ok+'/'+im.length;});")


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
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(blk[2], quote=True)}">'
                         f"<figcaption>{e(blk[2])}</figcaption></figure>")
        elif kind == "code":
            parts.append(f"<pre><code>{e(blk[1])}</code></pre>")
        elif kind == "examples":
            for x in blk[1]:
                parts.append(f'<div class="ex"><div class="q">{e(x["prompt"])}</div><div class="v">judge: {e(x["verdict"])}</div>'
                             f'<div class="cols"><div><h4>baseline</h4>{e(x["baseline"])}</div>'
                             f'<div><h4>{e(x["name"])}</h4>{e(x["variant"])}</div></div></div>')
    title = e(blocks[0][2]) if blocks and blocks[0][0] == "h" else "NEFTune report"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>\n'
            f"<body>\n" + "\n".join(parts) + f"\n<script>{JS}</script>\n</body></html>\n")


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
                parts.append(f"**Prompt** (judge: {_md(x['verdict'])})\n\n{_fence(x['prompt'])}\n\n**baseline**\n\n"
                             f"{_fence(x['baseline'])}\n\n**{_md(x['name'])}**\n\n{_fence(x['variant'])}")
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
