"""`neftune eval RUN_DIR [--against OTHER_RUN_DIR]`: the paper's evidence for one run, in stages.

1. generate (`generate_stage`): this run's model answers every eval set (held-out split, MT-Bench
   first turns, user files) in AlpacaEval format, cached by weights and decoding settings and
   resumable, plus the single-model metrics: answer length, diversity, similarity to the
   reference, held-out loss/perplexity (no noise), overlap with training answers (ROUGE-L/BLEU,
   the paper's overfitting check) and multiple-choice capability retention -> eval/scores.json.
2. judge (`judge_stage`, in evaluation/judging.py; with --against): this run's saved answers (A)
   against OTHER's saved answers (B), read from the two generation files, with raw and
   length-controlled win rates. It never loads OTHER's model and never writes into OTHER's dir
   -> eval/judgments/<set>.json (in this run's dir).
3. results (`write_results`): both merged -> eval/results.json, summary.md, config.yaml.

Each stage is reused when its inputs are unchanged (same weights and settings; same two answer files
and judge), so an interrupted or repeated evaluation redoes only what is missing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections import Counter
from pathlib import Path

from .. import rundir
from ..config import Config, load_config, to_dict
from ..config_typing import differing_keys
from ..errors import ConfigError, NeftuneError
from ..rundir import weights_fingerprint  # noqa: F401  (kept importable from here)
from .items import capped_fraction, exact_results, example_losses, item_ids, train_clean, trained_records
from .judging import _judge_identity, _judge_set, _make_judge, judge_stage, other_answers  # noqa: F401  (stage 2)
from .sets import BUILTIN, EVAL_DATA_KEYS, PARTS, check_sets, eval_records, set_name  # noqa: F401  (importable from here)
from .sets import check_parts as _check_parts
from .summary import _fmt, summary_markdown  # noqa: F401  (importable from here)

# EvalConfig keys that only change the judging stage, never the answers or single-model metrics.
JUDGE_ONLY = (
    "judge",
    "judge_base_url",
    "judge_model",
    "judge_api_key_env",
    "judge_max_retries",
    "judge_timeout",
    "tie_margin",
    "bootstrap",
)
# EvalConfig keys that change how fast answers are made, never what they are (tests gate the tokens).
SPEED_ONLY = ("pack_weights",)


def run_config(run_dir) -> Config:
    return rundir.read_config(run_dir)


def _instruction(record) -> str:
    msgs = record["messages"]
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    return "\n\n".join(m["content"] for m in msgs if m["role"] != "system")


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def decoding_settings(cfg: Config) -> dict:
    """What decides an answer besides the weights and the prompt: two runs' answers are only paired
    when these are equal."""
    e = cfg.eval
    d = {
        "preset": e.preset,
        "max_new_tokens": e.max_new_tokens,
        "do_sample": e.do_sample,
        "repetition_penalty": e.repetition_penalty,
    }
    if e.do_sample:
        d.update(temperature=e.temperature, top_p=e.top_p, seed=cfg.seed)
    return d


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


# ----------------------------------------------------------------------------- stage 1: generate
def generations(
    model, tok, cfg: Config, run_dir, name: str, records: list[dict], capped: list | None = None
) -> list[str]:
    """Answers of this run's model to the set: eval/generations/<set>.json (AlpacaEval format) plus
    <set>.meta.json saying how they were made (cached per weights and settings; resumable)."""
    from ..data import prompt_text
    from .generate import generate_answers, write_alpaca_eval

    run, sname, e = Path(run_dir), set_name(name), cfg.eval
    prompts = [prompt_text(r, tok, cfg.data.template) for r in records]
    instructions = [_instruction(r) for r in records]
    fingerprint = rundir.weights_fingerprint(run)
    outs = generate_answers(
        model,
        tok,
        prompts,
        max_new_tokens=e.max_new_tokens,
        batch_size=e.batch_size,
        pack_weights=e.pack_weights,
        preset=e.preset,
        do_sample=e.do_sample,
        temperature=e.temperature,
        top_p=e.top_p,
        repetition_penalty=e.repetition_penalty,
        seed=cfg.seed,
        cache_path=rundir.generations_cache_path(run, sname, fingerprint),
        generator_name=run.name,
        dataset_name=sname,
        instructions=instructions,
        capped=capped,
    )
    write_alpaca_eval(rundir.generations_path(run, sname), instructions, outs, generator=run.name, dataset=sname)
    rundir.write_json(
        rundir.generations_meta_path(run, sname),
        {
            "set": sname,
            "n": len(outs),
            "decoding": decoding_settings(cfg),
            "weights": fingerprint,
            "template": cfg.data.template,
            "instructions_sha256": _sha(instructions),
        },
    )
    return outs


def _generation_identity(cfg: Config, run: Path) -> dict:
    """Everything stage 1's output depends on: the weights and every eval setting but the judge's."""
    e = {k: v for k, v in to_dict(cfg.eval).items() if k not in JUDGE_ONLY + SPEED_ONLY}
    identity = {"weights": rundir.weights_fingerprint(run), "eval": e, "seed": cfg.seed, "template": cfg.data.template}
    # A data file's records as read now (its prompts and references, after data.format/columns/
    # on_bad_record): an edited file is answered and scored again. Built-in sets are fixed by the run
    # (weights) or the package; only runs with file sets carry the key, so older identities still match.
    files = {set_name(s): _sha(eval_records(run, s, cfg)) for s in map(str, cfg.eval.sets) if s not in BUILTIN}
    if files:
        identity["files"] = files
    return identity


def _heldout_loss(model, tok, cfg: Config, run: Path) -> dict:
    held = example_losses(model, tok, cfg, rundir.read_records(run, "heldout"))
    hl = held["loss"]
    return {
        "heldout_loss": hl,
        "heldout_ppl": _finite(math.exp(hl)) if hl is not None and hl < 50 else None,
        "heldout": held,
    }


def _report_skipped(path, skipped: Counter, records: list) -> None:
    """A data file's skipped records (data.on_bad_record=skip) are said, not silently dropped."""
    if skipped:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
        print(f"[neftune] eval set {set_name(path)}: skipped {sum(skipped.values())} bad records of {path} ({counts})")
    if not records:
        raise NeftuneError(f"{path}: no usable eval records (skipped: {dict(skipped)})")


