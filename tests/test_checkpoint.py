"""A run dir holds one run: training from scratch into a previous run's dir is refused unless
overwrite_output_dir=true (which deletes the old artefacts first), and a resume refuses a checkpoint
trained with another config (checkpoints carry their config.yaml)."""

import json

import pytest
from test_train import cfg_for

from neftune import rundir
from neftune.config import load_config
from neftune.errors import NeftuneError, TrainingDiverged
from neftune.train import list_checkpoints, train


def _steps(run):
    return [r["step"] for r in rundir.read_metrics(run) if "loss" in r]


def test_training_into_a_previous_runs_dir_is_refused_unless_overwrite_output_dir(tmp_path, tiny_llama_dir):
    run = tmp_path / "run"
    train(cfg_for(tiny_llama_dir, run, "max_steps=3", "save_steps=1", "clean_loss_steps=0"))
    old_config = rundir.config_path(run).read_text()
    new = ["max_steps=2", "seed=1", "save_steps=0", "clean_loss_steps=0"]
    with pytest.raises(NeftuneError, match=r"overwrite_output_dir.*") as e:
        train(cfg_for(tiny_llama_dir, run, *new))
    assert "summary.json" in str(e.value) and "checkpoint-2" in str(e.value)
    assert rundir.config_path(run).read_text() == old_config  # the refused run wrote nothing

    # overwrite: the old run is gone before the new one starts, so a new run that dies early leaves
    # no old summary, weights or checkpoints to be taken for its own
    with pytest.raises(TrainingDiverged):
        train(
            cfg_for(
                tiny_llama_dir,
                run,
                *new,
                "overwrite_output_dir=true",
                "max_steps=6",
                "learning_rate=1e30",
                "max_grad_norm=0",
            )
        )
    assert not rundir.is_finished(run) and not list(run.glob("*.safetensors")) and not list_checkpoints(run)
    assert not (run / "data" / "trained.jsonl").exists()

    summary = train(cfg_for(tiny_llama_dir, run, *new, "overwrite_output_dir=true"))
    assert summary["steps"] == 2 and summary["resumed_from"] is None and _steps(run) == [1, 2]
    assert rundir.read_config(run).seed == 1 and rundir.read_summary(run) == json.loads(json.dumps(summary))


def test_resume_refuses_a_checkpoint_trained_with_another_config(tmp_path, tiny_llama_dir):
    run = tmp_path / "run"
    train(cfg_for(tiny_llama_dir, run, "max_steps=3", "save_steps=1", "clean_loss_steps=0"))
    ckpt = run / "checkpoint-2"
    assert rundir.read_config(ckpt).seed == 0  # every checkpoint carries the config it was trained with
    old_config = rundir.config_path(run).read_text()
    args = ["max_steps=3", "save_steps=1", "clean_loss_steps=0", "resume_from_checkpoint=latest"]
    with pytest.raises(NeftuneError, match=r"checkpoint-2: checkpoint of a run trained with another config") as e:
        train(cfg_for(tiny_llama_dir, run, *args, "seed=1", "learning_rate=2e-3"))
    assert "seed (0 -> 1)" in str(e.value) and "learning_rate (0.001 -> 0.002)" in str(e.value)
    with pytest.raises(NeftuneError, match=r"data\.max_length"):  # nested keys are named in full
        train(cfg_for(tiny_llama_dir, run, *args, "data.max_length=128"))
    assert rundir.config_path(run).read_text() == old_config
    # what is saved, logged or evaluated may change on resume
    summary = train(cfg_for(tiny_llama_dir, run, *args, "logging_steps=2", "save_total_limit=null"))
    assert summary["resumed_from"] == str(ckpt) and _steps(run) == [1, 2, 3]


def _fake_checkpoint(tmp_path, cfg, world_size, with_config=True):
    ckpt = rundir.checkpoint_path(tmp_path / "run", 2)
    ckpt.mkdir(parents=True)
    (ckpt / rundir.TRAINER_STATE).write_text(json.dumps({"global_step": 2, "world_size": world_size}))
    rundir.write_config(ckpt.parent if not with_config else ckpt, cfg)
    return ckpt


def test_a_global_batch_split_over_another_world_size_may_resume(tmp_path):
    from neftune.checkpoint import check_resume

    saved = load_config(None, ["gradient_accumulation_steps=1"])
    ckpt = _fake_checkpoint(tmp_path, saved, world_size=2)
    check_resume(ckpt, load_config(None, ["gradient_accumulation_steps=2"]), world=1)  # 1 x 2 = 2 x 1
    check_resume(ckpt, saved, world=1)  # same config, fewer processes: reported by train, not refused
    with pytest.raises(NeftuneError, match="gradient_accumulation_steps"):
        check_resume(ckpt, load_config(None, ["gradient_accumulation_steps=2"]), world=2)


def test_a_checkpoint_without_its_config_is_checked_against_its_run_dir(tmp_path):
    """Checkpoints written before they carried config.yaml: the run dir's config.yaml is the record."""
    from neftune.checkpoint import check_resume

    ckpt = _fake_checkpoint(tmp_path, load_config(None, ["seed=3"]), world_size=1, with_config=False)
    assert not rundir.config_path(ckpt).exists()
    check_resume(ckpt, load_config(None, ["seed=3", "save_steps=7"]), world=1)
    with pytest.raises(NeftuneError, match="seed"):
        check_resume(ckpt, load_config(None, ["seed=4"]), world=1)


def test_step_counting_of_a_checkpoint_must_match_the_run(tmp_path):
    """Optimizer steps map to batches and to the schedule's length: a checkpoint that counted them otherwise
    (another steps_per_epoch / total_steps, or written before HF's count when ga does not divide an epoch) is
    refused; a world-size change (allowed with a warning) may round them differently."""
    from neftune.checkpoint import check_step_counting

    ck = tmp_path / "checkpoint-2"
    same = {"steps_per_epoch": 3, "total_steps": 9, "world_size": 1}
    check_step_counting(ck, same, 3, 9, per_epoch=10, ga=4, world=1)
    with pytest.raises(NeftuneError, match="3 optimizer steps per epoch and 9 in all, this one 3 and 12"):
        check_step_counting(ck, same, 3, 12, per_epoch=10, ga=4, world=1)
    check_step_counting(ck, {**same, "world_size": 2}, 3, 12, per_epoch=10, ga=4, world=1)
    old = {"global_step": 2, "world_size": 1}  # before checkpoints recorded the step counts
    check_step_counting(ck, old, 3, 9, per_epoch=12, ga=4, world=1)  # ga divides the epoch: same mapping
    with pytest.raises(NeftuneError, match="does not divide the 10 micro-batches"):
        check_step_counting(ck, old, 3, 9, per_epoch=10, ga=4, world=1)


def test_resume_refuses_a_checkpoint_with_other_step_counts(tmp_path, tiny_llama_dir):
    run = tmp_path / "run"
    args = ["max_steps=3", "save_steps=1", "clean_loss_steps=0"]
    train(cfg_for(tiny_llama_dir, run, *args))
    state = rundir.checkpoint_path(run, 2) / "trainer_state.json"
    saved = json.loads(state.read_text())
    assert saved["total_steps"] == 3 and saved["steps_per_epoch"] >= 1  # checkpoints record the counts
    state.write_text(json.dumps({**saved, "total_steps": 5}))
    with pytest.raises(NeftuneError, match="5 in all, this one"):
        train(cfg_for(tiny_llama_dir, run, *args, "resume_from_checkpoint=latest"))
