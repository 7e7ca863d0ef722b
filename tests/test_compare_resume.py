"""`neftune compare` killed with SIGKILL mid-sweep, then rerun: it resumes the half-trained run from
its checkpoint and ends with exactly the numbers of an uninterrupted sweep."""

import json
import os
import subprocess
import sys
from pathlib import Path

DATA = str(Path(__file__).parent / "assets" / "tiny_alpaca.jsonl")


def _compare(out, model_dir, env_extra=None):
    args = [
        f"model={model_dir}",
        f"output_dir={out}",
        f"data.path={DATA}",
        "data.eval_size=4",
        "data.max_length=256",
        "max_steps=4",
        "per_device_train_batch_size=4",
        "learning_rate=1e-3",
        "save_steps=2",
        "clean_loss_steps=2",
        "report_to=[jsonl]",
        "eval.sets=[heldout]",
        "eval.num_samples=3",
        "eval.max_new_tokens=6",
        "eval.overfit_samples=3",
        "eval.capability_samples=3",
        "eval.bootstrap=20",
        "compare.variants=[{name: alpha5, neftune_noise_alpha: 5}]",
        "compare.seeds=[0]",
    ]
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "neftune.cli", "compare", *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _losses(run):
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in recs]  # timings differ, nothing else


def test_sigkilled_compare_resumes_to_identical_results(tmp_path, tiny_llama_dir):
    ref = _compare(tmp_path / "ref", tiny_llama_dir)
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _compare(tmp_path / "b", tiny_llama_dir, {"NEFTUNE_FAILPOINT": "after_step:3"})
    assert killed.returncode == -9  # died inside the first (baseline) run, after checkpoint-2
    assert (tmp_path / "b" / "runs" / "baseline-seed0" / "checkpoint-2").exists()
    again = _compare(tmp_path / "b", tiny_llama_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout + again.stderr
    for run in ("baseline-seed0", "alpha5-seed0"):
        assert _losses(tmp_path / "b" / "runs" / run) == _losses(tmp_path / "ref" / "runs" / run)
    a = json.loads((tmp_path / "ref" / "runs" / "alpha5-seed0" / "eval" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "runs" / "alpha5-seed0" / "eval" / "results.json").read_text())
    assert a["sets"]["heldout"]["judge"]["verdicts"] == b["sets"]["heldout"]["judge"]["verdicts"]
    assert a["heldout_loss"] == b["heldout_loss"]
    assert (tmp_path / "b" / "report" / "index.html").exists()
