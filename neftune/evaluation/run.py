"""`neftune eval RUN_DIR [--against OTHER_RUN_DIR]`: the paper's evidence for one run.

Per eval set (held-out ShareGPT split, MT-Bench first turns, user files): generations in
AlpacaEval format (cached, resumable), answer length, diversity, similarity to the reference;
with --against, pairwise judging (offline MiniLM judge or an LLM judge) with raw and
length-controlled win rates side by side. Per run: held-out loss/perplexity (no noise), overlap
with training answers (ROUGE-L/BLEU, the paper's overfitting check) and multiple-choice
capability retention. Writes RUN_DIR/eval/{results.json, summary.md, config.yaml, generations/}.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Optional

from ..config import Config, from_dict, load_config, save_config
from ..errors import NeftuneError

PARTS = ("generate", "metrics", "loss", "overfit", "judge", "capability")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise NeftuneError(f"{path}: missing (was the run trained with neftune train?)")
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def run_config(run_dir) -> Config:
    import yaml

    p = Path(run_dir) / "config.yaml"
    if not p.exists():
        raise NeftuneError(f"{run_dir}: not a neftune run dir (no config.yaml)")
    return from_dict(yaml.safe_load(p.read_text(encoding="utf-8")))


def eval_records(run_dir, name: str, cfg: Config) -> list[dict]:
    from ..data import load_records, mtbench_records

    if name == "heldout":
        recs = _read_jsonl(Path(run_dir) / "data" / "heldout.jsonl")
    elif name == "mt-bench":
        recs = mtbench_records()
    elif name == "train":
        recs = _read_jsonl(Path(run_dir) / "data" / "train.jsonl")
    else:
        recs = load_records(name, format=cfg.data.format, columns=cfg.data.columns or None,
                            on_bad_record=cfg.data.on_bad_record, require_answer=False)
    n = cfg.eval.num_samples if name != "train" else cfg.eval.overfit_samples
    return recs[:n] if n else recs


def set_name(name: str) -> str:
    return name if name in ("heldout", "mt-bench", "train") else Path(name).stem


def _instruction(record) -> str:
    msgs = record["messages"]
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    return "\n\n".join(m["content"] for m in msgs if m["role"] != "system")


def weights_fingerprint(run_dir) -> str:
    """Size + mtime of the saved weights: a run retrained in place never reuses stale answers."""
    parts = []
    for f in sorted(Path(run_dir).glob("*.safetensors")):
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    import hashlib

    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:10]


def generations(model, tok, cfg: Config, run_dir, name: str, records: list[dict]) -> list[str]:
    """Answers of this run's model to the set (cached under eval/generations/; resumable)."""
    from ..data import prompt_text
    from .generate import generate_answers, write_alpaca_eval

    gen_dir = Path(run_dir) / "eval" / "generations"
    gen_dir.mkdir(parents=True, exist_ok=True)
    sname = set_name(name)
    e = cfg.eval
    prompts = [prompt_text(r, tok, cfg.data.template) for r in records]
    instructions = [_instruction(r) for r in records]
    generator = Path(run_dir).name
    outs = generate_answers(model, tok, prompts, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                            preset=e.preset, do_sample=e.do_sample, temperature=e.temperature, top_p=e.top_p,
                            repetition_penalty=e.repetition_penalty, seed=cfg.seed,
                            cache_path=gen_dir / f"{sname}.{weights_fingerprint(run_dir)}.partial.jsonl", generator_name=generator,
                            dataset_name=sname, instructions=instructions)
    write_alpaca_eval(gen_dir / f"{sname}.json", instructions, outs, generator=generator, dataset=sname)
    return outs


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def evaluate(cfg: Config, run_dir, against: Optional[str] = None) -> dict:
    """Evaluate RUN_DIR (and judge it against OTHER's answers). Returns the results dict."""
    from ..data import reference, tokenize_example
    from ..modeling import load_trained
    from ..train import heldout_loss
    from .metrics import Embedder, bleu, diversity, length_stats, rouge_l

    t0 = time.time()
    run = Path(run_dir)
    out = run / "eval"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    parts = set(cfg.eval.parts)
    unknown = parts - set(PARTS)
    if unknown:
        raise NeftuneError(f"eval.parts: unknown {sorted(unknown)}; choose from {PARTS}")
    model, tok, _ = load_trained(run)
    results: dict = {"run": str(run), "against": str(against) if against else None, "sets": {}}
    embedder = None

    for name in cfg.eval.sets:
        sname = set_name(name)
        records = eval_records(run, name, cfg)
        if not records:
            continue
        res: dict = {"n": len(records)}
        outs = generations(model, tok, cfg, run, name, records) if parts & {"generate", "metrics", "judge"} else None
        refs = [reference(r) for r in records]
        if outs is not None and "metrics" in parts:
            res["length"] = length_stats(outs, tok)
            res["diversity"] = diversity(outs)
            pairs = [(o, r) for o, r in zip(outs, refs) if r]
            if pairs:
                embedder = embedder or Embedder()
                sims = embedder.similarity([o for o, _ in pairs], [r for _, r in pairs])
                res["similarity_to_reference"] = float(sims.mean())
        if outs is not None and "judge" in parts and against:
            res["judge"] = judge_against(cfg, run, against, name, records, outs, refs)
        results["sets"][sname] = res

    if "loss" in parts:
        held = _read_jsonl(run / "data" / "heldout.jsonl")
        ex = []
        for r in held:
            try:
                ex.append(tokenize_example(r, tok, cfg.data.template, cfg.data.max_length, cfg.data.train_on_inputs, True))
            except NeftuneError:
                pass  # an example with no supervised token left after truncation has no loss
        hl = heldout_loss(model, ex, 8, tok.pad_token_id, cfg.data.max_length)
        results["heldout_loss"] = _finite(hl)
        results["heldout_ppl"] = _finite(math.exp(hl)) if math.isfinite(hl) and hl < 50 else None
    if "overfit" in parts and cfg.eval.overfit_samples:
        train_recs = eval_records(run, "train", cfg)
        outs = generations(model, tok, cfg, run, "train", train_recs)
        refs = [reference(r) or "" for r in train_recs]
        results["overfit"] = {"rouge_l": rouge_l(outs, refs), "bleu": bleu(outs, refs), "n": len(outs),
                              "length": length_stats(outs, tok)}
    if "capability" in parts and cfg.eval.capability_samples:
        from .capability import load_questions, mc_accuracy

        results["capability"] = mc_accuracy(model, tok, load_questions(n=cfg.eval.capability_samples), batch_size=8)
    results["wall_time_s"] = round(time.time() - t0, 1)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out / "results.json")
    (out / "summary.md").write_text(summary_markdown(results), encoding="utf-8")
    return results


