"""A real OpenAI-compatible chat-completions server for tests and benchmarks, answering from a script.

It listens on 127.0.0.1 (threaded, keep-alive, real sockets) and every request goes through the real
``openai`` SDK inside our code. A script is either a list of steps consumed in order by all requests, or a
callable ``(request_body) -> step``; :func:`per_conversation` turns a list into a callable that picks the
step by how many assistant turns the request's conversation already has, so concurrent tasks each walk
their own copy of the script; :func:`per_prompt` plays a list to one task request by request.

Steps: :func:`reply`, :func:`http_error`, :func:`no_choices`, :func:`garbage`, :func:`drop`,
:func:`delayed`, :func:`raw`, :func:`trickled`, :func:`with_headers` (usage with a cost: :func:`billed`).
:data:`HOSTILE` is a catalogue of what broken or hostile OpenAI-compatible servers send, one entry per
behaviour, so a new one is one entry away.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_ids = itertools.count(1)


@dataclass
class Step:
    status: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    trickle: float = 0.0
    """Seconds between single bytes of the body: no read ever waits long, yet the whole body takes forever."""


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
    finish = finish_reason or ("tool_calls" if tool_calls else "stop")
    return Step(body=json.dumps(completion_body(message, usage=usage, finish_reason=finish)).encode())


def completion_body(message: object, *, usage: object = True, finish_reason: object = "stop") -> dict:
    """A chat-completion JSON body around ``message`` (any value: the hostile entries put anything there)."""
    body: dict = {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "scripted",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
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
    return body


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
    return dataclasses.replace(step, delay=seconds)


def raw(body: bytes | str, status: int = 200, headers: dict | None = None) -> Step:
    """Exactly these bytes as the body (for what json.dumps cannot write: 1e999, 100,000-deep nesting...)."""
    return Step(status=status, body=body.encode("utf-8") if isinstance(body, str) else body, headers=headers or {})


def trickled(seconds_per_byte: float, step: Step) -> Step:
    return dataclasses.replace(step, trickle=seconds_per_byte)


def with_headers(headers: dict, step: Step) -> Step:
    """``step`` with these response headers too (a LiteLLM proxy's x-litellm-response-cost...)."""
    return dataclasses.replace(step, headers={**step.headers, **headers})


def billed(cost: float | None, *, prompt: int = 100, completion: int = 20, cached: int = 0, cache_write: int = 0):
    """A usage object as OpenRouter sends it: token counts, cache counts and the call's cost in USD (credits)."""
    usage: dict = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": 0},
        "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": cache_write},
    }
    if cost is not None:
        usage["cost"] = cost
    return usage


def assistant_turns(request: dict) -> int:
    return sum(1 for m in request.get("messages", []) if m.get("role") == "assistant")


def per_conversation(steps: list[Step | Callable[[], Step]]) -> Callable[[dict], Step]:
    """Pick step N for a conversation that already has N assistant turns (the last step repeats)."""

    def choose(request: dict) -> Step:
        step = steps[min(assistant_turns(request), len(steps) - 1)]
        return step() if callable(step) else step

    return choose


def per_prompt(
    scripts: dict[str, list[Step | Callable[[], Step]]], default: Callable[[dict], Step]
) -> Callable[[dict], Step]:
    """The prompt ``p`` (the first user message) gets ``scripts[p][n]`` on its n-th request, whatever the request
    holds (errors and retries count; the last step repeats); any other prompt is answered by ``default``."""
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def choose(request: dict) -> Step:
        prompt = next((m.get("content") for m in request.get("messages", []) if m.get("role") == "user"), None)
        if prompt not in scripts:
            return default(request)
        with lock:
            n = counts.get(prompt, 0)
            counts[prompt] = n + 1
        step = scripts[prompt][min(n, len(scripts[prompt]) - 1)]
        return step() if callable(step) else step

    return choose


# ---------------------------------------------------------------------------------------------------------------
# The hostile catalogue: what broken or hostile OpenAI-compatible servers send
# ---------------------------------------------------------------------------------------------------------------


def _call(command: str = "echo ok", *, call_id: object = None, arguments: object = None, name: object = "terminal"):
    return {
        "id": f"call_{next(_ids)}" if call_id is None else call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps({"command": command}) if arguments is None else arguments},
    }


def _message(content: object = None, tool_calls: object = None, **extra: object) -> dict:
    message = {"role": "assistant", "content": content, **extra}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return message


def _body(message: object, *, usage: object = True, finish_reason: object = "tool_calls") -> Step:
    return Step(body=json.dumps(completion_body(message, usage=usage, finish_reason=finish_reason)).encode())


