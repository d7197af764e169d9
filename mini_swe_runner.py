"""mini-swe-runner: run a tool-using model on prompts in sandboxes and write Hermes trajectories as JSONL.

Data flows one way: CLI flags -> RunConfig -> run_batch -> (environment + model) per task -> messages ->
trajectory record -> writer. Everything for humans goes to stderr; stdout carries JSONL only (--output_file -).
"""

import asyncio
import contextlib
import hashlib
import inspect
import ipaddress
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import typing
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlparse

import environments
import trajectory
from environments import EnvError, EnvSettings, ExecResult, redact

__version__ = "0.2.0"

log = logging.getLogger("mini_swe_runner")

FINAL_OUTPUT_MARKER = "MINI_SWE_AGENT_FINAL_OUTPUT"
OPENROUTER_URL = "https://openrouter.ai/api/v1"
DEFAULT_MODEL = "openai/gpt-4.1-mini"
GENERIC_KEY_VARIABLE = "MINI_SWE_RUNNER_API_KEY"
PROVIDER_KEY_VARIABLES = {
    "openrouter.ai": "OPENROUTER_API_KEY",
    "api.openai.com": "OPENAI_API_KEY",
    "api.deepseek.com": "DEEPSEEK_API_KEY",
    "api.together.xyz": "TOGETHER_API_KEY",
    "api.groq.com": "GROQ_API_KEY",
    "api.fireworks.ai": "FIREWORKS_API_KEY",
    "api.mistral.ai": "MISTRAL_API_KEY",
    "api.x.ai": "XAI_API_KEY",
    "generativelanguage.googleapis.com": "GEMINI_API_KEY",
}
EXIT_OK, EXIT_FATAL, EXIT_USAGE = 0, 1, 2
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class UsageError(Exception):
    """Bad flags or input files: a one-line message, exit code 2."""


class FatalRunError(Exception):
    """Every task would fail the same way (bad key, unknown model, no backend): one line, exit code 1."""


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Everything a run needs, validated; nothing below the runner knows about the CLI."""

    model: str
    """Model name as the endpoint knows it (e.g. openai/gpt-4.1-mini on OpenRouter)."""
    base_url: str = OPENROUTER_URL
    """OpenAI-compatible endpoint."""
    api_key: str = field(default="", repr=False)
    """Resolved key; never logged, never in a record, never given to the agent's commands."""
    output_file: str = "trajectories.jsonl"
    """JSONL output; '-' for stdout."""
    overwrite: bool = False
    """Start afresh instead of resuming from the records already in output_file."""
    max_iterations: int = 15
    """Model calls per task before it ends with max_iterations."""
    command_timeout: float = 60
    """Seconds a command may run when the model does not ask for another timeout."""
    max_command_timeout: float = 600
    """Cap on the timeout a model may request for one command."""
    task_timeout: float | None = None
    """Wall-clock seconds per task; None for no limit."""
    temperature: float | None = None
    """Sampling temperature; None leaves the provider's default."""
    max_tokens: int | None = None
    """Completion token cap per model call; None leaves the provider's default."""
    top_p: float | None = None
    """Nucleus sampling; None leaves the provider's default."""
    reasoning_effort: str | None = None
    """low, medium, high... for reasoning models; None leaves the provider's default."""
    extra_body: dict = field(default_factory=dict)
    """Extra request fields a provider takes (merged into every chat-completions body)."""
    request_timeout: float = 600
    """Seconds one model request may take before it is retried."""
    max_retries: int = 6
    """Retries of one model call on transient errors (429, 5xx, timeouts, dropped connections, no choices)."""
    retry_initial_delay: float = 1.0
    """First backoff delay in seconds; doubles per retry, capped at retry_max_delay, jittered."""
    retry_max_delay: float = 60.0
    """Longest backoff (and longest Retry-After honoured) between two attempts."""
    max_rpm: float | None = None
    """Cap on model requests per minute across all workers."""
    resume_any: bool = False
    """Resume into an output file whose records were made with other data-shaping settings."""
    workers: int = 8
    """Tasks in flight at once."""
    system_prompt: str | None = None
    """Replaces the built-in system prompt the model sees (it is never saved in the trajectory)."""
    stats_file: str | None = None
    """Where to write the run's summary as JSON."""
    quiet: bool = False
    """No progress output."""
    env: EnvSettings = field(default_factory=EnvSettings)
    """How each task's environment is made."""


def resolve_api_key(base_url: str, explicit: str | None, environ: dict[str, str]) -> str:
    """The key for ``base_url``: --api_key, then MINI_SWE_RUNNER_API_KEY, then the provider's own variable.

    A provider's variable is only ever sent to that provider: OPENAI_API_KEY never goes to OpenRouter.
    Local servers need no key (a placeholder is sent, since the SDK refuses an empty one).
    """
    if explicit:
        return explicit
    if environ.get(GENERIC_KEY_VARIABLE):
        return environ[GENERIC_KEY_VARIABLE]
    host = (urlparse(base_url).hostname or "").lower()
    provider_variable = next(
        (var for domain, var in PROVIDER_KEY_VARIABLES.items() if host == domain or host.endswith("." + domain)), None
    )
    if provider_variable and environ.get(provider_variable):
        return environ[provider_variable]
    if _is_local_host(host):
        return "no-key-needed"
    wanted = provider_variable or GENERIC_KEY_VARIABLE
    hint = ""
    others = [var for var in PROVIDER_KEY_VARIABLES.values() if var != wanted and environ.get(var)]
    if others:
        hint = f" ({others[0]} is set but belongs to another provider: pass the matching --base_url to use it)"
    raise UsageError(f"no API key for {host or base_url}: set {wanted} (or pass --api_key){hint}")


MIN_SECRET_CHARS = 8
"""Shorter values are never redacted: replacing `test` or `EMPTY` everywhere would corrupt ordinary text."""

PLACEHOLDER_KEYS = frozenset(
    {"empty", "none", "null", "no-key-needed", "sk-no-key-required", "ollama", "lm-studio", "dummy", "not-needed"}
)
"""Keys local servers are given by convention and ignore (vLLM's EMPTY, llama.cpp's sk-no-key-required...)."""


def redactable_keys(key: str, base_url: str) -> tuple[str, ...]:
    """The API key as a secret to redact, unless it cannot be one: too short, or a placeholder that a local
    endpoint ignores. The same length rule applies to secrets found in the environment."""
    host = (urlparse(base_url).hostname or "").lower()
    if len(key) < MIN_SECRET_CHARS or (_is_local_host(host) and key.lower() in PLACEHOLDER_KEYS):
        return ()
    return (key,)


def _is_local_host(host: str) -> bool:
    if host in ("localhost", "host.docker.internal") or host.endswith(".local") or ("." not in host and host):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_unspecified


def sampling_settings(config: RunConfig) -> dict:
    """The sampling settings a record's metadata carries (None where the provider's default was used)."""
    return {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_tokens": config.max_tokens,
        "reasoning_effort": config.reasoning_effort,
    }


def data_settings(config: RunConfig, system_prompt: str, tools: list[dict]) -> dict:
    """The settings that shape the data: two runs with equal settings may share one output file."""
    return {
        "model": config.model,
        "endpoint_host": (urlparse(config.base_url).hostname or "").lower(),
        "system_prompt_sha256": hashlib.sha256(system_prompt.encode("utf-8", "surrogatepass")).hexdigest()[:16],
        "tools_sha256": hashlib.sha256(json.dumps(tools, sort_keys=True).encode()).hexdigest()[:16],
        "sampling": sampling_settings(config),
        "extra_body": config.extra_body,
        "max_iterations": config.max_iterations,
        "command_timeout": config.command_timeout,
        "max_command_timeout": config.max_command_timeout,
        "max_output_chars": config.env.max_output_chars,
    }


