"""A loopback OpenAI-compatible server for tests (127.0.0.1 only, started/stopped by the test).

Replies are scripted: each request pops the next reply (or repeats the last). A reply is the
assistant's text, a function of the request body returning a reply, or a dict to script a
fault:

- ``{"status": 429, "headers": {...}}`` answers with that status (``"code"`` sets the error's
  code, ``"echo_auth": True`` puts the request's Authorization header in the error message, as
  some servers do);
- ``{"delay": s}`` waits first; ``{"hang": True}`` waits until the client gives up or the stub
  stops (at most ``hang_limit`` seconds, so no test can wait forever);
- ``{"raw": "..."}`` sends a malformed body with status 200;
- ``{"body": {...}}`` sends that JSON object with status 200 (e.g. one without ``choices``);
- ``{"cut": True}`` promises the whole reply in Content-Length, sends half of it and closes
  the connection; ``{"drop": True}`` closes the connection without an answer;
- ``{"stop": True}`` drops the connection and stops the server (the endpoint goes down: every
  later connection is refused);
- ``{"finish_reason": "length"}`` marks a truncated reply.

``keep_alive=True`` answers in HTTP/1.1 and keeps connections open between requests, like a
real endpoint (the throughput benchmark uses it); the default opens one connection a request.

Every request is counted and recorded with its arrival time, and the most requests ever in
flight at once is tracked.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class OpenAIStub:
    def __init__(self, replies: list[Any], hang_limit: float = 30.0, keep_alive: bool = False):
        self.replies = list(replies)
        self.requests: list[dict] = []
        self.times: list[float] = []  # time.monotonic() at each request's arrival
        self.auth_headers: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.hang_limit = hang_limit
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = False
        stub = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 keeps a client's connection open between requests, as hosted and
            # self-hosted endpoints do; HTTP/1.0 opens one per request.
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"
            # headers and body go out as two writes: on a connection kept open, Nagle's
            # algorithm held the body for the client's delayed ACK (~40 ms a reply)
            disable_nagle_algorithm = keep_alive

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with stub._lock:
                    stub.requests.append(body)
                    stub.times.append(time.monotonic())
                    stub.auth_headers.append(self.headers.get("Authorization", ""))
                    reply = stub.replies.pop(0) if len(stub.replies) > 1 else stub.replies[0]
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    self._answer(body, reply)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1

            def _answer(self, body: dict, reply: Any) -> None:
                if not self.path.endswith("/chat/completions"):
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                if callable(reply):  # a function of the request body
                    reply = reply(body)
                script = reply if isinstance(reply, dict) else {"content": reply}
                if script.get("delay"):
                    time.sleep(script["delay"])
                if script.get("hang"):
                    stub._stopping.wait(stub.hang_limit)
                    self.close_connection = True
                    return
                if script.get("stop"):
                    threading.Thread(target=stub.stop, daemon=True).start()
                    self.close_connection = True
                    return
                if script.get("drop"):
                    self.close_connection = True
                    return
                if "status" in script:
                    message = f"scripted {script['status']}"
                    if script.get("echo_auth"):
                        message += f" for {self.headers.get('Authorization', '')}"
                    error = {"error": {"message": message, "code": script.get("code")}}
                    self._send(script["status"], json.dumps(error).encode(), script.get("headers"))
                    return
                if "raw" in script:
                    self._send(200, script["raw"].encode())
                    return
                if "body" in script:
                    self._send(200, json.dumps(script["body"]).encode())
                    return
                payload = json.dumps(
                    {
                        "id": f"chatcmpl-{len(stub.requests)}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model", "stub"),
                        "choices": [
                            {
                                "index": 0,
                                "finish_reason": script.get("finish_reason", "stop"),
                                "message": {"role": "assistant", "content": script["content"]},
                            }
                        ],
                        "usage": {
                            "prompt_tokens": 100,
                            "completion_tokens": 20,
                            "total_tokens": 120,
                        },
                    }
                ).encode()
                if script.get("cut"):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(200, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> OpenAIStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving and close the port (idempotent)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._stopping.set()  # release hanging handlers
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
