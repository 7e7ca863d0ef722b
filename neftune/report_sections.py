"""The report's result sections (neftune/report.py renders them): title, decision, paired
differences, capped answers, alternatives, training, data size, results table, wall time; and the
number formatting they share (fmt: mean ± 95% t-interval half-width over seeds).

Each section function takes (sweep, table, cfg, figs) and returns its blocks (see report.py).
"""

from __future__ import annotations

from pathlib import Path

from . import rundir
from .figures import FIGURES, main_columns

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


def _capped_overall(table: dict) -> str:
    """Per set over every run: the mean capped fraction (the pooled one, as runs answer the same prompts)
    and the worst run, so a sweep-wide figure never hides one run's loops."""
    per_set: dict = {}
    for r in table["rows"]:
        for k, vals in (r.get("capped_fraction") or {}).items():
            per_set.setdefault(k, []).extend((d, v) for d, v in zip(r["runs"], vals) if v is not None)
    parts = []
    for k, dv in per_set.items():
        if dv:
            worst = max(dv, key=lambda x: x[1])
            parts.append(
                f"{k} {sum(v for _, v in dv) / len(dv):.1%} over {len(dv)} runs (worst {worst[1]:.1%}, {worst[0]})"
            )
    return "Over all runs: " + "; ".join(parts) + "."


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
        *([("p", _capped_overall(table))] if body else []),
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