def config_hash(settings: dict) -> str:
    """A short stable hash of :func:`data_settings`, stamped on every record of the run."""
    canonical = json.dumps(settings, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Prompt:
    index: int
    """0-based position in the prompts file (among non-empty lines)."""
    text: str
    task_id: str
    image: str | None = None
    cwd: str | None = None
    fields: dict = field(default_factory=dict)
    """The input row's fields the runner does not use (repo, difficulty...), carried into the record."""


PROMPT_KEYS = frozenset({"prompt", "task", "id", "image", "docker_image", "cwd"})
"""Fields of an input row the runner consumes; any other field is carried into metadata.prompt_fields."""


def derived_task_id(text: str, occurrence: int) -> str:
    """Stable id from the prompt's text and which occurrence of that text it is, so duplicates stay distinct."""
    return f"{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}-{occurrence}"


def parse_prompt_lines(lines: list[str], source: str) -> list[Prompt]:
    """Prompts from JSONL lines: objects with prompt/task (+ id, image/docker_image, cwd) or plain text lines."""
    prompts: list[Prompt] = []
    occurrences: Counter[str] = Counter()
    seen_ids: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("{"):
            try:
                obj = json.loads(stripped)
            except ValueError as exc:
                raise UsageError(f"{source}:{number}: not valid JSON ({exc.msg})") from None
            text = obj.get("prompt", obj.get("task"))
            if not isinstance(text, str) or not text.strip():
                raise UsageError(f'{source}:{number}: no prompt (give a non-empty "prompt" or "task" string)')
            image = obj.get("image") or obj.get("docker_image")
            cwd = obj.get("cwd")
            for name, value in (("image", image), ("cwd", cwd)):
                if value is not None and not isinstance(value, str):
                    raise UsageError(f'{source}:{number}: "{name}" must be a string')
            explicit_id = obj.get("id")
            if explicit_id is not None and not isinstance(explicit_id, (str, int)):
                raise UsageError(f'{source}:{number}: "id" must be a string or an integer')
            fields = {k: v for k, v in obj.items() if k not in PROMPT_KEYS}
        else:
            text, image, cwd, explicit_id, fields = stripped, None, None, None, {}
        occurrence = occurrences[text]
        occurrences[text] += 1
        task_id = str(explicit_id) if explicit_id is not None else derived_task_id(text, occurrence)
        if task_id in seen_ids:
            raise UsageError(f"{source}:{number}: id {task_id!r} already used on line {seen_ids[task_id]}")
        seen_ids[task_id] = number
        prompts.append(Prompt(index=len(prompts), text=text, task_id=task_id, image=image, cwd=cwd, fields=fields))
    return prompts


def load_prompts(path: str) -> list[Prompt]:
    if os.path.isdir(path):
        raise UsageError(f"--prompts_file {path} is a directory, not a JSONL file")
    try:
        with open(path, encoding="utf-8-sig", errors="strict") as handle:  # -sig: a BOM is not a prompt
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise UsageError(f"--prompts_file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--prompts_file {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"cannot read --prompts_file {path}: {exc.strerror}") from None
    prompts = parse_prompt_lines(lines, path)
    if not prompts:
        raise UsageError(f"--prompts_file {path} has no prompts")
    return prompts


def select_shard(prompts: list[Prompt], shard: tuple[int, int] | None) -> list[Prompt]:
    """The I-th of N (1-based) deterministic slices: prompt k belongs to shard (k mod N) + 1."""
    if shard is None:
        return prompts
    number, count = shard
    return [p for p in prompts if p.index % count == number - 1]


# ---------------------------------------------------------------------------------------------------------------
# The model: one client per run, one retry policy, one gate all workers respect
# ---------------------------------------------------------------------------------------------------------------


class ModelCallError(Exception):
    """A model call failed for good; ``exit_reason`` is api_error or context_length."""

    def __init__(self, exit_reason: str, message: str):
        super().__init__(message)
        self.exit_reason = exit_reason


class RateGate:
    """Shared by all workers: a 429 pauses everyone (honouring Retry-After); --max_rpm spaces requests."""

    def __init__(self, max_rpm: float | None = None):
        self.paused_until = 0.0
        self.interval = 60.0 / max_rpm if max_rpm else 0.0
        self.next_slot = 0.0

    async def wait(self) -> None:
        while True:
            now = time.monotonic()
            if self.paused_until > now:
                await asyncio.sleep(self.paused_until - now)
                continue
            if not self.interval:
                return
            slot = max(now, self.next_slot)
            self.next_slot = slot + self.interval
            if slot > now:
                await asyncio.sleep(slot - now)
            return

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)


@dataclass
class ModelTurn:
    message: dict
    """The assistant message as it goes back into the conversation (reasoning fields included)."""
    usage: dict


CONTEXT_LENGTH_HINTS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "reduce the length",
)


class ModelClient:
    def __init__(self, config: RunConfig):
        import openai

        try:  # openai >= 3 ships on httpx2; older releases on httpx
            from httpx2 import Limits, Response
        except ImportError:
            from httpx import Limits, Response

        self.openai = openai
        self.raw_response = Response
        self.config = config
        self.gate = RateGate(config.max_rpm)
        pool = Limits(max_connections=config.workers + 4, max_keepalive_connections=config.workers + 4)
        self.client = openai.AsyncOpenAI(
            api_key=config.api_key,
            base_url=config.base_url,
            max_retries=0,  # our own policy below: shared 429 backoff, no-choices retries, one place
            timeout=config.request_timeout,
            http_client=_http_client(openai, pool, config.request_timeout),
        )

    async def close(self) -> None:
        await self.client.close()

    async def complete(self, messages: list[dict], tools: list[dict]) -> ModelTurn:
        config, openai = self.config, self.openai
        kwargs: dict = {"model": config.model, "messages": messages, "tools": tools}
        if config.temperature is not None:
            kwargs["temperature"] = config.temperature
        if config.max_tokens is not None:
            kwargs["max_tokens"] = config.max_tokens
        if config.top_p is not None:
            kwargs["top_p"] = config.top_p
        if config.reasoning_effort is not None:
            kwargs["reasoning_effort"] = config.reasoning_effort
        for key, value in config.extra_body.items():
            kwargs.setdefault(key, value)
        last_error = "no attempt made"
        for attempt in range(config.max_retries + 1):
            await self.gate.wait()
            retry_after = None
            try:
                # The SDK's documented low-level request: the same transport and error mapping as
                # chat.completions.create, without its per-call param transform over the whole (growing)
                # history and its response model construction, which made the client CPU-bound at 32
                # workers (8.6 ms -> 2.8 ms per call at 14 messages; see bench/bench_batch.py).
                response = await self.client.post("/chat/completions", body=kwargs, cast_to=self.raw_response)
                payload = response.json()
            except openai.AuthenticationError as exc:
                raise FatalRunError(
                    f"the model API rejected the key (401) at {config.base_url}: {_api_message(exc)}"
                ) from None
            except openai.PermissionDeniedError as exc:
                raise FatalRunError(
                    f"the model API refused access (403) to {config.model}: {_api_message(exc)}"
                ) from None
            except openai.NotFoundError as exc:
                raise FatalRunError(
                    f"model {config.model!r} or endpoint not found (404): {_api_message(exc)}"
                ) from None
            except openai.APIStatusError as exc:
                message = _api_message(exc)
                if _is_context_length(exc, message):
                    raise ModelCallError("context_length", f"context length exceeded: {message}") from None
                if exc.status_code not in (408, 409, 429) and exc.status_code < 500:
                    raise ModelCallError("api_error", f"HTTP {exc.status_code}: {message}") from None
                last_error = f"HTTP {exc.status_code}: {message}"
                retry_after = _retry_after_seconds(exc.response.headers)
                if exc.status_code == 429:
                    self.gate.pause(retry_after if retry_after is not None else self._backoff(attempt))
            except openai.APIConnectionError as exc:  # includes APITimeoutError
                last_error = "request timed out" if isinstance(exc, openai.APITimeoutError) else f"connection: {exc}"
            except (openai.APIResponseValidationError, ValueError) as exc:
                last_error = f"unreadable response: {exc}"
            else:
                turn = self._turn(payload)
                if turn is not None:
                    return turn
                error = payload.get("error") if isinstance(payload, dict) else None
                last_error = f"response had no choices: {_short(error) if error else _short(payload, 120)}"
            if attempt < config.max_retries:
                delay = retry_after if retry_after is not None else self._backoff(attempt)
                log.debug("model call failed (%s); retry %d in %.2fs", last_error, attempt + 1, delay)
                await asyncio.sleep(min(delay, config.retry_max_delay))
        raise ModelCallError("api_error", f"gave up after {config.max_retries + 1} attempts: {last_error}")

    def _backoff(self, attempt: int) -> float:
        delay = min(self.config.retry_initial_delay * 2**attempt, self.config.retry_max_delay)
        return delay * (1 - 0.25 * random.random())

    @staticmethod
    def _turn(payload: object) -> ModelTurn | None:
        """The assistant turn of a chat-completions JSON body, or None when it has no usable choice."""
        choices = payload.get("choices") if isinstance(payload, dict) else None
        message = (
            choices[0].get("message")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict)
            else None
        )
        if not isinstance(message, dict):
            return None
        content = message.get("content")
        assistant: dict = {"role": "assistant", "content": content if isinstance(content, str) else None}
        calls = [call for call in message.get("tool_calls") or [] if isinstance(call, dict)]
        if calls:
            assistant["tool_calls"] = []
            for index, call in enumerate(calls):
                function = call.get("function") if isinstance(call.get("function"), dict) else {}
                arguments = function.get("arguments")
                if not isinstance(arguments, str):  # some servers send an object instead of a JSON string
                    arguments = "" if arguments is None else json.dumps(arguments, ensure_ascii=False)
                assistant["tool_calls"].append(
                    {
                        "id": call.get("id") or f"call_{index}",
                        "type": "function",
                        "function": {"name": function.get("name"), "arguments": arguments},
                    }
                )
        # Sent back on later turns exactly as received: DeepSeek needs reasoning_content, Gemini (via
        # OpenRouter) needs reasoning_details unchanged, new vLLM/OpenRouter use reasoning.
        for key in ("reasoning", "reasoning_content", "reasoning_details"):
            if message.get(key):
                assistant[key] = message[key]
        return ModelTurn(assistant, _usage_counts(payload.get("usage")))


