"""Pairwise judges: is answer A or answer B the better reply to a prompt?

Both judges return ``(verdict, info)`` with verdict 1.0 (A wins), 0.0 (B wins), 0.5 (draw) or
None (unusable: no decision could be read; counted, never guessed), ready for
``neftune.evaluation.winrate.win_rate_summary``.

Every verdict's ``info["basis"]`` says what it rests on: "reference" (compared with a reference
answer), "prompt-proxy" (compared with the prompt only: a relevance proxy), "llm" (an LLM judge's
preference), or None (nothing to compare with: the verdict is None). ``win_rate_summary(...,
bases=...)`` keeps these apart as separate rows.

* ``OfflineJudge``: no network. The answer whose MiniLM embedding is closer (cosine) to the
  reference answer wins. Eval-only sets may have no reference; then both answers are compared
  with the prompt instead (a relevance proxy, far weaker: basis "prompt-proxy"). ``info["margin"]``
  = sim_a - sim_b is the continuous per-prompt score (more power than win/lose in
  ``neftune.stats``).
* ``LLMJudge``: an OpenAI-compatible chat endpoint with an AlpacaEval-style pairwise prompt, asked
  in both presentation orders to cancel position bias. Every single-order verdict is cached in a
  JSONL file so an interrupted or repeated evaluation never pays for the same question twice.
  The API key is read from an env var, sent only as the Authorization header, and never written
  to the cache, logs, reprs or exception messages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
from pathlib import Path
from typing import Optional

from ..errors import JudgeError
from .metrics import Embedder

log = logging.getLogger(__name__)


def _text(prompt) -> str:
    """A prompt may be a string or the eval's message list; judges see plain text."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(str(m.get("content", "")) for m in prompt or [])


# --------------------------------------------------------------------------- offline
class OfflineJudge:
    """MiniLM cosine similarity to the reference answer (or to the prompt when there is none).

    ``stats``: judged, basis_reference, basis_prompt (prompt-proxy verdicts), no_basis (no reference
    and an empty prompt: verdict None)."""

    name = "offline-minilm"

    def __init__(self, embedder: Optional[Embedder] = None, tie_margin: float = 0.01):
        self.embedder = embedder if embedder is not None else Embedder()
        self.tie_margin = float(tie_margin)
        self.stats = {"judged": 0, "basis_reference": 0, "basis_prompt": 0, "no_basis": 0}

    def judge(self, prompt, answer_a: str, answer_b: str, reference: Optional[str] = None):
        return self.judge_many(
            [{"prompt": prompt, "answer_a": answer_a, "answer_b": answer_b, "reference": reference}], progress=False
        )[0]

    def judge_many(self, items, progress: bool = False) -> list:
        """Batch version: every distinct text is embedded once."""
        anchors = []
        for it in items:
            ref, prompt = it.get("reference"), _text(it.get("prompt")).strip()
            if ref is not None and str(ref).strip():
                anchors.append((ref, "reference"))
            elif prompt:
                anchors.append((prompt, "prompt-proxy"))
            else:
                anchors.append((None, None))  # nothing to compare with: no verdict, no basis
        texts = sorted(
            {a for a, _ in anchors if a is not None}
            | {it["answer_a"] for it in items}
            | {it["answer_b"] for it in items}
        )
        emb = dict(zip(texts, self.embedder.encode(texts))) if texts else {}
        out = []
        for it, (anchor, basis) in zip(items, anchors):
            self.stats["judged"] += 1
            if basis is None:
                self.stats["no_basis"] += 1
                out.append((None, {"basis": None, "sim_a": None, "sim_b": None, "margin": None}))
                continue
            sim_a = float(emb[it["answer_a"]] @ emb[anchor])
            sim_b = float(emb[it["answer_b"]] @ emb[anchor])
            diff = sim_a - sim_b
            verdict = 0.5 if abs(diff) < self.tie_margin else (1.0 if diff > 0 else 0.0)
            self.stats["basis_reference" if basis == "reference" else "basis_prompt"] += 1
            out.append((verdict, {"basis": basis, "sim_a": sim_a, "sim_b": sim_b, "margin": diff}))
        return out

    def __repr__(self):
        return f"OfflineJudge(tie_margin={self.tie_margin})"


# --------------------------------------------------------------------------- LLM judge
TEMPLATE_VERSION = "pairwise-v1"  # part of the cache key: a changed prompt must not reuse old verdicts

SYSTEM_PROMPT = (
    "You are a helpful assistant that compares the outputs of AI models and selects the one "
    "that best follows the user's instruction."
)

