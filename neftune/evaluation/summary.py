"""eval/summary.md: one evaluation's results.json as a Markdown table (per set: win rates with their
intervals, W/L/D, lengths, diversity, similarity) and one line per single-model metric."""

from __future__ import annotations


def _fmt(x, nd=2):
    return "—" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def summary_markdown(res: dict) -> str:
    lines = [f"# Evaluation of `{res['run']}`" + (f" against `{res['against']}`" if res.get("against") else ""), ""]
    lines += [
        "| set | n | win rate % (95% CI) | LC win rate % (95% CI) | W/L/D | avg chars (A vs B) | tokens | diversity | sim. to ref |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in res["sets"].items():
        j = s.get("judge") or {}
        wr = (
            f"{_fmt(j.get('win_rate'), 1)} ({_fmt((j.get('win_rate_ci') or [None])[0], 1)}–{_fmt((j.get('win_rate_ci') or [None, None])[1], 1)})"
            if j
            else "—"
        )
        lc = (
            f"{_fmt(j.get('lc_win_rate'), 1)} ({_fmt((j.get('lc_win_rate_ci') or [None])[0], 1)}–{_fmt((j.get('lc_win_rate_ci') or [None, None])[1], 1)})"
            if j
            else "—"
        )
        wld = f"{j.get('wins')}/{j.get('losses')}/{j.get('draws')}" if j else "—"
        lens = (
            f"{_fmt(j.get('avg_len_a'), 0)} vs {_fmt(j.get('avg_len_b'), 0)}"
            if j
            else _fmt((s.get("length") or {}).get("chars_mean"), 0)
        )
        lines.append(
            f"| {name} | {s['n']} | {wr} | {lc} | {wld} | {lens} | {_fmt((s.get('length') or {}).get('tokens_mean'), 1)} | "
            f"{_fmt((s.get('diversity') or {}).get('diversity'), 3)} | {_fmt(s.get('similarity_to_reference'), 3)} |"
        )
    lines.append("")
    if "heldout_loss" in res:
        lines.append(
            f"- held-out loss (no noise): {_fmt(res['heldout_loss'], 4)} (ppl {_fmt(res.get('heldout_ppl'), 2)})"
        )
    if "train_clean" in res:
        t = res["train_clean"]
        lines.append(f"- clean loss on trained examples (n={len(t['items']['id'])}): {_fmt(t['loss'], 4)}")
    capped = {k: s["capped_fraction"] for k, s in res["sets"].items() if s.get("capped_fraction") is not None}
    if capped:
        lines.append("- answers that hit eval.max_new_tokens: " + ", ".join(f"{k} {v:.0%}" for k, v in capped.items()))
    if "overfit" in res:
        o = res["overfit"]
        lines.append(
            f"- overlap with training answers (n={o['n']}): ROUGE-L {_fmt(o['rouge_l'], 3)}, BLEU {_fmt(o['bleu'], 2)}"
            + (f"; source: {o['source']}" if o.get("source") else "")
        )
    if "exact" in res:
        x = res["exact"]
        lines.append(
            f"- exact-answer accuracy (n={x['n']}): {_fmt(x['accuracy'], 3)}, "
            f"{_fmt((x.get('length') or {}).get('tokens_mean'), 1)} tokens per answer"
        )
    if "capability" in res:
        c = res["capability"]
        lines.append(
            f"- capability (multiple choice, n={c['n']}): accuracy {_fmt(c['accuracy'], 3)} "
            f"(length-normalised {_fmt(c['accuracy_norm'], 3)}); source: {c['source']}"
        )
    lines.append(f"- wall time: {res.get('wall_time_s')} s")
    return "\n".join(lines) + "\n"