def _http_client(openai, limits, timeout: float):
    """The SDK's aiohttp transport when its extra is installed: about a quarter less CPU per model call than
    httpx at 32 workers (bench/bench_batch.py); the SDK's default httpx transport otherwise."""
    try:
        return openai.DefaultAioHttpClient(limits=limits, timeout=timeout)
    except (RuntimeError, AttributeError):  # openai without the aiohttp extra, or too old to have it
        return openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout)


def _usage_counts(usage: object) -> dict:
    counts = trajectory.empty_usage()
    if not isinstance(usage, dict):
        return counts
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        counts[key] = _count(usage.get(key))
    details = usage.get("completion_tokens_details")
    counts["reasoning_tokens"] = _count(details.get("reasoning_tokens")) if isinstance(details, dict) else 0
    return counts


def _count(value: object) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0


def _api_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return _short(inner["message"])
        if isinstance(body.get("message"), str):
            return _short(body["message"])
    return _short(getattr(exc, "message", None) or str(exc))


def _is_context_length(exc: Exception, message: str) -> bool:
    code = str(getattr(exc, "code", "") or "")
    status = getattr(exc, "status_code", 0)
    if status not in (400, 413):
        return False
    return code == "context_length_exceeded" or any(hint in message.lower() for hint in CONTEXT_LENGTH_HINTS)


def _retry_after_seconds(headers: object) -> float | None:
    try:
        if headers.get("retry-after-ms"):
            return max(float(headers["retry-after-ms"]) / 1000, 0.0)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(float(value), 0.0)
        except ValueError:
            return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError, AttributeError):
        return None


def _short(value: object, limit: int = 300) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------------
# The agent: one task, self-contained (its own environment, messages and counters)
# ---------------------------------------------------------------------------------------------------------------


def terminal_tool(config: RunConfig) -> dict:
    network = "no network access" if config.env.network == "none" else "network access"
    return {
        "type": "function",
        "function": {
            "name": "terminal",
            "description": (
                f"Run a bash command in the task's {config.env.env_type} environment ({network}) and return its "
                "output (stdout and stderr merged) and exit code. Each call is a fresh `bash -c`: the working "
                "directory carries over between calls, shell variables and aliases do not. stdin is closed; "
                f"use non-interactive flags. Output over {config.env.max_output_chars} characters keeps its head "
                "and tail."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The bash command to run."},
                    "timeout": {
                        "type": "integer",
                        "description": (
                            f"Seconds before the command is killed (default {config.command_timeout:g}, "
                            f"at most {config.max_command_timeout:g})."
                        ),
                    },
                },
                "required": ["command"],
            },
        },
    }


SYSTEM_PROMPT_PLACEHOLDERS = ("{env_type}", "{marker}")
"""The only text replaced in a system prompt: {env_type} (local, docker...) and {marker} (the completion marker).
Any other brace is the user's text and is sent as written."""


def render_system_prompt(template: str, env_type: str) -> str:
    return template.replace("{env_type}", env_type).replace("{marker}", FINAL_OUTPUT_MARKER)


DEFAULT_SYSTEM_PROMPT = """You are an autonomous software engineer working in a {env_type} sandbox. You act only \
through the `terminal` tool: each call runs one bash command in a fresh shell. The working directory carries over \
between calls; shell variables, aliases and sourced files do not, so chain dependent steps with && in one command. \
stdin is closed: use non-interactive flags (-y, --yes) and never open editors or pagers. Long outputs are \
truncated: narrow them with grep, head or tail. Work step by step: inspect, change, then verify your work.

When the task is done and verified, finish with a command that prints {marker} on its own line followed by a \
short summary, for example: echo {marker} && echo "Created hello.py and ran it". If the task needs no command, \
answer directly without calling a tool."""


@dataclass
class TaskState:
    """Everything one task accumulates; the record is built from it whatever way the task ends."""

    messages: list[dict] = field(default_factory=list)
    api_calls: int = 0
    usage: dict = field(default_factory=trajectory.empty_usage)
    tool_stats: dict = field(default_factory=trajectory.empty_tool_stats)
    completed: bool = False
    exit_reason: str = "max_iterations"
    error: str | None = None


@dataclass
class RunContext:
    """What the tasks of one run share."""

    config: RunConfig
    model: ModelClient
    tools: list[dict]
    system_prompt: str
    live_environments: set = field(default_factory=set)
    stopping: bool = False
    config_hash: str = ""
    """Of the settings that shape the data (see data_settings); the same on every record of the run."""
    output: "OutputFile | None" = None
    """Told when the first model answer shows the run works (--overwrite replaces the old file then)."""


async def run_task(prompt: Prompt, ctx: RunContext) -> dict:
    """Run one prompt to its end and return its record. Only FatalRunError escapes."""
    config = ctx.config
    state = TaskState(
        messages=[{"role": "system", "content": ctx.system_prompt}, {"role": "user", "content": prompt.text}]
    )
    image = environments.task_image(config.env, prompt.image)
    started_wall, started = datetime.now(UTC), time.monotonic()
    env = None
    try:
        async with asyncio.timeout(config.task_timeout):
            env = environments.create_environment(
                config.env, image=prompt.image, cwd=prompt.cwd, task_id=prompt.task_id
            )
            ctx.live_environments.add(env)
            await env.start()
            await _agent_loop(prompt, state, env, ctx)
    except TimeoutError:
        state.exit_reason, state.error = "timeout", f"task exceeded --task_timeout {config.task_timeout:g} s"
    except asyncio.CancelledError:
        if not ctx.stopping:
            raise
        state.exit_reason, state.error = "interrupted", "the run was interrupted"
    except EnvError as exc:
        state.exit_reason, state.error = "env_error", str(exc)
    except ModelCallError as exc:
        state.exit_reason, state.error = exc.exit_reason, str(exc)
    except FatalRunError:
        raise
    except Exception as exc:  # a bug of ours must not sink the batch; the record says what happened
        log.exception("[%s] unexpected error", prompt.task_id)
        state.exit_reason, state.error = "env_error", f"internal error: {type(exc).__name__}: {_short(exc)}"
    finally:
        if env is not None:
            await _close_quietly(env, prompt.task_id)
            ctx.live_environments.discard(env)
    _answer_dangling_tool_calls(state)
    secrets = config.env.secret_values
    return trajectory.build_record(
        prompt_index=prompt.index,
        task_id=prompt.task_id,
        conversations=trajectory.to_hermes(_redacted_model_text(state.messages[1:], secrets), ctx.tools),
        completed=state.completed,
        exit_reason=state.exit_reason,
        api_calls=state.api_calls,
        tool_stats=state.tool_stats,
        usage=state.usage,
        duration_s=time.monotonic() - started,
        error=None if state.error is None else redact(state.error, secrets),
        metadata={
            "model": config.model,
            "env_type": config.env.env_type,
            "image": image,
            "timestamp": started_wall.isoformat(timespec="seconds"),
            "sampling": sampling_settings(config),
            "config_hash": ctx.config_hash,
            "prompt_fields": prompt.fields,
        },
    )


def _redacted_model_text(messages: list[dict], secrets: tuple[str, ...]) -> list[dict]:
    """The model's own text (content, reasoning, tool-call arguments) with known secrets redacted, value by value
    before serialisation, so redaction can never break the JSON around them. Outputs and errors were redacted
    where they arose; the user's prompt is never rewritten."""
    if not secrets:
        return messages
    redacted = []
    for message in messages:
        if message.get("role") == "assistant":
            message = dict(message)
            for key in ("content", "reasoning", "reasoning_content"):
                if isinstance(message.get(key), str):
                    message[key] = redact(message[key], secrets)
            calls = []
            for call in message.get("tool_calls") or []:
                function = dict(call.get("function") or {})
                if isinstance(function.get("arguments"), str):
                    function["arguments"] = redact(function["arguments"], secrets)
                calls.append({**call, "function": function})
            if calls:
                message["tool_calls"] = calls
        redacted.append(message)
    return redacted


async def _close_quietly(env: environments.Environment, task_id: str) -> None:
    # Shielded so a second cancellation cannot leave a container or sandbox behind.
    try:
        await asyncio.shield(asyncio.wait_for(env.close(), 60))
    except asyncio.CancelledError:
        pass  # the run is being torn down; the reaper (`mini-swe-runner cleanup`) catches what is left
    except Exception as exc:
        log.warning("[%s] could not clean up its environment: %s", task_id, _short(exc) or type(exc).__name__)


