"""configs/rivals.yaml's variants (noise distributions, prompt-only, R3F, dropout, weight decay) run through
`neftune compare` on a tiny model, and the table has a row per variant."""
import json
from pathlib import Path

import yaml

from neftune.compare import compare
from tests.test_compare import sweep_cfg

RIVALS = Path(__file__).parent.parent / "configs" / "rivals.yaml"


def test_rivals_config_runs_through_compare(tmp_path, tiny_llama_dir):
    variants = yaml.safe_load(RIVALS.read_text())["compare"]["variants"]
    names = {v["name"] for v in variants}
    assert {"alpha5", "alpha5-gauss", "alpha5-sym", "alpha5-prompt", "r3f", "dropout", "wd"} <= names
    cfg = sweep_cfg(tiny_llama_dir, tmp_path)
    cfg.compare.variants, cfg.compare.seeds = variants, [0]
    cfg.eval.parts = ["generate", "metrics", "loss", "judge"]
    compare(cfg)
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["baseline"] + [v["name"] for v in variants]
    for v in variants:
        rc = yaml.safe_load((tmp_path / "runs" / f"{v['name']}-seed0" / "config.yaml").read_text())
        for k, want in v.items():
            if k != "name":
                assert (rc[k] == want) if not isinstance(want, dict) else all(rc[k][a] == b for a, b in want.items())
    report = (tmp_path / "report" / "report.md")
    if report.exists():
        text = report.read_text()
        assert all(v["name"] in text for v in variants)
