"""A finished sweep written straight into the rundir layout, in the per-item results format (docs/DESIGN.md, per-item keys):
no training, no model. Variant values = the same-seed baseline's + independent noise + a planted effect,
so a planted effect must show and a zero effect must not."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neftune import rundir
from neftune.config import load_config

NASTY = "Say <script>alert(1)</script> and ``` then | pipes # and *stars*"
BASES = ["reference", "prompt-proxy"]


def _run_results(name: str, seed: int, alpha: float, effect: float, n: int, judged: bool, rng_base, rng_own) -> dict:
    """Per-item lists for one run. `effect` > 0 = better than the baseline on every metric."""
    ids = [f"h{i}" for i in range(n)]
    z = rng_base.normal(size=(6, n))  # shared by every arm of this seed: what pairing cancels
    e = rng_own.normal(size=(6, n)) * 0.3  # this run's own noise
    tokens = np.clip(np.round(80 + 20 * z[0] + 10 * e[0] + 40 * effect), 5, 159).astype(int)
    nll = 2.0 + 0.3 * z[1] + 0.05 * e[1] - 0.1 * effect
    clean = 1.0 + 0.3 * z[2] + 0.05 * e[2] + 0.1 * effect  # NEFTune holds training loss back
    rouge = np.clip(0.3 + 0.05 * z[3] + 0.02 * e[3] - 0.05 * effect, 0, 1)
    res = {
        "heldout_loss": float(nll.mean()),
        "heldout": {"loss": float(nll.mean()), "items": {"id": ids, "nll": nll.tolist(), "tokens": [30] * n}},
        "train_clean": {
            "loss": float(clean.mean()),
            "items": {"id": [f"t{i}" for i in range(n)], "nll": clean.tolist(), "tokens": [40] * n},
        },
        "overfit": {
            "rouge_l": float(rouge.mean()),
            "bleu": float(20 * rouge.mean()),
            "n": n,
            "capped_fraction": 0.125,
            "items": {"id": [f"t{i}" for i in range(n)], "rouge_l": rouge.tolist(), "bleu": (20 * rouge).tolist()},
        },
        "capability": {
            "accuracy": 0.5,
            "items": {"id": [f"c{i}" for i in range(8)], "correct": [int(x > 0) for x in z[4][:8] + 0.2 * e[4][:8]]},
        },
        "exact": {
            "accuracy": 0.5,
            "n": 8,
            "capped_fraction": 0.0,
            "items": {
                "id": [f"x{i}" for i in range(8)],
                "correct": [int(x > 0) for x in z[5][:8]],
                "tokens": [10 + i for i in range(8)],
                "kind": ["arith"] * 8,
            },
        },
        "sets": {
            "heldout": {
                "n": n,
                "length": {"chars_mean": float(5 * tokens.mean())},
                "diversity": {"diversity": 0.5},
                "capped_fraction": float(np.mean(tokens >= 159)),
                "items": {
                    "id": ids,
                    "chars": (5 * tokens).tolist(),
                    "tokens": tokens.tolist(),
                    "capped": (tokens >= 159).tolist(),
                    "diversity": np.clip(0.6 + 0.1 * z[5] + 0.02 * e[5], 0, 1).tolist(),
                    "similarity": [None] * n,
                },
            }
        },
    }
    if judged:
        margin = 0.05 * rng_own.normal(size=n) + 0.1 * effect
        verdict = [1.0 if m > 0.01 else 0.0 if m < -0.01 else 0.5 for m in margin]
        basis = [BASES[i % 2] for i in range(n)]
        basis[-1], verdict[-1] = None, None  # one verdict without a basis: in no win rate
        wr = 100 * float(np.mean([v for v in verdict if v is not None]))
        res["sets"]["heldout"]["judge"] = {
            "judge": "offline",
            "win_rate": wr,
            "lc_win_rate": wr + 2 + seed,
            "verdicts": verdict,
            "basis": "reference",
            "no_basis": 1,
            "lc_unstable": seed == 1,
            "lc_warning": "LC far from raw (synthetic)" if seed == 1 else None,
            "items": {"id": ids, "verdict": verdict, "margin": margin.tolist(), "basis": basis},
        }
    return res


def _metrics(seed: int, effect: float, rng_base, rng_own) -> list[dict]:
    """12 steps over 3 epochs; clean_loss at every step (baseline included), paired by step."""
    z, e = rng_base.normal(size=12), rng_own.normal(size=12)
    return [
        {
            "step": s,
            "epoch": s / 4,
            "loss": 3.0 - s / 6,
            "train_loss": 3.0 - s / 6,
            "clean_loss": 3.0 - s / 5 + 0.05 * z[s - 1] + 0.01 * e[s - 1] + 0.1 * effect * (s > 4),
        }
        for s in range(1, 13)
    ]


def make_sweep(
    root: Path,
    effects: dict | None = None,
    seeds=(0, 1),
    n: int = 40,
    judge: str = "offline",
    fractions=(),
    shuffle=(),
    alphas: dict | None = None,
    sets=("heldout",),
) -> tuple:
    """Writes the sweep; returns its config. `effects` {variant: planted effect}; `alphas` {variant:
    alpha} (0 = a regularizer baseline, e.g. weight decay); `shuffle` names runs (run_name) whose item
    lists are stored in a permuted order."""
    effects = {"alpha5": 0.0} if effects is None else effects
    alphas = {k: 5.0 for k in effects} | (alphas or {})
    variants = ", ".join(
        f"{{name: {k}, neftune_noise_alpha: {alphas[k]}" + (", weight_decay: 0.1}" if alphas[k] == 0 else "}")
        for k in effects
    )
    cfg = load_config(
        None,
        [
            f"output_dir={root}",
            f"eval.sets=[{', '.join(sets)}]",
            f"eval.judge={judge}",
            f"compare.variants=[{variants}]",
            f"compare.seeds={list(seeds)}",
            f"compare.data_fractions={list(fractions)}",
        ],
    )
    rundir.write_config(root, cfg)
    prompts = [NASTY] + [f"Prompt number {i}?" for i in range(1, n)]
    arms = [("baseline", 0.0, 0.0)] + [(k, alphas[k], v) for k, v in effects.items()]
    for frac in [None, *fractions]:
        for vi, (name, alpha, effect) in enumerate(arms):
            for seed in seeds:
                run = rundir.sweep_run_dir(root, rundir.run_name(name, seed, frac))
                over = [f"output_dir={run}", f"neftune_noise_alpha={alpha}", f"seed={seed}"]
                rundir.write_config(
                    run, load_config(None, over + (["weight_decay=0.1"] if name != "baseline" and alpha == 0 else []))
                )
                rundir.write_summary(
                    run,
                    {
                        "steps": 12,
                        "train_loss": 2.0 - seed / 100,
                        "wall_time_s": 1.5,
                        "n_train": 16 if frac is None else 8,
                        "versions": {"torch": "x"},
                    },
                )
                base_seed = [seed, int(1000 * (frac or 1))]
                res = _run_results(
                    name,
                    seed,
                    alpha,
                    effect,
                    n,
                    judge != "none" and name != "baseline",
                    np.random.default_rng(base_seed),
                    np.random.default_rng([*base_seed, vi + 1]),
                )
                rundir.write_jsonl(
                    rundir.metrics_path(run),
                    _metrics(
                        seed, effect, np.random.default_rng(base_seed), np.random.default_rng([*base_seed, vi + 7])
                    ),
                )
                if rundir.run_name(name, seed, frac) in shuffle:
                    _shuffle(res, np.random.default_rng(99))
                rundir.write_json(
                    rundir.generations_path(run, "heldout"),
                    [
                        {
                            "instruction": p,
                            "output": f"{name} answer {i} " * (3 + int(alpha)),
                            "generator": run.name,
                            "dataset": "heldout",
                        }
                        for i, p in enumerate(prompts)
                    ],
                )
                rundir.write_json(rundir.results_path(run), res)
    return cfg


def _shuffle(obj, rng) -> None:
    """Permute every per-item list (all lists of one `items` dict the same way)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("items"), dict) and isinstance(obj["items"].get("id"), list):
            items = obj["items"]
            perm = rng.permutation(len(items["id"]))
            for k, v in items.items():
                if isinstance(v, list) and len(v) == len(perm):
                    items[k] = [v[i] for i in perm]
        for v in obj.values():
            if isinstance(v, dict):
                _shuffle(v, rng)