def judge_against(cfg: Config, run: Path, against, name, records, outs, refs) -> dict:
    """Judge this run's answers (A) against OTHER's answers (B) to the same prompts."""
    from ..assets import cache_dir
    from ..modeling import load_trained
    from .judge import make_judge
    from .metrics import length_lists
    from .winrate import win_rate_summary

    other = Path(against)
    sname = set_name(name)
    other_file = other / "eval" / "generations" / f"{sname}.json"
    other_cfg = load_config(None, [], base=run_config(other))
    other_cfg.eval = cfg.eval  # same decoding settings for both sides
    # Always through the (cached) generator: answers decoded with other settings are never paired.
    m, t, _ = load_trained(other)
    generations(m, t, other_cfg, other, name, records)
    del m
    other_rows = json.loads(other_file.read_text())[: len(records)]
    instructions = [_instruction(r) for r in records]
    if [r["instruction"] for r in other_rows] != instructions:
        raise NeftuneError(f"{other_file}: prompts differ from {run}'s {sname} set (different eval settings?)")
    outs_b = [r["output"] for r in other_rows]
    cache = cache_dir() / "judge" / f"{cfg.eval.judge}.jsonl" if cfg.eval.judge == "llm" else None
    judge = make_judge(cfg.eval, cache_path=cache)
    if judge is None:
        return {}
    items = [{"prompt": i, "answer_a": a, "answer_b": b, "reference": ref}
             for i, a, b, ref in zip(instructions, outs, outs_b, refs)]
    verdicts = [v for v, _ in judge.judge_many(items, progress=True)]
    summary = win_rate_summary(verdicts, length_lists(outs)["chars"], length_lists(outs_b)["chars"], n_boot=cfg.eval.bootstrap,
                               seed=cfg.seed)
    summary["judge"] = cfg.eval.judge if cfg.eval.judge != "llm" else f"llm:{cfg.eval.judge_model}"
    summary["against"] = str(other)
    summary["verdicts"] = verdicts
    if hasattr(judge, "stats"):
        summary["judge_stats"] = dict(judge.stats)
    return summary


