"""A real OpenAI-compatible chat-completions server for tests and benchmarks, answering from a script.

It listens on 127.0.0.1 (threaded, keep-alive, real sockets) and every request goes through the real
``openai`` SDK inside our code. A script is either a list of steps consumed in order by all requests, or a
callable ``(request_body) -> step``; :func:`per_conversation` turns a list into a callable that picks the
step by how many assistant turns the request's conversation already has, so concurrent tasks each walk
their own copy of the script.

Steps: :func:`reply`, :func:`http_error`, :func:`no_choices`, :func:`garbage`, :func:`drop`,
:func:`delayed`.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_ids = itertools.count(1)


@dataclass
class Step:
    status: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False


def tool_call(
    command: str | None = None,
    *,
    call_id: str | None = None,
    timeout: int | None = None,
    name: str = "terminal",
    arguments: str | None = None,
) -> dict:
    """An OpenAI tool call; ``arguments`` (raw string) overrides the JSON built from command/timeout."""
    if arguments is None:
        args = {} if command is None else {"command": command}
        if timeout is not None:
            args["timeout"] = timeout
        arguments = json.dumps(args)
    return {
        "id": call_id or f"call_{next(_ids)}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def reply(
    content: str | None = None,
    tool_calls: list | None = None,
    *,
    reasoning: str | None = None,
    reasoning_content: str | None = None,
    reasoning_details: list | None = None,
    usage: dict | None | bool = True,
    finish_reason: str | None = None,
) -> Step:
    """A 200 chat completion. ``usage=True`` reports fixed counts, ``None`` omits usage."""
    message: dict = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning is not None:
        message["reasoning"] = reasoning
    if reasoning_content is not None:
        message["reasoning_content"] = reasoning_content
    if reasoning_details is not None:
        message["reasoning_details"] = reasoning_details
    body = {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "scripted",
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason or ("tool_calls" if tool_calls else "stop")}
        ],
    }
    if usage is True:
        usage = {
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "completion_tokens_details": {"reasoning_tokens": 5},
        }
    if usage:
        body["usage"] = usage
    return Step(body=json.dumps(body).encode())


def http_error(status: int, message: str = "error", *, code: str | None = None, headers: dict | None = None) -> Step:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return Step(status=status, body=json.dumps(body).encode(), headers=headers or {})


def no_choices(message: str = "upstream provider error") -> Step:
    """What OpenRouter sends when an upstream fails: HTTP 200, an error object, choices null."""
    return Step(body=json.dumps({"id": "gen-x", "choices": None, "error": {"message": message, "code": 502}}).encode())


def garbage() -> Step:
    return Step(body=b"<html>this is not json</html>", headers={"Content-Type": "text/html"})


def drop() -> Step:
    """Close the connection without answering."""
    return Step(drop=True)


def delayed(seconds: float, step: Step) -> Step:
    return Step(status=step.status, body=step.body, headers=step.headers, delay=seconds, drop=step.drop)


def assistant_turns(request: dict) -> int:
    return sum(1 for m in request.get("messages", []) if m.get("role") == "assistant")


def per_conversation(steps: list[Step | Callable[[], Step]]) -> Callable[[dict], Step]:
    """Pick step N for a conversation that already has N assistant turns (the last step repeats)."""

    def choose(request: dict) -> Step:
        step = steps[min(assistant_turns(request), len(steps) - 1)]
        return step() if callable(step) else step

    return choose


class ScriptedModelServer:
    """``with ScriptedModelServer(script) as server: ... server.base_url ... server.requests``."""

    def __init__(self, script: list[Step] | Callable[[dict], Step], latency: float = 0.0):
        self.script = script
        self.latency = latency
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        self._position = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else Nagle + delayed ACK stall every request ~40 ms

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    request = json.loads(raw)
                except ValueError:
                    request = {"_raw": raw.decode("utf-8", "replace")}
                step = server._next_step(request, {k.lower(): v for k, v in self.headers.items()})
                wait = step.delay + server.latency
                if wait:
                    time.sleep(wait)
                if step.drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                head = [
                    f"HTTP/1.1 {step.status} X",
                    "Content-Type: application/json",
                    f"Content-Length: {len(step.body)}",
                ]
                head += [f"{k}: {v}" for k, v in step.headers.items() if k.lower() != "content-type"]
                self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + step.body)  # one write

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # the default backlog (5) refuses connections when many workers connect

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _next_step(self, request: dict, headers: dict) -> Step:
        with self._lock:
            self.requests.append(request)
            self.headers.append(headers)
            if callable(self.script):
                chooser = self.script
            else:
                if self._position >= len(self.script):
                    return http_error(500, "script exhausted")
                step = self.script[self._position]
                self._position += 1
                return step
        return chooser(request)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ScriptedModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
