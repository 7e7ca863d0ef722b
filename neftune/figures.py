"""The report's figures (matplotlib, Agg): each is one function taking (sweep, table, colors) and
returning a figure, or None when the sweep has no data for it (that figure is then left out)."""

from __future__ import annotations

from pathlib import Path

from . import rundir
from .paired import BASES


# ----------------------------------------------------------------------------- figures
# Each figure function takes (sweep, table, colors) and returns a matplotlib figure, or None when the
# sweep has no data for it (that figure is then left out, and an old PNG of it removed).
def fig_loss(sweep: Path, table: dict, colors: dict):
    """Training loss (noisy) and clean loss, mean over seeds at the steps every seed logged."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for r in table["rows"]:
        for key, style in (("loss", {"lw": 1.5}), ("clean_loss", {"ls": "none", "marker": "o", "ms": 5})):
            per_seed = [
                {m["step"]: m[key] for m in rundir.read_metrics(sweep / d) if isinstance(m.get(key), (int, float))}
                for d in r["runs"]
            ]
            steps = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
            if steps:
                ys = [sum(p[s] for p in per_seed) / len(per_seed) for s in steps]
                label = (
                    f"{r['name']} {'train loss (noisy)' if key == 'loss' and r['alpha'] > 0 else key.replace('_', ' ')}"
                )
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
    ax.bar(
        range(len(rows)),
        [h["mean"] or 0 for h in hl],
        yerr=[h["half_width"] or 0 for h in hl],
        capsize=4,
        color=[colors[r["name"]] for r in rows],
    )
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
            pts = sorted(
                [
                    (r["alpha"], r["metrics"][f"{main}.{k}"], r["name"])
                    for r in var
                    if r["distribution"] == dist and r["metrics"][f"{main}.{k}"]["mean"] is not None
                ],
                key=lambda p: (p[0], p[2]),
            )  # two variants may share an alpha (e.g. noise placement)
            if pts:
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1]["mean"] for p in pts],
                    yerr=[p[1]["half_width"] or 0 for p in pts],
                    marker=marker,
                    ls=line,
                    capsize=4,
                    label=f"{dist} noise",
                    mfc="white" if dist == "gaussian" else None,
                )
                for a, s, n in pts:
                    ax.annotate(
                        n,
                        (a, s["mean"]),
                        textcoords="offset points",
                        fontsize=7,  # gaussian below: same alpha
                        xytext=(5, -11) if dist == "gaussian" else (5, 5),
                    )
        ax.axhline(50, color="gray", ls="--", label="baseline (alpha=0) = 50%")
        ax.set(
            xlabel="NEFTune alpha",
            title=f"{title} vs baseline ({main})",
            ylim=(0, 100),  # intervals can pass 0/100
            xlim=(-0.5, 1.1 * max(r["alpha"] for r in var) + 1),
        )
        ax.legend(fontsize=8)
    axes[0].set_ylabel("% (mean ± 95% t-interval over seeds)")
    return fig


def fig_answer_lengths(sweep: Path, table: dict, colors: dict):
    """Answer length histograms (chars), pooled over seeds."""
    import matplotlib.pyplot as plt

    main, lengths = table["main_set"], {}
    for r in table["rows"]:
        for d in r["runs"]:
            lengths.setdefault(r["name"], []).extend(
                len(g.get("output", "")) for g in rundir.read_generations(sweep / d, main)
            )
    if not any(lengths.values()):
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5))
    top = max(max(v) for v in lengths.values() if v)
    bins = [top * i / 20 for i in range(21)] if top > 0 else 20
    for name, v in lengths.items():
        if v:
            ax.hist(
                v, bins=bins, histtype="step", lw=1.8, color=colors[name], label=f"{name} (mean {sum(v) / len(v):.0f})"
            )
    ax.set(xlabel="answer length (chars)", ylabel="answers", title=f"Answer lengths on {main}, pooled over seeds")
    ax.legend(fontsize=8)
    return fig


def main_columns(table: dict) -> list[tuple[str, str]]:
    """(paired metric key, short label) of the report's main table and forest plot, those with data."""
    m = table["main_set"]
    have = {k for r in table["rows"] for k in r.get("paired", {})}
    wr = next((f"{m}.win_rate.{b}" for b in BASES if f"{m}.win_rate.{b}" in have), None)
    lc = next((f"{m}.lc_win_rate.{b}" for b in BASES if f"{m}.lc_win_rate.{b}" in have), None)
    cols = [
        ("clean_loss_last_epoch", "clean train loss, last epoch"),
        ("heldout_nll", "held-out loss"),
        ("overlap_rouge_l", "ROUGE-L to trained answers"),
        (f"{m}.tokens", f"answer tokens ({m})"),
        (f"{m}.diversity", f"per-answer diversity ({m})"),
        (wr, f"win rate − 50 ({wr.rsplit('.', 1)[-1]} verdicts)" if wr else ""),
        (lc, f"LC win rate − 50 ({lc.rsplit('.', 1)[-1]} verdicts, per prompt)" if lc else ""),
        ("lc_win_rate", "LC win rate − 50 (per run)"),
        ("capability", "capability accuracy"),
        ("exact_accuracy", "exact-answer accuracy"),
        ("exact_tokens", "exact-answer tokens"),
    ]
    return [(k, label) for k, label in cols if k in have]


