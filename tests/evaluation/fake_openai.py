"""A tiny OpenAI-compatible chat-completions server on loopback for judge tests.

Started per test on 127.0.0.1 with an OS-chosen port, in a daemon thread, and shut down afterwards.
Each request first consumes the next scripted action (if any), then falls back to ``policy``:

    ("status", code)    reply with that HTTP status and an OpenAI-style error body
    ("sleep", seconds)  sleep longer than the client's timeout, then answer normally (too late)
    ("malformed",)      200 with content-type application/json but a broken JSON body
    ("drop",)           close the connection without any response
    ("reply", text)     answer with this text
    ("echo", code)      error status whose message echoes the request's Authorization header (a
                        careless proxy): the judge must redact the key from what it raises

``policy(first_output, second_output, body) -> str`` decides the answer text otherwise.
The server checks the Authorization header against ``expected_key`` (401 if wrong).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_OUTPUTS = re.compile(r"## Output \(a\)\n\n(.*)\n\n## Output \(b\)\n\n(.*)\n\n## Your answer", re.S)


def extract_outputs(body: dict):
    user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
    m = _OUTPUTS.search(user)
    return (m.group(1), m.group(2)) if m else (None, None)


def prefer_longer(first, second, body):
    return "Output (a)" if len(first) >= len(second) else "b"


def always_a(first, second, body):
    return "a"


class FakeOpenAI:
    def __init__(self, policy=always_a, script=(), expected_key=None):
        self.policy = policy
        self.script = list(script)
        self.expected_key = expected_key
        self.requests = []  # (headers dict with lower-cased names, parsed body or None)
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, code, payload: bytes, ctype="application/json"):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timeout test): nothing to do
                    pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with fake.lock:
                    fake.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    action = fake.script.pop(0) if fake.script else None
                if self.path != "/v1/chat/completions":
                    return self._send(404, b'{"error": {"message": "not found"}}')
                if fake.expected_key is not None and self.headers.get("Authorization") != f"Bearer {fake.expected_key}":
                    return self._send(401, b'{"error": {"message": "bad key", "type": "invalid_request_error"}}')
                if action is not None:
                    kind = action[0]
                    if kind == "status":
                        err = {"error": {"message": f"scripted {action[1]}", "type": "server_error"}}
                        return self._send(action[1], json.dumps(err).encode())
                    if kind == "echo":
                        err = {"error": {"message": f"rejected {self.headers.get('Authorization')}"}}
                        return self._send(action[1], json.dumps(err).encode())
                    if kind == "malformed":
                        return self._send(200, b'{"id": "x", "choices": [')
                    if kind == "drop":
                        self.close_connection = True
                        try:
                            self.connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        return
                    if kind == "sleep":
                        time.sleep(action[1])
                    if kind == "reply":
                        return self._send(200, json.dumps(fake.completion(action[1], body)).encode())
                first, second = extract_outputs(body)
                return self._send(200, json.dumps(fake.completion(fake.policy(first, second, body), body)).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @staticmethod
    def completion(text, body):
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": (body or {}).get("model", "m"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def n_requests(self):
        return len(self.requests)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