def _with_literal(step: Step, placeholder: str, literal: str) -> Step:
    """Put a JSON literal json.dumps cannot write (1e999, 10**400) where the string ``placeholder`` stands."""
    return dataclasses.replace(step, body=step.body.replace(json.dumps(placeholder).encode(), literal.encode()))


def _deep(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def _rate_limited(headers: dict) -> Step:
    return http_error(429, "rate limit exceeded", headers=headers)


@dataclass(frozen=True)
class Hostile:
    step: Callable[[], Step]
    """Makes the step (a fresh one each time)."""
    ends_task: bool = False
    """The task cannot go on after it (a non-retryable error, an empty truncated answer)."""
    rate_limit: bool = False
    """A 429: waited out within --max_retry_after, pausing every worker."""


HOSTILE: dict[str, Hostile] = {
    # Tool-call ids of every type: they must come back as distinct strings that pair each call with its result.
    "id_object": Hostile(lambda: _body(_message(None, [_call("echo id-object", call_id={"x": 1})]))),
    "id_list": Hostile(lambda: _body(_message(None, [_call("echo id-list", call_id=["a", 1])]))),
    "id_number_and_null": Hostile(
        lambda: _body(_message(None, [_call("echo id-7", call_id=7), {**_call("echo id-null"), "id": None}]))
    ),
    "ids_duplicate": Hostile(
        lambda: _body(_message(None, [_call("echo dup-1", call_id="dup"), _call("echo dup-2", call_id="dup")]))
    ),
    "ids_surrogate": Hostile(
        lambda: _body(_message(None, [_call("echo s-1", call_id="a\ud800"), _call("echo s-2", call_id="a\ud801")]))
    ),
    # Lists that are not lists, objects that are not objects.
    "tool_calls_number": Hostile(lambda: _body(_message(None, 5))),
    "tool_calls_object": Hostile(lambda: _body(_message(None, _call("echo single-object")))),
    "tool_calls_junk_entries": Hostile(lambda: _body(_message(None, [5, "x", None, _call("echo after-junk")]))),
    "choices_object": Hostile(lambda: raw(json.dumps({"choices": {"message": _message("hi")}}))),
    "message_list": Hostile(lambda: _body([_message("hi")])),
    "content_parts": Hostile(
        lambda: _body(_message([{"type": "text", "text": "parts "}, 5, {"type": "text", "text": "joined"}], [_call()]))
    ),
    "function_not_object": Hostile(lambda: _body(_message(None, [{"id": "f1", "type": "function", "function": 5}]))),
    "name_object": Hostile(lambda: _body(_message(None, [_call(name={"n": 1})]))),
    # Numbers that are not finite, or not numbers.
    "usage_1e999": Hostile(
        lambda: _with_literal(
            _body(_message(None, [_call("echo usage")]), usage={"prompt_tokens": "INF", "total_tokens": "INF"}),
            "INF",
            "1e999",
        )
    ),
    "usage_10e400": Hostile(
        lambda: _with_literal(_body(_message(None, [_call()]), usage={"prompt_tokens": "BIG"}), "BIG", "1" + "0" * 400)
    ),
    "usage_junk": Hostile(
        lambda: _body(
            _message(None, [_call("echo usage-junk")]),
            usage={"prompt_tokens": -5, "completion_tokens": True, "total_tokens": "9", "completion_tokens_details": 3},
        )
    ),
    "timeout_10e400": Hostile(
        lambda: _body(
            _message(None, [_call(arguments='{"command": "echo big-timeout", "timeout": 1' + "0" * 400 + "}")])
        )
    ),
    "timeout_nan_inf": Hostile(
        lambda: _body(
            _message(
                None,
                [
                    _call(arguments='{"command": "echo nan-timeout", "timeout": NaN}'),
                    _call(arguments='{"command": "echo inf-timeout", "timeout": -Infinity}'),
                ],
            )
        )
    ),
    "finish_reason_number": Hostile(lambda: _body(_message(None, [_call()]), finish_reason=5)),
    # Text that cannot be encoded, or cannot be run.
    "command_surrogate": Hostile(lambda: _body(_message(None, [_call("echo a\ud800b")]))),
    "arguments_raw_surrogate": Hostile(
        lambda: _body(_message(None, [_call(arguments='{"command": "echo raw-\ud800"}')]))
    ),
    "content_surrogate": Hostile(lambda: _body(_message("thinking \udc80 aloud", [_call("echo content")]))),
    "reasoning_surrogate": Hostile(
        lambda: _body(
            _message(
                None, [_call()], reasoning_content="why \ud800", reasoning_details=[{"type": "x", "text": "\udfff"}]
            )
        )
    ),
    "command_nul": Hostile(lambda: _body(_message(None, [_call("echo a\x00b")]))),
    "arguments_object": Hostile(lambda: _body(_message(None, [_call(arguments={"command": "echo object-args"})]))),
    # Deep nesting, in the arguments and in the whole body.
    "arguments_deep": Hostile(lambda: _body(_message(None, [_call(arguments=_deep())]))),
    "body_deep": Hostile(lambda: raw('{"choices": ' + _deep() + "}")),
    # A body trickled one byte at a time never trips a per-read timeout.
    "trickle": Hostile(lambda: trickled(0.5, reply("trickled", [tool_call("echo trickled")]))),
    # Rate limits and their hints.
    "retry_after_huge": Hostile(lambda: _rate_limited({"Retry-After": "100000"}), rate_limit=True),
    "retry_after_http_date": Hostile(
        lambda: _rate_limited({"Retry-After": formatdate(time.time() + 86400, usegmt=True)}), rate_limit=True
    ),
    "retry_after_junk": Hostile(lambda: _rate_limited({"Retry-After": "nan"}), rate_limit=True),
    "retry_after_ms": Hostile(lambda: _rate_limited({"retry-after-ms": "150"}), rate_limit=True),
    "x_ratelimit_reset_requests": Hostile(
        lambda: _rate_limited({"x-ratelimit-reset-requests": "6m0s"}), rate_limit=True
    ),
    "llm_provider_retry_after": Hostile(lambda: _rate_limited({"llm_provider-retry-after": "60"}), rate_limit=True),
    # Endings.
    "length_empty": Hostile(lambda: _body(_message(None), finish_reason="length"), ends_task=True),
    "litellm_invalid_model": Hostile(
        lambda: http_error(
            400,
            "litellm.BadRequestError: Invalid model name passed in model=no-such-model. "
            "Call `/v1/models` to view available models for your key.",
        ),
        ends_task=True,
    ),
    "litellm_no_db": Hostile(
        lambda: http_error(400, "Authentication Error, No connected db.", code="400"), ends_task=True
    ),
}


class ScriptedModelServer:
    """``with ScriptedModelServer(script) as server: ... server.base_url ... server.requests``.

    ``models`` answers ``GET /models``, which the runner asks once before the first task."""

    def __init__(self, script: list[Step] | Callable[[dict], Step], latency: float = 0.0, models: Step | None = None):
        self.script = script
        self.latency = latency
        self.models = models or Step(body=json.dumps({"object": "list", "data": [{"id": "scripted"}]}).encode())
        self.model_checks = 0
        self.requests: list[dict] = []
        self.raw_requests: list[bytes] = []
        """Each request's body as it came over the wire, beside its parsed form in ``requests``."""
        self.headers: list[dict] = []
        self.seen: list[tuple[str, dict]] = []
        """Every request in order, GET /models included: its method and path ("POST /v1/chat/completions") and its
        headers (names lowercased)."""
        self._lock = threading.Lock()
        self._position = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else Nagle + delayed ACK stall every request ~40 ms

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._seen(self)
                if self.path.rstrip("/").endswith("/models"):
                    with server._lock:
                        server.model_checks += 1
                    if server.models.delay:
                        time.sleep(server.models.delay)
                    self._send(server.models)
                else:
                    self._send(http_error(404, f"no route {self.path}"))

            def do_POST(self) -> None:
                server._seen(self)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    request = json.loads(raw)
                except ValueError:
                    request = {"_raw": raw.decode("utf-8", "replace")}
                with server._lock:
                    server.raw_requests.append(raw)
                step = server._next_step(request, {k.lower(): v for k, v in self.headers.items()})
                wait = step.delay + server.latency
                if wait:
                    time.sleep(wait)
                self._send(step)

            def _send(self, step: Step) -> None:
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
                head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode()
                try:
                    if not step.trickle:
                        self.wfile.write(head_bytes + step.body)  # one write
                        return
                    self.wfile.write(head_bytes)
                    for index in range(len(step.body)):
                        self.wfile.write(step.body[index : index + 1])
                        self.wfile.flush()
                        time.sleep(step.trickle)
                except OSError:  # the client gave up on a trickle: that is its point
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # the default backlog (5) refuses connections when many workers connect

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def _seen(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.seen.append((f"{handler.command} {handler.path}", {k.lower(): v for k, v in handler.headers.items()}))

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
