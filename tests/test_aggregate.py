"""The sweep table from synthetic run dirs in the per-item format: paired differences pair by id, a
planted effect shows (and an absent one does not), the decision is one of the two sentences."""

import json

import pytest
from synthetic_sweep import make_sweep

from neftune.aggregate import aggregate
from neftune.paired import align, verdict_word

B = 400  # bootstrap replicates: enough for these planted effects, fast on CPU


def test_equal_variants_are_not_distinguishable(tmp_path):
    cfg = make_sweep(tmp_path, {"alpha5": 0.0, "alpha10": 0.0})
    sel = aggregate(tmp_path, cfg, n_boot=B)["selection"]
    assert sel["chosen"] is None
    assert sel["statement"].startswith(
        "no variant is distinguishable from the baseline at this size; the smallest "
        "difference this design can detect (80% power, 5% level) is "
    )
    assert "would take about" in sel["statement"] and sel["design"]["seeds"] >= 2 and sel["mde"] > 0
    # the default select_by lc_win_rate: length-adjusted verdicts (tests/test_decision.py)
    assert "beats" not in sel["statement"] and sel["metric_key"] == "heldout.lc_win_rate.reference"
    # nothing was chosen: the margin sentence names the best point estimate as such, not as a winner
    top, ru = sel["ranked"][:2]
    assert f"Best point estimate {top}, runner-up {ru}: {top} − {ru} = " in sel["statement"]


def test_runner_up_margin_is_taken_against_the_chosen_variant(tmp_path):
    """alpha10's point difference is the largest but its interval is wide (its own noise is large), so
    alpha5 is chosen; the runner-up margin must be chosen − other, not "largest point estimate − other"."""
    from neftune.decision import _runner_up

    variants = {"alpha5": {0: [1.0, 1.1]}, "alpha10": {0: [2.0, 2.1]}, "wd": {0: [0.0, 0.1]}}
    r = _runner_up(variants, ["alpha10", "alpha5", "wd"], 50, "prompts", chosen="alpha5")
    assert r["runner_up"] == "alpha10" and r["runner_up_sentence"].startswith("Runner-up alpha10: alpha5 − alpha10 = ")


def test_planted_effect_names_the_variant_and_every_metric_moves(tmp_path):
    cfg = make_sweep(tmp_path, {"alpha5": 1.0, "alpha10": 0.0})
    table = aggregate(tmp_path, cfg, n_boot=B)
    sel = table["selection"]
    assert sel["chosen"] == "alpha5" and sel["statement"].startswith("alpha5 beats the baseline on LC win rate − 50")
    assert sel["runner_up"] == "alpha10" and sel["runner_up_distinguishable"] is True
    assert "Runner-up alpha10" in sel["statement"] and sel["runner_up_margin"]["ci"][0] > 0
    p = {r["name"]: r["paired"] for r in table["rows"]}
    planted = p["alpha5"]
    assert planted["heldout_nll"]["diff"] == pytest.approx(-0.1, abs=0.01) and planted["heldout_nll"]["ci"][1] < 0
    assert (
        planted["clean_loss_last_epoch"]["ci"][0] > 0
        and "steps within seed" in planted["clean_loss_last_epoch"]["method"]
    )
    assert planted["heldout.tokens"]["diff"] == pytest.approx(40, abs=3)
    assert planted["overlap_rouge_l"]["resolved"].startswith("resolved: lower")
    # the null variant: no paired interval on a per-item metric excludes 0 in this synthetic sweep
    assert all(v["resolved"].startswith("not resolved") or v["ci"] == [0.0, 0.0] for v in p["alpha10"].values())
    assert all("method" in v for r in p.values() for v in r.values())


def test_pairs_by_id_not_position(tmp_path):
    cfg = make_sweep(tmp_path / "a", {"alpha5": 1.0})
    ref = aggregate(tmp_path / "a", cfg, n_boot=B)
    cfg = make_sweep(tmp_path / "b", {"alpha5": 1.0}, shuffle={"alpha5-seed0", "baseline-seed1"})
    got = aggregate(tmp_path / "b", cfg, n_boot=B)
    strip = lambda t: json.loads(json.dumps([r["paired"] for r in t["rows"]]))  # noqa: E731
    assert strip(got) == strip(ref)
    assert got["selection"]["statement"] == ref["selection"]["statement"]


def test_align_puts_missing_ids_as_none():
    out = align({"baseline": {0: {"a": 1.0, "b": 2.0}}, "v": {0: {"b": 5.0, "c": 7.0}}})
    assert out == {"baseline": {0: [1.0, 2.0, None]}, "v": {0: [None, 5.0, 7.0]}}