def _fmt(x, nd=2):
    return "—" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def summary_markdown(res: dict) -> str:
    lines = [f"# Evaluation of `{res['run']}`" + (f" against `{res['against']}`" if res.get("against") else ""), ""]
    lines += ["| set | n | win rate % (95% CI) | LC win rate % (95% CI) | W/L/D | avg chars (A vs B) | tokens | diversity | sim. to ref |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, s in res["sets"].items():
        j = s.get("judge") or {}
        wr = f"{_fmt(j.get('win_rate'), 1)} ({_fmt((j.get('win_rate_ci') or [None])[0], 1)}–{_fmt((j.get('win_rate_ci') or [None, None])[1], 1)})" if j else "—"
        lc = f"{_fmt(j.get('lc_win_rate'), 1)} ({_fmt((j.get('lc_win_rate_ci') or [None])[0], 1)}–{_fmt((j.get('lc_win_rate_ci') or [None, None])[1], 1)})" if j else "—"
        wld = f"{j.get('wins')}/{j.get('losses')}/{j.get('draws')}" if j else "—"
        lens = f"{_fmt(j.get('avg_len_a'), 0)} vs {_fmt(j.get('avg_len_b'), 0)}" if j else _fmt((s.get("length") or {}).get("chars_mean"), 0)
        lines.append(f"| {name} | {s['n']} | {wr} | {lc} | {wld} | {lens} | {_fmt((s.get('length') or {}).get('tokens_mean'), 1)} | "
                     f"{_fmt((s.get('diversity') or {}).get('diversity'), 3)} | {_fmt(s.get('similarity_to_reference'), 3)} |")
    lines.append("")
    if "heldout_loss" in res:
        lines.append(f"- held-out loss (no noise): {_fmt(res['heldout_loss'], 4)} (ppl {_fmt(res.get('heldout_ppl'), 2)})")
    if "overfit" in res:
        o = res["overfit"]
        lines.append(f"- overlap with training answers (n={o['n']}): ROUGE-L {_fmt(o['rouge_l'], 3)}, BLEU {_fmt(o['bleu'], 2)}")
    if "capability" in res:
        c = res["capability"]
        lines.append(f"- capability (multiple choice, n={c['n']}): accuracy {_fmt(c['accuracy'], 3)} "
                     f"(length-normalised {_fmt(c['accuracy_norm'], 3)}); source: {c['source']}")
    lines.append(f"- wall time: {res.get('wall_time_s')} s")
    return "\n".join(lines) + "\n"


def evaluate_cli(run_dir, against=None, cfg_file=None, overrides=()):
    base = run_config(run_dir)
    cfg = load_config(cfg_file, list(overrides), base=base)
    res = evaluate(cfg, run_dir, against)
    print(summary_markdown(res))
    print(f"[neftune] wrote {Path(run_dir) / 'eval' / 'results.json'} and summary.md")
    return res
