"""`neftune compare` through Ray (compare.launcher=ray, 2 workers on a local 2-CPU Ray) against the serial
sweep: the same compare.json numbers, the runs really ran at the same time, and a failing run surfaces as
a NeftuneError naming it. Both sweeps run with 1 torch thread per run, so float summation order is the same."""

import json
import os
from pathlib import Path

import pytest
import torch
from test_compare import sweep_cfg as compare_sweep_cfg

import neftune
from neftune.compare import compare
from neftune.errors import ConfigError, NeftuneError

ray = pytest.importorskip("ray")


def sweep_cfg(model_dir, out, *extra):
    """tests/test_compare.py's miniature sweep with one seed."""
    return compare_sweep_cfg(model_dir, out, "compare.seeds=[0]", *extra)


@pytest.fixture(scope="module")
def local_ray():
    # workers import this checkout's neftune (not another install of it); 2 CPUs = 2 one-thread workers
    root = str(Path(neftune.__file__).resolve().parents[1])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 1024**2,
        runtime_env={"env_vars": {"PYTHONPATH": root, "OMP_NUM_THREADS": "1"}},
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def serial_table(tmp_path_factory, tiny_llama_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task below (2 CPUs / 2 workers)
    try:
        return compare(sweep_cfg(tiny_llama_dir, tmp_path_factory.mktemp("serial")))
    finally:
        torch.set_num_threads(threads)


def _numbers(table):
    """Per-run values of every metric but the wall time."""
    return {
        (row["name"], run): {k: s["values"][i] for k, s in row["metrics"].items() if k != "train_wall_time_s"}
        for row in table["rows"]
        for i, run in enumerate(row["runs"])
    }


def test_ray_sweep_equals_serial_and_runs_concurrently(local_ray, serial_table, tmp_path, tiny_llama_dir):
    table = compare(sweep_cfg(tiny_llama_dir, tmp_path, "compare.launcher=ray", "compare.workers=2"))
    on_disk = json.loads((tmp_path / "compare.json").read_text())
    assert on_disk["launch"]["launcher"] == "ray" and serial_table["launch"]["launcher"] == "serial"
    # identical, not merely close: same seeds, same thread count, same code path in another process
    assert _numbers(on_disk) == _numbers(json.loads(json.dumps(serial_table)))
    assert len(_numbers(on_disk)) == 2 and on_disk["selection"] == json.loads(json.dumps(serial_table))["selection"]

    train = [j for j in table["launch"]["jobs"] if j["stage"] == "train"]
    assert sorted(j["run"] for j in train) == ["alpha5-seed0", "baseline-seed0"]
    pids = {j["pid"] for j in train}
    assert len(pids) == 2 and not pids & {j["pid"] for j in serial_table["launch"]["jobs"]}
    assert max(j["start"] for j in train) < min(j["end"] for j in train), "the two trainings did not overlap"

    # a rerun through Ray reuses every run the first one wrote (same rundir code path)
    again = compare(sweep_cfg(tiny_llama_dir, tmp_path, "compare.launcher=ray", "compare.workers=2"))
    assert _numbers(again) == _numbers(on_disk)
    assert again["wall_time"]["stages_s"]["training"] < table["wall_time"]["stages_s"]["training"]


def test_failing_run_is_a_neftune_error_naming_it(local_ray, tmp_path, tiny_llama_dir):
    broken = "compare.variants=[{name: broken, data: {path: " + str(tmp_path / "missing.jsonl") + "}}]"
    cfg = sweep_cfg(tiny_llama_dir, tmp_path / "sweep", "compare.launcher=ray", "compare.workers=2", broken)
    with pytest.raises(NeftuneError, match=r"train broken-seed0: .*missing\.jsonl"):
        compare(cfg)
    # the run that did not fail finished and is reused by the next attempt
    assert (tmp_path / "sweep" / "runs" / "baseline-seed0" / "summary.json").exists()


def test_launcher_keys_are_checked_at_load(monkeypatch, tiny_llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="compare.workers"):
        sweep_cfg(tiny_llama_dir, tmp_path, "compare.workers=0")
    with pytest.raises(ConfigError, match="compare.launcher"):
        sweep_cfg(tiny_llama_dir, tmp_path, "compare.launcher=dask")
    with pytest.raises(ConfigError, match="ray_address"):
        sweep_cfg(tiny_llama_dir, tmp_path, "compare.ray_address=auto")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'neftune\[ray\]'"):
        sweep_cfg(tiny_llama_dir, tmp_path, "compare.launcher=ray")


def test_data_error_survives_pickling():
    import pickle

    from neftune.errors import DataError

    e = pickle.loads(pickle.dumps(DataError("a.jsonl", 3, "bad_json", "line 3")))
    assert isinstance(e, DataError) and str(e) == "a.jsonl:3: bad_json (line 3)" and e.line == 3


def test_serial_failure_keeps_its_type_and_names_the_run(tmp_path, tiny_llama_dir):
    from neftune.errors import DataError

    broken = "compare.variants=[{name: broken, data: {path: " + str(tmp_path / "missing.jsonl") + "}}]"
    with pytest.raises(DataError) as info:
        compare(sweep_cfg(tiny_llama_dir, tmp_path / "sweep", broken))
    assert any("broken-seed0" in note for note in info.value.__notes__)


def test_ray_is_not_imported_unless_selected():
    import subprocess
    import sys

    code = "import sys, neftune.compare, neftune.launch, neftune.cli; print('ray' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(neftune.__file__).resolve().parents[1])}  # this checkout
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
