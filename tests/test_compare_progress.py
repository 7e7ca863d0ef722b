"""The `[compare] i/total` counter ends at its total: the jobs counted are the jobs run (no training here,
the stage functions are stubs that report progress as the real ones do)."""

import re

import neftune.compare as C
from neftune.config import load_config


def test_progress_counter_reaches_its_total_with_one_study_variant(tmp_path, monkeypatch, capsys):
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path}",
            "compare.variants=[{name: alpha5, neftune_noise_alpha: 5}, {name: alpha10, neftune_noise_alpha: 10}]",
            "compare.seeds=[0, 1]",
            "compare.data_fractions=[0.25, 0.5]",
        ],
    )
    monkeypatch.setattr(C, "_convert_assets", lambda cfg, variants: None)
    monkeypatch.setattr(C, "train_run", lambda rc, prog, name: prog("train", name))
    monkeypatch.setattr(C, "generate_run", lambda rc, prog, name: prog("generate", name))
    monkeypatch.setattr(C, "judge_run", lambda rc, prog, name, against: against is not None and prog("judge", name))
    # one variant in the data-size study (no regularizer in this sweep): 2 fractions x 2 seeds x (2 runs + 1 judged)
    table = {"selection": {"statement": "stub"}, "data_study": ["alpha5"], "rows": [{"n_train": 16}]}
    monkeypatch.setattr(C, "aggregate", lambda sweep, cfg, with_fractions=True: dict(table))
    monkeypatch.setattr("neftune.report.write_report", lambda sweep, table, cfg: tmp_path / "report" / "index.html")
    C.compare(cfg)
    lines = re.findall(r"^\[compare\] (\d+)/(\d+) ", capsys.readouterr().out, re.MULTILINE)
    # full grid: 3 runs x 2 seeds trained + generated, 2 variants x 2 seeds judged = 16; study: 2 x 2 x 5 = 20
    assert len(lines) == 16 + 20
    assert lines[-1] == ("36", "36") and all(int(i) <= int(t) for i, t in lines)