def generate_stage(cfg: Config, run_dir) -> tuple[dict, bool]:
    """This run's answers and single-model metrics -> eval/scores.json. Returns (scores, reused)."""
    from ..data import reference
    from ..modeling import load_trained
    from .metrics import Embedder, bleu, diversity, length_lists, length_stats, rouge_l, rouge_l_scores

    run, parts = Path(run_dir), _check_parts(cfg)
    check_sets(cfg)  # one slot per set, refused before any generation
    identity = _generation_identity(cfg, run)
    saved = rundir.read_json(rundir.scores_path(run))
    if saved.get("identity") == identity and all(
        rundir.generations_path(run, s).exists() for s in saved.get("generated", [])
    ):
        return saved, True
    t0 = time.time()
    model, tok, _ = load_trained(run)
    scores: dict = {"identity": identity, "generated": [], "sets": {}}
    embedder = None
    for name in cfg.eval.sets:
        skipped: Counter = Counter()
        records = eval_records(run, name, cfg, skipped)
        res: dict = {"n": len(records)}
        if str(name) not in BUILTIN:
            _report_skipped(name, skipped, records)
            res["skipped"] = dict(skipped)  # per reason, like the training data's in summary.json
        if not records:
            continue
        if parts & {"generate", "metrics", "judge"}:
            capped: list = []
            outs = generations(model, tok, cfg, run, name, records, capped)
            scores["generated"].append(set_name(name))
            res["capped_fraction"] = capped_fraction(capped)
            if "metrics" in parts:
                res["length"], div = length_stats(outs, tok), diversity(outs)
                res["diversity"] = {k: v for k, v in div.items() if k != "per_item"}
                refs = list(map(reference, records))
                pairs = [(i, o, r) for i, (o, r) in enumerate(zip(outs, refs)) if r]
                sim: list = [None] * len(outs)
                if pairs:
                    embedder = embedder or Embedder()
                    sims = embedder.similarity([o for _, o, _ in pairs], [r for _, _, r in pairs])
                    res["similarity_to_reference"] = float(sims.mean())
                    for (i, _, _), v in zip(pairs, sims):
                        sim[i] = float(v)
                lens = length_lists(outs, tok)
                res["items"] = {
                    "id": item_ids(records),
                    "chars": lens["chars"],
                    "tokens": lens["tokens"],
                    "capped": capped,
                    "diversity": div["per_item"],
                    "similarity": sim,
                }
        scores["sets"][set_name(name)] = res
    if "loss" in parts:
        scores.update(_heldout_loss(model, tok, cfg, run))
        if cfg.eval.train_loss_samples:
            scores["train_clean"] = train_clean(model, tok, cfg, run)
    if "overfit" in parts and cfg.eval.overfit_samples:
        train_recs, source = trained_records(run)
        train_recs = train_recs[: cfg.eval.overfit_samples]
        capped = []
        outs = generations(model, tok, cfg, run, "train", train_recs, capped)
        refs = [reference(r) or "" for r in train_recs]
        per_bleu = [
            bleu([o], [r]) for o, r in zip(outs, refs)
        ]  # sentence BLEU per item; the headline stays corpus BLEU
        scores["overfit"] = {
            "rouge_l": rouge_l(outs, refs),
            "bleu": bleu(outs, refs),
            "n": len(outs),
            "length": length_stats(outs, tok),
            "capped_fraction": capped_fraction(capped),
            "source": source,
            "items": {"id": item_ids(train_recs), "rouge_l": rouge_l_scores(outs, refs), "bleu": per_bleu},
        }
    if "capability" in parts and cfg.eval.capability_samples:
        from .capability import load_questions, mc_accuracy

        cap = mc_accuracy(model, tok, load_questions(n=cfg.eval.capability_samples), batch_size=8)
        correct = cap.pop("correct")
        cap["items"] = {"id": [f"mc-{i}" for i in range(len(correct))], "correct": correct}  # file order: stable
        scores["capability"] = cap
    if "exact" in parts and (cfg.eval.exact_samples or cfg.eval.exact_code):
        scores["exact"] = exact_results(
            lambda recs, capped: generations(model, tok, cfg, run, "exact", recs, capped), tok, cfg
        )
    scores["wall_time_s"] = round(time.time() - t0, 1)
    rundir.write_json(rundir.scores_path(run), scores)
    return scores, False