def fig_forest(sweep: Path, table: dict, colors: dict):
    """Every variant's paired difference to the baseline with its 95% interval, one panel per metric."""
    import matplotlib.pyplot as plt

    cols, rows = main_columns(table), table["rows"][1:]
    if not cols or not rows:
        return None
    ncol = min(5, len(cols))
    nrow = -(-len(cols) // ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(2.6 * ncol + 1.2, nrow * (0.4 * len(rows) + 1.4) + 0.4), sharey=True, squeeze=False
    )
    for ax in axes.flat[len(cols) :]:
        ax.set_visible(False)
    for ax, (key, label) in zip(axes.flat, cols):
        for i, r in enumerate(rows):
            d = r["paired"].get(key)
            if d and d["diff"] is not None:
                lo, hi = d["ci"] or (d["diff"], d["diff"])
                ax.errorbar(
                    [d["diff"]],
                    [i],
                    xerr=[[d["diff"] - lo], [hi - d["diff"]]],
                    fmt="o",
                    capsize=3,
                    color=colors[r["name"]],
                    mfc=colors[r["name"]] if d["ci"] and not lo <= 0 <= hi else "white",
                )
        ax.axvline(0, color="gray", ls="--", lw=1)
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(range(len(rows)), [r["name"] for r in rows])
    axes[0][0].invert_yaxis()  # shared y: every panel lists the variants top-down
    fig.suptitle(
        "variant − baseline (same seed, paired by item id), 95% intervals; filled = interval excludes 0", fontsize=9
    )
    return fig


def fig_clean_epochs(sweep: Path, table: dict, colors: dict):
    """Clean training loss (no noise, eval mode) per epoch, mean over seeds of each run's epoch mean."""
    import matplotlib.pyplot as plt

    rows = [r for r in table["rows"] if r.get("clean_loss_by_epoch")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in rows:
        eps = sorted(r["clean_loss_by_epoch"], key=int)
        ax.plot(
            [int(e) for e in eps],
            [r["clean_loss_by_epoch"][e] for e in eps],
            marker="o",
            color=colors[r["name"]],
            label=r["name"],
        )
    ax.set(xlabel="epoch", ylabel="clean training loss", title="Clean training loss per epoch (mean over seeds)")
    ax.legend(fontsize=8)
    return fig


def fig_data_size(sweep: Path, table: dict, colors: dict):
    """Paired difference to the same-size baseline vs training-set size, with 95% intervals."""
    import matplotlib.pyplot as plt

    curve, key = table.get("data_curve") or [], (table.get("selection") or {}).get("metric_key")
    keys = [k for k in dict.fromkeys([key, "heldout_nll"]) if k and any(k in c["paired"] for c in curve)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        for name in dict.fromkeys(c["name"] for c in curve):
            pts = [(c["n_train"], c["paired"][k]) for c in curve if c["name"] == name and k in c["paired"]]
            ax.errorbar(
                [x for x, _ in pts],
                [d["diff"] for _, d in pts],
                capsize=4,
                marker="o",
                label=name,
                color=colors.get(name),
                yerr=[
                    [d["diff"] - (d["ci"] or [d["diff"]] * 2)[0] for _, d in pts],
                    [(d["ci"] or [d["diff"]] * 2)[1] - d["diff"] for _, d in pts],
                ],
            )
        ax.axhline(0, color="gray", ls="--", lw=1)
        ax.set(xlabel="training examples", title=next(c["paired"][k]["label"] for c in curve if k in c["paired"]))
        ax.title.set_fontsize(8)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("variant − same-size baseline (95% interval)")
    return fig


# name -> (figure function, caption); the order is the report's.
FIGURES = {
    "forest": (
        fig_forest,
        "Paired differences variant − baseline with 95% intervals (what each resamples: see the "
        "tables); a filled marker's interval excludes 0.",
    ),
    "clean_epochs": (
        fig_clean_epochs,
        "Clean training loss per epoch: the baseline memorising shows as a falling curve.",
    ),
    "loss": (
        fig_loss,
        "Training loss with noise (lines) and the same batches' loss without noise (clean_loss, points).",
    ),
    "heldout_loss": (fig_heldout_loss, "Held-out loss (no noise) per variant, mean ± 95% t-interval over seeds."),
    "winrate_vs_alpha": (
        fig_winrate_vs_alpha,
        "Win rate and LC win rate against the baseline vs alpha (hollow diamonds: gaussian noise).",
    ),
    "answer_lengths": (fig_answer_lengths, "Answer length distribution per variant."),
    "data_size": (fig_data_size, "Data-size study: paired difference to a baseline trained on the same data size."),
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
