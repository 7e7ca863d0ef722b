"""Stage 2 of `neftune eval RUN --against OTHER` (evaluation/run.py has the whole flow): this run's saved
answers (A) judged against OTHER's saved answers (B) per set -> RUN/eval/judgments/<set>.json, with raw
and length-controlled win rates. OTHER's answers are read from its generation files, checked to pair
with this run's; OTHER's model is never loaded and its dir never written.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import rundir
from ..config import Config
from ..errors import NeftuneError
from .items import finite as _finite
from .items import item_ids
from .sets import check_parts as _check_parts
from .sets import check_sets, eval_records, set_name


def other_answers(run: Path, other: Path, sname: str) -> list[dict]:
    """OTHER's saved answers to the set, checked to pair with this run's: same prompts, same decoding
    settings, made by OTHER's current weights. Read-only: OTHER's dir is never written."""
    from .generate import read_alpaca_eval

    mine, theirs = (rundir.read_json(rundir.generations_meta_path(r, sname)) for r in (run, other))
    redo = f"run `neftune eval {other}` first, with the same eval settings as this evaluation"
    if not rundir.generations_path(other, sname).exists() or not theirs:
        raise NeftuneError(
            f"{other}: no saved answers to the {sname!r} set ({rundir.generations_path(other, sname)} missing); {redo}"
        )
    if theirs.get("decoding") != mine.get("decoding"):
        diff = sorted(
            k
            for k in set(mine.get("decoding", {})) | set(theirs.get("decoding") or {})
            if (mine.get("decoding") or {}).get(k) != (theirs.get("decoding") or {}).get(k)
        )
        raise NeftuneError(
            f"{rundir.generations_path(other, sname)}: made with different decoding settings "
            f"({', '.join(diff)} differ); {redo}"
        )
    if theirs.get("instructions_sha256") != mine.get("instructions_sha256"):
        raise NeftuneError(
            f"{rundir.generations_path(other, sname)}: answers a different prompt list than {run}'s "
            f"{sname!r} set (n={theirs.get('n')} vs {mine.get('n')}); {redo}"
        )
    if theirs.get("weights") != rundir.weights_fingerprint(other):
        raise NeftuneError(
            f"{rundir.generations_path(other, sname)}: made by older weights ({other} was retrained since); {redo}"
        )
    return read_alpaca_eval(rundir.generations_path(other, sname))


def _judge_identity(cfg: Config) -> dict:
    e = cfg.eval
    return {
        "judge": e.judge,
        "model": e.judge_model if e.judge == "llm" else None,
        "tie_margin": e.tie_margin if e.judge == "offline" else None,
        "bootstrap": e.bootstrap,
        "seed": cfg.seed,
    }


def judge_stage(cfg: Config, run_dir, against) -> tuple[dict, bool]:
    """Verdicts of this run's answers (A) against OTHER's (B) per set -> eval/judgments/<set>.json.
    Returns ({set: win-rate summary}, reused)."""
    run, other = Path(run_dir), Path(against)
    if "judge" not in _check_parts(cfg):
        return {}, True
    check_sets(cfg)
    scores = rundir.read_json(rundir.scores_path(run))
    out, reused, judge = {}, True, None
    for name in cfg.eval.sets:
        sname = set_name(name)
        if sname not in scores.get("generated", []):
            continue
        b_rows = other_answers(run, other, sname)
        key = {
            "against": str(other),
            "judge": _judge_identity(cfg),
            "a_sha256": rundir.file_sha256(rundir.generations_path(run, sname)),
            "b_sha256": rundir.file_sha256(rundir.generations_path(other, sname)),
        }
        saved = rundir.read_json(rundir.judgments_path(run, sname))
        if saved.get("key") == key:
            out[sname] = saved["summary"]
            continue
        reused = False
        t0 = time.time()
        if judge is None:
            judge = _make_judge(cfg)
        summary = _judge_set(cfg, judge, run, name, b_rows) if judge else {}
        if summary:
            summary["against"] = str(other)
        rundir.write_json(
            rundir.judgments_path(run, sname),
            {"key": key, "summary": summary, "wall_time_s": round(time.time() - t0, 1)},
        )
        out[sname] = summary
    return out, reused


def _make_judge(cfg: Config):
    """The configured judge, or False for `judge: none` (so it is built once, lazily)."""
    from ..assets import cache_dir
    from .judge import make_judge

    cache = cache_dir() / "judge" / f"{cfg.eval.judge}.jsonl" if cfg.eval.judge == "llm" else None
    return make_judge(cfg.eval, cache_path=cache) or False


def _judge_set(cfg: Config, judge, run: Path, name: str, b_rows: list[dict]) -> dict:
    from ..data import reference
    from .generate import read_alpaca_eval
    from .metrics import length_lists
    from .winrate import win_rate_summary

    sname = set_name(name)
    a_rows = read_alpaca_eval(rundir.generations_path(run, sname))
    records = eval_records(run, name, cfg)
    if not len(a_rows) == len(b_rows) == len(records):  # pairing by position: a mismatch must never truncate
        raise NeftuneError(
            f"set {sname!r}: {len(a_rows)} saved answers in {run}, {len(b_rows)} in the other run and "
            f"{len(records)} prompts in the set now do not pair one to one; rerun `neftune eval` on both runs"
        )
    refs = [reference(r) for r in records]
    outs_a, outs_b = [r["output"] for r in a_rows], [r["output"] for r in b_rows]
    items = [
        {"prompt": a["instruction"], "answer_a": a["output"], "answer_b": b["output"], "reference": ref}
        for a, b, ref in zip(a_rows, b_rows, refs, strict=True)
    ]
    judged = judge.judge_many(items, progress=True)
    verdicts = [v for v, _ in judged]
    infos = [info or {} for _, info in judged]
    bases = [i.get("basis") for i in infos]
    summary = win_rate_summary(
        verdicts,
        length_lists(outs_a)["chars"],
        length_lists(outs_b)["chars"],
        n_boot=cfg.eval.bootstrap,
        seed=cfg.seed,
        bases=bases,
    )
    summary["items"] = {
        "id": item_ids(records),
        "verdict": verdicts,
        "margin": [_finite(i.get("margin")) for i in infos],
        "basis": bases,
    }
    summary["judge"] = cfg.eval.judge if cfg.eval.judge != "llm" else f"llm:{cfg.eval.judge_model}"
    summary["verdicts"] = verdicts
    if hasattr(judge, "stats"):
        summary["judge_stats"] = dict(judge.stats)
    return summary
