"""mini-swe-runner: run a tool-using model on prompts in sandboxes and write Hermes trajectories as JSONL.

Data flows one way: CLI flags -> RunConfig -> run_batch -> (environment + model) per task -> messages ->
trajectory record -> writer. Everything for humans goes to stderr; stdout carries JSONL only (--output_file -).
"""

import asyncio
import hashlib
import ipaddress
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlparse

import environments
import trajectory
from environments import EnvError, EnvSettings, ExecResult, redact

log = logging.getLogger("mini_swe_runner")

FINAL_OUTPUT_MARKER = "MINI_SWE_AGENT_FINAL_OUTPUT"
OPENROUTER_URL = "https://openrouter.ai/api/v1"
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


async def run_task(prompt: Prompt, ctx: RunContext) -> dict:
    """Run one prompt to its end and return its record. Only FatalRunError escapes."""
    config = ctx.config
    state = TaskState(
        messages=[{"role": "system", "content": ctx.system_prompt}, {"role": "user", "content": prompt.text}]
    )
    image = environments.task_image(config.env, prompt.image)  # resolved once: the record's and the backend's
    started_wall, started = datetime.now(UTC), time.monotonic()
    env = None
    try:
        async with asyncio.timeout(config.task_timeout):
            env = environments.create_environment(config.env, image=image, cwd=prompt.cwd, task_id=prompt.task_id)
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
        # Outputs and errors are redacted where they arise; this last pass covers whatever else (the model's own
        # text) could carry a known secret into a record.
        conversations=[
            {"from": turn["from"], "value": redact(turn["value"], secrets)}
            for turn in trajectory.to_hermes(state.messages[1:], ctx.tools)
        ],
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


async def _close_quietly(env: environments.Environment, task_id: str) -> None:
    # Shielded so a second cancellation cannot leave a container or sandbox behind.
    try:
        await asyncio.shield(asyncio.wait_for(env.close(), 60))
    except (Exception, asyncio.CancelledError) as exc:
        log.warning("[%s] could not clean up its environment: %s", task_id, _short(exc))


async def _agent_loop(prompt: Prompt, state: TaskState, env: environments.Environment, ctx: RunContext) -> None:
    config = ctx.config
    while True:
        if state.api_calls >= config.max_iterations:
            state.exit_reason = "max_iterations"
            return
        turn = await ctx.model.complete(state.messages, ctx.tools)
        state.api_calls += 1
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


def prepare_output(config: RunConfig) -> set[str]:
    """Make the output file ready and return the task_ids already finished in it (resume)."""
    path = config.output_file
    if path == "-":
        return set()
    if os.path.isdir(path):
        raise UsageError(f"--output_file {path} is a directory")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"--output_file {path}: directory {directory} does not exist")
    try:
        if os.path.exists(path) and not os.path.isfile(path):
            return set()  # a pipe or a device (/dev/stdout...): appended to as it is, nothing to resume from
        if config.overwrite or not os.path.exists(path):
            with open(path, "wb"):
                return set()
        if not os.access(path, os.W_OK):
            raise PermissionError(path)
        compacted = trajectory.compact_for_resume(path)
    except PermissionError:
        raise UsageError(f"--output_file {path} is not writable") from None
    except OSError as exc:
        raise UsageError(f"--output_file {path}: {exc.strerror}") from None
    dropped = []
    if compacted.dropped_retryable:
        dropped.append(f"{compacted.dropped_retryable} retryable record(s) (api_error/env_error/interrupted)")
    if compacted.dropped_bad_lines:
        dropped.append(f"{compacted.dropped_bad_lines} torn or invalid line(s)")
    if compacted.dropped_duplicates:
        dropped.append(f"{compacted.dropped_duplicates} duplicate record(s)")
    if dropped:
        log.warning("resume: dropped %s from %s; those tasks run again", " and ".join(dropped), path)
    return compacted.done_ids