def test_data_study_reruns_chosen_and_best_regularizer(tmp_path):
    cfg = make_sweep(
        tmp_path,
        {"alpha5": 1.0, "alpha10": 0.0, "wd": 0.3, "wd2": 0.0},
        alphas={"wd": 0.0, "wd2": 0.0},
        fractions=(0.5,),
    )
    # only the study's variants have fraction runs: aggregate must not read any other
    for d in tmp_path.glob("runs/*frac*"):
        if d.name.split("-frac")[0] not in ("baseline", "alpha5", "wd"):
            import shutil

            shutil.rmtree(d)
    table = aggregate(tmp_path, cfg, n_boot=B)
    assert table["data_study"] == ["alpha5", "wd"]
    assert [(c["name"], c["fraction"]) for c in table["data_curve"]] == [
        ("alpha5", 0.5),
        ("alpha5", 1.0),
        ("wd", 0.5),
        ("wd", 1.0),
    ]
    half = next(c for c in table["data_curve"] if c["fraction"] == 0.5 and c["name"] == "alpha5")
    assert half["paired"]["heldout_nll"]["ci"][1] < 0  # paired with the same-fraction baseline


def test_notes_per_run_numbers_and_capped(tmp_path):
    cfg = make_sweep(tmp_path, {"alpha5": 0.0})
    table = aggregate(tmp_path, cfg, n_boot=B)
    notes = table["judge_notes"]["heldout"]
    assert notes["no_basis"] == 2 and notes["verdicts_by_basis"]["reference"] == 40
    assert [u["run"] for u in notes["lc_unstable"]] == ["alpha5-seed1"]
    row = table["rows"][1]
    assert row["paired"]["lc_win_rate"]["method"].startswith("per-run LC fits")
    assert "t interval over 2 seeds" in row["paired"]["final_clean_loss"]["method"]
    assert set(row["clean_loss_by_epoch"]) == {"1", "2", "3"} and "heldout" in row["capped_fraction"]
    # the overlap probe's answers to trained prompts are capped at the same eval.max_new_tokens: reported too
    assert row["capped_fraction"]["trained prompts"] == [0.125, 0.125]


def test_verdict_word():
    assert verdict_word(1.0, [0.5, 1.5], "lower") == "resolved: higher, worse"
    assert verdict_word(-1.0, [-1.5, -0.5], None) == "resolved: lower"
    assert verdict_word(0.1, [-0.5, 0.6], "higher").startswith("not resolved")


def test_per_run_fallback_with_one_seed_claims_nothing(tmp_path):
    """Results written before the per-item contract: one value per run. With one seed no interval exists, so
    the decision must not name a variant (a bootstrap over one value would give a zero-width interval)."""
    cfg = make_sweep(tmp_path, {"alpha5": 1.0}, seeds=(0,))
    for res_path in tmp_path.glob("runs/*/eval/results.json"):
        res = json.loads(res_path.read_text())
        for part in [res, *res["sets"].values(), *[v for v in res.values() if isinstance(v, dict)]]:
            part.pop("items", None)
        res["sets"]["heldout"].get("judge", {}).pop("items", None)
        res_path.write_text(json.dumps(res))
    for m in tmp_path.glob("runs/*/metrics.jsonl"):
        m.write_text("")
    sel = aggregate(tmp_path, cfg, n_boot=B)["selection"]
    assert sel["chosen"] is None and "too few for an interval" in sel["statement"]
    assert sel["ranked"] == ["alpha5"]
    # select_by is the user's setting (as decide_variant reports it), the metric key is separate
    assert sel["select_by"] == cfg.compare.select_by == "lc_win_rate"
    assert sel["metric_key"] == "heldout.lc_win_rate"


def test_win_rate_decides_on_the_judge_margin(tmp_path):
    """select_by win_rate: the judge's continuous margin where it has one (more power than verdicts)."""
    cfg = make_sweep(tmp_path, {"alpha5": 1.0})
    cfg.compare.select_by = "win_rate"
    sel = aggregate(tmp_path, cfg, n_boot=B)["selection"]
    assert sel["metric_key"] == "heldout.margin.reference" and sel["chosen"] == "alpha5"
    assert sel["statement"].startswith("alpha5 beats the baseline on judge margin")


def test_judge_without_margins_decides_on_verdicts(tmp_path):
    """An LLM judge has no continuous margin (all null): the decision falls back to its verdicts."""
    cfg = make_sweep(tmp_path, {"alpha5": 1.0})
    cfg.compare.select_by = "win_rate"
    for res_path in tmp_path.glob("runs/alpha5-*/eval/results.json"):
        res = json.loads(res_path.read_text())
        items = res["sets"]["heldout"]["judge"]["items"]
        items["margin"] = [None] * len(items["margin"])
        res_path.write_text(json.dumps(res))
    sel = aggregate(tmp_path, cfg, n_boot=B)["selection"]
    assert sel["metric_key"] == "heldout.win_rate.reference" and sel["chosen"] == "alpha5"


def test_item_map_refuses_a_repeated_id():
    """A repeated id would keep only its last value and pair the wrong items: refused, not overwritten."""
    from neftune.errors import DataError
    from neftune.paired import item_map

    res = {"heldout": {"items": {"id": ["a", "b", "a"], "nll": [1.0, 2.0, 3.0]}}}
    with pytest.raises(DataError, match=r"^runs/x/eval/results.json: duplicate_id \(id 'a' appears twice in "):
        item_map(res, ["heldout", "items"], "nll", where="runs/x/eval/results.json")
    assert item_map({"heldout": {"items": {"id": ["a", "b"], "nll": [1.0, 2.0]}}}, ["heldout", "items"], "nll") == {
        "a": 1.0,
        "b": 2.0,
    }