USER_TEMPLATE = """Select the output, (a) or (b), that is the better response to the instruction below. \
Judge helpfulness, accuracy, relevance and level of detail. Do not let the order of the outputs or their \
length alone influence your choice.

## Instruction

{instruction}

## Output (a)

{output_1}

## Output (b)

{output_2}

## Your answer

Which output is better? Answer with exactly one letter: a or b."""

_EXACT = re.compile(r"^(?:output\s*)?\(?([ab])\)?$")
_MENTION = re.compile(r"output\s*\(?([ab])\b\)?|\(([ab])\)")
_LEADING = re.compile(r"^\(?([ab])(?:\)|[.:,!\n]|$)")


def parse_choice(reply) -> Optional[str]:
    """'a', 'b' or None from a judge reply: "a", " B.", "(a)", "Output (b)", "**Output (a)**",
    "Output (a) is better than Output (b)" (leads with a). A reply naming neither output, or
    naming both without leading with one, is unusable (None)."""
    if not isinstance(reply, str):
        return None
    t = reply.strip().lower().strip("*\"'`# \t\r\n")
    m = _EXACT.match(t.rstrip(".!"))
    if m:
        return m.group(1)
    found = [a or b for a, b in _MENTION.findall(t)]
    if found and len(set(found)) == 1:
        return found[0]
    if found:
        first = _MENTION.search(t)
        return found[0] if first.start() == 0 else None
    m = _LEADING.match(t)
    return m.group(1) if m else None


class _Retryable(Exception):
    pass