async def run_batch(config: RunConfig, prompts: list[Prompt]) -> RunOutcome:
    """Run every prompt not already recorded in the output, ``config.workers`` at a time."""
    started = time.monotonic()
    done_ids = prepare_output(config)
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
        return RunOutcome(EXIT_OK, summarize([], time.monotonic() - started, skipped))
    loop = asyncio.get_running_loop()
    # Blocking SDK calls (docker) go to threads: enough of them for every worker at once.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=config.workers + 8, thread_name_prefix="msr"))
    images = {environments.task_image(config.env, p.image) for p in pending} - {None}
    try:
        await environments.preflight(config.env, images)
    except EnvError as exc:
        return RunOutcome(EXIT_FATAL, summarize([], time.monotonic() - started, skipped), str(exc))

    tools = [terminal_tool(config)]
    system_prompt = (config.system_prompt or DEFAULT_SYSTEM_PROMPT).format(
        env_type=config.env.env_type, marker=FINAL_OUTPUT_MARKER
    )
    ctx = RunContext(
        config=config,
        model=ModelClient(config),
        tools=tools,
        system_prompt=system_prompt,
        config_hash=config_hash(data_settings(config, system_prompt, tools)),
    )
    writer = trajectory.JsonlWriter(config.output_file)
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
        writer.close()
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
    model: str = "openai/gpt-4.1-mini",
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
    max_tokens: int | None = None,
    workers: int = 8,
    overwrite: bool = False,
    shard: str | None = None,
    max_rpm: float | None = None,
    max_retries: int = 6,
    request_timeout: float = 600,
    stats_file: str | None = None,
    system_prompt: str | None = None,
    pass_env: str | None = None,
    pull: str | None = None,
    network: str | None = None,
    memory: str | None = None,
    cpus: float | None = None,
    pids_limit: int | None = None,
    volume: str | None = None,
    env_var: str | None = None,
    no_hardening: bool | None = None,
    modal_app: str | None = None,
    sandbox_timeout: int | None = None,
    startup_timeout: float | None = None,
    ssh_host: str | None = None,
    ssh_key: str | None = None,
    ssh_known_hosts: str | None = None,
    verbose: bool = False,
    quiet: bool = False,
    **unknown,
) -> None:
    """Run a tool-using model on prompts inside sandboxes and write Hermes trajectories as JSONL.

    Subcommand: `mini-swe-runner cleanup` removes what runs that died left behind (Docker containers, Modal sandboxes).

    Args:
        task: One prompt to run (instead of --prompts_file).
        prompts_file: JSONL file: one {"prompt", "id", "image", "cwd"} object per line, or plain text lines.
        output_file: Where records are appended (JSONL); '-' for stdout. Rerunning resumes: finished tasks are skipped.
        model: Model name at the endpoint.
        base_url: OpenAI-compatible endpoint (default OpenRouter). e.g. http://localhost:8000/v1 for vLLM.
        api_key: API key; default from MINI_SWE_RUNNER_API_KEY or the provider's variable (OPENROUTER_API_KEY...).
        env: Where commands run: {backends} (default local; see the README on isolation).
        image: docker/modal: default image (a prompt's "image"/"docker_image" overrides it).
        cwd: Directory commands start in (local/bwrap/ssh default: a fresh temporary directory per task).
        max_iterations: Model calls per task before it stops (default 15).
        timeout: Default per-command timeout in seconds (default 60).
        max_timeout: Cap on the per-command timeout the model may request (default 600).
        task_timeout: Wall-clock limit per task in seconds (default none).
        max_output_chars: Command output beyond this keeps its head and tail (default 50000).
        temperature: Sampling temperature (default: the provider's).
        max_tokens: Completion token cap per model call (default: the provider's).
        workers: Tasks run concurrently (default 8).
        overwrite: Start the output file afresh instead of resuming.
        shard: I/N: run only the I-th of N deterministic slices of the prompts (1-based), e.g. 2/4.
        max_rpm: Cap on model requests per minute across all workers.
        max_retries: Retries of a model call on 429/5xx/timeouts/connection errors (default 6).
        request_timeout: Seconds one model request may take (default 600).
        stats_file: Also write the run's summary as JSON here.
        system_prompt: Replace the built-in system prompt the model sees (never saved in trajectories).
        pass_env: local/bwrap: comma-separated variables passed to commands even though they look secret.
        pull: docker: pull images when missing, always or never (default missing).
        network: docker/modal/bwrap network: bridge (default; bwrap: the host's) or none.
        memory: docker/modal memory limit, e.g. 4g.
        cpus: docker/modal CPU limit, e.g. 2.
        pids_limit: docker: maximum processes per container (default 512; 0 for none).
        volume: docker/bwrap: comma-separated host:sandbox[:ro] mounts (none by default).
        env_var: docker/modal/ssh: comma-separated host variables passed to commands (none by default).
        no_hardening: docker: keep default capabilities and allow privilege escalation.
        modal_app: modal: app name for the sandboxes (created if missing).
        sandbox_timeout: modal: longest sandbox lifetime in seconds (default 3600).
        startup_timeout: modal/ssh: longest wait for a sandbox or connection; past it env_error (default 120).
        ssh_host: ssh: [user@]host[:port] commands run on (one connection per run).
        ssh_key: ssh: private key file (default: the ssh agent and ~/.ssh/id_*).
        ssh_known_hosts: ssh: known_hosts file the host key is checked against (default ~/.ssh/known_hosts).
        verbose: Log every model turn and command to stderr.
        quiet: No progress output.
    """
    if unknown:
        names = ", ".join(f"--{name}" for name in unknown)
        raise UsageError(f"unknown flag {names} (see --help)")
    verbose, quiet = _bool("verbose", verbose), _bool("quiet", quiet)
    if (task is None) == (prompts_file is None):
        raise UsageError('give exactly one of --task "..." or --prompts_file FILE')
    # The environment flags default to None so that we know which ones the user gave: a flag the chosen backend
    # ignores is a usage error. EnvSettings applies the defaults and checks the values (its rules, beside its fields).
    env = _text("env", env)
    no_limit = float("-inf")  # the ranges are EnvSettings' to check
    env_flags = {
        "image": ("image", lambda v: _text("image", v)),
        "cwd": ("cwd", lambda v: _text("cwd", v)),
        "pass_env": ("pass_env", lambda v: _names("pass_env", v)),
        "pull": ("pull", lambda v: _text("pull", v)),
        "network": ("network", lambda v: _text("network", v)),
        "memory": ("memory", lambda v: _text("memory", v)),
        "cpus": ("cpus", lambda v: _number("cpus", v, float, no_limit)),
        "pids_limit": ("pids_limit", lambda v: int(_number("pids_limit", v, int, no_limit))),
        "volume": ("volumes", lambda v: _names("volume", v)),
        "env_var": ("env_vars", lambda v: _names("env_var", v)),
        "no_hardening": ("hardening", lambda v: not _bool("no_hardening", v)),
        "modal_app": ("modal_app", lambda v: _text("modal_app", v, allow_none=False)),
        "sandbox_timeout": ("sandbox_timeout", lambda v: int(_number("sandbox_timeout", v, int, no_limit))),
        "startup_timeout": ("startup_timeout", lambda v: float(_number("startup_timeout", v, float, no_limit))),
        "ssh_host": ("ssh_host", lambda v: _text("ssh_host", v)),
        "ssh_key": ("ssh_key", lambda v: _text("ssh_key", v)),
        "ssh_known_hosts": ("ssh_known_hosts", lambda v: _text("ssh_known_hosts", v)),
    }
    given = {
        "image": image, "cwd": cwd, "pass_env": pass_env, "pull": pull, "network": network, "memory": memory,
        "cpus": cpus, "pids_limit": pids_limit, "volume": volume, "env_var": env_var, "no_hardening": no_hardening,
        "modal_app": modal_app, "sandbox_timeout": sandbox_timeout, "startup_timeout": startup_timeout,
        "ssh_host": ssh_host, "ssh_key": ssh_key, "ssh_known_hosts": ssh_known_hosts,
    }  # fmt: skip
    given = {flag: value for flag, value in given.items() if value is not None}
    if env not in environments.BACKENDS:
        raise UsageError(f"--env must be one of {', '.join(environments.BACKENDS)}, not {env!r}")
    if problem := environments.flags_not_applicable(env, set(given)):
        raise UsageError(problem)
    try:  # every value checked before anything else happens (the secrets are added once the key is known)
        env_settings = EnvSettings(
            env_type=env,
            max_output_chars=int(_number("max_output_chars", max_output_chars, int, no_limit)),
            concurrency=int(_number("workers", workers, int, 1)),
            **{env_flags[flag][0]: env_flags[flag][1](value) for flag, value in given.items()},
        )
    except environments.SettingsError as exc:
        raise UsageError(str(exc)) from None
    base_url = _text("base_url", base_url) or OPENROUTER_URL
    if urlparse(base_url).scheme not in ("http", "https"):
        raise UsageError(f"--base_url must be an http(s) URL, not {base_url!r}")
    resolved_key = resolve_api_key(base_url, _text("api_key", api_key), dict(os.environ))
    output_file = _text("output_file", output_file, allow_none=False)
    env_settings.secret_values = environments.secret_values_from_environ(extra=(resolved_key,))
    _setup_logging(verbose, quiet, env_settings.secret_values)
    config = RunConfig(
        model=_text("model", model, allow_none=False),
        base_url=base_url,
        api_key=resolved_key,
        output_file=output_file,
        overwrite=_bool("overwrite", overwrite),
        max_iterations=int(_number("max_iterations", max_iterations, int, 1)),
        command_timeout=float(_number("timeout", timeout, float, 0.1)),
        max_command_timeout=float(_number("max_timeout", max_timeout, float, 0.1)),
        task_timeout=_number("task_timeout", task_timeout, float, 0.1, allow_none=True),
        temperature=_number("temperature", temperature, float, 0, allow_none=True),
        max_tokens=_number("max_tokens", max_tokens, int, 1, allow_none=True),
        request_timeout=float(_number("request_timeout", request_timeout, float, 0.1)),
        max_retries=int(_number("max_retries", max_retries, int, 0)),
        max_rpm=_number("max_rpm", max_rpm, float, 0.001, allow_none=True),
        workers=int(_number("workers", workers, int, 1)),
        system_prompt=_text("system_prompt", system_prompt),
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
    outcome = asyncio.run(run_batch(config, prompts))
    if config.stats_file:
        write_stats(config.stats_file, outcome.summary)
    if outcome.exit_code != EXIT_FATAL and (not quiet or outcome.exit_code != EXIT_OK):
        print(summary_text(outcome.summary, config.output_file), file=sys.stderr)
    if outcome.message:
        print(f"mini-swe-runner: {redact(outcome.message, env_settings.secret_values)}", file=sys.stderr)
    if outcome.exit_code != EXIT_OK:
        raise SystemExit(outcome.exit_code)


# --help lists the backends the registry has: there is one list of them.
main.__doc__ = main.__doc__.replace("{backends}", ", ".join(environments.BACKENDS))


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
    """`mini-swe-runner cleanup`: remove what runs that died left in every backend that can leave something."""
    done, failed = environments.cleanup_leftovers()
    for line in done:
        print(line, file=sys.stderr)
    for line in failed:
        print(f"mini-swe-runner: {line}", file=sys.stderr)
    return EXIT_FATAL if failed else EXIT_OK


def _join_dash_values(argv: list[str]) -> list[str]:
    """``--output_file -`` -> ``--output_file=-``: fire would take a lone "-" as its command separator."""
    joined: list[str] = []
    for arg in argv:
        if arg == "-" and joined and joined[-1].startswith("--") and "=" not in joined[-1]:
            joined[-1] += "=-"
        else:
            joined.append(arg)
    return joined


def cli() -> None:
    """Console entry point: loads .env from the current directory, runs fire, maps errors to exit codes."""
    from dotenv import find_dotenv, load_dotenv

    load_dotenv(find_dotenv(usecwd=True))
    if sys.argv[1:2] == ["cleanup"]:
        raise SystemExit(cleanup())
    import fire

    # main() takes **unknown to reject unknown flags before any work, so fire would read --help as one of
    # them; after fire's "--" separator it is fire's own help flag again.
    argv = _join_dash_values(sys.argv[1:])
    command = ["--", "--help"] if any(arg in ("--help", "-h") for arg in argv) else argv
    try:
        fire.Fire(main, command=command, name="mini-swe-runner")
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