async def _agent_loop(prompt: Prompt, state: TaskState, env: environments.Environment, ctx: RunContext) -> None:
    config = ctx.config
    while True:
        if state.api_calls >= config.max_iterations:
            state.exit_reason = "max_iterations"
            return
        turn = await ctx.model.complete(state.messages, ctx.tools)
        state.api_calls += 1
        if ctx.output is not None:
            ctx.output.commit()  # the endpoint works: --overwrite may now replace the old records
        for key, value in turn.usage.items():
            state.usage[key] += value
        state.messages.append(turn.message)
        calls = turn.message.get("tool_calls") or []
        if turn.message.get("content"):
            log.info("[%s] model: %s", prompt.task_id, _short(turn.message["content"], 200))
        if not calls:
            state.completed, state.exit_reason = True, "completed"
            return
        finished = False
        for call in calls:
            result = await _run_tool_call(call, env, config, prompt.task_id)
            stats = state.tool_stats["terminal"]
            stats["count"] += 1
            stats["success" if result.ok else "failure"] += 1
            state.messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call["id"],
                    "content": json.dumps(result.to_dict(), ensure_ascii=False),
                }
            )
            finished = finished or FINAL_OUTPUT_MARKER in result.output
        if finished:
            state.completed, state.exit_reason = True, "completed"
            return


async def _run_tool_call(call: dict, env: environments.Environment, config: RunConfig, task_id: str) -> ExecResult:
    """Run one tool call, or explain to the model why it could not be run (counted as a failure)."""
    function = call.get("function") or {}
    name = function.get("name")
    if name != "terminal":
        return ExecResult("", -1, f"unknown tool {name!r}: the only tool is 'terminal'")
    arguments = trajectory.parse_arguments(function.get("arguments"))
    if arguments is None:
        return ExecResult("", -1, 'arguments are not a valid JSON object; send {"command": "..."}')
    command = arguments.get("command")
    if not isinstance(command, str) or not command.strip():
        return ExecResult("", -1, 'missing "command": send {"command": "<bash command>"}')
    timeout = config.command_timeout
    requested = arguments.get("timeout")
    if isinstance(requested, (int, float)) and not isinstance(requested, bool) and requested > 0:
        timeout = min(float(requested), config.max_command_timeout)
    log.info("[%s] $ %s", task_id, _short(command, 200))
    result = await env.execute(command, timeout)
    log.info(
        "[%s] exit %d, %d chars%s",
        task_id,
        result.exit_code,
        len(result.output),
        f" ({result.error})" if result.error else "",
    )
    return result


def _answer_dangling_tool_calls(state: TaskState) -> None:
    """A task cut short mid-turn still gets a tool result for every call, so no <tool_call> dangles."""
    last_assistant = max((i for i, m in enumerate(state.messages) if m.get("role") == "assistant"), default=None)
    if last_assistant is None:
        return
    answered = {m.get("tool_call_id") for m in state.messages[last_assistant + 1 :] if m.get("role") == "tool"}
    for call in state.messages[last_assistant].get("tool_calls") or []:
        if call["id"] not in answered:
            result = ExecResult("", -1, f"not run: the task ended ({state.exit_reason})")
            state.messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result.to_dict())})


# ---------------------------------------------------------------------------------------------------------------
# The batch: workers, resume, signals, progress, summary
# ---------------------------------------------------------------------------------------------------------------


class Progress:
    """done/total, completed, failed, rate and ETA on stderr: a bar on a terminal, plain periodic lines otherwise."""

    def __init__(self, total: int, quiet: bool, stream=None, interval: float = 10.0):
        self.total, self.quiet, self.stream, self.interval = total, quiet, stream or sys.stderr, interval
        self.done = self.completed = 0
        self.started = self.last_line = time.monotonic()
        self.bar = None
        if not quiet and total and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=self.stream, unit="task", dynamic_ncols=True)

    def update(self, record: dict) -> None:
        self.done += 1
        self.completed += bool(record["completed"])
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.set_postfix(completed=self.completed, failed=self.done - self.completed, refresh=False)
            self.bar.update(1)
        elif time.monotonic() - self.last_line >= self.interval or self.done == self.total:
            self.last_line = time.monotonic()
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed * 60
        eta = (self.total - self.done) / (self.done / elapsed) if self.done else float("nan")
        eta_text = "?" if eta != eta else f"{eta:.0f}s"
        return (
            f"progress: {self.done}/{self.total} done, {self.completed} completed, "
            f"{self.done - self.completed} failed, {rate:.1f} tasks/min, ETA {eta_text}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summarize(records: list[dict], wall_time: float, skipped: int) -> dict:
    """The run's statistics, from the records this run wrote."""
    total = len(records)
    usage = trajectory.empty_usage()
    tool_calls = tool_failures = api_calls = 0
    for record in records:
        for key in usage:
            usage[key] += record["usage"][key]
        tool_calls += record["tool_stats"]["terminal"]["count"]
        tool_failures += record["tool_stats"]["terminal"]["failure"]
        api_calls += record["api_calls"]
    completed = sum(record["completed"] for record in records)
    return {
        "tasks": total,
        "skipped_already_done": skipped,
        "by_exit_reason": dict(Counter(record["exit_reason"] for record in records)),
        "completed": completed,
        "completion_rate": round(completed / total, 4) if total else 0.0,
        "api_calls": api_calls,
        "tokens": usage,
        "tool_calls": tool_calls,
        "tool_failures": tool_failures,
        "wall_time_s": round(wall_time, 3),
        "tasks_per_minute": round(total / wall_time * 60, 2) if wall_time > 0 else 0.0,
    }


def summary_text(summary: dict, output_file: str) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["by_exit_reason"].items())) or "none"
    where = "stdout" if output_file == "-" else output_file
    return (
        f"done: {summary['tasks']} tasks ({reasons}); completion {summary['completion_rate']:.1%}; "
        f"{summary['api_calls']} API calls, {summary['tokens']['total_tokens']} tokens; "
        f"{summary['tool_calls']} tool calls ({summary['tool_failures']} failed); "
        f"{summary['wall_time_s']:.1f}s, {summary['tasks_per_minute']:.1f} tasks/min; "
        f"{summary['skipped_already_done']} skipped as already done -> {where}"
    )


@dataclass
class RunOutcome:
    exit_code: int
    summary: dict
    message: str | None = None