class LLMJudge:
    """AlpacaEval-style pairwise judge on an OpenAI-compatible chat-completions endpoint.

    ``stats``: calls (HTTP requests sent, retries included), cache_hits (single-order verdicts read
    from the cache), retries, unusable_replies (single-order replies naming neither output, fresh or
    cached), failures (questions given up with JudgeError), cache_bad_lines (unreadable cache lines,
    e.g. a last line cut by a kill mid-write)."""

    def __init__(
        self,
        base_url: Optional[str],
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_retries: int = 5,
        timeout: float = 60.0,
        cache_path=None,
        backoff: float = 1.0,
        request_kwargs: Optional[dict] = None,
    ):
        key = os.environ.get(api_key_env)
        if not key:
            raise JudgeError(
                f"the llm judge needs its API key in the environment variable {api_key_env}, "
                "which is not set (set it, or use eval.judge=offline)"
            )
        from openai import OpenAI

        self._key = key
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.max_retries, self.timeout, self.backoff = int(max_retries), float(timeout), float(backoff)
        # temperature 0: the verdict should be a property of the answers, not of sampling.
        self.request_kwargs = {"temperature": 0, "max_tokens": 16} if request_kwargs is None else dict(request_kwargs)
        # max_retries=0: retries are ours, so they are counted, bounded and share one backoff policy.
        self._client = OpenAI(base_url=base_url, api_key=key, timeout=self.timeout, max_retries=0)
        if cache_path is None:
            from ..assets import cache_dir

            cache_path = cache_dir() / "judge" / "llm_judge_cache.jsonl"
        self.cache_path = Path(cache_path)
        self.stats = {
            "calls": 0,
            "cache_hits": 0,
            "retries": 0,
            "unusable_replies": 0,
            "failures": 0,
            "cache_bad_lines": 0,
        }
        self._cache: dict = {}
        self._load_cache()

    @property
    def name(self) -> str:
        return f"llm:{self.model}"

    def __repr__(self):
        return f"LLMJudge(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    # ----------------------------------------------------------------------- cache
    def _load_cache(self):
        if not self.cache_path.exists():
            return
        data = self.cache_path.read_bytes()
        if data and not data.endswith(b"\n"):
            # A kill mid-write leaves a partial last line: drop it so the next append starts clean.
            cut = data.rfind(b"\n") + 1
            with open(self.cache_path, "r+b") as f:
                f.truncate(cut)
            data = data[:cut]
            self.stats["cache_bad_lines"] += 1
        for line in data.decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self._cache[rec["key"]] = rec["choice"]
            except (ValueError, KeyError, TypeError):
                self.stats["cache_bad_lines"] += 1

    def _append_cache(self, key: str, choice: Optional[str], reply: str):
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        rec = {"key": key, "model": self.model, "choice": choice, "reply": self._redact(reply)[:200]}
        with open(self.cache_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())  # one verdict per line survives a crash right after it was paid for
        self._cache[key] = choice

    def cache_key(self, prompt: str, first: str, second: str) -> str:
        # Base URL and key deliberately excluded: the same model behind another proxy is the same judge.
        blob = json.dumps([TEMPLATE_VERSION, self.model, prompt, first, second], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    # ----------------------------------------------------------------------- one request
    def _redact(self, text) -> str:
        text = str(text)
        return text.replace(self._key, "***") if self._key else text

    def _request(self, prompt: str, first: str, second: str) -> str:
        import openai

        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_TEMPLATE.format(instruction=prompt, output_1=first, output_2=second)},
        ]
        # Errors are classified inside the except blocks but raised after them, so the openai
        # exception (whose text may quote the request) is not even chained as __context__.
        retry = fatal = None
        try:
            resp = self._client.chat.completions.create(model=self.model, messages=messages, **self.request_kwargs)
        except openai.APIStatusError as e:
            if e.status_code in (408, 429) or e.status_code >= 500:
                retry = f"HTTP {e.status_code}"
            else:
                fatal = f"judge endpoint refused the request (HTTP {e.status_code}): {e.message}"
        except (openai.APITimeoutError, openai.APIConnectionError) as e:
            retry = type(e).__name__
        except (openai.APIError, ValueError) as e:  # ValueError covers json.JSONDecodeError
            retry = f"malformed response ({type(e).__name__})"
        if fatal is not None:
            raise JudgeError(self._redact(fatal))
        if retry is not None:
            raise _Retryable(retry)
        try:
            content = resp.choices[0].message.content
        except (AttributeError, IndexError, TypeError, KeyError):
            content = None  # a non-JSON body comes back as a plain str without .choices
        if content is None:
            # A 200 without message text is as broken as a garbled body: worth another try.
            raise _Retryable("malformed response (no choices[0].message.content)")
        return content

    def _ask(self, prompt: str, first: str, second: str) -> Optional[str]:
        """The choice 'a'/'b' (or None if unusable) for one presentation order, cached."""
        key = self.cache_key(prompt, first, second)
        if key in self._cache:
            self.stats["cache_hits"] += 1
            return self._cache[key]
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
                # Exponential backoff with a little jitter so parallel runs don't retry in lockstep.
                time.sleep(self.backoff * 2 ** (attempt - 1) * (1.0 + 0.1 * random.random()))
            self.stats["calls"] += 1
            try:
                reply = self._request(prompt, first, second)
            except _Retryable as e:
                last = str(e)
                log.warning(
                    "judge request failed (%s), attempt %d/%d", self._redact(last), attempt + 1, self.max_retries + 1
                )
                continue
            except JudgeError:
                self.stats["failures"] += 1
                raise
            choice = parse_choice(reply)
            self._append_cache(key, choice, reply)
            return choice
        self.stats["failures"] += 1
        raise JudgeError(
            self._redact(
                f"judge endpoint {self.base_url or 'api.openai.com'} failed after "
                f"{self.max_retries + 1} attempts; last error: {last}"
            )
        )

    # ----------------------------------------------------------------------- public
    def judge(self, prompt, answer_a: str, answer_b: str, reference: Optional[str] = None):
        """Verdict for A vs B. The reference is not shown to the judge (AlpacaEval judges without one)."""
        p = _text(prompt)
        ab = self._ask(p, answer_a, answer_b)  # A presented as (a)
        ba = self._ask(p, answer_b, answer_a)  # A presented as (b)
        votes = []  # 1.0 when that order says A is better
        for choice, a_label in ((ab, "a"), (ba, "b")):
            if choice is None:
                self.stats["unusable_replies"] += 1
            else:
                votes.append(1.0 if choice == a_label else 0.0)
        if not votes:
            verdict = None
        elif len(votes) == 1 or votes[0] == votes[1]:
            verdict = votes[0]
        else:
            verdict = 0.5  # the orders disagree: position bias, not preference, decided it
        return verdict, {"basis": "llm", "order_ab": ab, "order_ba": ba}

    def judge_many(self, items, progress: bool = True) -> list:
        from tqdm.auto import tqdm

        return [
            self.judge(it["prompt"], it["answer_a"], it["answer_b"], it.get("reference"))
            for it in tqdm(items, desc=f"judge {self.model}", disable=not progress)
        ]


def make_judge(eval_cfg, cache_path=None):
    """The judge an ``EvalConfig`` asks for: OfflineJudge, LLMJudge, or None for ``judge: none``."""
    if eval_cfg.judge == "none":
        return None
    if eval_cfg.judge == "offline":
        return OfflineJudge(tie_margin=eval_cfg.tie_margin)
    if eval_cfg.judge == "llm":
        return LLMJudge(
            base_url=eval_cfg.judge_base_url,
            model=eval_cfg.judge_model,
            api_key_env=eval_cfg.judge_api_key_env,
            max_retries=eval_cfg.judge_max_retries,
            timeout=eval_cfg.judge_timeout,
            cache_path=cache_path,
        )
    raise JudgeError(f"unknown judge {eval_cfg.judge!r} (offline | llm | none)")
