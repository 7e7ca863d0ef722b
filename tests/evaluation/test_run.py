"""`neftune eval RUN --against OTHER` end to end on tiny runs: results.json, summary.md, AlpacaEval files;
judging reads OTHER's saved answers and never touches OTHER's directory."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from neftune.cli import main
from neftune.config import load_config
from neftune.evaluation.generate import read_alpaca_eval
from neftune.train import train

DATA = str(Path(__file__).parents[1] / "assets" / "tiny_alpaca.jsonl")
EVAL = [
    "eval.sets=[heldout]",
    "eval.num_samples=4",
    "eval.max_new_tokens=6",
    "eval.overfit_samples=3",
    "eval.capability_samples=3",
    "eval.bootstrap=20",
    "eval.exact_samples=2",
    "eval.exact_code=false",
    "eval.train_loss_samples=3",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("trained")
    for name, alpha in (("base", 0), ("neft", 5)):
        train(
            load_config(
                None,
                [
                    f"model={tiny_llama_dir}",
                    f"output_dir={root / name}",
                    f"data.path={DATA}",
                    "data.eval_size=4",
                    "data.max_length=256",
                    "max_steps=2",
                    "report_to=[jsonl]",
                    f"neftune_noise_alpha={alpha}",
                    "save_steps=0",
                ],
            )
        )
    return root


@pytest.fixture
def runs(trained, tmp_path):
    """Fresh copies of the two trained runs (copy2 keeps mtimes: same weights fingerprint)."""
    for name in ("base", "neft"):
        shutil.copytree(trained / name, tmp_path / name)
    return tmp_path / "base", tmp_path / "neft"


def snapshot(root: Path) -> dict:
    """Every file under root: content hash and mtime (ns), plus every directory's mtime."""
    snap = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        snap[str(p.relative_to(root))] = (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
            st.st_mtime_ns,
        )
    return snap


def test_eval_against_baseline(runs, capsys):
    base, neft = runs
    assert main(["eval", str(base), *EVAL]) == 0
    args = ["eval", str(neft), "--against", str(base), *EVAL]
    assert main(args) == 0
    res = json.loads((neft / "eval" / "results.json").read_text())
    j = res["sets"]["heldout"]["judge"]
    assert j["n"] + j["unusable"] == 4 and j["wins"] + j["losses"] + j["draws"] == j["n"]
    assert j["win_rate"] is not None and j["lc_win_rate"] is not None
    for k in ("heldout_loss", "overfit", "capability"):
        assert res[k] is not None
    rows = read_alpaca_eval(neft / "eval" / "generations" / "heldout.json")
    assert len(rows) == 4 and set(rows[0]) == {"instruction", "output", "generator", "dataset"}
    assert (neft / "eval" / "judgments" / "heldout.json").exists()  # the verdicts live with the judged run
    summary = (neft / "eval" / "summary.md").read_text()
    assert "LC win rate" in summary and "win rate" in summary
    # rerun: everything from the caches, same numbers, nothing rewritten
    before = snapshot(neft)
    assert main(args) == 0
    again = json.loads((neft / "eval" / "results.json").read_text())
    assert again["sets"] == res["sets"] and snapshot(neft) == before


def test_judging_leaves_the_other_run_byte_for_byte_unchanged(runs):
    base, neft = runs
    assert main(["eval", str(base), *EVAL]) == 0
    before = snapshot(base)
    assert main(["eval", str(neft), "--against", str(base), *EVAL]) == 0
    assert json.loads((neft / "eval" / "results.json").read_text())["sets"]["heldout"]["judge"]["win_rate"] is not None
    assert snapshot(base) == before


def test_missing_or_mismatched_other_answers_say_what_to_run(runs, capsys):
    base, neft = runs
    before = snapshot(base)
    assert main(["eval", str(neft), "--against", str(base), *EVAL]) == 1
    err = capsys.readouterr().err
    assert f"run `neftune eval {base}` first" in err and "heldout" in err
    assert snapshot(base) == before  # not evaluated on the judged run's behalf
    assert main(["eval", str(base), *EVAL, "eval.max_new_tokens=5"]) == 0
    capsys.readouterr()
    assert main(["eval", str(neft), "--against", str(base), *EVAL]) == 1
    err = capsys.readouterr().err
    assert "different decoding settings (max_new_tokens differ)" in err and f"neftune eval {base}" in err
    assert main(["eval", str(base), *EVAL, "eval.num_samples=3"]) == 0
    capsys.readouterr()
    assert main(["eval", str(neft), "--against", str(base), *EVAL]) == 1
    assert "different prompt list" in capsys.readouterr().err


def _aligned(items: dict, n: int):
    assert all(len(v) == n for v in items.values()), {k: len(v) for k, v in items.items()}


