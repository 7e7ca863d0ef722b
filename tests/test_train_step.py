"""Optimizer steps are counted like transformers' Trainer: an epoch is ceil(micro-batches / accumulation)
steps, the last one taking the remainder, so num_train_epochs epochs are trained, never more."""

import json
from pathlib import Path

import torch
from test_train import cfg_for

from neftune.train import train


def test_steps_per_epoch_and_total_steps_match_the_trainer():
    from neftune.train_step import optimizer_steps

    # (micro-batches per epoch, accumulation, epochs, max_steps) -> (steps per epoch, total steps)
    assert optimizer_steps(3, 8, 3, -1) == (1, 3)  # one 3-micro-batch step per epoch, not 8 epochs' worth
    assert optimizer_steps(10, 4, 1, -1) == (3, 3)  # 4 + 4 + 2: the whole epoch, not the first 8 batches
    assert optimizer_steps(10, 4, 1.5, -1) == (3, 5)  # ceil(1.5 * 3), as Trainer rounds a fractional epoch
    assert optimizer_steps(18, 2, 1, -1) == (9, 9)
    assert optimizer_steps(18, 2, 1, 4) == (9, 4)  # max_steps wins
    assert optimizer_steps(1, 1, 0.01, -1) == (1, 1)  # at least one step


def test_three_epochs_with_more_accumulation_than_batches_train_three_epochs(tmp_path, tiny_llama_dir, monkeypatch):
    """3 micro-batches per epoch, gradient_accumulation_steps=8, num_train_epochs=3: 3 steps, each the
    3 batches of one epoch (the old count trained 3 steps of 8 micro-batches = 8 epochs). Also checks
    that `neftune.train._forward_backward` is still the hook the step loop calls (bench/profile_train_step.py)."""
    import neftune.train as T
    from neftune.data import build_datasets, make_batches
    from neftune.modeling import load_tokenizer

    seen, orig = [], T._forward_backward

    def spy(run, micro, n_step):
        seen.append([b["input_ids"].cpu() for b in micro])
        return orig(run, micro, n_step)

    monkeypatch.setattr(T, "_forward_backward", spy)
    cfg = cfg_for(
        tiny_llama_dir,
        tmp_path / "run",
        "max_steps=-1",
        "num_train_epochs=3",
        "gradient_accumulation_steps=8",
        "data.num_train_samples=12",
        "save_steps=0",
        "clean_loss_steps=0",
    )
    summary = train(cfg)
    assert summary["steps"] == 3 and [len(m) for m in seen] == [3, 3, 3]
    tok = load_tokenizer(tiny_llama_dir)
    examples = build_datasets(cfg, tok).train_examples
    for epoch, micro in enumerate(seen):
        batches = make_batches(
            examples, 4, packing=False, max_length=256, pad_token_id=tok.pad_token_id, seed=cfg.seed, epoch=epoch
        )
        assert len(batches) == 3 and all(torch.equal(a, b["input_ids"]) for a, b in zip(micro, batches))
    recs = [json.loads(l) for l in Path(tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs if "loss" in r] == [1.0, 2.0, 3.0]
