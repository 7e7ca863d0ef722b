"""`neftune eval RUN --against OTHER` end to end on tiny runs: results.json, summary.md, AlpacaEval files."""
import json
from pathlib import Path

from neftune.cli import main
from neftune.config import load_config
from neftune.evaluation.generate import read_alpaca_eval
from neftune.train import train

DATA = str(Path(__file__).parents[1] / "assets" / "tiny_alpaca.jsonl")


def test_eval_against_baseline(tmp_path, tiny_llama_dir, capsys):
    for name, alpha in (("base", 0), ("neft", 5)):
        train(load_config(None, [f"model={tiny_llama_dir}", f"output_dir={tmp_path/name}", f"data.path={DATA}",
                                 "data.eval_size=4", "data.max_length=256", "max_steps=2", "report_to=[jsonl]",
                                 f"neftune_noise_alpha={alpha}", "save_steps=0"]))
    args = ["eval", str(tmp_path / "neft"), "--against", str(tmp_path / "base"), "eval.sets=[heldout]",
            "eval.num_samples=4", "eval.max_new_tokens=6", "eval.overfit_samples=3", "eval.capability_samples=3",
            "eval.bootstrap=20"]
    assert main(args) == 0
    res = json.loads((tmp_path / "neft" / "eval" / "results.json").read_text())
    j = res["sets"]["heldout"]["judge"]
    assert j["n"] + j["unusable"] == 4 and j["wins"] + j["losses"] + j["draws"] == j["n"]
    assert j["win_rate"] is not None and j["lc_win_rate"] is not None
    for k in ("heldout_loss", "overfit", "capability"):
        assert res[k] is not None
    rows = read_alpaca_eval(tmp_path / "neft" / "eval" / "generations" / "heldout.json")
    assert len(rows) == 4 and set(rows[0]) == {"instruction", "output", "generator", "dataset"}
    assert (tmp_path / "base" / "eval" / "generations" / "heldout.json").exists()  # the other side was generated
    summary = (tmp_path / "neft" / "eval" / "summary.md").read_text()
    assert "LC win rate" in summary and "win rate" in summary
    # rerun: everything from the caches, same numbers
    assert main(args) == 0
    again = json.loads((tmp_path / "neft" / "eval" / "results.json").read_text())
    assert again["sets"] == res["sets"]