def test_results_carry_per_item_values_paired_by_id(runs):
    """The per-item contract (docs/DESIGN.md): every list aligned with an id list, ids equal across runs."""
    base, neft = runs
    assert main(["eval", str(base), *EVAL]) == 0
    assert main(["eval", str(neft), "--against", str(base), *EVAL]) == 0
    res, ref = (json.loads((r / "eval" / "results.json").read_text()) for r in (neft, base))
    held = res["sets"]["heldout"]
    assert set(held["items"]) == {"id", "chars", "tokens", "capped", "diversity", "similarity"}
    _aligned(held["items"], 4)
    assert held["items"]["id"] == ref["sets"]["heldout"]["items"]["id"]  # stable across runs of a sweep
    heldout_ids = [
        r["id"] or r["source"] for r in map(json.loads, (neft / "data" / "heldout.jsonl").read_text().splitlines())
    ]
    assert held["items"]["id"] == heldout_ids[:4]
    # a random tiny model never says EOS within 6 tokens: every answer hit the cap
    assert held["items"]["capped"] == [True] * 4 and held["capped_fraction"] == 1.0
    assert held["items"]["chars"] == [
        len(r["output"]) for r in read_alpaca_eval(neft / "eval" / "generations" / "heldout.json")
    ]
    j = held["judge"]["items"]
    _aligned(j, 4)
    assert j["id"] == held["items"]["id"] and set(j["basis"]) <= {"reference", "prompt-proxy", None}
    verdicts = json.loads((neft / "eval" / "judgments" / "heldout.json").read_text())["summary"]["verdicts"]
    assert j["verdict"] == verdicts
    assert all((m is None) == (b is None) for m, b in zip(j["margin"], j["basis"]))
    assert set(held["judge"]["by_basis"]) == {b for b in j["basis"] if b}  # reference and proxy rows kept apart
    # held-out loss per example; the pooled mean is the old top-level number
    h = res["heldout"]
    _aligned(h["items"], len(h["items"]["id"]))
    pooled = sum(a * k for a, k in zip(h["items"]["nll"], h["items"]["tokens"])) / sum(h["items"]["tokens"])
    assert abs(pooled - res["heldout_loss"]) < 1e-6 and abs(h["loss"] - res["heldout_loss"]) < 1e-9
    # clean loss and the overfitting probe use the examples the run trained on
    trained = [json.loads(l)["id"] for l in (neft / "data" / "trained.jsonl").read_text().splitlines()]
    assert res["train_clean"]["items"]["id"] == trained[:3] and "eval mode" in res["train_clean"]["source"]
    o = res["overfit"]
    assert o["items"]["id"] == trained[:3] and o["source"] == "prompts this run trained on (data/trained.jsonl)"
    _aligned(o["items"], 3)
    assert abs(sum(o["items"]["rouge_l"]) / 3 - o["rouge_l"]) < 1e-9
    c = res["capability"]["items"]
    assert c["id"] == ["mc-0", "mc-1", "mc-2"] and sum(c["correct"]) / 3 == res["capability"]["accuracy"]
    e = res["exact"]
    _aligned(e["items"], 2)
    assert e["n"] == 2 and e["items"]["kind"] == ["arithmetic", "conversion"] and e["capped_fraction"] == 1.0
    assert e["accuracy"] == sum(e["items"]["correct"]) / 2 and "tokens_mean" in e["length"]
    assert len(read_alpaca_eval(neft / "eval" / "generations" / "exact.json")) == 2


def test_speed_only_settings_do_not_invalidate_saved_answers(tmp_path):
    """Runs evaluated before eval.pack_weights existed (or with it off) keep their scores: it changes speed only."""
    from neftune.evaluation.run import _generation_identity

    (tmp_path / "model.safetensors").write_bytes(b"w")
    on = load_config(None, ["eval.pack_weights=true"])
    off = load_config(None, ["eval.pack_weights=false"])
    longer = load_config(None, ["eval.max_new_tokens=7"])
    assert _generation_identity(on, tmp_path) == _generation_identity(off, tmp_path)
    assert "pack_weights" not in _generation_identity(on, tmp_path)["eval"]  # as saved before the key existed
    assert _generation_identity(on, tmp_path) != _generation_identity(longer, tmp_path)