class OutputFile:
    """The run's output file: one runner at a time, resumed only by the same settings, replaced by --overwrite
    only once the run is known to work, written through a symlink to its target.

    ``open()`` returns the task_ids already finished (resume); ``writer`` appends records; ``commit()`` marks
    the run as started (its first model answer); ``close(keep)`` releases everything.
    """

    def __init__(self, config: RunConfig, config_hash: str):
        self.config = config
        self.config_hash = config_hash
        self.shown = "stdout" if config.output_file == "-" else config.output_file
        self.target = config.output_file
        self.writer: trajectory.JsonlWriter | None = None
        self._lock_fd: int | None = None
        self._pending_replacement: str | None = None  # --overwrite: the new file, renamed over target at commit

    def open(self) -> set[str]:
        path = self.config.output_file
        if path == "-":
            self.writer = trajectory.JsonlWriter("-")
            return set()
        try:
            return self._open_file(path)
        except PermissionError:
            self.close(keep=False)
            raise UsageError(f"--output_file {path} is not writable") from None
        except OSError as exc:
            self.close(keep=False)
            raise UsageError(f"--output_file {path}: {exc.strerror or exc}") from None
        except BaseException:
            self.close(keep=False)
            raise

    def _open_file(self, path: str) -> set[str]:
        if os.path.isdir(path):
            raise UsageError(f"--output_file {path} is a directory")
        if os.path.exists(path) and not os.path.isfile(path):  # a pipe or a device: appended to as it is
            self.writer = trajectory.JsonlWriter(path)
            return set()
        self.target = os.path.realpath(path)  # a symlink is written through to its target, never replaced
        directory = os.path.dirname(self.target)
        if not os.path.isdir(directory):
            raise UsageError(f"--output_file {path}: directory {directory} does not exist")
        self._lock(directory)
        self._remove_leftovers(directory)
        if self.config.overwrite and os.path.exists(self.target):
            if not os.access(self.target, os.W_OK):
                raise PermissionError(path)
            # The old records stay where they are until the run is known to work (commit).
            self._pending_replacement = self._sibling("new")
            self.writer = trajectory.JsonlWriter(self._pending_replacement)
            return set()
        if not os.path.exists(self.target):
            self.writer = trajectory.JsonlWriter(self.target)
            return set()
        if not os.access(self.target, os.W_OK):
            raise PermissionError(path)
        compacted = trajectory.compact_for_resume(self.target, compaction_path=self._sibling("compact"))
        self._check_settings(compacted.settings)
        dropped = []
        if compacted.dropped_retryable:
            dropped.append(f"{compacted.dropped_retryable} retryable record(s) (api_error/env_error/interrupted)")
        if compacted.dropped_bad_lines:
            dropped.append(f"{compacted.dropped_bad_lines} torn or invalid line(s)")
        if compacted.dropped_duplicates:
            dropped.append(f"{compacted.dropped_duplicates} duplicate record(s)")
        if dropped:
            log.warning("resume: dropped %s from %s; those tasks run again", " and ".join(dropped), path)
        self.writer = trajectory.JsonlWriter(self.target)
        return compacted.done_ids

    def _sibling(self, kind: str) -> str:
        directory, name = os.path.split(self.target)
        return os.path.join(directory, f".{name}.{kind}-{os.getpid()}")

    def _lock(self, directory: str) -> None:
        """One runner per output file: a second one is refused at once (the lock dies with its process)."""
        import fcntl

        lock_path = os.path.join(directory, f".{os.path.basename(self.target)}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(
                f"--output_file {self.shown} is in use by another mini-swe-runner (pid {holder}): "
                "wait for it to finish, or write to another --output_file"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _remove_leftovers(self, directory: str) -> None:
        """Files a killed run left beside the output (an unfinished compaction or --overwrite): with the lock
        held, nothing else can be writing them."""
        prefix = f".{os.path.basename(self.target)}."
        for name in os.listdir(directory):
            if name.startswith(prefix) and name[len(prefix) :].startswith(("compact-", "new-")):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))

    def _check_settings(self, seen: dict[str, dict]) -> None:
        """Refuse to add this run's records to a file written with other data-shaping settings."""
        other = next((meta for value, meta in seen.items() if value != self.config_hash), None)
        if other is None or self.config.resume_any:
            return
        config = self.config
        if other.get("model") != config.model:
            difference = f"model {other.get('model')!r} there, {config.model!r} now"
        elif other.get("sampling") != sampling_settings(config):
            difference = f"sampling {other.get('sampling')} there, {sampling_settings(config)} now"
        elif not other.get("config_hash"):
            difference = "its records carry no settings hash (written by an older version)"
        else:
            difference = (
                f"settings hash {other.get('config_hash')} there, {self.config_hash} now: the endpoint host, system "
                "prompt, tool description, --extra_body or limits (--max_iterations, --timeout, --max_timeout, "
                "--max_output_chars) differ"
            )
        raise UsageError(
            f"--output_file {self.shown} holds records of a run with other settings ({difference}); "
            "use --overwrite to replace them, another --output_file, or --resume_any to mix them anyway"
        )

    def commit(self) -> None:
        """The run works (a model answered): --overwrite's new file replaces the old one, atomically."""
        pending, self._pending_replacement = self._pending_replacement, None
        if pending is None:
            return
        os.replace(pending, self.target)  # the writer's descriptor follows the file: appends continue in it
        trajectory.sync_directory(os.path.dirname(self.target))

    def close(self, keep: bool) -> None:
        """``keep``: the run got far enough that what it wrote replaces the old file (--overwrite)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._pending_replacement is not None:
            if keep:
                self.commit()
            else:
                with contextlib.suppress(OSError):
                    os.unlink(self._pending_replacement)
                self._pending_replacement = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the lock file stays: removing it would race with a runner opening it
            self._lock_fd = None


async def run_batch(config: RunConfig, prompts: list[Prompt]) -> RunOutcome:
    """Run every prompt not already recorded in the output, ``config.workers`` at a time."""
    started = time.monotonic()
    tools = [terminal_tool(config)]
    system_prompt = render_system_prompt(config.system_prompt or DEFAULT_SYSTEM_PROMPT, config.env.env_type)
    output = OutputFile(config, config_hash(data_settings(config, system_prompt, tools)))
    done_ids = output.open()
    pending = [p for p in prompts if p.task_id not in done_ids]
    skipped = len(prompts) - len(pending)
    if skipped:
        log.warning(
            "resume: %d of %d task(s) already in %s are skipped (--overwrite starts afresh)",
            skipped,
            len(prompts),
            config.output_file,
        )
    if not pending:
        output.close(keep=True)
        return RunOutcome(EXIT_OK, summarize([], time.monotonic() - started, skipped))
    loop = asyncio.get_running_loop()
    # Blocking SDK calls (docker) go to threads: enough of them for every worker at once.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=config.workers + 8, thread_name_prefix="msr"))
    images = {environments.task_image(config.env, p.image) for p in pending} - {None}
    try:
        await environments.preflight(config.env, images)
    except EnvError as exc:
        output.close(keep=False)
        return RunOutcome(EXIT_FATAL, summarize([], time.monotonic() - started, skipped), str(exc))

    ctx = RunContext(
        config=config,
        model=ModelClient(config),
        tools=tools,
        system_prompt=system_prompt,
        config_hash=output.config_hash,
        output=output,
    )
    writer = output.writer
    progress = Progress(len(pending), config.quiet)
    queue = list(reversed(pending))
    running: set[asyncio.Task] = set()
    written: list[dict] = []
    stop: dict = {"signal": None, "fatal": None}

    def request_stop(signum: int) -> None:
        if stop["signal"] is not None or ctx.stopping:  # second signal: clean up synchronously and leave now
            _abandon_all(ctx.live_environments)
            os._exit(EXIT_SIGNAL.get(signum, EXIT_FATAL))
        stop["signal"] = signum
        ctx.stopping = True
        print(
            f"\n{signal.Signals(signum).name}: stopping; running tasks are interrupted and cleaned up "
            "(again to exit at once)",
            file=sys.stderr,
            flush=True,
        )
        for task in running:
            task.cancel()

    handled = [s for s in (signal.SIGINT, signal.SIGTERM) if _install_handler(loop, s, request_stop)]

    def fail(message: str) -> None:
        """Stop the whole run: no new task starts, running ones are cancelled and cleaned up."""
        if stop["fatal"] is None:
            stop["fatal"] = message
        ctx.stopping = True
        for other in running:
            other.cancel()

    async def worker() -> None:
        while queue and not ctx.stopping:
            prompt = queue.pop()
            task = asyncio.ensure_future(run_task(prompt, ctx))
            running.add(task)
            try:
                record = await task
            except FatalRunError as exc:
                return fail(str(exc))
            except asyncio.CancelledError:
                if ctx.stopping and task.cancelled():
                    return  # stopped before it began: nothing ran, nothing to record (resume runs it)
                raise
            finally:
                running.discard(task)
            if stop["fatal"] is not None:
                return  # tasks cut short by a fatal error are worth nothing: nothing written
            try:
                await asyncio.to_thread(writer.write, record)
            except OSError as exc:  # the reader of a pipe went away, the disk is full...
                where = "stdout" if config.output_file == "-" else config.output_file
                return fail(f"cannot write to {where} ({exc.strerror or exc}); stopping")
            written.append(record)
            progress.update(record)

    try:
        await asyncio.gather(*(worker() for _ in range(min(config.workers, len(pending)))))
    finally:
        for s in handled:
            loop.remove_signal_handler(s)
        progress.close()
        # --overwrite replaces the old file only if this run got somewhere: a model answered, or records were
        # written without a fatal error (a 401 or an unusable backend keeps the old records).
        output.close(keep=bool(written) and stop["fatal"] is None)
        await ctx.model.close()
    summary = summarize(written, time.monotonic() - started, skipped)
    if stop["fatal"] is not None:
        return RunOutcome(EXIT_FATAL, summary, stop["fatal"])
    if stop["signal"] is not None:
        return RunOutcome(EXIT_SIGNAL[stop["signal"]], summary, "interrupted; rerun the same command to resume")
    return RunOutcome(EXIT_OK, summary)


def _abandon_all(live_environments: set, wait: float = 10.0) -> None:
    """Best-effort synchronous cleanup of every live environment at once (a container or sandbox each)."""

    def abandon(env: environments.Environment) -> None:
        try:
            env.abandon()
        except Exception:  # the reaper or the sandbox's own lifetime limit catches what is left
            pass

    threads = [threading.Thread(target=abandon, args=(env,), daemon=True) for env in list(live_environments)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + wait
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))


def _install_handler(loop: asyncio.AbstractEventLoop, signum: int, handler) -> bool:
    try:
        loop.add_signal_handler(signum, handler, signum)
        return True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        return False


def write_stats(path: str, summary: dict) -> None:
    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
            handle.write("\n")
    except OSError as exc:
        log.error("could not write --stats_file %s: %s", path, exc.strerror)


# ---------------------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------------------


def _bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off", "none"):
        return False
    raise UsageError(f"--{name} takes true or false, not {value!r}")


def _number(name: str, value: object, kind: type, minimum: float, allow_none: bool = False) -> float | int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"--{name} takes a number, not {value!r}")
    try:
        number = kind(value) if not isinstance(value, str) or kind is float else int(value.strip(), 10)
    except ValueError:
        raise UsageError(f"--{name} takes {'a whole number' if kind is int else 'a number'}, not {value!r}") from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise UsageError(f"--{name} takes a whole number, not {value!r}")
    if number != number or number < minimum:
        raise UsageError(f"--{name} must be at least {minimum:g}, not {value!r}")
    return number


def _text(name: str, value: object, allow_none: bool = True) -> str | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (tuple, list)):  # fire turns a,b into a tuple
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        raise UsageError(f"--{name} needs a value")
    return str(value)


def _json_object(name: str, value: object) -> dict:
    if value is None:
        return {}
    try:
        parsed = json.loads(str(value))
    except (ValueError, RecursionError):
        raise UsageError(f"--{name} takes a JSON object, e.g. '{{\"top_k\": 20}}', not {_short(value, 60)!r}") from None
    if not isinstance(parsed, dict):
        raise UsageError(f"--{name} takes a JSON object, not {type(parsed).__name__}")
    reserved = sorted({"model", "messages", "tools"} & set(parsed))
    if reserved:
        raise UsageError(f"--{name} may not set {', '.join(reserved)}: use the matching flag")
    return parsed


def _system_prompt(text: str | None, path: str | None) -> str | None:
    if text is not None and path is not None:
        raise UsageError("give either --system_prompt or --system_prompt_file, not both")
    if path is None:
        if text is not None and not text.strip():
            raise UsageError("--system_prompt is empty")
        return text
    try:
        with open(path, encoding="utf-8", newline="") as handle:  # newline="": the text exactly as written
            content = handle.read()
    except FileNotFoundError:
        raise UsageError(f"--system_prompt_file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--system_prompt_file {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"cannot read --system_prompt_file {path}: {exc.strerror}") from None
    if not content.strip():
        raise UsageError(f"--system_prompt_file {path} is empty")
    return content


def _names(name: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, (tuple, list)) else str(value).split(",")
    return tuple(str(item).strip() for item in items if str(item).strip())


def _shard(value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = str(value).split("/")
    try:
        number, count = int(parts[0]), int(parts[1])
        if len(parts) != 2 or count < 1 or not 1 <= number <= count:
            raise ValueError
    except (ValueError, IndexError):
        raise UsageError(f"--shard takes I/N with 1 <= I <= N (e.g. 1/4), not {value!r}") from None
    return number, count


def main(
    task: str | None = None,
    prompts_file: str | None = None,
    output_file: str = "trajectories.jsonl",
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    env: str = "local",
    image: str | None = None,
    cwd: str | None = None,
    max_iterations: int = 15,
    timeout: float = 60,
    max_timeout: float = 600,
    task_timeout: float | None = None,
    max_output_chars: int = 50_000,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    reasoning_effort: str | None = None,
    extra_body: str | None = None,
    workers: int = 8,
    overwrite: bool = False,
    resume_any: bool = False,
    shard: str | None = None,
    limit: int | None = None,
    max_rpm: float | None = None,
    max_retries: int = 6,
    request_timeout: float = 600,
    stats_file: str | None = None,
    system_prompt: str | None = None,
    system_prompt_file: str | None = None,
    pass_env: str | None = None,
    pull: str = "missing",
    network: str = "bridge",
    memory: str | None = None,
    cpus: float | None = None,
    pids_limit: int = 512,
    volume: str | None = None,
    env_var: str | None = None,
    no_hardening: bool = False,
    modal_app: str = "mini-swe-runner",
    sandbox_timeout: int = 3600,
    startup_timeout: float = 120,
    verbose: bool = False,
    quiet: bool = False,
    **unknown,
) -> None:
    """Run a tool-using model on prompts inside sandboxes and write Hermes trajectories as JSONL.

    Subcommand: `mini-swe-runner cleanup` removes Docker containers left by runs that died.

    Args:
        task: One prompt to run (instead of --prompts_file).
        prompts_file: JSONL file: one {"prompt", "id", "image", "cwd"} object per line, or plain text lines.
        output_file: Where records are appended (JSONL); '-' for stdout. Rerunning resumes: finished tasks are skipped.
        model: Model name at the endpoint (default $OPENAI_MODEL, else openai/gpt-4.1-mini).
        base_url: OpenAI-compatible endpoint (default $OPENAI_BASE_URL, else OpenRouter), e.g. http://localhost:8000/v1.
        api_key: API key; default from MINI_SWE_RUNNER_API_KEY or the provider's variable (OPENROUTER_API_KEY...).
        env: Where commands run: local, docker or modal.
        image: Default image for docker/modal (a prompt's "image"/"docker_image" overrides it).
        cwd: Directory commands start in (local default: a fresh temporary directory per task).
        max_iterations: Model calls per task before it stops (default 15).
        timeout: Default per-command timeout in seconds (default 60).
        max_timeout: Cap on the per-command timeout the model may request (default 600).
        task_timeout: Wall-clock limit per task in seconds (default none).
        max_output_chars: Command output beyond this keeps its head and tail (default 50000).
        temperature: Sampling temperature (default: the provider's).
        top_p: Nucleus sampling (default: the provider's).
        max_tokens: Completion token cap per model call (default: the provider's).
        reasoning_effort: Reasoning effort for reasoning models, e.g. low, medium, high (default: the provider's).
        extra_body: JSON object of extra request fields for the provider, e.g. '{"top_k": 20}'.
        workers: Tasks run concurrently (default 8).
        overwrite: Replace the output file instead of resuming (the old one stays until the run works).
        resume_any: Resume even when the output file holds records of other settings (model, sampling...).
        shard: I/N: run only the I-th of N deterministic slices of the prompts (1-based), e.g. 2/4.
        limit: Run only the first N prompts (after --shard), for a quick trial.
        max_rpm: Cap on model requests per minute across all workers.
        max_retries: Retries of a model call on 429/5xx/timeouts/connection errors (default 6).
        request_timeout: Seconds one model request may take (default 600).
        stats_file: Also write the run's summary as JSON here.
        system_prompt: Replace the built-in system prompt the model sees (never saved in trajectories); {env_type}
            and {marker} are filled in, any other text is sent as written.
        system_prompt_file: Read the system prompt from this UTF-8 file (same placeholders as --system_prompt).
        pass_env: Comma-separated variables passed to local commands even though they look secret.
        pull: docker: pull images when missing, always or never (default missing).
        network: docker/modal network: bridge (default) or none.
        memory: docker/modal memory limit, e.g. 4g.
        cpus: docker/modal CPU limit, e.g. 2.
        pids_limit: docker: maximum processes per container (default 512; 0 for none).
        volume: docker: comma-separated host:container[:ro] mounts (none by default).
        env_var: docker/modal: comma-separated host variables passed into the sandbox (none by default).
        no_hardening: docker: keep default capabilities and allow privilege escalation.
        modal_app: modal: app name for the sandboxes (created if missing).
        sandbox_timeout: modal: longest sandbox lifetime in seconds (default 3600).
        startup_timeout: modal: longest wait for a sandbox to start; past it the task is env_error (default 120).
        verbose: Log every model turn and command to stderr.
        quiet: No progress output.
    """
    if unknown:
        names = ", ".join(f"--{name}" for name in unknown)
        raise UsageError(f"unknown flag {names} (see --help)")
    verbose, quiet = _bool("verbose", verbose), _bool("quiet", quiet)
    if (task is None) == (prompts_file is None):
        raise UsageError('give exactly one of --task "..." or --prompts_file FILE')
    env = _text("env", env)
    if env not in environments.ENV_TYPES:
        raise UsageError(f"--env must be one of {', '.join(environments.ENV_TYPES)}, not {env!r}")
    pull = _text("pull", pull)
    if pull not in ("missing", "always", "never"):
        raise UsageError(f"--pull must be missing, always or never, not {pull!r}")
    network = _text("network", network)
    if not network:
        raise UsageError("--network needs a value (bridge or none)")
    if shard is not None and task is not None:
        raise UsageError("--shard splits a --prompts_file; it does not apply to a single --task")
    base_url_from_environment = base_url is None and bool(os.environ.get("OPENAI_BASE_URL"))
    base_url = _text("base_url", base_url) or os.environ.get("OPENAI_BASE_URL") or OPENROUTER_URL
    if urlparse(base_url).scheme not in ("http", "https"):
        raise UsageError(f"--base_url must be an http(s) URL, not {base_url!r}")
    environ = dict(os.environ)
    if base_url_from_environment and environ.get("OPENAI_API_KEY") and not api_key:
        # The OpenAI SDK's own pairing: OPENAI_BASE_URL is where OPENAI_API_KEY is meant to go.
        api_key = environ["OPENAI_API_KEY"]
    resolved_key = resolve_api_key(base_url, _text("api_key", api_key), environ)
    output_file = _text("output_file", output_file, allow_none=False)
    env_settings = EnvSettings(
        env_type=env,
        image=_text("image", image),
        cwd=_text("cwd", cwd),
        max_output_chars=int(_number("max_output_chars", max_output_chars, int, 100)),
        pass_env=_names("pass_env", pass_env),
        secret_values=environments.secret_values_from_environ(extra=redactable_keys(resolved_key, base_url)),
        pull=pull,
        network=network,
        memory=_text("memory", memory),
        cpus=_number("cpus", cpus, float, 0.01, allow_none=True),
        pids_limit=int(_number("pids_limit", pids_limit, int, 0)) or None,
        volumes=_names("volume", volume),
        env_vars=_names("env_var", env_var),
        hardening=not _bool("no_hardening", no_hardening),
        modal_app=_text("modal_app", modal_app, allow_none=False),
        sandbox_timeout=int(_number("sandbox_timeout", sandbox_timeout, int, 10)),
        startup_timeout=float(_number("startup_timeout", startup_timeout, float, 1)),
    )
    _setup_logging(verbose, quiet, env_settings.secret_values)
    config = RunConfig(
        model=_text("model", model) or os.environ.get("OPENAI_MODEL") or DEFAULT_MODEL,
        base_url=base_url,
        api_key=resolved_key,
        output_file=output_file,
        overwrite=_bool("overwrite", overwrite),
        max_iterations=int(_number("max_iterations", max_iterations, int, 1)),
        command_timeout=float(_number("timeout", timeout, float, 0.1)),
        max_command_timeout=float(_number("max_timeout", max_timeout, float, 0.1)),
        task_timeout=_number("task_timeout", task_timeout, float, 0.1, allow_none=True),
        temperature=_number("temperature", temperature, float, 0, allow_none=True),
        top_p=_number("top_p", top_p, float, 0, allow_none=True),
        max_tokens=_number("max_tokens", max_tokens, int, 1, allow_none=True),
        reasoning_effort=_text("reasoning_effort", reasoning_effort),
        extra_body=_json_object("extra_body", extra_body),
        resume_any=_bool("resume_any", resume_any),
        request_timeout=float(_number("request_timeout", request_timeout, float, 0.1)),
        max_retries=int(_number("max_retries", max_retries, int, 0)),
        max_rpm=_number("max_rpm", max_rpm, float, 0.001, allow_none=True),
        workers=int(_number("workers", workers, int, 1)),
        system_prompt=_system_prompt(
            _text("system_prompt", system_prompt), _text("system_prompt_file", system_prompt_file)
        ),
        stats_file=_text("stats_file", stats_file),
        quiet=quiet,
        env=env_settings,
    )
    config.command_timeout = min(config.command_timeout, config.max_command_timeout)
    if task is not None:
        text = _text("task", task, allow_none=False)
        if not text.strip():
            raise UsageError("--task is empty")
        prompts = [Prompt(index=0, text=text, task_id=derived_task_id(text, 0))]
    else:
        prompts = select_shard(load_prompts(_text("prompts_file", prompts_file, allow_none=False)), _shard(shard))
    if limit is not None:
        prompts = prompts[: int(_number("limit", limit, int, 1))]
    outcome = asyncio.run(run_batch(config, prompts))
    if config.stats_file:
        write_stats(config.stats_file, outcome.summary)
    if outcome.exit_code != EXIT_FATAL and (not quiet or outcome.exit_code != EXIT_OK):
        print(summary_text(outcome.summary, config.output_file), file=sys.stderr)
    if outcome.message:
        print(f"mini-swe-runner: {redact(outcome.message, env_settings.secret_values)}", file=sys.stderr)
    if outcome.exit_code != EXIT_OK:
        raise SystemExit(outcome.exit_code)


class _RedactingFilter(logging.Filter):
    def __init__(self, secret_values: tuple[str, ...]):
        super().__init__()
        self.secret_values = secret_values

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secret_values)
        record.args = ()
        return True


def _setup_logging(verbose: bool, quiet: bool, secret_values: tuple[str, ...]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_RedactingFilter(secret_values))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)


def cleanup() -> int:
    """`mini-swe-runner cleanup`: remove Docker containers left by runs that died."""
    try:
        removed = environments.reap_stale_containers()
    except EnvError as exc:
        print(f"mini-swe-runner: {exc}", file=sys.stderr)
        return EXIT_FATAL
    print(f"removed {removed} container(s) left by dead runs", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------------
# Subcommand: export records to the formats trainers read
# ---------------------------------------------------------------------------------------------------------------


def _export_parser():
    import argparse  # here, like the subcommand's other imports: a run never needs them

    class ExportArgumentParser(argparse.ArgumentParser):
        def error(self, message: str):  # argparse would print its usage block first: one line is enough
            raise UsageError(f"export: {message} (see mini-swe-runner export --help)")

    parser = ExportArgumentParser(
        prog="mini-swe-runner export",
        allow_abbrev=False,
        description=(
            "Stream record files into one training file, keeping the last record of each (task_id, sample_index)."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="IN", help="record files, globs or directories of *.jsonl")
    parser.add_argument("--output_file", "--output-file", required=True, metavar="OUT", help="the file to write")
    parser.add_argument("--format", default="hermes", choices=trajectory.EXPORT_FORMATS, help="default: hermes")
    parser.add_argument("--only", choices=("completed", "passed"), help="keep completed tasks, or verified ones")
    parser.add_argument(
        "--exit_reason",
        "--exit-reason",
        action="append",
        default=[],
        metavar="R[,R...]",
        help="keep records with these endings (repeatable, or comma-separated)",
    )
    parser.add_argument("--min_reward", "--min-reward", metavar="X", help="keep records with reward >= X")
    parser.add_argument("--max_turns", "--max-turns", metavar="N", help="keep records with at most N model turns")
    parser.add_argument(
        "--empty_think", "--empty-think", action="store_true", help="empty think block on turns without reasoning"
    )
    parser.add_argument(
        "--drop_final_echo",
        "--drop-final-echo",
        action="store_true",
        help="end on the model turn that sent the completion command",
    )
    return parser


def _export_bool_values(argv: list[str]) -> list[str]:
    """``--empty_think=false`` means false, as ``--verbose=false`` does for a run; argparse alone would reject it."""
    switches = ("--empty_think", "--empty-think", "--drop_final_echo", "--drop-final-echo")
    result = []
    for arg in argv:
        name, equals, value = arg.partition("=")
        if equals and name in switches:
            if _bool(name.lstrip("-"), value):
                result.append(name)
        else:
            result.append(arg)
    return result


def export_inputs(patterns: list[str]) -> list[str]:
    """Record files named by paths, globs or directories (their *.jsonl), each once, in the order given."""
    import glob

    paths: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(glob.glob(os.path.join(glob.escape(pattern), "*.jsonl")))
            if not found:
                raise UsageError(f"export: no *.jsonl file in directory {pattern}")
        elif os.path.exists(pattern):
            found = [pattern]
        else:
            found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p)) if glob.has_magic(pattern) else []
            if not found:
                raise UsageError(f"export: no such file: {pattern}")
        for path in found:
            if not os.access(path, os.R_OK):
                raise UsageError(f"export: cannot read {path}")
            if os.path.realpath(path) not in seen:  # a file named twice would give its records twice
                seen.add(os.path.realpath(path))
                paths.append(path)
    return paths


def export_command(argv: list[str]) -> int:
    """`mini-swe-runner export IN... --output_file OUT`: record files -> one hermes/openai/sharegpt file."""
    try:
        args = _export_parser().parse_args(_export_bool_values(argv))
        inputs = export_inputs(args.inputs)
        output = args.output_file
        if os.path.realpath(output) in {os.path.realpath(path) for path in inputs}:
            raise UsageError(f"export: --output_file {output} is one of the inputs; write to a new file")
        if os.path.isdir(output) or not os.path.isdir(os.path.dirname(os.path.abspath(output))):
            raise UsageError(f"export: --output_file {output} is a directory or its directory does not exist")
        reasons = tuple(r.strip() for value in args.exit_reason for r in value.split(",") if r.strip())
        min_reward = None if args.min_reward is None else _number("min_reward", args.min_reward, float, -float("inf"))
        max_turns = None if args.max_turns is None else _number("max_turns", args.max_turns, int, 0)
        try:
            options = trajectory.ExportOptions(
                format=args.format,
                only=args.only,
                exit_reasons=reasons,
                min_reward=min_reward,
                max_turns=max_turns,
                empty_think=args.empty_think,
                drop_final_echo=args.drop_final_echo,
                final_output_marker=FINAL_OUTPUT_MARKER,
            )
        except ValueError as exc:
            raise UsageError(f"export: {exc}") from None
    except UsageError as exc:
        print(f"mini-swe-runner: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = trajectory.export(inputs, output, options)
    except OSError as exc:
        print(f"mini-swe-runner: export failed, {output} not written: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print(f"mini-swe-runner: export interrupted, {output} not written", file=sys.stderr)
        return EXIT_SIGNAL[signal.SIGINT]
    print(export_summary(result, output, options.format), file=sys.stderr)
    return EXIT_OK


def export_summary(result: trajectory.ExportResult, output: str, format: str) -> str:
    lines = [f"exported {result.written} of {result.read} records to {output} ({format})"]
    for count, what in (
        (result.superseded, "superseded by a later record of the same task and sample"),
        (result.filtered, "left out by the filters"),
        (result.unrepresentable, f"with no model turn that {format} can end on"),
        (result.bad_lines, "lines that are not records (torn or damaged)"),
    ):
        if count:
            lines.append(f"  {count} {what}")
    if result.unreadable:
        lines.append(f"  {result.unreadable} records whose turns cannot be read back, first: {result.first_unreadable}")
    return "\n".join(lines)


SUBCOMMANDS = {
    "cleanup": "remove what runs that died left behind (Docker containers, Modal sandboxes)",
    "view": "write one self-contained HTML report of record files (view --help)",
    "stats": "print the summary of record files as a table (stats --help)",
    "export": "stream record files into one training file: hermes, openai or sharegpt (export --help)",
}
"""First words that are commands, not prompts; anything else that is not a flag is refused."""

_SECRETS_FD_VARIABLE = "_MINI_SWE_RUNNER_SECRETS_FD"


def _flag_kinds() -> dict[str, str]:
    """main()'s flags by kind: 'text' (str), 'bool', or 'value' (numbers): how their values are read."""
    kinds = {}
    for name, parameter in inspect.signature(main).parameters.items():
        if parameter.kind is not parameter.POSITIONAL_OR_KEYWORD:
            continue
        types = set(typing.get_args(parameter.annotation)) or {parameter.annotation}
        types.discard(type(None))
        kinds[name] = "text" if types == {str} else "bool" if types == {bool} else "value"
    return kinds


def protect_argv(argv: list[str]) -> list[str]:
    """argv for fire with every text value made a Python string literal of itself, so that fire (which
    literal-evals every value) hands it over byte for byte: `--task '{"k": 1}'`, `--task 1e3`, `--task None`,
    `--task '"quoted"'` and `--task -x` all arrive as typed. Every flag leaves as one `--name=value` word.

    Raises UsageError for a word that is neither a flag nor a flag's value (a prompt must be given with --task).
    """
    kinds = _flag_kinds()

    def is_flag(word: str) -> bool:
        return word.startswith("--") and word[2:].partition("=")[0].replace("-", "_") in kinds

    protected: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        index += 1
        if not word.startswith("--") or word == "--":
            hint = f" (a command is one of: {', '.join(sorted(SUBCOMMANDS))})" if index == 1 else ""
            raise UsageError(
                f'unexpected argument {_short(word, 60)!r}: give the prompt with --task "..." or flags only{hint}'
            )
        name, has_value, value = word[2:].partition("=")
        name = name.replace("-", "_")
        kind = kinds.get(name, "unknown")
        if not has_value:
            following = argv[index] if index < len(argv) else None
            takes_next = following is not None and (
                (kind == "text" and not is_flag(following)) or (kind != "text" and not following.startswith("--"))
            )
            if not takes_next:
                protected.append(f"--{name}")  # a bare flag: True for fire (a text flag then "needs a value")
                continue
            value = following
            index += 1
        protected.append(f"--{name}={value!r}" if kind == "text" else f"--{name}={value}")
    return protected


def help_text() -> str:
    """--help: every flag with a readable type and its description, from main()'s signature and docstring."""
    doc = inspect.getdoc(main) or ""
    summary, _, rest = doc.partition("\n\n")
    described: dict[str, str] = {}
    current = None
    for line in rest.split("Args:", 1)[-1].splitlines():
        stripped = line.strip()
        if line.startswith("    ") and not line.startswith("     ") and ":" in stripped:
            current, _, text = stripped.partition(":")
            described[current] = text.strip()
        elif current and stripped:
            described[current] += " " + stripped
    kinds = _flag_kinds()
    metavar = {"text": "TEXT", "bool": "", "value": "N"}
    lines = [
        summary,
        "",
        "usage: mini-swe-runner --task TEXT | --prompts_file FILE [flags]",
        *(f"       mini-swe-runner {name}    ({what})" for name, what in SUBCOMMANDS.items()),
        "       mini-swe-runner --version",
        "",
        "Every flag also takes --name=value. Text values are used exactly as typed.",
        "",
        "flags:",
    ]
    for name, kind in kinds.items():
        lines.append(f"  --{name} {metavar[kind]}".rstrip())
        lines.append(f"      {described.get(name, '')}")
    return "\n".join(lines)


def _scrub_secrets_from_process() -> dict[str, str]:
    """Keep secrets out of this process's environment block and command line, where any command could read
    them (/proc/<pid>/environ and /proc/<pid>/cmdline of its ancestors): re-exec once with both cleaned, the
    secrets handed over through a pipe. Changes to os.environ after exec are in memory only (proc(5)).

    Returns the secrets (variables and --api_key) after the re-exec; call before anything else runs.
    """
    fd_text = os.environ.pop(_SECRETS_FD_VARIABLE, None)
    if fd_text is not None:
        with os.fdopen(int(fd_text), "rb") as pipe:
            handed = json.loads(pipe.read().decode("utf-8", "surrogatepass"))
        os.environ.update(handed["environ"])  # in memory only: not in /proc/self/environ
        return handed
    secret_environ = {k: v for k, v in os.environ.items() if environments.is_secret_name(k)}
    argv, api_key = _without_api_key(sys.argv[1:])
    if not secret_environ and api_key is None:
        return {"environ": {}, "api_key": None}
    payload = json.dumps({"environ": secret_environ, "api_key": api_key}).encode("utf-8", "surrogatepass")
    if len(payload) > 60_000:  # more than a pipe holds without a reader: keep them where they are
        return {"environ": {}, "api_key": None}
    read_fd, write_fd = os.pipe()
    os.write(write_fd, payload)
    os.close(write_fd)
    os.set_inheritable(read_fd, True)
    clean = {k: v for k, v in os.environ.items() if k not in secret_environ}
    clean[_SECRETS_FD_VARIABLE] = str(read_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    interpreter_and_script = sys.orig_argv[1 : len(sys.orig_argv) - len(sys.argv) + 1]
    try:
        os.execve(sys.executable, [sys.executable, *interpreter_and_script, *argv], clean)
    except OSError:  # cannot re-exec (an unusual interpreter setup): carry on as we are
        os.close(read_fd)
        return {"environ": {}, "api_key": None}
    raise AssertionError("unreachable")


def _without_api_key(argv: list[str]) -> tuple[list[str], str | None]:
    """argv without --api_key and its value (in any spelling), and that value."""
    kept, key, index = [], None, 0
    while index < len(argv):
        word = argv[index]
        name, has_value, value = word.partition("=")
        if name in ("--api_key", "--api-key"):
            if has_value:
                key = value
            elif index + 1 < len(argv):
                key = argv[index + 1]
                index += 1
            index += 1
            continue
        kept.append(word)
        index += 1
    return kept, key


def run_subcommand(name: str, argv: list[str]) -> int:
    """A first word that names a command: each parses its own flags and returns its exit code."""
    if name == "cleanup":
        return cleanup()
    if name == "export":
        return export_command(argv)
    import report  # only the report commands need it

    return report.view_command(argv) if name == "view" else report.stats_command(argv)


def cli() -> None:
    """Console entry point: loads ./.env only, checks argv, runs fire, maps errors to exit codes."""
    handed = _scrub_secrets_from_process()
    from dotenv import load_dotenv

    # Only the current directory's .env: find_dotenv would also walk up into every parent directory.
    load_dotenv(os.path.join(os.getcwd(), ".env"))
    argv = sys.argv[1:]
    if argv[:1] and argv[0] in SUBCOMMANDS:
        raise SystemExit(run_subcommand(argv[0], argv[1:]))
    if handed.get("api_key") is not None:
        argv = [*argv, f"--api_key={handed['api_key']}"]
    try:
        if any(arg in ("--help", "-h") for arg in argv):
            print(help_text())
            return
        if argv[:1] == ["--version"]:
            print(f"mini-swe-runner {__version__}")
            return
        import fire

        # Every word fire sees is a --name=value pair made by protect_argv (fire's own flags, --help, --trace,
        # --interactive, would only be read after a "--" separator, which protect_argv refuses).
        fire.Fire(main, command=protect_argv(argv), name="mini-swe-runner")
    except UsageError as exc:
        print(f"mini-swe-runner: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except FatalRunError as exc:
        print(f"mini-swe-runner: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_FATAL) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    cli()