# ----------------------------------------------------------------------------- stage 3: results
def write_results(cfg: Config, run_dir, against, scores: dict, judgments: dict) -> dict:
    """scores + judgments -> eval/results.json, summary.md, config.yaml (left untouched when unchanged)."""
    run = Path(run_dir)
    results: dict = {"run": str(run), "against": str(against) if against else None, "sets": {}}
    for sname, s in scores.get("sets", {}).items():
        results["sets"][sname] = {**s, **({"judge": judgments[sname]} if sname in judgments else {})}
    for k in ("heldout_loss", "heldout_ppl", "heldout", "train_clean", "overfit", "capability", "exact"):
        if k in scores:
            results[k] = scores[k]
    judge_s = sum(rundir.read_json(rundir.judgments_path(run, s)).get("wall_time_s", 0) for s in judgments)
    results["wall_time_s"] = round(scores.get("wall_time_s", 0) + judge_s, 1)
    same_cfg = rundir.eval_config_path(run).exists() and rundir.read_config(run, rundir.eval_config_path(run)) == cfg
    if rundir.read_results(run) == json.loads(json.dumps(results)) and same_cfg:
        return results
    rundir.write_config(run, cfg, path=rundir.eval_config_path(run))
    rundir.write_json(rundir.results_path(run), results)
    rundir.atomic_write(rundir.eval_summary_path(run), summary_markdown(results))
    return results


def evaluate(cfg: Config, run_dir, against: str | None = None) -> dict:
    """All stages for RUN_DIR (judged against OTHER's saved answers with `against`). Returns results."""
    scores, _ = generate_stage(cfg, run_dir)
    judgments, _ = judge_stage(cfg, run_dir, against) if against else ({}, True)
    return write_results(cfg, run_dir, against, scores, judgments)


def eval_config(run_dir, cfg_file=None, overrides=()) -> Config:
    """The run's training config with eval.* (and the EVAL_DATA_KEYS) from CONFIG.yaml / key=value. A file
    or override that would change anything else (the model, data.template, a training key) is refused:
    eval always evaluates the run as trained, so such a change could only be silently wrong."""
    base = run_config(run_dir)
    cfg = load_config(cfg_file, list(overrides), base=copy.deepcopy(base))
    changed = [k for k, _, _ in differing_keys(to_dict(base), to_dict(cfg))]
    bad = [k for k in changed if not k.startswith("eval.") and k not in EVAL_DATA_KEYS]
    if bad:
        src = " + ".join(([str(cfg_file)] if cfg_file else []) + [f"override '{o}'" for o in overrides])
        raise ConfigError(
            f"{src}: `neftune eval` cannot change {', '.join(bad)}: {run_dir} is evaluated with the model and "
            f"settings it was trained with ({rundir.config_path(run_dir)}); set only eval.* and "
            f"{', '.join(EVAL_DATA_KEYS)} (how eval-set files are read)"
        )
    return cfg


def evaluate_cli(run_dir, against=None, cfg_file=None, overrides=()):
    cfg = eval_config(run_dir, cfg_file, overrides)
    res = evaluate(cfg, run_dir, against)
    print(summary_markdown(res))
    print(f"[neftune] wrote {rundir.results_path(run_dir)} and {rundir.eval_summary_path(run_dir)}")
    return res