def test_stage_two_lives_in_judging_and_old_import_paths_still_work():
    import subprocess
    import sys

    from neftune.evaluation import judging, run, sets

    for name in ("judge_stage", "other_answers", "_judge_identity", "_make_judge", "_judge_set"):
        assert getattr(run, name) is getattr(judging, name)
    assert run.set_name is sets.set_name and run.eval_records is sets.eval_records and run.PARTS == sets.PARTS
    # each module imports on its own (no import cycle between the stages)
    for mod in ("judging", "sets", "run"):
        r = subprocess.run([sys.executable, "-c", f"import neftune.evaluation.{mod}"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]


def _alpaca_file(path: Path, n: int = 2, tag: str = "") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"instruction": f"Say {tag}{i}.", "input": "", "output": f"{tag}{i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_eval_set_names_are_distinct_and_not_reserved(runs, tmp_path, capsys):
    """Every set has its own slot (generations/scores/judgments); a clash is refused before any generation."""
    base, _ = runs
    a, b = _alpaca_file(tmp_path / "a" / "test.jsonl"), _alpaca_file(tmp_path / "b" / "test.jsonl")
    probe = _alpaca_file(tmp_path / "c" / "train.json")
    cases = {
        f"eval.sets=[{a},{b}]": ["'test'", a, b],
        "eval.sets=[heldout,train]": ["'train'", "overfitting probe"],
        f"eval.sets=[heldout,{probe}]": ["'train'", probe, "rename"],
        "eval.sets=[heldout,heldout]": ["'heldout'"],
    }
    for sets, words in cases.items():
        assert main(["eval", str(base), *EVAL, sets]) == 1, sets
        err = capsys.readouterr().err
        # refused when the config loads, naming the override that set eval.sets
        assert err.startswith(f"neftune: error: override '{sets}': eval.sets: ") and err.count("\n") == 1, err
        assert all(w in err for w in words), (sets, err)
        assert not (base / "eval").exists()  # refused before anything was generated


def test_judging_refuses_answer_lists_that_do_not_pair(runs):
    """A length mismatch between the two runs' answers and the set's prompts is an error, never a truncation."""
    from neftune.errors import NeftuneError
    from neftune.evaluation import judging
    from neftune.evaluation.run import run_config

    base, _ = runs
    assert main(["eval", str(base), *EVAL]) == 0
    cfg = load_config(None, EVAL, base=run_config(base))
    rows = read_alpaca_eval(base / "eval" / "generations" / "heldout.json")

    class Judge:
        def judge_many(self, items, progress=False):
            return [(1, {"basis": "reference", "margin": 0.1}) for _ in items]

    assert judging._judge_set(cfg, Judge(), base, "heldout", rows)["n"] == 4  # paired: judged
    with pytest.raises(NeftuneError, match="heldout.*3 .*4 "):
        judging._judge_set(cfg, Judge(), base, "heldout", rows[:3])


def test_eval_file_bad_records_are_counted_and_reported(runs, tmp_path, capsys):
    """Skipped records of an eval file are counted per reason, logged and kept in results.json, as the
    training data's skips are in summary.json; a file with nothing usable is an error, not a missing set."""
    base, _ = runs
    good = [{"instruction": f"Say {i}.", "output": str(i)} for i in range(3)]
    lines = [json.dumps(good[0]), "{broken", json.dumps(good[1]), json.dumps({"output": "x"}), json.dumps(good[2])]
    (tmp_path / "mine.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sets = f"eval.sets=[heldout,{tmp_path / 'mine.jsonl'}]"
    assert main(["eval", str(base), *EVAL, sets, "data.on_bad_record=skip", "eval.parts=[generate]"]) == 0
    out = capsys.readouterr().out
    assert "mine: skipped 2 bad records" in out and "invalid_json: 1" in out and "missing_field: 1" in out, out
    res = json.loads((base / "eval" / "results.json").read_text())
    assert res["sets"]["mine"]["n"] == 3 and res["sets"]["mine"]["skipped"] == {"invalid_json": 1, "missing_field": 1}
    assert "skipped" not in res["sets"]["heldout"]  # the run's own records: nothing to skip
    (tmp_path / "mine.jsonl").write_text("{broken\n", encoding="utf-8")
    assert main(["eval", str(base), *EVAL, sets, "data.on_bad_record=skip", "eval.parts=[generate]"]) == 1
    err = capsys.readouterr().err
    assert "mine.jsonl: no usable eval records" in err and "invalid_json" in err, err


def test_edited_eval_file_is_answered_again(runs, tmp_path):
    """Saved answers and scores belong to the eval file's records as they were: changed prompts (or only
    changed references) are answered/scored again instead of reusing the old scores.json."""
    from neftune.evaluation.run import generate_stage, run_config

    base, _ = runs
    path = tmp_path / "mine.jsonl"

    def write(prompts, refs):
        path.write_text("".join(json.dumps({"instruction": p, "output": r}) + "\n" for p, r in zip(prompts, refs)))

    cfg = load_config(None, [*EVAL, f"eval.sets=[{path}]", "eval.parts=[generate,metrics]"], base=run_config(base))
    write(["Say one.", "Say two."], ["one", "two"])
    assert generate_stage(cfg, base)[1] is False
    assert generate_stage(cfg, base)[1] is True  # unchanged: reused
    write(["Name a colour.", "Say two."], ["one", "two"])
    scores, reused = generate_stage(cfg, base)
    assert not reused
    rows = read_alpaca_eval(base / "eval" / "generations" / "mine.json")
    assert [r["instruction"] for r in rows] == ["Name a colour.", "Say two."]
    write(["Name a colour.", "Say two."], ["red", "two"])  # only a reference changed: similarity is stale
    assert generate_stage(cfg, base)[1] is False
