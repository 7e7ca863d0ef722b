"""`neftune compare` rerun over a run that was killed after saving its final weights but before its
summary.json (and has no checkpoint to resume): the run is the sweep's own (same training identity), so
it is retrained in place, not refused as a previous run (neftune train's overwrite_output_dir check)."""

from test_compare import sweep_cfg

from neftune import rundir
from neftune.compare import _Progress, run_config, train_run
from neftune.train import train


def test_an_unfinished_run_without_checkpoints_is_retrained_in_place(tmp_path, tiny_llama_dir, capsys):
    cfg = sweep_cfg(tiny_llama_dir, tmp_path / "sweep", "compare.seeds=[0]")
    run_dir = rundir.sweep_run_dir(tmp_path / "sweep", "baseline-seed0")
    rc = run_config(cfg, {"name": "baseline", "neftune_noise_alpha": 0.0}, 0, run_dir)
    train(rc)
    rundir.summary_path(run_dir).unlink()  # killed between the final save and summary.json
    assert list(run_dir.glob("*.safetensors")) and not rundir.list_checkpoints(run_dir)
    summary = train_run(rc, _Progress(1), "baseline-seed0")
    assert summary["steps"] == 2 and rundir.is_finished(run_dir)
    assert "overwrite_output_dir: removed" in capsys.readouterr().out
