"""mini-swe-runner: run a tool-using model on prompts in sandboxes and write Hermes trajectories as JSONL.

Data flows one way: CLI flags (or Python: run/run_sync) -> RunConfig -> run_batch -> (environment + model) per
task -> messages -> trajectory record -> writer. Everything for humans goes to stderr; stdout carries JSONL only
(--output_file -).
"""

import asyncio
import base64
import contextlib
import copy
import dataclasses
import difflib
import functools
import gc
import hashlib
import inspect
import io
import ipaddress
import itertools
import json
import json.scanner
import logging
import math
import os
import random
import re
import shlex
import signal
import socket
import string
import sys
import threading
import time
import types
import typing
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from urllib.parse import urlparse

import environments
import report
import trajectory

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
DEFAULT_VERIFY_TIMEOUT = 300
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


class UsageError(Exception):
    """Bad flags or input files: a one-line message, exit code 2."""


class FatalRunError(Exception):
    """Every task would fail the same way (bad key, unknown model, no backend): one line, exit code 1."""


def check_own_modules(*modules: object) -> None:
    """Refuse, in one line, a module of another distribution imported in place of ours. PyPI has top-level
    modules named ``trajectory`` and ``report`` too, and Python quietly imports whichever comes first on sys.path:
    the wrong one would fail later, far from the cause, or not at all."""
    here = os.path.dirname(os.path.abspath(__file__))
    for module in modules:
        where = getattr(module, "__file__", None)
        if where is None or os.path.dirname(os.path.abspath(where)) != here:
            name = getattr(module, "__name__", "?")
            raise SystemExit(
                f"mini-swe-runner: `import {name}` found another package's module ({where or 'a namespace package'})"
                f", not mini-swe-runner's: uninstall the package that provides it (pip uninstall {name}) or install "
                "mini-swe-runner in a virtualenv of its own"
            )


check_own_modules(environments, report, trajectory)
# After the check: another package's module of that name has none of these names, and would fail right here.
from environments import EnvError, EnvSettings, ExecResult, redact  # noqa: E402

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
    """Seconds one model request may take, the whole of it (a body trickling in byte by byte included), before it
    is retried."""
    max_retries: int = 6
    """Retries of one model call on transient errors (5xx, timeouts, dropped connections, unreadable bodies, no
    choices). 429s are not counted here: they are bounded by max_rate_limit_wait."""
    max_rate_limit_wait: float = 300
    """Seconds one model call keeps waiting out 429s (rate limits), from its first 429, before it ends with
    api_error. A provider's limit window is typically a minute; this outlasts several."""
    max_retry_after: float = 60
    """Longest wait honoured when a provider asks for one (Retry-After, retry-after-ms, x-ratelimit-reset-requests,
    llm_provider-retry-after); a longer ask is cut to it, with one log line."""
    retry_initial_delay: float = 1.0
    """First backoff delay in seconds; doubles per retry, capped at retry_max_delay, jittered."""
    retry_max_delay: float = 60.0
    """Longest backoff between two attempts when the provider gives no hint of its own."""
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
    command: list[str] | None = None
    """The command line the summary names (secrets removed): set by the CLI, None for a run started from Python."""
    quiet: bool = False
    """No progress output."""
    progress_interval: float = 10
    """Seconds between progress lines when stderr is not a terminal (a terminal's bar refreshes every second)."""
    stall_warning: float | None = 60
    """Seconds the model may leave every request unanswered before one warning line says so; None: never."""
    env: EnvSettings = field(default_factory=EnvSettings)
    """How each task's environment is made."""
    verify: str | None = None
    """The verifier of every prompt that has none of its own: a bash command run in the task's sandbox, in its
    starting working directory, after the agent ended on its own (completed or max_iterations); exit 0 = passed."""
    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT
    """Seconds a verifier may run; past it its process tree is killed and it counts as failed (exit 124)."""
    samples: int = 1
    """Runs of every prompt, each in its own fresh environment; records carry sample_index 0..samples-1."""
    until_passed: int | None = None
    """No new sample of a prompt starts once this many of its samples passed; None runs every sample."""
    dataset: str | None = None
    """Hugging Face dataset to read prompts from: a hub name, a folder of data files or a save_to_disk folder."""
    split: str | None = None
    """The dataset's split (e.g. test); None takes its only split."""
    prompt_template: str | None = None
    """Builds every row's prompt from its fields, str.format style with plain names: "Fix:\\n{problem_statement}"."""
    image_template: str | None = None
    """Builds every row's image from its fields (e.g. "swebench/sweb.eval.x86_64.{image_key}:latest")."""
    verify_template: str | None = None
    """Builds every row's verifier from its fields (e.g. "git checkout {base_commit} -- tests && pytest {tests}")."""
    price: "ModelPrice | None" = None
    """The model's price from --price or --prices: a call's cost when the provider reports none."""
    max_task_cost: Decimal | None = None
    """USD one task may cost before it ends with cost_limit; None for no limit."""
    max_cost: Decimal | None = None
    """USD the output may cost in all (what earlier runs into it cost included); None for no limit."""
    max_tokens_total: int | None = None
    """Tokens the output may use in all (billed calls' total_tokens, earlier runs included); None for no limit."""
    return_tokens: bool = False
    """Ask the endpoint for the prompt and completion token ids and logprobs of every call, and record them."""
    token_api: str | None = None
    """Whose request and response fields carry the ids: vllm or sglang; None asks in both and reads whichever came."""
    collect_patch: bool = False
    """Record the task's final `git diff` (from the tree as the task found it) as the record's ``patch``."""
    verify_in: str = "sandbox"
    """Where the verifier runs: "sandbox" (the task's own, once every process of the agent ended) or "fresh" (a
    new sandbox from the same image with only the agent's patch applied: nothing else of the agent reaches it)."""
    verify_baseline: bool = False
    """Also run each prompt's verifier once in a fresh sandbox before any agent works on it (``baseline``)."""
    verify_failure_codes: tuple[int, ...] = ()
    """Exit codes of UNJUDGED_EXIT_CODES that the user says are real failures of the verifier's tests."""


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
    settings = {
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
        # What builds each prompt and judges it; only when given, so the hash of a run without them is unchanged.
        **{
            name: value
            for name, value in (
                ("prompt_template", config.prompt_template),
                ("image_template", config.image_template),
                ("verify_template", config.verify_template),
                ("verify", config.verify),
                ("verify_timeout", None if config.verify_timeout == DEFAULT_VERIFY_TIMEOUT else config.verify_timeout),
                # How a reward is judged and what a record holds beside it: a fresh sandbox gives other rewards
                # than the agent's own (the attacks), and a record without its patch is not one with it.
                ("verify_in", None if config.verify_in == "sandbox" else config.verify_in),
                ("verify_failure_codes", list(config.verify_failure_codes) or None),
                ("verify_baseline", config.verify_baseline or None),
                ("collect_patch", config.collect_patch or None),
            )
            if value is not None
        },
    }
    if config.max_task_cost is not None:  # cuts trajectories like max_iterations; only when set: old hashes hold
        settings["max_task_cost"] = str(config.max_task_cost)
    if config.return_tokens:  # absent otherwise: older runs keep their hash
        settings["return_tokens"] = True
    return settings


def config_hash(settings: dict) -> str:
    """A short stable hash of :func:`data_settings`, stamped on every record of the run."""
    canonical = json.dumps(settings, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ModelPrice:
    """A model's price in USD per token, as exact decimals (a price table's figures are not rounded twice)."""

    input: Decimal
    output: Decimal
    """Completion tokens, reasoning tokens included (OpenAI-compatible APIs count them in completion_tokens)."""
    cached_input: Decimal
    """Prompt tokens read from the provider's cache; the input price when the table gives none."""
    cache_write: Decimal
    """Prompt tokens written to the provider's cache; the input price when the table gives none."""
    source: str = "--price"

    def cost(self, prompt: int, completion: int, cached: int, cache_write: int) -> Decimal:
        """The USD of one call (prompt tokens include the cached and cache-written ones, as providers count them)."""
        uncached = max(prompt - cached - cache_write, 0)
        return (
            uncached * self.input
            + cached * self.cached_input
            + cache_write * self.cache_write
            + completion * self.output
        )


PRICE_FIELDS = ("input", "output", "cached_input", "cache_write")
"""Our price layout (--price and --prices): USD per million tokens."""
LITELLM_PRICE_FIELDS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cached_input",
    "cache_creation_input_token_cost": "cache_write",
}
"""LiteLLM's model_prices_and_context_window.json layout: USD per token."""
_PER_MILLION = Decimal(1_000_000)


def _model_price(fields: dict, per_token: dict, where: str) -> ModelPrice:
    """A price from our fields (USD per million) and LiteLLM's (USD per token); input and output are required."""
    values: dict[str, Decimal] = {}
    for name, value in [*fields.items(), *per_token.items()]:
        try:
            number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
        except InvalidOperation:
            number = Decimal("NaN")
        if isinstance(value, bool) or not number.is_finite() or number < 0:
            raise UsageError(f"{where}: {name} takes a price of 0 or more, not {_short(value, 40)!r}")
        values[name] = number
    price = {key: values[key] / _PER_MILLION for key in PRICE_FIELDS if key in values}
    price.update((ours, values[theirs]) for theirs, ours in LITELLM_PRICE_FIELDS.items() if theirs in values)
    missing = [key for key in ("input", "output") if key not in price]
    if missing:
        raise UsageError(f"{where}: no {' or '.join(missing)} price (e.g. input=0.15,output=0.60, USD per 1M tokens)")
    price.setdefault("cached_input", price["input"])
    price.setdefault("cache_write", price["input"])
    return ModelPrice(**price, source=where)


def parse_price(text: str) -> ModelPrice:
    """--price 'input=0.15,output=0.60,cached_input=0.075' (USD per million tokens)."""
    fields: dict[str, str] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, equals, value = part.partition("=")
        name = name.strip()
        if not equals or name not in PRICE_FIELDS:
            raise UsageError(
                f"--price takes {', '.join(f'{key}=USD' for key in PRICE_FIELDS)} per million tokens "
                f"(e.g. input=0.15,output=0.60), not {_short(part, 40)!r}"
            )
        fields[name] = value
    return _model_price(fields, {}, "--price")


def load_prices(path: str, model: str) -> ModelPrice:
    """The price of ``model`` in a --prices JSON file, an object keyed by model name whose entries are in our
    layout (USD per million tokens) or LiteLLM's (USD per token). The model is looked up as it is named, then
    without its provider prefix ("openai/gpt-4.1-mini" -> "gpt-4.1-mini"), then as LiteLLM names OpenRouter's."""
    try:
        with open(path, encoding="utf-8") as handle:
            table = json.load(handle, parse_float=Decimal)  # as written: 0.1 stays 0.1, not 0.1000000000000000055
    except FileNotFoundError:
        raise UsageError(f"--prices {path} does not exist") from None
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"--prices {path} is not valid JSON: {_short(exc, 80)}") from None
    except OSError as exc:
        raise UsageError(f"cannot read --prices {path}: {exc.strerror}") from None
    if not isinstance(table, dict):
        raise UsageError(f"--prices {path} must be a JSON object keyed by model name")
    names = [model, model.split("/", 1)[-1], f"openrouter/{model}"]
    name = next((name for name in names if isinstance(table.get(name), dict)), None)
    if name is None:
        raise UsageError(f"--prices {path} has no price for model {model!r} (looked up as {', '.join(names)})")
    entry = table[name]
    fields = {key: entry[key] for key in PRICE_FIELDS if entry.get(key) is not None}
    per_token = {key: entry[key] for key in LITELLM_PRICE_FIELDS if entry.get(key) is not None}
    return _model_price(fields, per_token, f"--prices {path} [{name}]")


# ---------------------------------------------------------------------------------------------------------------
# Prompts: a row, its fields and templates, and the checks every row passes
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Prompt:
    index: int
    """0-based position in the input (among non-empty lines, or rows)."""
    text: str
    task_id: str
    image: str | None = None
    cwd: str | None = None
    fields: dict = field(default_factory=dict)
    """The input row's fields the runner does not use (repo, difficulty...), carried into the record."""
    verify: str | None = None
    """The row's own verifier (its ``verify`` field or --verify_template); None falls back to --verify."""


ID_FIELDS = ("id", "instance_id")
"""Where a row's id comes from, first present wins (instance_id: SWE-bench and its kin)."""
TEXT_FIELDS = ("prompt", "task", "problem_statement")
"""Where a row's prompt comes from without --prompt_template, first present wins."""
IMAGE_FIELDS = ("image", "docker_image")
PROMPT_KEYS = frozenset({*ID_FIELDS, *TEXT_FIELDS, *IMAGE_FIELDS, "cwd", "verify"})
"""Fields of an input row the runner may consume. A field is left out of metadata.prompt_fields only when it was
consumed for this row: the field that gave the id, the one that gave the prompt (unless --prompt_template made
it), the image field (unless --image_template made it), cwd and verify. Fields a template reads stay in
prompt_fields, since the record does not hold them verbatim anywhere else."""
KEY_FAMILIES = {
    **dict.fromkeys(TEXT_FIELDS, "prompt"),
    **dict.fromkeys(ID_FIELDS, "id"),
    **dict.fromkeys(IMAGE_FIELDS, "image"),
    "cwd": "cwd",
    "verify": "verify",
}
"""Each key the runner reads, by what it gives (the template that would build it instead, when there is one)."""
ASCII_SPACE = " \t\r\f\v"
"""What is trimmed around a prompts-file line: never U+2028/U+0085/U+00A0, which may be part of a prompt."""


@dataclass(frozen=True)
class FieldTemplate:
    """A str.format-style template over an input row's fields (``{problem_statement}``), restricted to plain
    field names: no attribute or index access (``{x.__class__}``, ``{x[0]}``), conversions or format specs, so a
    template can read a field's value and nothing else. ``{{`` and ``}}`` are literal braces."""

    flag: str
    parts: tuple[tuple[str, str | None], ...]
    """(literal text, field name or None) pairs, in order."""

    @classmethod
    def parse(cls, flag: str, text: str) -> "FieldTemplate":
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise UsageError(f"--{flag}: {exc} (write {{{{ and }}}} for literal braces)") from None
        parts = []
        for literal, name, spec, conversion in parsed:
            if name is not None and (not name or name.isdigit() or any(c in name for c in ".[]") or spec or conversion):
                shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise UsageError(f"--{flag}: {shown} is not a plain field name (write {{field}}, e.g. {{instance_id}})")
            parts.append((literal, name))
        return cls(flag, tuple(parts))

    def format(self, row: dict, where: str) -> str:
        out = []
        for literal, name in self.parts:
            out.append(literal)
            if name is None:
                continue
            value = row.get(name)
            if value is None:
                state = "is null" if name in row else "is missing"
                raise UsageError(f"{where}: field {name!r} {state}, but --{self.flag} uses it")
            out.append(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str))
        return "".join(out)


@dataclass(frozen=True)
class RowFormat:
    """How an input row becomes a prompt: each template, when given, builds that value for every row."""

    prompt: FieldTemplate | None = None
    image: FieldTemplate | None = None
    verify: FieldTemplate | None = None

    @classmethod
    def from_config(cls, config: "RunConfig") -> "RowFormat":
        def template(flag: str, text: str | None) -> FieldTemplate | None:
            return None if text is None else FieldTemplate.parse(flag, text)

        return cls(
            prompt=template("prompt_template", config.prompt_template),
            image=template("image_template", config.image_template),
            verify=template("verify_template", config.verify_template),
        )


@dataclass(frozen=True)
class InputRow:
    where: str
    """How an error names it: ``file:line`` or ``source row N``."""
    place: str
    """How a later duplicate id names it: ``line N`` or ``row N``."""
    value: object
    """A dict (an object row) or a str (a plain-text prompt line)."""


def derived_task_id(text: str, occurrence: int) -> str:
    """Stable id from the prompt's text and which occurrence of that text it is, so duplicates stay distinct."""
    # surrogatepass: a lone surrogate (from a JSON escape, or an undecodable argv byte) still hashes distinctly.
    return f"{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}-{occurrence}"


def _first_field(row: dict, names: tuple[str, ...]) -> tuple[object, str | None]:
    for name in names:
        if row.get(name) is not None:
            return row[name], name
    return None, None


def _optional_text(value: object, name: str, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise UsageError(f'{where}: "{name}" must be a string')
    return value


def _row_prompt(row: InputRow, row_format: RowFormat) -> tuple[Prompt, str | None]:
    """One input row checked and made a prompt, with its explicit id (None: the id derives from the text).

    The prompt's ``index`` and ``task_id`` are left for the caller, which knows the row's position and how often
    its text occurred before."""
    where, obj = row.where, row.value
    if isinstance(obj, str):
        obj = {"prompt": obj}
    elif not isinstance(obj, dict):
        raise UsageError(f'{where}: not an object (give {{"prompt": ...}} rows)')
    if suspects := _misspelled_keys(tuple(obj)):
        _refuse_misspelled_keys(obj, suspects, row_format, where)
    used: set[str] = set()
    explicit_id, id_field = _first_field(obj, ID_FIELDS)
    if explicit_id is not None:
        if isinstance(explicit_id, bool) or not isinstance(explicit_id, (str, int)):
            raise UsageError(f'{where}: "{id_field}" must be a string or an integer')
        used.add(id_field)
    # Template errors name the row's id too: in a dataset, that is what a user can look up.
    label = where if explicit_id is None else f"{where} (id {str(explicit_id)!r})"
    if row_format.prompt is not None:
        text = row_format.prompt.format(obj, label)
        if not text.strip():
            raise UsageError(f"{label}: --prompt_template gives an empty prompt")
    else:
        text, text_field = _first_field(obj, TEXT_FIELDS)
        if not isinstance(text, str) or not text.strip():
            raise UsageError(
                f'{where}: no prompt (give a non-empty "prompt", "task" or "problem_statement" string, '
                "or --prompt_template)"
            )
        used.add(text_field)
    if row_format.image is not None:
        image = row_format.image.format(obj, label)
    else:
        image, image_field = _first_field(obj, IMAGE_FIELDS)
        image = _optional_text(image, image_field or "image", where)
        if image_field:
            used.add(image_field)
    cwd = _optional_text(obj.get("cwd"), "cwd", where)
    used.add("cwd")
    if row_format.verify is not None:
        verify = row_format.verify.format(obj, label)
    else:
        verify = _optional_text(obj.get("verify"), "verify", where)
        used.add("verify")
    if verify is not None and not verify.strip():
        raise UsageError(f"{where}: the verify command is empty")
    for what, value in (("the prompt", text), ("the image", image), ("the cwd", cwd), ("the verify command", verify)):
        if value is not None:
            _checked_text(value, what, where)
    fields = {k: v for k, v in obj.items() if k not in used}
    prompt = Prompt(index=-1, text=text, task_id="", image=image, cwd=cwd, fields=fields, verify=verify)
    return prompt, None if explicit_id is None else str(explicit_id)


@functools.lru_cache(maxsize=4096)
def _misspelled_key(key: str) -> str | None:
    """The key the runner reads that ``key`` looks like a misspelling of ("verfy" -> "verify"), else None. Close
    means difflib's ratio of at least 0.85 (a letter left out, added or changed in a word of 4 or more), the same
    letters in another order, or another case: "uid" or "prompt_id" are not taken for "id" or "prompt"."""
    if key in KEY_FAMILIES:
        return None
    lowered = key.lower()
    if lowered in KEY_FAMILIES:
        return lowered
    close = difflib.get_close_matches(lowered, KEY_FAMILIES, n=1, cutoff=0.85)
    if close:
        return close[0]
    return next((known for known in KEY_FAMILIES if len(known) >= 3 and sorted(known) == sorted(lowered)), None)


@functools.lru_cache(maxsize=256)
def _misspelled_keys(keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(key, the key it resembles) of a row's keys (rows of one file mostly share their keys: one look-up a row)."""
    return tuple((key, known) for key in keys if (known := _misspelled_key(key)) is not None)


def _refuse_misspelled_keys(
    obj: dict, suspects: tuple[tuple[str, str], ...], row_format: RowFormat, where: str
) -> None:
    """A key the runner would have read, misspelled, is refused: {"prompt": "a", "verfy": "true"} must not run
    without its verifier. Only a value the runner could have used (text; an integer for an id) counts, only when
    no key of what it resembles is present (a row with "prompt" may also have "prompts"), and not when a template
    builds that value (its fields are the row's own business) or reads the key."""
    for key, known in suspects:
        family = KEY_FAMILIES[known]
        value = obj[key]
        if not isinstance(value, str) and not (type(value) is int and family == "id"):
            continue
        if getattr(row_format, family, None) is not None:
            continue
        if any(KEY_FAMILIES.get(present) == family for present in obj):
            continue
        if any(
            name == key
            for template in (row_format.prompt, row_format.image, row_format.verify)
            if template
            for _, name in template.parts
        ):
            continue
        raise UsageError(
            f'{where}: unknown key "{key}": did you mean "{known}"? (rename it; keys the runner does not read, and '
            "are not close to one it does, go to metadata.prompt_fields)"
        )


def _checked_text(text: str, what: str, where: str) -> str:
    """``text`` as it can be sent: a lone surrogate (from a JSON escape such as \\ud800, or an undecodable argv byte)
    is refused before any task, not sent to fail as api_error on every rerun."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(
            f"{where}: {what} holds a lone surrogate (U+{ord(text[exc.start]):04X} at character {exc.start}), "
            "which UTF-8 cannot carry"
        ) from None
    return text


_JSON_STARTS = frozenset('["-0123456789tfn')
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false"}


def _refuse_json_non_object(text: str, where: str) -> None:
    """A line that is valid JSON but not an object (an array, a string, a number...) is refused, never sent as the
    text of a prompt: it was meant as a row."""
    if not text or text[0] not in _JSON_STARTS:
        return
    try:
        value, end = _SCAN_JSON(text, 0)
    except (ValueError, StopIteration, RecursionError):
        return
    if end == len(text):
        kind = _JSON_KINDS.get(type(value), "null")
        raise UsageError(
            f'{where}: {kind} in JSON, not an object: give {{"prompt": ...}} rows (a prompt with this very text too)'
        )


def _checked_id(task_id: str, where: str) -> str:
    try:
        task_id.encode("utf-8")
    except UnicodeEncodeError:  # written as U+FFFD, a\ud800 and a\ud801 would become one id and clash forever
        raise UsageError(f"{where}: id {task_id!r} holds a lone surrogate, which UTF-8 cannot store") from None
    return task_id


def prompts_from_rows(rows: Iterable[InputRow], row_format: RowFormat | None = None) -> list[Prompt]:
    """Prompts from input rows, every row checked (and every template filled) before any task runs."""
    row_format = row_format or RowFormat()
    plain = row_format == RowFormat()
    prompts: list[Prompt] = []
    occurrences: Counter[str] = Counter()
    seen_ids: dict[str, str] = {}
    for row in rows:
        value = row.value
        if (  # the usual row, {"prompt": "...", "id": "..."}, as PromptFile._first_pass takes it: 4x cheaper
            plain
            and type(value) is dict
            and len(value) == 2
            and type(text := value.get("prompt")) is str
            and type(task_id := value.get("id")) is str
            and text
            and not text.isspace()
        ):
            prompt, explicit_id = Prompt(index=-1, text=text, task_id=""), task_id
        else:
            prompt, explicit_id = _row_prompt(row, row_format)
        occurrence = occurrences[prompt.text]
        occurrences[prompt.text] += 1
        task_id = explicit_id if explicit_id is not None else derived_task_id(prompt.text, occurrence)
        task_id = _checked_id(task_id, row.where)
        if task_id in seen_ids:
            raise UsageError(f"{row.where}: id {task_id!r} already used on {seen_ids[task_id]}")
        seen_ids[task_id] = row.place
        prompt.index, prompt.task_id = len(prompts), task_id
        prompts.append(prompt)
    return prompts


def _line_rows(lines: Iterable[str], source: str) -> Iterator[InputRow]:
    for number, line in enumerate(lines, start=1):
        stripped = line.strip(ASCII_SPACE + "\n")
        if not stripped:
            continue
        value: object = stripped
        if stripped.startswith("{"):
            try:
                value = json.loads(stripped)
            except ValueError as exc:
                raise UsageError(f"{source}:{number}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise UsageError(f"{source}:{number}: JSON nested too deeply to be a prompt") from None
        else:
            _refuse_json_non_object(stripped, f"{source}:{number}")
        yield InputRow(f"{source}:{number}", f"line {number}", value)


def parse_prompt_lines(lines: list[str], source: str, row_format: RowFormat | None = None) -> list[Prompt]:
    """Prompts from JSONL lines: objects with prompt/task (+ id, image/docker_image, cwd, verify) or plain text."""
    return prompts_from_rows(_line_rows(lines, source), row_format)


def _list_rows(rows: Iterable[object], source: str) -> Iterator[InputRow]:
    for number, value in enumerate(rows):
        yield InputRow(f"{source} row {number}", f"row {number}", value)


# ---------------------------------------------------------------------------------------------------------------
# Prompts files and datasets: loaded, checked once, read back a row at a time, the check kept for a resume
# ---------------------------------------------------------------------------------------------------------------


MISSING_DATASETS_EXTRA = "pip install 'mini-swe-runner[datasets]'"


def load_prompts(path: str, row_format: RowFormat | None = None, checked: str | None = None) -> Sequence[Prompt]:
    """Prompts from a file, by suffix: a .json file (a :class:`PromptArray`), a .parquet file (a :class:`PromptTable`),
    else JSONL or plain text (a :class:`PromptFile`), each read back one prompt at a time; ``checked``: where its
    check is kept for the next run, see :func:`trajectory.prompts_check_path`. A pipe is read whole: one of
    WHOLE_FILE_FORMATS (a :class:`PromptList`), or JSONL."""
    if os.path.isdir(path):
        raise UsageError(f"--prompts_file {path} is a directory, not a {PROMPT_FILE_KINDS} file")
    suffix = os.path.splitext(path)[1].lower()
    reader = WHOLE_FILE_FORMATS.get(suffix)
    regular = os.path.isfile(path)
    try:
        if suffix == ".json" and regular:
            prompts = PromptArray(path, row_format or RowFormat(), checked)
        elif suffix == ".parquet" and regular:
            prompts = PromptTable(path, row_format or RowFormat(), checked)
        elif reader is not None:
            tag = _file_tag(path, row_format) if regular else None  # before the read: a later change changes it
            prompts: Sequence[Prompt] = PromptList(prompts_from_rows(_list_rows(reader(path), path), row_format), tag)
        elif not regular:  # a pipe (<(...), /dev/stdin) is read once, whole
            with open(path, encoding="utf-8-sig", errors="strict") as handle:  # -sig: a BOM is not a prompt
                text = handle.read()
            # "\n" only: str.splitlines() would also split at U+2028, U+0085... inside JSON strings and text
            prompts = prompts_from_rows(_line_rows(text.split("\n"), path), row_format)
        else:
            prompts = PromptFile(path, row_format or RowFormat(), checked)
    except FileNotFoundError:
        raise UsageError(f"--prompts_file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--prompts_file {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"cannot read --prompts_file {path}: {exc.strerror or exc}") from None
    if not prompts:
        raise UsageError(f"--prompts_file {path} has no prompts")
    return prompts


PROMPTS_TAG_VERSION = 1
"""Part of every prompts file's tag (see PromptFile.source_tag): raised when the way ids derive from rows changes."""
UTF8_BOM = b"\xef\xbb\xbf"
_SCAN_JSON = json.scanner.make_scanner(json.JSONDecoder())
ASCII_SPACE_BYTES = (ASCII_SPACE + "\n").encode()
ID_BUCKETS = 256
"""Hashes of ids and texts are kept in this many arrays, so finding repeats needs a set of one bucket at a time."""


CHECKED_PROMPTS_VERSION = 1
"""Part of a kept check (see PromptFile._keep_check): raised when what the check of a row covers changes, so a check
kept by an older version is done again."""
CHECKED_PROMPTS_MAGIC = b"mini-swe-runner checked prompts\n"
SETTLED_NS = 2_000_000_000
"""How long before its check a prompts file must have last changed for the check to be kept. A file's times come
from a coarse clock (a jiffy; a second or two on some filesystems): a write in the same tick as the one before the
check would leave them as they were. Any write after the check is later than this and changes its ctime."""


def _identity(status: os.stat_result) -> tuple[int, int, int, int, int]:
    """A file as it is: a write changes its mtime and ctime (ctime, which no tool sets back), a replacement its
    inode."""
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def _file_tag(path: str, row_format: RowFormat | None) -> int:
    """A prompts file as it is now, read with these row settings (see PromptFile.source_tag)."""
    status = os.stat(path)
    return trajectory.stable_tag(
        f"prompts\0{PROMPTS_TAG_VERSION}\0{status.st_dev}\0{status.st_ino}\0{status.st_size}\0"
        f"{status.st_mtime_ns}\0{status.st_ctime_ns}\0{row_format or RowFormat()!r}"
    )


class PromptList(list):
    """Prompts loaded whole (a file of WHOLE_FILE_FORMATS, --dataset), named like a :class:`PromptFile` for the output's
    resume index: records written against the same input are placed on their rows without parsing their lines
    (1,000,000 records: parsing them all took 15.9 s, bench/bench_input.py). ``source_tag`` None: the input cannot
    be named (a pipe, a dataset without a fingerprint), and resume parses the records as before.

    A slice (--limit) or shard stays a PromptList of the same input: a prompt's ``index`` is its row in it."""

    def __init__(self, prompts: Iterable[Prompt], source_tag: int | None, ids_by_row: list[str] | None = None):
        super().__init__(prompts)
        self.source_tag = source_tag
        self._ids_by_row = ids_by_row if ids_by_row is not None else [prompt.task_id for prompt in self]
        """Row of the whole input -> its task_id (a shard or slice holds some of the rows)."""
        self._rows_by_id: dict[str, int] | None = None

    def __getitem__(self, position):
        if isinstance(position, slice):
            return self.part(super().__getitem__(position))
        return super().__getitem__(position)

    def part(self, prompts: Iterable[Prompt]) -> "PromptList":
        """Some of these prompts, still named as the whole input (the index's rows are the input's)."""
        return PromptList(prompts, self.source_tag, self._ids_by_row)

    @property
    def file_rows(self) -> int:
        return len(self._ids_by_row)

    def locate(self, task_id: str) -> int | None:
        if self._rows_by_id is None:
            self._rows_by_id = {task_id: row for row, task_id in enumerate(self._ids_by_row)}
        return self._rows_by_id.get(task_id)

    def task_id_of_row(self, row: int) -> str:
        return self._ids_by_row[row]


class PromptFile(Sequence[Prompt]):
    """The prompts of a JSONL or plain-text file (a .json array: :class:`PromptArray`, a .parquet table:
    :class:`PromptTable`, the same but for how rows are found): every row checked in one streaming pass, then read
    back from the file one at a time, when its sample starts.

    Memory holds about 20 bytes per row (its byte offset, a hash of its line, its image and whether it has its own
    verifier; 16 more for hashes while checking), never the rows: a file of 1,000,000 lines used to take 14 s and
    742 MB before its first task (see bench/bench_input.py). Ids are checked for repeats by their hashes; only a
    repeated hash (a repeated id, or a rare collision) costs a second pass, which compares the ids themselves. The
    file stays open, and a line that changed after the check is refused when read back, never sent.

    Slicing gives a view over the same file (--shard, --limit); a prompt's ``index`` stays its row in the file.

    ``checked``: a file where the check is kept (:meth:`_keep_check`) and, while it provably describes this very
    file, taken instead of checking again (:meth:`_kept_check`): a resume over 1,000,000 rows checked them in
    1.8 to 2.5 s before its first request (bench/bench_input.py).
    """

    def __init__(self, path: str, row_format: RowFormat, checked: str | None = None):
        self.path = path
        self.row_format = row_format
        self._handle = open(path, "rb")  # noqa: SIM115 - read from for the whole run (see _prompt)
        self._offsets = array("q")
        self._line_hashes = array("q")
        self._images: list[str | None] = [None]
        self._image_and_verify = array("I")
        """Per row: 2 x (its image's index in _images) + (1 if it has its own verifier)."""
        self._occurrence: dict[int, int] = {}
        """Row -> how often its text occurred on earlier rows, for the rows where that is not 0."""
        self._derived_repeats: set[int] = set()
        """Hashes of the texts that occur more than once while some id derives from its text."""
        self._id_hash_by_row = array("q")
        """Row -> hash() of its task_id, for :meth:`locate` (8 bytes a row)."""
        self._rows_by_id_hash: dict[int, int] | None = None
        status = os.fstat(self._handle.fileno())  # before the pass: any later change of the file changes the tag
        self._identity = _identity(status)
        self._from_kept_check = False
        """The rows were checked by an earlier run (:meth:`_kept_check`): no line hashes; a row read back is known
        to be the one checked while the file's identity is unchanged."""
        self.source_tag = trajectory.stable_tag(
            f"prompts\0{PROMPTS_TAG_VERSION}\0{status.st_dev}\0{status.st_ino}\0{status.st_size}\0"
            f"{status.st_mtime_ns}\0{status.st_ctime_ns}\0{row_format!r}"
        )
        """Names this file as it is now, with these row settings, in the output's resume index: a record written
        under the same tag was written for the task on its row here, so resume matches it without parsing it. A
        file written to since (mtime, and ctime, which no tool sets back), replaced or read with other --prompt_field
        settings gets another tag."""
        if checked is not None and self._kept_check(checked):
            self._rows = range(len(self._offsets))
            return
        id_hashes = self._first_pass()
        self._rows = range(len(self._offsets))
        if self._derived_repeats:
            id_hashes = self._ids_with_occurrences()
        suspects = _repeated(id_hashes)
        if suspects:
            self._refuse_duplicate_ids(suspects)
        if checked is not None:
            self._keep_check(checked, status)

    # -- the check kept for the next run --------------------------------------------------------------------

    _KEPT_ARRAYS = ("_offsets", "_image_and_verify")
    """The per-row arrays a kept check holds, in this order (the first is the rows' offsets)."""
    KIND = "lines"
    """How the file's rows are found, in a kept check: a check kept for one kind is never taken for another."""

    def _check_header(self) -> dict:
        """What a kept check must match: this file as it is, read as this kind, these row settings, this version's
        checks."""
        return {
            "version": CHECKED_PROMPTS_VERSION,
            "tag_version": PROMPTS_TAG_VERSION,
            "kind": self.KIND,
            "identity": list(self._identity),
            "row_format": repr(self.row_format),
            "layout": [sys.byteorder, *(getattr(self, name).itemsize for name in self._KEPT_ARRAYS)],
        }

    def _keep_check(self, checked: str, status: os.stat_result) -> None:
        """Keep this check beside the output, for the next run over the same file: each row's offset, its image
        and verifier flag, and where a text repeats, its occurrence (12 bytes a row; no prompt text). Not kept for
        a file that changed shortly before the check or during it (see SETTLED_NS): its identity would not prove
        its content. Best effort: a check not kept is done again."""
        if time.time_ns() - status.st_ctime_ns < SETTLED_NS:
            return
        if _identity(os.fstat(self._handle.fileno())) != self._identity:
            return
        header = self._check_header()
        header["rows"] = len(self._offsets)
        header["images"] = self._images
        header["occurrence"] = sorted(self._occurrence.items())
        arrays = b"".join(getattr(self, name).tobytes() for name in self._KEPT_ARRAYS)
        body = json.dumps(header).encode() + b"\n" + arrays
        digest = hashlib.blake2b(body, digest_size=16).hexdigest().encode()
        temp = trajectory.prompts_check_temporary(checked)  # a leftover of a killed run: the next run removes it
        try:
            with open(temp, "wb") as handle:
                handle.write(CHECKED_PROMPTS_MAGIC + digest + b"\n" + body)
            os.replace(temp, checked)  # a reader sees the old check or the new one, never half of one
        except OSError as exc:
            log.debug("the check of %s is not kept in %s: %s", self.path, checked, exc)
            with contextlib.suppress(OSError):
                os.unlink(temp)

    def _kept_check(self, checked: str) -> bool:
        """Take the check an earlier run kept, when it provably describes this file: its digest holds (not
        corrupted), and the file's identity (device, inode, size, mtime and ctime to the nanosecond), the row
        settings and this version's checks are those it was made for. Anything else: False, and the rows are
        checked again."""
        try:
            with open(checked, "rb") as handle:
                kept = handle.read()
        except OSError:
            return False
        magic = len(CHECKED_PROMPTS_MAGIC)
        digest, _, body = kept[magic:].partition(b"\n")
        if not kept.startswith(CHECKED_PROMPTS_MAGIC) or hashlib.blake2b(body, digest_size=16).hexdigest() != (
            digest.decode("ascii", "replace")
        ):
            log.debug("%s is not a whole kept check: the prompts are checked again", checked)
            return False
        line, _, arrays = body.partition(b"\n")
        try:
            header = json.loads(line)
            rows, images, occurrence = header.pop("rows"), header.pop("images"), header.pop("occurrence")
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
        if header != self._check_header():
            log.debug("%s was kept for another state of %s: the prompts are checked again", checked, self.path)
            return False
        kept_arrays = [array(getattr(self, name).typecode) for name in self._KEPT_ARRAYS]
        if not rows or len(arrays) != rows * sum(kept.itemsize for kept in kept_arrays):
            return False
        at = 0
        for kept_array in kept_arrays:
            kept_array.frombytes(arrays[at : at + rows * kept_array.itemsize])
            at += rows * kept_array.itemsize
        if max(kept_arrays[-1]) >> 1 >= len(images) or not self._spans_fit(kept_arrays):
            return False
        for name, kept_array in zip(self._KEPT_ARRAYS, kept_arrays, strict=True):
            setattr(self, name, kept_array)
        self._images = images
        self._occurrence = {row: count for row, count in occurrence}
        self._from_kept_check = True
        log.debug("prompts: %s taken as checked by an earlier run (%s): rows are read as they run", self.path, checked)
        return True

    def _spans_fit(self, kept_arrays: list[array]) -> bool:
        """Whether the kept arrays place every row inside the file."""
        return kept_arrays[0][-1] < self._identity[2]

    def _unchanged(self, row: int, stripped: bytes) -> bool:
        """Whether ``stripped``, read back from row ``row``, is the line that was checked."""
        if self._from_kept_check:  # any write since the check changed the file's ctime
            return _identity(os.fstat(self._handle.fileno())) == self._identity
        return row < len(self._line_hashes) and hash(stripped) == self._line_hashes[row]

    # -- the checks, before any task runs --------------------------------------------------------------------

    def _where(self, number: int) -> str:
        """How an error names the row ``number`` of :meth:`_lines` (here a line number)."""
        return f"{self.path}:{number}"

    def _place(self, number: int) -> str:
        """How a later duplicate id names the row ``number`` of :meth:`_lines`."""
        return f"line {number}"

    def _lines(self) -> Iterator[tuple[int, int, bytes, object]]:
        """(byte offset, line number, line without its ASCII spaces, its value) of every non-empty line.

        The usual line (ASCII, one JSON object) is decoded and parsed here; anything else goes to
        :meth:`_row_value`, which decides."""
        self._handle.seek(0)
        offset = 0
        for number, raw in enumerate(self._handle, start=1):
            start, offset = offset, offset + len(raw)
            if start == 0 and raw.startswith(UTF8_BOM):  # a BOM is not a prompt
                raw, start = raw[3:], 3
            stripped = raw.strip(ASCII_SPACE_BYTES)
            if not stripped:
                continue
            if stripped.isascii() and stripped[0] == 0x7B:  # "{"
                text = stripped.decode("ascii")
                try:
                    value, end = _SCAN_JSON(text, 0)
                    if end == len(text):
                        yield start, number, stripped, value
                        continue
                except (ValueError, StopIteration, RecursionError):
                    pass
            yield start, number, stripped, self._row_value(start, number, stripped)

    def _row_value(self, start: int, number: int, stripped: bytes) -> object:
        try:
            text = stripped.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"--prompts_file {self.path} is not UTF-8 text (byte {start + exc.start})") from None
        if not text.startswith("{"):
            _refuse_json_non_object(text, f"{self.path}:{number}")
            return text
        # json's scanner itself: json.loads costs 3x as much on lines this short (bench/bench_input.py). The line
        # is stripped of JSON's whitespace, so a value ending where the line ends is what json.loads would give.
        try:
            value, end = _SCAN_JSON(text, 0)
            if end == len(text):
                return value
        except (ValueError, StopIteration, RecursionError):
            pass
        try:  # not one JSON value: json.loads words the error
            return json.loads(text)
        except ValueError as exc:
            raise UsageError(f"{self.path}:{number}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise UsageError(f"{self.path}:{number}: JSON nested too deeply to be a prompt") from None

    def _first_pass(self) -> list[array]:
        """Check every row, note where it is; returns the id hashes (an id derived from a text assumes the text's
        first occurrence: :meth:`_ids_with_occurrences` corrects that when a text repeats)."""
        id_hashes = [array("q") for _ in range(ID_BUCKETS)]
        text_hashes = [array("q") for _ in range(ID_BUCKETS)]
        derived = quick = False
        image_index: dict[str | None, int] = {None: 0}
        plain = self.row_format == RowFormat()
        offsets, line_hashes, image_and_verify = self._offsets, self._line_hashes, self._image_and_verify
        for start, number, stripped, value in self._lines():
            # The usual rows, {"prompt": "...", "id": "..."}, {"prompt": "..."} or plain text, are checked here without
            # building a Prompt: 3 µs a row instead of 12 (bench/bench_input.py). Others go through _row_prompt.
            if (
                plain
                and type(value) is dict
                and len(value) == 2
                and type(text := value.get("prompt")) is str
                and type(task_id := value.get("id")) is str
                and text
                and not text.isspace()
            ):
                if not task_id.isascii():
                    _checked_id(task_id, self._where(number))
                if b"\\u" in stripped:  # only a JSON escape can make a lone surrogate
                    _checked_text(text, "the prompt", self._where(number))
                info, quick = 0, True
            elif (
                plain
                and (type(value) is str or (type(value) is dict and len(value) == 1))
                and type(text := value if type(value) is str else value.get("prompt")) is str
                and text
                and not text.isspace()
            ):  # a plain-text line, or {"prompt": "..."}: the id derives from the text
                if b"\\u" in stripped:
                    _checked_text(text, "the prompt", self._where(number))
                task_id, info, derived = derived_task_id(text, 0), 0, True
                key = hash(text)
                text_hashes[key % ID_BUCKETS].append(key)
            else:
                where = self._where(number)
                prompt, explicit_id = _row_prompt(InputRow(where, self._place(number), value), self.row_format)
                text = prompt.text
                derived = derived or explicit_id is None
                task_id = _checked_id(explicit_id if explicit_id is not None else derived_task_id(text, 0), where)
                info = 2 * image_index.setdefault(prompt.image, len(image_index)) + (prompt.verify is not None)
                key = hash(text)  # only texts here may need their occurrence counted (see below)
                text_hashes[key % ID_BUCKETS].append(key)
            key = hash(task_id)
            id_hashes[key % ID_BUCKETS].append(key)
            self._id_hash_by_row.append(key)
            offsets.append(start)
            line_hashes.append(hash(stripped))
            image_and_verify.append(info)
        self._images = list(image_index)
        if not derived:
            pass  # every id is explicit: how often a text occurs never matters
        elif quick:  # ids derived from texts and rows taken the quick way, whose texts were not hashed: hash all
            text_hashes = [array("q") for _ in range(ID_BUCKETS)]
            for _, _, prompt in self._checked_rows():
                key = hash(prompt.text)
                text_hashes[key % ID_BUCKETS].append(key)
            self._derived_repeats = _repeated(text_hashes)
        else:
            self._derived_repeats = _repeated(text_hashes)
        return id_hashes

    def _checked_rows(self) -> Iterator[tuple[int, InputRow, Prompt]]:
        """Every row again, as a prompt with its final id (a second pass: only when hashes repeat)."""
        texts: Counter[str] = Counter()
        for row, (_, number, _, value) in enumerate(self._lines()):
            input_row = InputRow(self._where(number), self._place(number), value)
            prompt, explicit_id = _row_prompt(input_row, self.row_format)
            if hash(prompt.text) in self._derived_repeats:  # counted exactly: equal hashes need not be equal texts
                if explicit_id is None and texts[prompt.text]:
                    self._occurrence[row] = texts[prompt.text]
                texts[prompt.text] += 1
            prompt.index = row
            prompt.task_id = self._task_id(row, prompt.text, explicit_id)
            yield row, input_row, prompt

    def _ids_with_occurrences(self) -> list[array]:
        id_hashes = [array("q") for _ in range(ID_BUCKETS)]
        for row, _, prompt in self._checked_rows():
            key = hash(prompt.task_id)
            id_hashes[key % ID_BUCKETS].append(key)
            self._id_hash_by_row[row] = key
        return id_hashes

    def _refuse_duplicate_ids(self, suspects: set[int]) -> None:
        seen: dict[str, str] = {}
        for _, row, prompt in self._checked_rows():
            if hash(prompt.task_id) not in suspects:
                continue
            if prompt.task_id in seen:
                raise UsageError(f"{row.where}: id {prompt.task_id!r} already used on {seen[prompt.task_id]}")
            seen[prompt.task_id] = row.place

    # -- reading back -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rows)

    @typing.overload
    def __getitem__(self, position: int) -> Prompt: ...
    @typing.overload
    def __getitem__(self, position: slice) -> "PromptFile": ...
    def __getitem__(self, position):
        if isinstance(position, slice):
            return self.view(self._rows[position])
        return self.prompt_of_row(self._rows[position])

    def view(self, rows: range) -> "PromptFile":
        """The same file's prompts at ``rows`` (file rows, not positions in this view)."""
        other = copy.copy(self)
        other._rows = rows
        return other

    def row_of(self, position: int) -> int:
        return self._rows[position]

    @property
    def rows(self) -> range:
        """The file rows of this view's prompts, in order: position -> row."""
        return self._rows

    def image_of(self, position: int) -> str | None:
        """The prompt's own image, without reading it back."""
        return self._images[self._image_and_verify[self._rows[position]] >> 1]

    def own_images(self) -> set[str | None]:
        """The own images of every prompt of this view."""
        rows = self._rows
        return {self._images[info >> 1] for info in set(self._image_and_verify[rows.start : rows.stop : rows.step])}

    def has_own_verifier(self, position: int) -> bool:
        return bool(self._image_and_verify[self._rows[position]] & 1)

    def any_own_verifier(self) -> bool:
        rows = self._rows
        return any(info & 1 for info in set(self._image_and_verify[rows.start : rows.stop : rows.step]))

    def task_ids(self) -> Iterator[str]:
        """The task_id of every prompt of this view, in order, read in one pass without building the prompts (what
        resume needs to match the output's records to the prompts)."""
        rows = self._rows
        row = -1
        for _, _, stripped, value in self._lines():
            row += 1
            if row not in rows:
                continue
            if not self._unchanged(row, stripped):
                raise self._changed(row)
            if type(value) is dict and type(task_id := value.get("id")) is str:
                if len(value) == 2 and type(value.get("prompt")) is str and self.row_format == RowFormat():
                    yield task_id  # the quick shape of _first_pass
                    continue
            prompt, explicit_id = _row_prompt(InputRow(self.path, self.path, value), self.row_format)
            yield self._task_id(row, prompt.text, explicit_id)

    @property
    def file_rows(self) -> int:
        """The rows of the whole file (a view's rows are some of them)."""
        return len(self._offsets)

    def locate(self, task_id: str) -> int | None:
        """The row of the file whose task_id is ``task_id``, or None: by hash, without reading the file. Two ids
        with one 64-bit hash (siphash) would be taken for each other: over n records and n rows, a chance of about
        n^2 / 2^64, 5e-8 at 1,000,000 (and the record stays in the output whatever resume decides)."""
        key = hash(task_id)
        if self._from_kept_check and not self._id_hash_by_row:  # hash() differs by process: not kept, made here
            self._id_hash_by_row.extend(hash(task_id) for task_id in self.view(range(len(self._offsets))).task_ids())
        if self._rows_by_id_hash is None:
            if len(self._offsets) < 4096:  # a scan of a short file costs less than the map of a long one
                with contextlib.suppress(ValueError):
                    return self._id_hash_by_row.index(key)
                return None
            self._rows_by_id_hash = dict(zip(self._id_hash_by_row, range(len(self._id_hash_by_row)), strict=True))
        return self._rows_by_id_hash.get(key)

    def prompt_of_row(self, row: int) -> Prompt:
        """The prompt on ``row`` of the file (not a position in this view), read back from the file."""
        where, value = self._read_back(row)
        prompt, explicit_id = _row_prompt(InputRow(where, where, value), self.row_format)
        prompt.index = row
        prompt.task_id = self._task_id(row, prompt.text, explicit_id)
        return prompt

    def _read_back(self, row: int) -> tuple[str, object]:
        """How an error names row ``row``, and its value read back from the file (refused if it changed)."""
        start = self._offsets[row]
        self._handle.seek(start)
        stripped = self._handle.readline().strip(ASCII_SPACE_BYTES)
        if not self._unchanged(row, stripped):
            raise self._changed(row)
        return f"{self.path} row {row + 1}", self._row_value(start, row + 1, stripped)

    def _changed(self, row: int) -> "FatalRunError":
        return FatalRunError(
            f"--prompts_file {self.path} changed during the run (row {row + 1} differs from what was checked); "
            "rerun the same command to resume with the new file"
        )

    def _task_id(self, row: int, text: str, explicit_id: str | None) -> str:
        return explicit_id if explicit_id is not None else derived_task_id(text, self._occurrence.get(row, 0))


def _repeated(buckets: list[array]) -> set[int]:
    """The hashes that occur more than once, looking at one bucket at a time."""
    repeated: set[int] = set()
    for bucket in buckets:
        if len(set(bucket)) != len(bucket):
            repeated.update(key for key, count in Counter(bucket).items() if count > 1)
    return repeated


class PromptArray(PromptFile):
    """The prompts of a .json file (one JSON array): a :class:`PromptFile` whose rows are the byte spans of the
    array's elements instead of lines. Checked the same way, its check kept the same way (with each element's end),
    and each element read back and parsed again only when its task runs: a resume of 1,000,000 rows used to load
    them whole (8.6-16 s and 815 MB to its first request, bench/bench_input.py)."""

    _KEPT_ARRAYS = ("_offsets", "_ends", "_image_and_verify")
    KIND = "json array"

    def __init__(self, path: str, row_format: RowFormat, checked: str | None = None):
        self._ends = array("q")
        """Row -> the byte just after its element (its start is in _offsets)."""
        self._scanned = False
        """Every element was found once: a later pass that cannot find them means the file changed."""
        super().__init__(path, row_format, checked)

    def _where(self, number: int) -> str:
        return f"{self.path} row {number}"  # 0-based, as an element of the list (and as before)

    def _place(self, number: int) -> str:
        return f"row {number}"

    def _lines(self) -> Iterator[tuple[int, int, bytes, object]]:
        """(byte offset, row, the element's bytes, its value) of every element of the array, the whole file read and
        decoded once a pass (the JSON scanner reads str). A file that is not one JSON array is told as before."""
        self._handle.seek(0)
        data = self._handle.read()
        skip = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0  # a BOM is not a prompt
        try:
            text = str(memoryview(data)[skip:], "utf-8")
        except UnicodeDecodeError as exc:
            if self._scanned or self._from_kept_check:
                raise self._no_longer_the_array() from None
            raise UsageError(f"--prompts_file {self.path} is not UTF-8 text (byte {skip + exc.start})") from None
        # Offsets in the text are offsets in the bytes (after the BOM) while the text is ASCII; else each span's bytes
        # are counted from the end of the one before it.
        ascii_text = text.isascii()
        char_at, byte_at = 0, skip
        ends, space, scan = self._ends, _JSON_SPACE.match, _SCAN_JSON
        position = space(text).end()
        if not text.startswith("[", position):
            self._refuse_as_json(text)
        position = space(text, position + 1).end()
        row = 0
        if text.startswith("]", position):
            position += 1
        else:
            while True:
                try:
                    value, end = scan(text, position)
                except (ValueError, StopIteration, RecursionError):
                    self._refuse_as_json(text)
                if ascii_text:
                    start, stop = skip + position, skip + end
                else:
                    start = byte_at + len(text[char_at:position].encode())
                    stop = start + len(text[position:end].encode())
                    char_at, byte_at = end, stop
                if row == len(ends):  # the first pass notes them; later passes find the same
                    ends.append(stop)
                yield start, row, data[start:stop], value
                row += 1
                position = end if text.startswith((",", "]"), end) else space(text, end).end()
                if text.startswith("]", position):
                    position += 1
                    break
                if not text.startswith(",", position):
                    self._refuse_as_json(text)
                position = space(text, position + 1).end()
        if space(text, position).end() != len(text):
            self._refuse_as_json(text)
        self._scanned = True

    def _refuse_as_json(self, text: str) -> typing.NoReturn:
        """The array's elements cannot be found: json.loads words why, as for a .json read whole."""
        if self._scanned or self._from_kept_check:
            raise self._no_longer_the_array()
        _json_array(text, self.path)
        raise UsageError(f"{self.path}: not valid JSON")  # not reached: json.loads refuses what the scan refuses

    def _no_longer_the_array(self) -> "FatalRunError":
        return FatalRunError(
            f"--prompts_file {self.path} changed during the run (it is no longer the JSON array that was checked); "
            "rerun the same command to resume with the new file"
        )

    def _read_back(self, row: int) -> tuple[str, object]:
        start = self._offsets[row]
        self._handle.seek(start)
        element = self._handle.read(self._ends[row] - start)
        if not self._unchanged(row, element):
            raise self._changed(row)
        where = self._where(row)
        try:
            text = element.decode("utf-8")
            value, end = _SCAN_JSON(text, 0)
        except (ValueError, StopIteration, RecursionError):
            raise self._changed(row) from None
        if end != len(text):  # the span held more than one value: not what was checked
            raise self._changed(row)
        return where, value

    def _spans_fit(self, kept_arrays: list[array]) -> bool:
        offsets, ends = kept_arrays[0], kept_arrays[1]
        return offsets[-1] < ends[-1] <= self._identity[2] and ends[0] > offsets[0]


class PromptTable(PromptFile):
    """The prompts of a .parquet file: a :class:`PromptFile` whose rows are the rows of the file's table, held as
    Arrow columns (never a Python object per row) and made a prompt when its task runs. Checked the same way, its
    check kept the same way; a resume that takes the check reads the table only when the first task starts. A resume
    of 1,000,000 rows loaded as Python objects took 11.4-17.5 s and 1 GB to its first request (bench/bench_input.py)."""

    KIND = "parquet table"

    def __init__(self, path: str, row_format: RowFormat, checked: str | None = None):
        self._table = None
        super().__init__(path, row_format, checked)

    def _where(self, number: int) -> str:
        return f"{self.path} row {number}"  # 0-based, as before

    def _place(self, number: int) -> str:
        return f"row {number}"

    def _rows_table(self):
        """The file's table, read once from the file that was opened (and checked, or whose check was taken)."""
        if self._table is not None:
            return self._table
        _pyarrow_parquet(self.path)  # a missing extra is told as such, a kept check or not
        self._handle.seek(0)
        try:
            table = _parquet_table(self.path, self._handle.read())
        except UsageError:
            if self._from_kept_check:
                raise self._changed(0) from None
            raise
        if self._from_kept_check and (
            table.num_rows != len(self._offsets) or _identity(os.fstat(self._handle.fileno())) != self._identity
        ):
            raise self._changed(0)
        self._table = table
        return table

    def _lines(self) -> Iterator[tuple[int, int, bytes, object]]:
        """(row, row, b"", its value) of every row: the row's own place is its number (see _spans_fit), and it
        holds no JSON text (Arrow's strings are UTF-8: no escape can make a lone surrogate)."""
        row = 0
        for batch in self._rows_table().to_batches(max_chunksize=65536):  # a row group may hold 1,000,000 rows
            for value in batch.to_pylist():
                yield row, row, b"", value
                row += 1

    def _read_back(self, row: int) -> tuple[str, object]:
        # In memory since the check (or read once after the check was taken, the file proven unchanged then).
        if not self._unchanged(row, b""):
            raise self._changed(row)
        return self._where(row), self._rows_table().slice(row, 1).to_pylist()[0]

    def _spans_fit(self, kept_arrays: list[array]) -> bool:
        rows = kept_arrays[0]
        return rows[0] == 0 and rows[-1] == len(rows) - 1


_JSON_SPACE = re.compile(r"[ \t\n\r]*")
"""JSON's whitespace (json.decoder's own): what may stand between the elements of an array."""


def _json_array(text: str, path: str) -> list:
    """``text`` as a JSON array, or the one-line error that says why it is not one."""
    try:
        rows = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise UsageError(f"{path}: JSON nested too deeply") from None
    if not isinstance(rows, list):
        raise UsageError(f'{path}: a .json prompts file holds a list of objects: [{{"prompt": ...}}, ...]')
    return rows


def _json_rows(path: str) -> list:
    with open(path, encoding="utf-8-sig", errors="strict") as handle:  # -sig: a BOM is not a prompt
        text = handle.read()
    return _json_array(text, path)


def _pyarrow_parquet(path: str):
    """pyarrow, with its parquet reader imported, or the one-line error naming the extra that brings it."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UsageError(f"reading {path} needs pyarrow: {MISSING_DATASETS_EXTRA}") from None
    return pyarrow


def _parquet_table(path: str, data: bytes):
    """The table of a parquet file's bytes, or the one-line error that says why they are not one."""
    pyarrow = _pyarrow_parquet(path)
    try:
        # From bytes and in this thread: with pyarrow's reader threads the interpreter aborted at exit ("terminate
        # called without an active exception") in 1 to 2 of 13 runs of the CLI. Bytes read a pipe too.
        return pyarrow.parquet.read_table(pyarrow.BufferReader(data), use_threads=False)
    except pyarrow.ArrowException as exc:
        raise UsageError(f"--prompts_file {path} is not a readable parquet file ({_short(exc, 200)})") from None


def _parquet_rows(path: str) -> list[dict]:
    with open(path, "rb") as handle:
        return _parquet_table(path, handle.read()).to_pylist()


WHOLE_FILE_FORMATS: dict[str, Callable[[str], list]] = {".json": _json_rows, ".parquet": _parquet_rows}
"""Prompts files read whole, by suffix -> the reader of their rows. A format is one row here; any other suffix is
JSONL or plain text, read back a prompt at a time (PromptFile). A .json or .parquet file that is a regular file is
read back a row at a time too (PromptArray, PromptTable): only a pipe of one is read whole."""
PROMPT_FILE_KINDS = ", ".join(["JSONL", "plain text", *WHOLE_FILE_FORMATS][:-1]) + f" or {[*WHOLE_FILE_FORMATS][-1]}"


def load_dataset_prompts(name: str, split: str | None, row_format: RowFormat | None = None) -> list[Prompt]:
    """Prompts from a Hugging Face dataset: a hub name, a folder of data files, or a save_to_disk folder."""
    try:
        import datasets
    except ImportError:
        raise UsageError(f"--dataset needs Hugging Face datasets: {MISSING_DATASETS_EXTRA}") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        if os.path.isfile(os.path.join(name, "dataset_dict.json")) or os.path.isfile(os.path.join(name, "state.json")):
            loaded = datasets.load_from_disk(name)  # written by Dataset(Dict).save_to_disk
        else:
            loaded = datasets.load_dataset(name, split=split) if split else datasets.load_dataset(name)
    except Exception as exc:  # the library raises many kinds here (not found, bad split, bad files): all are input
        raise UsageError(f"--dataset {name}: {_short(exc, 240)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        if split is None and len(names) != 1:
            raise UsageError(f"--dataset {name} has splits {', '.join(names)}: pick one with --split")
        split = split or names[0]
        if split not in loaded:
            raise UsageError(f"--dataset {name} has no split {split!r} (it has {', '.join(names)})")
        loaded = loaded[split]
    source = f"{name}[{split}]" if split else name
    prompts = PromptList(
        prompts_from_rows(_list_rows(loaded, source), row_format), dataset_tag(loaded, source, row_format)
    )
    if not prompts:
        raise UsageError(f"--dataset {source} has no rows")
    return prompts


def dataset_tag(loaded: object, source: str, row_format: RowFormat | None) -> int | None:
    """Names a loaded dataset's rows, read with these row settings, in the output's resume index (see
    PromptList.source_tag); None for a dataset without a fingerprint."""
    # The library's own content hash of the rows (data files, revision, transforms): the same data, the same tag.
    fingerprint = getattr(loaded, "_fingerprint", None)
    if not isinstance(fingerprint, str) or not fingerprint:
        return None
    return trajectory.stable_tag(
        f"dataset\0{PROMPTS_TAG_VERSION}\0{source}\0{fingerprint}\0{row_format or RowFormat()!r}"
    )


def select_shard(prompts: Sequence[Prompt], shard: tuple[int, int] | None) -> Sequence[Prompt]:
    """The I-th of N (1-based) deterministic slices: prompt k belongs to shard (k mod N) + 1. Every sample of a
    prompt belongs to its prompt's shard, so --until_passed can count them."""
    if shard is None:
        return prompts
    number, count = shard
    if isinstance(prompts, PromptFile):  # a prompt's index is its row: the shard is a stride, read nothing
        return prompts[number - 1 :: count]
    shard_prompts = [p for p in prompts if p.index % count == number - 1]
    return prompts.part(shard_prompts) if isinstance(prompts, PromptList) else shard_prompts


def has_any_verifier(prompts: Sequence[Prompt], config: "RunConfig") -> bool:
    """Whether some prompt of the run has a verifier (without reading a prompts file back)."""
    if config.verify is not None:
        return True
    if isinstance(prompts, PromptFile):
        return prompts.any_own_verifier()
    return any(verifier_for(p, config) is not None for p in prompts)


def task_ids(prompts: Sequence[Prompt]) -> Iterator[str]:
    """The prompts' task_ids in order (without reading a prompts file back prompt by prompt)."""
    return prompts.task_ids() if isinstance(prompts, PromptFile) else (p.task_id for p in prompts)


def prompt_image(prompts: Sequence[Prompt], position: int) -> str | None:
    """The prompt's own image (without reading a prompts file back)."""
    return prompts.image_of(position) if isinstance(prompts, PromptFile) else prompts[position].image


# ---------------------------------------------------------------------------------------------------------------
# The model: one client per run, one retry policy, one gate all workers respect
# ---------------------------------------------------------------------------------------------------------------


class ModelCallError(Exception):
    """A model call failed for good; ``exit_reason`` is api_error or context_length.

    ``permanent`` marks an answer that no retry changes (a 400 that is not about the context length, such as
    LiteLLM's "Invalid model name"): when the first tasks of a run all end in the same one, the run stops."""

    def __init__(self, exit_reason: str, message: str, permanent: bool = False):
        super().__init__(message)
        self.exit_reason = exit_reason
        self.permanent = permanent


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


class TaskClock:
    """A task's --task_timeout, stopped while the task waits for the shared rate gate or between retries of a
    model call: another task's 429 or a provider's hiccup is not this task's fault, and a healthy task cut short
    there would be recorded as a permanent ``timeout`` that resume never retries."""

    def __init__(self, deadline: asyncio.Timeout | None = None):
        self.deadline = deadline

    @contextlib.asynccontextmanager
    async def stopped(self):
        deadline = self.deadline
        if deadline is None or deadline.when() is None or deadline.expired():
            yield
            return
        loop = asyncio.get_running_loop()
        remaining = deadline.when() - loop.time()
        deadline.reschedule(None)
        try:
            yield
        finally:
            if not deadline.expired():
                deadline.reschedule(loop.time() + remaining)


@dataclass
class ModelTurn:
    message: dict
    """The assistant message as it goes back into the conversation (reasoning fields included), normalised:
    string ids unique in the turn, text that encodes as UTF-8, arguments as a string."""
    usage: dict
    finish_reason: str | None = None
    """Why the model stopped ("stop", "tool_calls", "length"...), as the provider said; None when it did not."""
    tokens: trajectory.TokenCall | None = None
    """With --return_tokens: the ids the server rendered and sampled, and the logprobs."""
    tokens_api: str | None = None
    """Whose layout the ids came in: vllm or sglang."""


@dataclass
class WaitHint:
    """How long a provider asked us to wait, and which header said so."""

    seconds: float
    header: str


CONTEXT_LENGTH_HINTS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "reduce the length",
)
MODELS_CHECK_TIMEOUT = 30.0
"""Longest wait for the endpoint check before the first task; a slower endpoint is left to the tasks."""


class ModelClient:
    def __init__(self, config: RunConfig):
        import ssl

        import anyio
        import openai

        try:  # openai >= 3 ships on httpx2; older releases on httpx
            import httpx2 as http
        except ImportError:
            import httpx as http

        self.openai = openai
        self.http = http
        self.config = config
        self.gate = RateGate(config.max_rpm)
        self._body_ends: tuple[list[dict], bytes, bytes] | None = None
        """(tools, the request's JSON before the messages, after them): see _request_body."""
        self.long_wait_logged = False
        pool = http.Limits(max_connections=config.workers + 4, max_keepalive_connections=config.workers + 4)
        self.http_client = _http_client(openai, pool, config.request_timeout)
        # The SDK's client resolves what users rely on (the key, or OPENAI_API_KEY; OPENAI_ORG_ID/OPENAI_PROJECT_ID;
        # the base URL with its trailing slash) and owns the transport; the requests themselves go through
        # self.http_client below it, see _send.
        self.client = openai.AsyncOpenAI(
            api_key=config.api_key,
            base_url=config.base_url,
            max_retries=0,  # our own policy below: shared 429 backoff, no-choices retries, one place
            timeout=config.request_timeout,
            http_client=self.http_client,
        )
        self.chat_url = _api_url(self.client.base_url, "chat/completions")
        self.models_url = _api_url(self.client.base_url, "models")
        self._headers_set = False
        self._connection_errors = (http.RequestError, ssl.SSLError, anyio.EndOfStream)
        """What the SDK reports as APIConnectionError (its request_exceptions: TLS and stream ends included)."""

    async def close(self) -> None:
        await self.client.close()

    async def _send(self, method: str, url: object, content: bytes | None = None) -> object:
        """One request as the SDK's client sends it (same URL, headers, timeout, redirects, transport), failing with
        the SDK's own exceptions built as it builds them, through the public API of the http client it was given.

        Why below the SDK's per-request layer: that layer (request options as a pydantic model, per-call URL and
        header merging, the auth-retry wrapper) was half the CPU of a call: 0.64 ms by client.post against 0.28 ms
        here, 32 calls at a time (0.68 against 0.35 one at a time; bench/bench_model_call.py), and the runner's
        process per step of bench/bench_harness.py fell 1.10 -> 0.70 ms. At 32 workers the runner's one thread
        issues every next request in turn, so this CPU is also wall time."""
        client = self.http_client
        if not self._headers_set:  # on the first call, in the loop: the SDK's X-Stainless-Async names the loop
            client.headers = self._sdk_headers()
            self._headers_set = True
        request = client.build_request(method, url, content=content)
        if method == "GET":  # as the SDK does: no body, so no Content-Type
            del request.headers["Content-Type"]
        try:
            response = await client.send(request)
        except self.http.TimeoutException as exc:
            raise self.openai.APITimeoutError(request=request) from exc
        except self._connection_errors as exc:
            raise self.openai.APIConnectionError(request=request) from exc
        if not response.is_success:  # the SDK's raise_for_status: a redirect not followed is an error too
            raise _status_error(self.openai, response)
        return response

    def _sdk_headers(self) -> dict[str, str]:
        """The headers the SDK sends with each request of this client: its defaults (Accept, Content-Type,
        User-Agent, the constant X-Stainless-* platform ones, organization and project when set), the key's
        Authorization, and the two per-request ones, constant here (no SDK retries; one timeout)."""
        client = self.client
        headers = {name: value for name, value in client.default_headers.items() if isinstance(value, str)}
        headers.update(client.auth_headers)
        headers["X-Stainless-Retry-Count"] = "0"
        read_timeout = self.http.Timeout(client.timeout).read
        if read_timeout is not None:
            headers["X-Stainless-Read-Timeout"] = str(read_timeout)
        return headers

    async def check_endpoint(self) -> None:
        """One GET /models before the first task: an endpoint that refuses connections, does not resolve, or
        rejects the key stops the run in one line instead of every task retrying for minutes. Any other answer
        (a server without /models included) leaves the verdict to the model calls."""
        config, openai = self.config, self.openai
        try:
            async with asyncio.timeout(min(config.request_timeout, MODELS_CHECK_TIMEOUT)):
                await self._send("GET", self.models_url)
        except openai.AuthenticationError as exc:
            raise FatalRunError(
                f"the model API rejected the key (401) at {config.base_url}: {_api_message(exc)}"
            ) from None
        except openai.PermissionDeniedError as exc:
            raise FatalRunError(
                f"the model API refused access (403) at {config.base_url}: {_api_message(exc)}"
            ) from None
        except openai.APIConnectionError as exc:
            reason = _connection_failure(exc)
            if reason.startswith(("connection refused", "host name")):
                raise FatalRunError(f"cannot reach the model API at {config.base_url}: {reason}") from None
            if isinstance(exc, openai.APITimeoutError):
                self._check_unanswered()
        except TimeoutError:
            self._check_unanswered()
        except Exception as exc:  # any other answer: the model calls will tell
            log.debug("endpoint check at %s: %s", config.base_url, _short(exc))

    def _check_unanswered(self) -> None:
        """An endpoint that accepts connections and answers nothing: said now, not after the first tasks' retries."""
        log.warning(
            "the model API at %s did not answer GET /models in %gs; the tasks start anyway (progress shows what "
            "waits on the model)",
            self.config.base_url,
            min(self.config.request_timeout, MODELS_CHECK_TIMEOUT),
        )

    def _request_body(self, messages: list[dict], tools: list[dict], encoded: list[bytes] | None = None) -> bytes:
        """The request's JSON, encoded as the SDK would (its openapi_dumps settings). ``encoded`` holds the task's
        messages already encoded, in order (the history only grows): only new messages are encoded, so a call
        costs its new turns, not the whole history again (the SDK re-encoded every message on every call)."""
        encoded = [] if encoded is None else encoded
        encoded.extend(_json_body(message) for message in messages[len(encoded) :])
        if self._body_ends is None or self._body_ends[0] is not tools:  # the run's tools: one list, encoded once
            fields = self._request_fields(tools)
            rest = _json_body({key: value for key, value in fields.items() if key not in ("model", "messages")})
            head = b'{"model":' + _json_body(self.config.model) + b',"messages":['
            self._body_ends = (tools, head, b"]," + rest[1:] if len(rest) > 2 else b"]}")
        _, head, tail = self._body_ends
        return b"".join((head, b",".join(encoded), tail))

    def _request_fields(self, tools: list[dict]) -> dict:
        config = self.config
        kwargs: dict = {"model": config.model, "messages": None, "tools": tools}  # --extra_body cannot replace them
        if config.temperature is not None:
            kwargs["temperature"] = config.temperature
        if config.max_tokens is not None:
            kwargs["max_tokens"] = config.max_tokens
        if config.top_p is not None:
            kwargs["top_p"] = config.top_p
        if config.reasoning_effort is not None:
            kwargs["reasoning_effort"] = config.reasoning_effort
        if config.return_tokens:  # set before --extra_body, so it cannot turn them off
            kwargs.update(token_request_fields(config.token_api))
        for key, value in config.extra_body.items():
            kwargs.setdefault(key, value)
        return kwargs

    async def complete(
        self,
        messages: list[dict],
        tools: list[dict],
        clock: TaskClock | None = None,
        encoded: list[bytes] | None = None,
        cost: "TaskCost | None" = None,
        tokens: trajectory.TokenLog | None = None,
    ) -> ModelTurn:
        """The model's next turn. Transient failures are retried up to --max_retries; 429s are waited out for up
        to --max_rate_limit_wait instead, since a rate limit means wait, not fail. Waiting does not run the
        task's clock. ``encoded``: see :meth:`_request_body`. ``cost`` is billed for every answer that came
        with a JSON body, one whose content cannot be used included: the provider charged for it. ``tokens``: the
        task's ids so far (--return_tokens), which the prompt ids of the answer are read against."""
        config, openai = self.config, self.openai
        clock = clock or TaskClock()
        try:
            body = self._request_body(messages, tools, encoded)
        except (ValueError, RecursionError) as exc:  # no retry can help: the same text would be sent again
            raise ModelCallError("api_error", f"the request cannot be sent as JSON: {_short(exc)}") from None
        failures = rate_limits = 0
        rate_limited_since: float | None = None
        while True:
            async with clock.stopped():
                await self.gate.wait()
            hint: WaitHint | None = None
            rate_limited = False
            try:
                # Bounds the whole request: the client's own timeout bounds each socket read only, so a body
                # trickling in byte by byte would never time out.
                async with asyncio.timeout(config.request_timeout):
                    # Not chat.completions.create: its per-call param transform over the whole (growing) history
                    # and its response model made the client CPU-bound at 32 workers (8.6 ms -> 2.8 ms per call at
                    # 14 messages; bench/bench_batch.py). Not client.post either: see _send.
                    response = await self._send("POST", self.chat_url, body)
                    known = None
                    if config.return_tokens and tokens is not None:
                        payload, known = split_prompt_ids(response.content, tokens)
                    else:
                        payload = response.json()
                    if cost is not None:
                        cost.bill(payload, response.headers)
                turn = self._turn(payload)
                if turn is not None and config.return_tokens:
                    turn.tokens, turn.tokens_api = token_call(payload, config.token_api, config.base_url, known)
            except TimeoutError:
                last_error = f"request timed out after {config.request_timeout:g} s"
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
                    raise ModelCallError("api_error", f"HTTP {exc.status_code}: {message}", permanent=True) from None
                last_error = f"HTTP {exc.status_code}: {message}"
                hint = provider_wait_hint(exc.response.headers)
                rate_limited = exc.status_code == 429
            except openai.APIConnectionError as exc:  # includes APITimeoutError
                last_error = _connection_failure(exc)
            except (ValueError, RecursionError) as exc:
                last_error = f"unreadable response: {_short(exc)}"
            else:
                if turn is not None:
                    return turn
                error = payload.get("error") if isinstance(payload, dict) else None
                last_error = f"response had no choices: {_short(error) if error else _short(payload, 120)}"
            now = time.monotonic()
            if rate_limited:
                rate_limited_since = now if rate_limited_since is None else rate_limited_since
                waited = now - rate_limited_since
                if waited >= config.max_rate_limit_wait:
                    raise ModelCallError(
                        "api_error",
                        f"still rate limited after waiting {waited:.0f} s (--max_rate_limit_wait "
                        f"{config.max_rate_limit_wait:g}): {last_error}",
                    )
                delay = self._delay(hint, rate_limits)
                if rate_limits:  # 429 after 429: back off even when told "Retry-After: 0", never hammer
                    delay = max(delay, self._delay(None, rate_limits - 1))
                rate_limits += 1
                delay = min(delay, config.max_rate_limit_wait - waited)
                self.gate.pause(delay)  # a 429 is about the account, not this task: everyone waits
            else:
                failures += 1
                if failures > config.max_retries:
                    raise ModelCallError("api_error", f"gave up after {_plural(failures, 'attempt')}: {last_error}")
                delay = self._delay(hint, failures - 1)
            log.debug("model call failed (%s); retrying in %.2f s", last_error, delay)
            async with clock.stopped():
                await asyncio.sleep(delay)

    def _delay(self, hint: WaitHint | None, attempt: int) -> float:
        """The provider's own wait when it gave one (capped by --max_retry_after), else jittered backoff."""
        if hint is None:
            delay = min(self.config.retry_initial_delay * 2**attempt, self.config.retry_max_delay)
            return delay * (1 - 0.25 * random.random())
        cap = self.config.max_retry_after
        if hint.seconds > cap and not self.long_wait_logged:
            self.long_wait_logged = True  # once per run: every worker sees the same provider
            log.warning(
                "the model API asked to wait %.0f s (%s); waiting at most %g s (--max_retry_after)",
                hint.seconds,
                hint.header,
                cap,
            )
        return min(hint.seconds, cap)

    @staticmethod
    def _turn(payload: object) -> ModelTurn | None:
        """The assistant turn of a chat-completions JSON body, normalised where it enters; None when the body has
        no usable choice; ValueError when its tool calls are not a list of calls."""
        choices = payload.get("choices") if isinstance(payload, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        message = choice.get("message") if choice is not None else None
        if not isinstance(message, dict):
            return None
        assistant: dict = {"role": "assistant", "content": _message_text(message.get("content"))}
        raw_calls = message.get("tool_calls")
        if isinstance(raw_calls, dict):  # one call sent bare instead of in a list
            raw_calls = [raw_calls]
        elif raw_calls is not None and not isinstance(raw_calls, list):
            raise ValueError(f"tool_calls is {_short(json.dumps(raw_calls, default=str), 60)}, not a list")
        calls = [call for call in raw_calls or [] if isinstance(call, dict)]
        if calls:
            assistant["tool_calls"] = []
            used_ids: set[str] = set()
            for index, call in enumerate(calls):
                function = call.get("function") if isinstance(call.get("function"), dict) else {}
                arguments = function.get("arguments")
                if not isinstance(arguments, str):  # some servers send an object instead of a JSON string
                    arguments = "" if arguments is None else _json_text(arguments)
                name = function.get("name")
                assistant["tool_calls"].append(
                    {
                        "id": _call_id(call.get("id"), index, used_ids),
                        "type": "function",
                        "function": {
                            "name": name if isinstance(name, str) or name is None else _json_text(name),
                            "arguments": _encodable(arguments),
                        },
                    }
                )
        # Sent back on later turns exactly as received: DeepSeek needs reasoning_content, Gemini (via
        # OpenRouter) needs reasoning_details unchanged, new vLLM/OpenRouter use reasoning. Only text that
        # cannot be sent back at all (lone surrogates) is repaired.
        for key in ("reasoning", "reasoning_content"):
            if isinstance(message.get(key), str) and message[key]:
                assistant[key] = _encodable(message[key])
        details = _sendable_json(message.get("reasoning_details"))
        if details:
            assistant["reasoning_details"] = details
        finish_reason = choice.get("finish_reason")
        return ModelTurn(
            assistant,
            _usage_counts(payload.get("usage")),
            finish_reason if isinstance(finish_reason, str) else None,
        )


def _json_body(value: object) -> bytes:
    """JSON as the SDK encodes a request body (openai._utils._json.openapi_dumps): compact, UTF-8, no NaN."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


TOKEN_REQUEST_FIELDS = {
    # vLLM (ChatCompletionRequest): prompt_token_ids at the top of the response, token_ids on the choice;
    # return_tokens_as_token_ids writes each logprob's token as "token_id:N", which lets us check they align.
    "vllm": {"logprobs": True, "return_token_ids": True, "return_tokens_as_token_ids": True},
    # SGLang (ChatCompletionRequest): prompt_token_ids and token_ids both on the choice.
    "sglang": {"logprobs": True, "return_token_ids": True, "return_prompt_token_ids": True},
}


def token_request_fields(api: str | None) -> dict:
    """The request fields that ask ``api`` for ids and logprobs; both servers' when it is None (each ignores the
    other's). None of them changes sampling: logprobs only reports what was sampled."""
    if api is not None:
        return dict(TOKEN_REQUEST_FIELDS[api])
    return TOKEN_REQUEST_FIELDS["vllm"] | TOKEN_REQUEST_FIELDS["sglang"]


_PROMPT_IDS_KEY = b'"prompt_token_ids":'


def split_prompt_ids(raw: bytes, tokens: trajectory.TokenLog) -> tuple[object, array | None]:
    """The JSON of an answer whose prompt_token_ids start with the task's ids so far, read without parsing those
    again: they are checked as bytes against ``tokens.sequence_json`` and only the new ids are parsed. A 40-call
    trajectory's prompts hold ~600k ids in all, and json.loads of them was nearly all of --return_tokens' CPU
    (bench/bench_tokens.py). Returns (payload with that list emptied, the whole prompt's ids); or the payload as
    it is and None whenever the bytes are not the simple case (no or two such keys, spaces, another prefix)."""
    start = raw.find(_PROMPT_IDS_KEY)
    known = tokens.sequence_json
    if start < 0 or not known or raw.find(_PROMPT_IDS_KEY, start + 1) >= 0:
        return json.loads(raw), None
    opening = start + len(_PROMPT_IDS_KEY)
    opening += raw[opening : opening + 1] == b" "
    closing = raw.find(b"]", opening)
    after = opening + 1 + len(known)
    if raw[opening : opening + 1] != b"[" or closing < 0 or raw[opening + 1 : after] != known:
        return json.loads(raw), None
    if after == closing:
        new = array("I")
    elif raw[after : after + 1] == b",":
        new = array("I", json.loads(b"[" + raw[after + 1 : closing + 1]))
    else:
        return json.loads(raw), None
    payload = json.loads(raw[:opening] + b"[]" + raw[closing + 1 :])
    return payload, tokens.sequence + new


def token_call(
    payload: dict, api: str | None, base_url: str, known: array | None = None
) -> tuple[trajectory.TokenCall, str]:
    """The ids and logprobs of a chat-completions body in vLLM's or SGLang's layout (``known``: its prompt ids,
    read by split_prompt_ids). An answer without them is fatal: a run asked for tokens must not quietly become a
    text-only run."""
    choice = payload["choices"][0]
    prompt_ids, found = None, api
    if api in (None, "vllm"):
        prompt_ids, found = payload.get("prompt_token_ids"), "vllm"
    if prompt_ids is None and api in (None, "sglang"):
        prompt_ids, found = choice.get("prompt_token_ids"), "sglang"
    if known is not None and prompt_ids == []:
        prompt_ids = known
    meta = choice.get("meta_info") if isinstance(choice.get("meta_info"), dict) else {}
    pairs = meta.get("output_token_logprobs")  # older SGLang, with return_meta_info: [[logprob, id, text], ...]
    completion_ids = choice.get("token_ids")
    if completion_ids is None and isinstance(pairs, list):
        completion_ids = [pair[1] for pair in pairs if isinstance(pair, list) and len(pair) > 1]
    content = choice.get("logprobs").get("content") if isinstance(choice.get("logprobs"), dict) else None
    if isinstance(content, list):
        logprobs = [entry.get("logprob") if isinstance(entry, dict) else None for entry in content]
        labels = [entry.get("token") if isinstance(entry, dict) else None for entry in content]
    elif isinstance(pairs, list):
        logprobs = [pair[0] if isinstance(pair, list) and pair else None for pair in pairs]
        labels = []
    else:
        logprobs, labels = None, []
    where = f"the endpoint at {base_url}" + (f" ({api})" if api else "")
    fix = "see the README, Tokens for RL, for the server versions and flags that return them"
    prompt_ids, completion_ids = _token_ids(prompt_ids), _token_ids(completion_ids)
    if not prompt_ids or completion_ids is None:
        missing = "prompt token ids" if not prompt_ids else "completion token ids"
        raise FatalRunError(f"--return_tokens: {where} returned no {missing}; {fix}")
    if logprobs is None or len(logprobs) != len(completion_ids) or not all(_is_number(v) for v in logprobs):
        raise FatalRunError(
            f"--return_tokens: {where} returned {len(completion_ids)} completion ids but "
            f"{'no' if logprobs is None else len(logprobs)} usable logprobs; {fix}"
        )
    for token_id, label in zip(completion_ids, labels, strict=False):  # no labels from meta_info
        if isinstance(label, str) and label.startswith("token_id:") and label != f"token_id:{token_id}":
            raise FatalRunError(f"--return_tokens: {where} returned logprobs that do not match its token ids")
    finish_reason = choice.get("finish_reason")
    call = trajectory.TokenCall(
        prompt_ids,
        completion_ids,
        [float(value) for value in logprobs],
        finish_reason if isinstance(finish_reason, str) else None,
    )
    return call, found


def _token_ids(value: object) -> array | None:
    """Ids as unsigned 32-bit ints (checked by array in C: a prompt holds tens of thousands); None when not ids."""
    if isinstance(value, array):
        return value
    if not isinstance(value, list):
        return None
    try:
        return array("I", value)
    except (TypeError, OverflowError):
        return None


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)  # a logprob of -inf or NaN would be written as JSON no reader takes
    except OverflowError:  # an int beyond any float (10**400)
        return False


def _api_url(base_url: object, path: str) -> object:
    """``path`` under the SDK's base URL (which it ends with a slash), joined as the SDK joins a relative path."""
    return base_url.copy_with(raw_path=base_url.raw_path + path.encode())


def _http_client(openai, limits, timeout: float):
    """The SDK's aiohttp transport when its extra is installed: about a quarter less CPU per model call than
    httpx at 32 workers (bench/bench_batch.py); the SDK's default httpx transport otherwise."""
    try:
        return openai.DefaultAioHttpClient(limits=limits, timeout=timeout)
    except (RuntimeError, AttributeError):  # openai without the aiohttp extra, or too old to have it
        return openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout)


def _encodable(text: str) -> str:
    """``text`` as it can be encoded to UTF-8: each lone surrogate (which a JSON \\ud800 escape can carry) becomes
    U+FFFD. They cannot be sent back to the model, written to a record or given to bash as they are."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _message_text(content: object) -> str | None:
    """Message content as text: a string as it is, a list of parts joined from their text, anything else None."""
    if isinstance(content, list):
        content = "".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return _encodable(content) if isinstance(content, str) else None


def _json_text(value: object) -> str:
    try:
        return _encodable(json.dumps(value, ensure_ascii=False))
    except (ValueError, RecursionError):
        return ""


def _sendable_json(value: object) -> object:
    """A JSON value that can go back to the provider as it came (lone surrogates repaired); None when it cannot
    be sent at all (non-finite numbers, nesting too deep to serialise)."""
    if value is None:
        return None
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError, RecursionError):
        return None
    repaired = _encodable(text)
    return value if repaired is text else json.loads(repaired)


def _call_id(raw: object, index: int, used: set[str]) -> str:
    """A tool-call id as a string that is unique in its turn, so each result pairs with its call. A string id is
    kept; a number becomes its digits; anything else (an object, a list, nothing) becomes call_<index>. Lone
    surrogates are written as \\udXXX escapes rather than replaced, so two distinct ids stay distinct."""
    if isinstance(raw, str) and raw:
        call_id = raw.encode("utf-8", "backslashreplace").decode("utf-8")
    elif isinstance(raw, int) and not isinstance(raw, bool):
        call_id = str(raw)
    else:
        call_id = f"call_{index}"
    unique, suffix = call_id, 2
    while unique in used:
        unique, suffix = f"{call_id}_{suffix}", suffix + 1
    used.add(unique)
    return unique


MAX_TOKEN_COUNT = 2**53
"""Beyond this a reported token count is nonsense (and overflows an int64 dataset column): counted as 0."""


def _usage_counts(usage: object) -> dict:
    counts = trajectory.empty_usage()
    if not isinstance(usage, dict):
        return counts
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        counts[key] = _count(usage.get(key))
    details = usage.get("completion_tokens_details")
    counts["reasoning_tokens"] = _count(details.get("reasoning_tokens")) if isinstance(details, dict) else 0
    # OpenAI and OpenRouter: prompt_tokens_details; Anthropic's names (LiteLLM passes them on) otherwise.
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    counts["cached_tokens"] = _count(details.get("cached_tokens")) or _count(usage.get("cache_read_input_tokens"))
    counts["cache_write_tokens"] = _count(details.get("cache_write_tokens")) or _count(
        usage.get("cache_creation_input_tokens")
    )
    return counts


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value) if 0 < value < MAX_TOKEN_COUNT else 0  # False for NaN and infinity too


LITELLM_COST_HEADER = "x-litellm-response-cost"
"""What a LiteLLM proxy says a response cost, in USD (0 when it has no price for the model: taken as unknown)."""
COST_QUANTUM = Decimal("1e-10")
"""A record's cost is its calls' exact sum rounded once to this (USD): at most 15 significant digits, which a JSON
float carries exactly, so the records' figures, read back as decimals, add up exactly to the run's total."""


def provider_cost(usage: object, headers: object) -> Decimal | None:
    """The USD the provider measured for one response: OpenRouter's ``usage.cost`` (credits, 1 credit = 1 USD),
    else a LiteLLM proxy's header; None when it reported none. The measured figure comes first: a proxy's header
    is its own estimate from a price map."""
    value = usage.get("cost") if isinstance(usage, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return Decimal(repr(value))  # the shortest decimal that is this float: what the provider wrote
    try:
        header = headers.get(LITELLM_COST_HEADER)
    except AttributeError:
        return None
    if not isinstance(header, str):
        return None
    try:
        reported = Decimal(header.strip())
    except InvalidOperation:
        return None
    return reported if reported.is_finite() and reported > 0 else None


class RunBudget:
    """--max_cost and --max_tokens_total: what the output has cost so far, earlier runs into it included, with
    each call of a running task added as it is billed. Shared by every task of the run."""

    def __init__(self, config: "RunConfig | None" = None, spent: tuple[Decimal, int] = (Decimal(0), 0)):
        self.max_cost = config.max_cost if config is not None else None
        self.max_tokens = config.max_tokens_total if config is not None else None
        self.spent_before = spent
        """What the output had cost when the run began (resume)."""
        self.usd, self.tokens = spent

    def gone(self) -> str | None:
        """Why no model call may start any more, or None while the budget lasts."""
        if self.max_cost is not None and self.usd >= self.max_cost:
            return f"the run's budget is spent (--max_cost {self.max_cost} USD; the output has cost {_usd(self.usd)})"
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return f"the token budget is used (--max_tokens_total {self.max_tokens}; the output used {self.tokens})"
        return None


@dataclass
class TaskCost:
    """What one task's billed model calls cost, from the provider's figure when it gives one, else the price."""

    budget: RunBudget = field(default_factory=RunBudget)
    price: "ModelPrice | None" = None
    max_task_cost: Decimal | None = None
    needs_cost: bool = False
    """A money budget is set: a call whose cost cannot be known stops the run (a budget is never ignored)."""
    usd: Decimal = Decimal(0)
    tokens: int = 0
    provider_calls: int = 0
    priced_calls: int = 0
    unknown_calls: int = 0

    def bill(self, payload: object, headers: object) -> None:
        """Add one answer the provider charged for, to this task and to the run's budget."""
        usage = payload.get("usage") if isinstance(payload, dict) else None
        counts = _usage_counts(usage)
        usd = provider_cost(usage, headers)
        if usd is not None:
            self.provider_calls += 1
        elif self.price is not None and isinstance(usage, dict):
            prompt, completion = counts["prompt_tokens"], counts["completion_tokens"]
            usd = self.price.cost(prompt, completion, counts["cached_tokens"], counts["cache_write_tokens"])
            self.priced_calls += 1
        else:
            self.unknown_calls += 1
        tokens = counts["total_tokens"] or counts["prompt_tokens"] + counts["completion_tokens"]
        self.tokens += tokens
        self.budget.tokens += tokens
        if usd is not None:
            self.usd += usd
            self.budget.usd += usd
        elif self.needs_cost:
            why = "no price is known for the model: pass --price or --prices" if self.price is None else "no usage"
            raise FatalRunError(
                "a budget is set (--max_cost/--max_task_cost) but a response came without a cost (no usage.cost, no "
                f"{LITELLM_COST_HEADER} header) and {why}"
            )
        if self.budget.max_tokens is not None and not isinstance(usage, dict):
            raise FatalRunError(
                "--max_tokens_total is set but the endpoint reported no token usage for a response, so tokens "
                "cannot be counted"
            )

    def limit(self) -> str | None:
        """Why this task may make no more model calls (its own --max_task_cost, or the run's budget), or None."""
        if self.max_task_cost is not None and self.usd >= self.max_task_cost:
            return f"the task reached --max_task_cost {self.max_task_cost} USD (it cost {_usd(self.usd)})"
        return self.budget.gone()

    def record_fields(self) -> tuple[float | None, str | None]:
        """The record's ``cost`` and ``cost_source``: null when any billed call's cost is unknown, or none was made."""
        if self.unknown_calls or not (self.provider_calls or self.priced_calls):
            return None, None
        if self.provider_calls and self.priced_calls:
            source = "mixed"
        else:
            source = "provider" if self.provider_calls else "price_table"
        return float(self.usd.quantize(COST_QUANTUM)), source


def _usd(value: Decimal | float) -> str:
    """Money as people read it: cents for dollars, more digits for the fractions of a cent cheap calls cost."""
    value = float(value)
    if value >= 1 or value == 0:
        return f"${value:,.2f}"
    whole, _, fraction = f"{value:.8f}".rstrip("0").partition(".")
    return f"${whole}.{fraction:0<2}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


_STATUS_ERRORS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}


def _status_error(openai, response) -> Exception:
    """The SDK's exception for an error answer, made as its client makes it (the class by status, "Error code: N -
    <the provider's message>", the body's "error" object as ``body``), so that _api_message, _is_context_length and
    the fatal/permanent/retried split read it the same as when the SDK sent the request."""
    status = response.status_code
    message = f"Error code: {status}"
    body: object = response.text.strip()
    try:
        body = json.loads(body)
    except (ValueError, RecursionError):
        pass
    else:
        error = body.get("error", body) if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]:
            message += f" - {error['message']}"
    data = body.get("error", body) if isinstance(body, dict) else body
    name = _STATUS_ERRORS.get(status, "InternalServerError" if status >= 500 else "APIStatusError")
    return getattr(openai, name)(message, response=response, body=data)


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


def _connection_failure(exc: BaseException) -> str:
    """What really went wrong under the SDK's APIConnectionError. Its aiohttp transport reports a refused
    connection as APITimeoutError ("Request timed out."), so the cause chain decides, not the class."""
    seen: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(seen) < 10:
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in seen:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (is the server running, and is --base_url right?)"
        if isinstance(cause, socket.gaierror):
            return f"host name does not resolve ({cause.strerror or cause})"
    if any(isinstance(cause, TimeoutError) for cause in seen[1:]) or type(exc).__name__ == "APITimeoutError":
        return "request timed out"
    return f"connection failed: {_short(seen[-1])}"


WAIT_HINT_HEADERS = ("retry-after-ms", "retry-after", "llm_provider-retry-after", "x-ratelimit-reset-requests")
"""Where providers say how long to wait, most precise first: the standard header (seconds or an HTTP date) and
OpenAI's ms variant, LiteLLM's copy of the upstream provider's header, OpenAI's limit-window reset ("6m0s")."""
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(ms|h|m|s)")
_DURATION = re.compile(r"(?:\d+(?:\.\d*)?(?:ms|h|m|s))+")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def provider_wait_hint(headers: object) -> WaitHint | None:
    """How long the provider's headers ask us to wait before the next request, or None when they do not say."""
    for header in WAIT_HINT_HEADERS:
        try:
            value = headers.get(header)
        except AttributeError:
            return None
        if not isinstance(value, str) or not value.strip():
            continue
        seconds = _wait_seconds(value.strip(), milliseconds=header.endswith("-ms"))
        if seconds is not None:
            return WaitHint(seconds, header)
    return None


def _wait_seconds(value: str, milliseconds: bool = False) -> float | None:
    """Seconds from "20", "0.5", "150" (ms), "6m0s", "1h2m3.5s", "60ms" or an HTTP date; None for nonsense."""
    try:
        seconds = float(value) / (1000 if milliseconds else 1)
    except ValueError:
        seconds = None
        if _DURATION.fullmatch(value):
            seconds = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(value))
        else:
            try:
                seconds = parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError, IndexError, OverflowError):
                return None
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


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
    """Only ever appended to: ``encoded`` holds the JSON of the first ones."""
    encoded: list[bytes] = field(default_factory=list)
    """The JSON of the messages the model was sent, in order (see ModelClient._request_body)."""
    api_calls: int = 0
    usage: dict = field(default_factory=trajectory.empty_usage)
    tool_stats: dict = field(default_factory=trajectory.empty_tool_stats)
    completed: bool = False
    exit_reason: str = "max_iterations"
    error: str | None = None
    cost: TaskCost = field(default_factory=TaskCost)
    """What its billed model calls cost (the record's cost and cost_source), counted against the budgets."""
    tokens: trajectory.TokenLog | None = None
    """With --return_tokens: the ids of every call, each call's new ones only."""


@dataclass
class EarlyFailureWatch:
    """Behind a LiteLLM proxy a wrong key or an unknown model is an HTTP 400 ("No connected db.", "Invalid model
    name passed in model=..."), not a 401/404: every task would end in api_error within milliseconds. When the
    first ``window`` tasks to end all end in the same permanent error, the rest would too: the run stops."""

    window: int = 3
    endings: list[str | None] = field(default_factory=list)
    """Per task that ended, in order: its permanent API error, or None for any other ending."""

    def observe(self, permanent_error: str | None) -> str | None:
        """Note how a task ended; returns the line to stop the run with, or None to go on."""
        if len(self.endings) >= self.window:
            return None
        self.endings.append(permanent_error)
        if len(self.endings) == self.window and permanent_error is not None and len(set(self.endings)) == 1:
            return f"the first {self.window} tasks all failed the same way, so every task would: {permanent_error}"
        return None


@dataclass
class Activity:
    """What the run's tasks are doing right now, counted where it happens (a task, a model call, a command) and
    read by the progress display and the stall warning: a run whose endpoint hangs is never silent."""

    tasks: int = 0
    """Tasks running (their environment starting, the agent, the verifier)."""
    commands: int = 0
    """Commands and verifiers running."""
    steps: int = 0
    """Model answers so far in this run."""
    tokens: int = 0
    """Their total_tokens so far."""
    waiting: dict[int, float] = field(default_factory=dict)
    """Model calls in flight (retries included): id -> when it began (time.monotonic)."""
    last_answer: float = field(default_factory=time.monotonic)
    """When the model last answered (the run's start before its first answer)."""
    stall_warned: bool = False
    """The stall warning was given; an answer re-arms it."""
    _ids: Iterator[int] = field(default_factory=itertools.count, repr=False)

    @contextlib.contextmanager
    def task(self) -> Iterator[None]:
        self.tasks += 1
        try:
            yield
        finally:
            self.tasks -= 1

    @contextlib.contextmanager
    def command(self) -> Iterator[None]:
        self.commands += 1
        try:
            yield
        finally:
            self.commands -= 1

    @contextlib.contextmanager
    def model_call(self) -> Iterator[None]:
        call = next(self._ids)
        self.waiting[call] = time.monotonic()
        try:
            yield
        finally:
            del self.waiting[call]

    def answered(self, tokens: int) -> None:
        self.steps += 1
        self.tokens += tokens
        self.last_answer = time.monotonic()
        self.stall_warned = False

    def longest_wait(self, now: float) -> float:
        """Seconds the oldest model call in flight has waited (0 when none is)."""
        return now - min(self.waiting.values()) if self.waiting else 0.0

    def silent_for(self, now: float) -> float:
        """Seconds the model has left every request unanswered: since its last answer or since the oldest call in
        flight began, whichever is later (0 when no call is in flight: commands running is not a hung model)."""
        if not self.waiting:
            return 0.0
        return now - max(self.last_answer, min(self.waiting.values()))


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
    on_model_answer: Callable[[], None] | None = None
    """Called when a model answers (the run works); what that means is the batch's to decide."""

    early_failures: EarlyFailureWatch = field(default_factory=EarlyFailureWatch)
    """Stops the run when its first tasks all end in the same permanent API error."""
    images: "environments.ImageSupply | None" = None
    """Pulls the tasks' images ahead of them (backends with images only)."""
    budget: RunBudget = field(default_factory=RunBudget)
    """--max_cost and --max_tokens_total: what the output has cost, running tasks' calls included."""
    activity: Activity = field(default_factory=Activity)
    """What the tasks are doing now, for the progress display and the stall warning."""
    baselines: dict = field(default_factory=dict)
    """task_id -> the future of its --verify_baseline result (one per prompt, whatever its samples)."""


VERIFIED_ENDINGS = frozenset({"completed", "max_iterations", "cost_limit"})
"""The endings after which a task's verifier runs: the agent stopped on its own or at a limit of the run's
(iterations, cost). After api_error, env_error, timeout or interrupted the verifier does not run and the record's
verification is null."""


@dataclass
class Verification:
    """What a task's verifier found; the record's ``verification`` object."""

    passed: bool
    exit_code: int | None
    """The verifier's exit status (124 when it ran out of --verify_timeout); None when it could not run."""
    output: str
    """Its merged output, bounded and redacted like any command's."""
    duration_s: float
    error: str | None = None
    """Why it could not run (sandbox gone, backend failure): infrastructure, so the sample runs again on resume."""
    baseline: dict | None = None
    """With --verify_baseline: the same verifier run in a fresh sandbox before any agent worked on the prompt
    (``{"passed", "exit_code", "duration_s", "error"}``). A prompt whose baseline passed, or could not judge,
    teaches nothing."""


UNJUDGED_EXIT_CODES = {
    4: "pytest's usage error (a test file or option it was given does not exist)",
    5: "pytest collected no tests",
    126: "a command could not be executed",
    127: "a command was not found",
}
"""Verifier exit codes that judge the verifier, not the agent's work: the verifier could not judge (reward null,
rerun on resume) unless --verify_failure_codes names the code as a real failure of its tests."""
VERIFY_PLACES = ("sandbox", "fresh")
GIT_WITHOUT_HOOKS = (
    "export GIT_CONFIG_COUNT=2 GIT_CONFIG_KEY_0=core.hooksPath GIT_CONFIG_VALUE_0=/dev/null "
    "GIT_CONFIG_KEY_1=core.fsmonitor GIT_CONFIG_VALUE_1=false"
)
"""Put before every git the runner or a verifier runs: config given this way outranks the repository's own, so no
hook (post-checkout...) and no fsmonitor command the agent planted in .git runs."""
PATCH_LIMIT_BYTES = 1_000_000
"""The most of a patch kept (and applied); a longer one is cut there, with a marker saying so."""
PATCH_CHUNK_CHARS = 32_000
"""Base64 characters per command when a patch is written into a sandbox (a Modal exec's argv is at most 64 KiB)."""
GIT_TIMEOUT = 120.0


def verifier_for(prompt: Prompt, config: RunConfig) -> str | None:
    """The one place that decides a task's verifier: the row's own (or --verify_template's), else --verify."""
    return prompt.verify if prompt.verify is not None else config.verify


def prompt_hash_for(prompt: Prompt, config: RunConfig) -> str:
    """The record's ``metadata.prompt_hash``: the prompt's text, image, cwd and verifier as this run resolves them."""
    return trajectory.prompt_hash(
        prompt.text,
        environments.task_image(config.env, prompt.image),
        prompt.cwd or config.env.cwd,
        verifier_for(prompt, config),
    )


def index_source_tag(prompts: "PromptFile", config: RunConfig) -> int:
    """The tag of a prompts file's records in the output's resume index: the file as it is, read with these
    templates, plus what :func:`prompt_hash_for` takes from the run rather than the row (--verify, the default
    image, --cwd). An entry written under the tag was written for the prompt its row gives now, so resume places
    it without parsing its record or comparing its prompt_hash."""
    settings = repr((config.verify, environments.task_image(config.env), config.env.cwd))
    return trajectory.stable_tag(f"{prompts.source_tag}\0{settings}")


async def run_verifier(
    env: environments.Environment,
    command: str,
    timeout: float,
    start_cwd: str | None,
    failure_codes: tuple[int, ...] = (),
) -> Verification:
    """Run ``command`` in the task's own sandbox, in the directory the task started in, whatever directory the
    agent's last command left it in (the verifier judges the task, not where the agent wandered). Git hooks never
    run in it; an exit code of UNJUDGED_EXIT_CODES not in ``failure_codes`` means it could not judge."""
    if start_cwd is not None:
        env.cwd = start_cwd
    started = time.monotonic()
    try:
        result = await env.execute(f"{GIT_WITHOUT_HOOKS}\n{command}", timeout)
    except EnvError as exc:
        return Verification(False, None, "", time.monotonic() - started, str(exc))
    duration = time.monotonic() - started
    if result.error is not None and result.exit_code != environments.TIMEOUT_EXIT_CODE:
        # Could not be run at all (bash would not start, the backend failed): says nothing about the model.
        return Verification(False, None, result.output, duration, result.error)
    if result.exit_code in UNJUDGED_EXIT_CODES and result.exit_code not in failure_codes:
        code = result.exit_code
        why = (
            f"the verifier could not judge: exit {code}, {UNJUDGED_EXIT_CODES[code]} "
            f"(if exit {code} is a real failure of your tests, give --verify_failure_codes {code})"
        )
        return Verification(False, code, result.output, duration, why)
    # A verifier that ran out of time ran and failed (exit 124): the agent left something that does not pass.
    return Verification(result.exit_code == 0 and result.error is None, result.exit_code, result.output, duration)


@dataclass
class CapturedPatch:
    """The agent's work as ``git diff --binary`` from the tree as the task found it (RepositoryStart.tree)."""

    data: bytes
    """The diff's bytes, at most PATCH_LIMIT_BYTES."""
    size: int
    """The whole diff's size in bytes."""
    top: str
    """The repository's top directory in the task's sandbox."""
    start_subdir: str = "."
    """The task's starting directory relative to ``top``."""

    @property
    def complete(self) -> bool:
        return len(self.data) >= self.size

    def text(self, secrets: tuple[str, ...]) -> str:
        """The record's ``patch``: UTF-8 (an undecodable byte becomes U+FFFD), redacted, marked where cut."""
        text = self.data.decode("utf-8", "replace")
        if not self.complete:
            text += f"\n[mini-swe-runner: patch cut at {len(self.data)} of {self.size} bytes]\n"
        return redact(text, secrets)


def test_patch_paths(prompt: Prompt) -> list[str]:
    """The files a row's ``test_patch`` (SWE-bench) touches: the verifier restores them, so the agent's patch
    never carries them."""
    test_patch = prompt.fields.get("test_patch")
    if not isinstance(test_patch, str):
        return []
    found = re.findall(r"^(?:---|\+\+\+) [ab]/(.+?)\t?$", test_patch, flags=re.MULTILINE)
    return sorted(set(found))


@dataclass(frozen=True)
class RepositoryStart:
    """Where the task's repository stood before the agent ran."""

    commit: str
    """HEAD then. The patch is not taken from it but from ``tree``, so a commit the agent makes is in the patch."""
    tree: str
    """The whole work tree then, uncommitted and untracked files included: the patch's base, so that an image
    whose tree was not clean (a build's leftovers) still gets a patch that applies to a fresh sandbox of it."""
    snapshot: str
    """A commit of ``tree`` on ``commit`` (unreferenced): how a fresh directory gets that state (local, bwrap, ssh)."""


async def repository_start(env: environments.Environment, start_cwd: str | None) -> RepositoryStart | None:
    """The task's repository before the agent ran; None when its starting directory is in no repository with a
    commit (or git is missing). New files are added to a copy of the index: the repository's own is untouched."""
    env.cwd = start_cwd
    script = f"""{GIT_WITHOUT_HOOKS}
commit=$(git rev-parse --verify -q 'HEAD^{{commit}}') || exit 1
cd "$(git rev-parse --show-toplevel)" || exit 1
index=$(mktemp) || exit 1
trap 'rm -f "$index"' EXIT
cp "$(git rev-parse --git-path index)" "$index" 2>/dev/null || GIT_INDEX_FILE=$index git read-tree "$commit" || exit 1
GIT_INDEX_FILE=$index git add -A . >/dev/null || exit 1
tree=$(GIT_INDEX_FILE=$index git write-tree) || exit 1
export GIT_AUTHOR_NAME=mini-swe-runner GIT_AUTHOR_EMAIL=runner@localhost
export GIT_COMMITTER_NAME=mini-swe-runner GIT_COMMITTER_EMAIL=runner@localhost
snapshot=$(git commit-tree "$tree" -p "$commit" -m "mini-swe-runner: the task's start") || exit 1
echo "$commit $tree $snapshot"
"""
    result = await env.execute(script, GIT_TIMEOUT)
    env.cwd = start_cwd  # the script's cd is not the agent's
    found = result.output.split()
    if result.exit_code != 0 or len(found) != 3 or not all(re.fullmatch(r"[0-9a-f]{40,64}", sha) for sha in found):
        return None
    return RepositoryStart(*found)


async def capture_patch(
    env: environments.Environment, start_cwd: str | None, start: RepositoryStart, excluded: list[str]
) -> CapturedPatch | str:
    """``git diff --binary`` of the whole work tree (new files included) from the task's start, ``excluded``
    paths left out; the reason as a string when git failed. The repository's index is left as the agent left it:
    new files are added to a copy of it."""
    pathspecs = " ".join(shlex.quote(f":(exclude,literal){path}") for path in excluded)
    script = f"""{GIT_WITHOUT_HOOKS}
subdir=$(git rev-parse --show-prefix) || exit 90
cd "$(git rev-parse --show-toplevel)" || exit 90
index=$(mktemp) || exit 91
trap 'rm -f "$index" "$index.diff"' EXIT
cp "$(git rev-parse --git-path index)" "$index" 2>/dev/null \
  || GIT_INDEX_FILE=$index git read-tree {start.tree} || exit 92
GIT_INDEX_FILE=$index git add -A . >/dev/null || exit 93
GIT_INDEX_FILE=$index git diff --cached --binary --full-index --no-color --no-ext-diff --no-textconv --no-renames \
  {start.tree} -- . {pathspecs} > "$index.diff" || exit 94
pwd
printf '%s\\n' "${{subdir:-.}}"
wc -c < "$index.diff"
head -c {PATCH_LIMIT_BYTES} "$index.diff" | base64
"""
    env.cwd = start_cwd
    result = await env.execute(script, GIT_TIMEOUT, output_limit=2 * PATCH_LIMIT_BYTES + 4096)
    lines = result.output.splitlines()
    if result.exit_code != 0 or result.error is not None or len(lines) < 3 or not lines[2].strip().isdigit():
        return f"git could not take the patch (exit {result.exit_code}): {_short(result.output)}"
    try:
        data = base64.b64decode("".join(lines[3:]), validate=True)
    except ValueError:
        return "the patch came back garbled"
    return CapturedPatch(data, int(lines[2]), lines[0], lines[1].rstrip("/") or ".")


async def apply_patch(env: environments.Environment, patch: CapturedPatch) -> str | None:
    """Write ``patch`` into the sandbox (the repository's top is env's cwd) and `git apply` it; None when it
    applied, else what went wrong (the agent's patch does not apply: it fails)."""
    if not patch.data:
        return None
    if not patch.complete:
        return f"the agent's patch is over {PATCH_LIMIT_BYTES} bytes ({patch.size}): not applied"
    made = await env.execute("mktemp", GIT_TIMEOUT)
    path = made.output.strip()
    if made.exit_code != 0 or not path.startswith("/"):
        raise EnvError(f"could not make a file for the patch in the fresh sandbox: {_short(made.output)}")
    encoded = base64.b64encode(patch.data).decode()
    for start in range(0, len(encoded), PATCH_CHUNK_CHARS):
        wrote = await env.execute(f"printf %s {encoded[start : start + PATCH_CHUNK_CHARS]} >> {path}", GIT_TIMEOUT)
        if wrote.exit_code != 0:
            raise EnvError(f"could not write the patch into the fresh sandbox: {_short(wrote.output)}")
    applied = await env.execute(
        f"{GIT_WITHOUT_HOOKS}\nbase64 -d {path} > {path}.diff && git apply --whitespace=nowarn {path}.diff; "
        f"status=$?; rm -f {path} {path}.diff; exit $status",
        GIT_TIMEOUT,
    )
    if applied.exit_code != 0:
        return f"the agent's patch does not apply to the task's starting tree in a fresh sandbox:\n{applied.output}"
    return None


async def verify_in_fresh_sandbox(
    prompt: Prompt,
    ctx: RunContext,
    image: str | None,
    command: str,
    patch: CapturedPatch | None = None,
    start: RepositoryStart | None = None,
) -> Verification:
    """The verifier in a new sandbox of the task's image with only ``patch`` applied, as the SWE-bench harness
    judges: hooks, PATH shims, commits and processes the agent left cannot reach it. A backend without an image
    (local, bwrap, ssh) gets a fresh directory holding the repository as the task found it (``start``) instead.
    Without a patch (the baseline) it runs where the task would start."""
    config = ctx.config
    settings, cwd = config.env, prompt.cwd
    imageless = not environments.BACKENDS[settings.env_type].uses_image
    if patch is not None and imageless:  # the same cwd would be the agent's own directory
        settings, cwd = dataclasses.replace(settings, cwd=None), None
    env = environments.create_environment(settings, image=image, cwd=cwd, task_id=prompt.task_id)
    ctx.live_environments.add(env)
    started = time.monotonic()
    try:
        await env.start()
        start_cwd = env.cwd
        if patch is not None:
            if imageless:
                # Fetched, never copied: the transport checks every object's hash, so objects the agent rewrote in
                # its .git cannot pass for the starting commit's. HEAD is the starting commit, the tree as found.
                upload_pack = shlex.quote("git -c uploadpack.allowAnySHA1InWant=true upload-pack")
                clone = await env.execute(
                    f"{GIT_WITHOUT_HOOKS}\ngit init -q . && git fetch -q --no-tags --upload-pack={upload_pack} -- "
                    f"{shlex.quote(patch.top)} {start.snapshot} && "
                    f"git -c advice.detachedHead=false checkout -q {start.snapshot} && "
                    f"git reset -q --soft {start.commit} && git reset -q",
                    GIT_TIMEOUT,
                )
                if clone.exit_code != 0:
                    raise EnvError(f"could not clone {patch.top} for a fresh verification: {_short(clone.output)}")
                start_cwd = os.path.join(start_cwd, patch.start_subdir)
            else:
                env.cwd = patch.top
            failure = await apply_patch(env, patch)
            if failure is not None:
                return Verification(False, None, failure, time.monotonic() - started)
        return await run_verifier(env, command, config.verify_timeout, start_cwd, config.verify_failure_codes)
    except EnvError as exc:
        return Verification(False, None, "", time.monotonic() - started, f"fresh sandbox: {exc}")
    finally:
        await _close_quietly(env, prompt.task_id)
        ctx.live_environments.discard(env)


async def baseline_of(prompt: Prompt, ctx: RunContext, image: str | None, command: str) -> dict:
    """The prompt's verifier run once, in a fresh sandbox, before any agent worked on it; shared by its samples."""
    known = ctx.baselines.get(prompt.task_id)
    if known is None:
        known = ctx.baselines[prompt.task_id] = asyncio.ensure_future(
            verify_in_fresh_sandbox(prompt, ctx, image, command)
        )
    result = await asyncio.shield(known)
    log.info("[%s] baseline: %s", prompt.task_id, result.error or f"exit {result.exit_code}")
    return {
        "passed": result.passed,
        "exit_code": result.exit_code,
        "duration_s": result.duration_s,
        "error": result.error,
    }


@dataclass
class Handover:
    """How a worker's next sample overlaps the end of its previous one (see WorkerPool.worker): the next sample's
    first model call goes out while the previous sample's verifier, close and record finish, and its environment
    starts once the previous one's is gone, so a worker never holds two sandboxes."""

    agent_ended: asyncio.Future
    """Set once this sample's agent is done (or the task ended before it ran): the worker may take its next."""
    sandbox_gone: asyncio.Future
    """Set once every sandbox of this sample is closed."""
    previous_gone: asyncio.Future | None = None
    """The worker's previous sample's ``sandbox_gone``: waited for before this sample makes a sandbox."""

    async def sandbox_free(self) -> None:
        if self.previous_gone is not None:
            await asyncio.wait((self.previous_gone,))  # a cancelled wait leaves the previous sample's future alone


async def run_task(prompt: Prompt, ctx: RunContext, sample_index: int = 0, handover: Handover | None = None) -> dict:
    """Run one sample of a prompt to its end (then its verifier) and return its record. Only FatalRunError escapes
    (and cancellation while the run is not stopping): anything else, a bug of ours included, ends as this task's
    record, never the batch's end."""
    config = ctx.config
    state = TaskState(
        messages=[{"role": "system", "content": ctx.system_prompt}, {"role": "user", "content": prompt.text}],
        cost=TaskCost(
            ctx.budget,
            config.price,
            config.max_task_cost,
            needs_cost=config.max_cost is not None or config.max_task_cost is not None,
        ),
    )
    image = environments.task_image(config.env, prompt.image)  # resolved once: the record's and the backend's
    verify_command = verifier_for(prompt, config)
    verification: Verification | None = None
    fresh = verify_command is not None and config.verify_in == "fresh"
    patch: CapturedPatch | str | None = None
    baseline = None
    started_wall, started = datetime.now(UTC), time.monotonic()
    env = None
    starting: asyncio.Future | None = None
    permanent_error = None
    got_image = False
    try:
        if ctx.images is not None:
            # Before the task's clocks start: waiting for a pull is not the agent's time.
            await ctx.images.ready(image)
            got_image = True
            started_wall, started = datetime.now(UTC), time.monotonic()
        if verify_command is not None and config.verify_baseline:
            if handover is not None:
                await handover.sandbox_free()
            baseline = await baseline_of(prompt, ctx, image, verify_command)
        async with asyncio.timeout(config.task_timeout) as deadline:
            env = environments.create_environment(config.env, image=image, cwd=prompt.cwd, task_id=prompt.task_id)
            ctx.live_environments.add(env)
            # The first model call needs only the prompt: the environment starts while it is in flight, so its
            # start-up hides behind the model's latency instead of adding to it (bench/bench_samples.py).
            starting = asyncio.ensure_future(
                _start_environment(env, config.collect_patch or fresh, handover and handover.previous_gone)
            )
            await _agent_loop(prompt, state, env, ctx, TaskClock(deadline), starting)
            start_cwd, repository = await starting
        if handover is not None:
            handover.agent_ended.set_result(None)
        # Outside --task_timeout: the verifier has its own bound, and a slow verifier is not a slow agent.
        with ctx.activity.command():
            verification, patch = await _after_agent(
                prompt, ctx, env, state, image, start_cwd, repository, verify_command
            )
        if verification is not None:
            verification.baseline = baseline
            log.info(
                "[%s#%d] verify: %s",
                prompt.task_id,
                sample_index,
                verification.error or f"exit {verification.exit_code}",
            )
    except TimeoutError:
        state.exit_reason, state.error = "timeout", f"task exceeded --task_timeout {config.task_timeout:g} s"
    except asyncio.CancelledError:
        if not ctx.stopping:
            raise
        state.exit_reason, state.error = "interrupted", "the run was interrupted"
        verification = None  # a verifier cut short proves nothing; the sample runs again on resume
    except EnvError as exc:
        state.exit_reason, state.error = "env_error", str(exc)
    except ModelCallError as exc:
        state.exit_reason, state.error = exc.exit_reason, str(exc)
        permanent_error = str(exc) if exc.permanent else None
    except FatalRunError:
        raise
    except Exception as exc:  # a bug of ours must not sink the batch; the record says what happened
        state.exit_reason, state.error = "env_error", _internal_error(prompt, exc)
        verification = None
    finally:
        if starting is not None:  # a start still going (the model call failed first, a stop) ends before the close
            await _start_given_up(starting)
        if env is not None:
            await _close_quietly(env, prompt.task_id)
            ctx.live_environments.discard(env)
        if handover is not None:
            for moment in (handover.agent_ended, handover.sandbox_gone):
                if not moment.done():
                    moment.set_result(None)
        if ctx.images is not None:  # after the sandbox is gone: the image may be removed now
            ctx.images.release(image, used=got_image)
    stop = ctx.early_failures.observe(permanent_error)
    if stop is not None:
        raise FatalRunError(stop)
    secrets = config.env.secret_values
    if verification is not None and verification.error is not None:  # its output was redacted where it arose
        verification.error = redact(verification.error, secrets)
    try:
        _answer_dangling_tool_calls(state)
        turns = trajectory.to_hermes(_redacted_model_text(state.messages[1:], secrets), ctx.tools)
    except Exception as exc:  # the same net around the conversion: the task keeps a record that says what happened
        state.completed, state.exit_reason, state.error = False, "env_error", _internal_error(prompt, exc)
        turns = _bare_conversation(prompt, ctx)
    cost, cost_source = state.cost.record_fields()
    return trajectory.build_record(
        prompt_index=prompt.index,
        task_id=prompt.task_id,
        sample_index=sample_index,
        conversations=turns,
        completed=state.completed,
        exit_reason=state.exit_reason,
        api_calls=state.api_calls,
        tool_stats=state.tool_stats,
        usage=state.usage,
        duration_s=time.monotonic() - started,
        error=None if state.error is None else redact(state.error, secrets),
        verification=None if verification is None else dataclasses.asdict(verification),
        cost=cost,
        cost_source=cost_source,
        tokens=None if state.tokens is None else state.tokens.record(),
        patch=patch.text(secrets) if isinstance(patch, CapturedPatch) else None,
        metadata={
            "model": config.model,
            "env_type": config.env.env_type,
            "image": image,
            "timestamp": started_wall.isoformat(timespec="seconds"),
            "sampling": sampling_settings(config),
            "config_hash": ctx.config_hash,
            "prompt_hash": prompt_hash_for(prompt, config),
            "prompt_fields": prompt.fields,
        },
    )


async def _after_agent(
    prompt: Prompt,
    ctx: RunContext,
    env: environments.Environment,
    state: TaskState,
    image: str | None,
    start_cwd: str | None,
    repository: RepositoryStart | None,
    verify_command: str | None,
) -> tuple[Verification | None, CapturedPatch | str | None]:
    """Once the agent ended: end its processes (before a verifier in its sandbox), take its patch (before any
    verifier touches the tree), then verify, in its sandbox or in a fresh one."""
    config = ctx.config
    verifying = verify_command is not None and state.exit_reason in VERIFIED_ENDINGS
    fresh = verifying and config.verify_in == "fresh"
    still_running = None
    if verifying and not fresh:
        try:
            await env.end_processes()
        except EnvError as exc:
            still_running = f"could not end the agent's processes, so the verifier did not run: {exc}"
    patch = None
    if repository is not None:
        patch = await capture_patch(env, start_cwd, repository, test_patch_paths(prompt))
        if isinstance(patch, str):
            log.warning("[%s] %s", prompt.task_id, patch)
    if not verifying:
        return None, patch
    if still_running is not None:
        return Verification(False, None, "", 0.0, still_running), patch
    if not fresh:
        return await run_verifier(
            env, verify_command, config.verify_timeout, start_cwd, config.verify_failure_codes
        ), patch
    await _close_quietly(env, prompt.task_id)  # the agent's sandbox goes first: nothing of it outlives the agent
    ctx.live_environments.discard(env)
    if repository is None:
        why = "--verify_in fresh needs a git repository (with a commit) in the task's starting directory"
        return Verification(False, None, "", 0.0, why), patch
    if isinstance(patch, str):  # git failed on the agent's tree: what the agent left is not a patch
        return Verification(False, None, patch, 0.0), patch
    return await verify_in_fresh_sandbox(prompt, ctx, image, verify_command, patch, repository), patch


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


def _internal_error(prompt: Prompt, exc: Exception) -> str:
    """The record's error for a bug of ours; one log line (the traceback only with --verbose)."""
    error = f"internal error: {type(exc).__name__}: {_short(exc)}"
    log.error("[%s] %s", prompt.task_id, error)
    log.debug("[%s] traceback of the internal error", prompt.task_id, exc_info=exc)
    return error


def _bare_conversation(prompt: Prompt, ctx: RunContext) -> list[dict]:
    """The system and human turns alone, for a record whose conversation could not be converted."""
    try:
        return trajectory.to_hermes([{"role": "user", "content": prompt.text}], ctx.tools)
    except Exception:
        return [{"from": "system", "value": ""}, {"from": "human", "value": prompt.text}]


async def _start_environment(
    env: environments.Environment, want_repository: bool, previous_gone: asyncio.Future | None = None
) -> tuple[str | None, RepositoryStart | None]:
    """Start the task's environment (once ``previous_gone``: the worker's previous sandbox is closed) and note where
    its repository stood: (starting cwd, repository start)."""
    # One pass of the event loop first: the first model request, made right after this task was created, is sent
    # before the start's own work (forking, a thread for the engine) competes with it for the CPU.
    await asyncio.sleep(0)
    if previous_gone is not None:
        await asyncio.wait((previous_gone,))  # not cancelled with this start: it is the previous sample's
    await env.start()
    start_cwd = getattr(env, "cwd", None)
    return start_cwd, await repository_start(env, start_cwd) if want_repository else None


async def _start_given_up(starting: asyncio.Future) -> None:
    """Cancel an environment start the task no longer waits for and let it end, so the close that follows finds
    what the start made (a backend's start is cancel-safe: see Environment.start). Awaited again when cancelled,
    as _close_quietly is."""
    starting.cancel()
    while not starting.done():
        try:
            await asyncio.wait((starting,))
        except asyncio.CancelledError:
            continue
    if not starting.cancelled():
        starting.exception()  # retrieved: the task has ended another way, and its record says how


async def _first_answer(call: Awaitable[ModelTurn], starting: asyncio.Future) -> ModelTurn:
    """The model's answer to a call made while the environment starts. A start that fails first cancels the call
    (the conversation cannot go on without a sandbox) and its error ends the task."""
    answer = asyncio.ensure_future(call)
    try:
        await asyncio.wait((answer, starting), return_when=asyncio.FIRST_COMPLETED)
        if not answer.done() and not starting.cancelled() and starting.exception() is not None:
            starting.result()  # raises the start's error
        return await answer
    finally:
        if not answer.done():
            answer.cancel()
            await asyncio.wait((answer,))
        elif not answer.cancelled():
            answer.exception()  # retrieved: the start's error is the one the task ends with


async def _close_quietly(env: environments.Environment, task_id: str) -> None:
    # Shielded, and awaited again when cancelled: a run stopping (a signal, a fatal error) while a task closes its
    # environment must neither leave the container or sandbox behind nor warn about a close that did happen.
    closing = asyncio.ensure_future(asyncio.wait_for(env.close(), 60))
    while not closing.done():
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            continue
        except Exception:
            break
    error = None if closing.cancelled() else closing.exception()
    if error is not None:
        log.warning("[%s] could not clean up its environment: %s", task_id, _short(error) or type(error).__name__)


async def _agent_loop(
    prompt: Prompt,
    state: TaskState,
    env: environments.Environment,
    ctx: RunContext,
    clock: TaskClock | None = None,
    starting: asyncio.Future | None = None,
) -> None:
    """``starting``: the environment's start, still going while the first calls are made; the first command waits
    for it, and its failure ends the task (as env_error) with the turns the model gave so far."""
    config = ctx.config
    while True:
        if state.api_calls >= config.max_iterations:
            state.exit_reason = "max_iterations"
            return
        if (limit := state.cost.limit()) is not None:
            state.exit_reason, state.error = "cost_limit", limit
            return
        state.api_calls += 1  # counted when made: the call that finally fails is a call made too
        if config.return_tokens and state.tokens is None:
            state.tokens = trajectory.TokenLog()
        with ctx.activity.model_call():
            request = ctx.model.complete(
                state.messages, ctx.tools, clock, state.encoded, cost=state.cost, tokens=state.tokens
            )
            if starting is not None and not starting.done():
                request = _first_answer(request, starting)
            turn = await request
        ctx.activity.answered(turn.usage["total_tokens"])
        if ctx.on_model_answer is not None:
            ctx.on_model_answer()
        for key, value in turn.usage.items():
            state.usage[key] += value
        if turn.tokens is not None and state.tokens is not None:
            state.tokens.add(turn.tokens, turn.tokens_api or "")
        state.messages.append(turn.message)
        calls = turn.message.get("tool_calls") or []
        if turn.message.get("content"):
            log.info("[%s] model: %s", prompt.task_id, _short(turn.message["content"], 200))
        if not calls:
            if turn.finish_reason == "length" and not (turn.message.get("content") or "").strip():
                # Cut off before it said anything: not an answer, and not training data for one.
                state.exit_reason = "context_length"
                state.error = (
                    'the model was cut off at its token limit (finish_reason "length") before any text or tool call; '
                    "raise --max_tokens if it is set, else the conversation has filled the context"
                )
                return
            state.completed, state.exit_reason = True, "completed"
            return
        if starting is not None:
            await starting  # the environment's start (once) and any error of it
        finished = False
        for call in calls:
            with ctx.activity.command():
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
    if "\x00" in command:
        return ExecResult("", -1, "the command contains a NUL character, which no shell can run; leave it out")
    command = _encodable(command)  # a lone surrogate from a \ud800 escape cannot reach bash as it is
    timeout = config.command_timeout
    requested = arguments.get("timeout")
    # NaN is not > 0; infinity and 10**400 (an int no float holds) are capped before float() sees them.
    if isinstance(requested, (int, float)) and not isinstance(requested, bool) and requested > 0:
        timeout = float(min(requested, config.max_command_timeout))
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
        if call.get("id") not in answered:  # ids are strings, unique in their turn (ModelClient._turn)
            result = ExecResult("", -1, f"not run: the task ended ({state.exit_reason})")
            state.messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result.to_dict())})


# ---------------------------------------------------------------------------------------------------------------
# The batch: workers, resume, signals, progress, summary
# ---------------------------------------------------------------------------------------------------------------


class Progress:
    """done/total, completed, failed (and passed, when verifying), rate and ETA on stderr, and what is in flight
    (tasks, model calls waiting and for how long, commands, steps and tokens so far): a bar on a terminal, plain
    periodic lines otherwise. ``tick()`` (every second) moves it between task ends: a long task is not silence."""

    TICK = 1.0
    """Seconds between refreshes of the bar (and checks for a plain line being due)."""

    def __init__(
        self,
        total: int,
        quiet: bool,
        stream=None,
        interval: float = 10.0,
        verifying: bool = False,
        started: float | None = None,
        activity: Activity | None = None,
        images: "environments.ImageSupply | None" = None,
    ):
        self.total, self.quiet, self.stream, self.interval = total, quiet, stream or sys.stderr, interval
        self.verifying = verifying
        self.activity = activity
        self.images = images
        self.done = self.completed = self.passed = 0
        self.cost: float | None = None
        """What the records written so far cost (None while none has a known cost)."""
        # The run's start, as the summary counts it: the rate shown here is the summary's (tasks / wall time).
        self.started = time.monotonic() if started is None else started
        self.last_line = time.monotonic()
        self.bar = None
        if not quiet and total and self.stream.isatty() and _terminal_columns(self.stream) != 0:
            from tqdm import tqdm

            # tqdm's own rate (smoothed, per second, from the bar's creation) would not be the summary's: ours.
            self.bar = tqdm(
                total=total,
                file=self.stream,
                unit="task",
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
            )

    def update(self, record: dict) -> None:
        self.done += 1
        self.completed += bool(record["completed"])
        self.passed += record.get("reward") == 1.0
        if record.get("cost") is not None:
            self.cost = (self.cost or 0.0) + record["cost"]
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(self._bar_postfix(), refresh=False)
            self.bar.update(1)
        elif time.monotonic() - self.last_line >= self.interval or self.done == self.total:
            self._print_line()

    def tick(self) -> None:
        """Between task ends: refresh the bar, or print a plain line when one is due."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(self._bar_postfix(), refresh=False)
            self.bar.refresh()
        elif time.monotonic() - self.last_line >= self.interval:
            self._print_line()

    def not_needed(self, count: int) -> None:
        """Samples --until_passed made unnecessary leave the total."""
        if not count:
            return
        self.total -= count
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def _print_line(self) -> None:
        self.last_line = time.monotonic()
        print(self.line(), file=self.stream, flush=True)

    def _rate_and_eta(self) -> tuple[str, str]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed * 60  # as summarize() computes tasks_per_minute
        eta = (self.total - self.done) / (self.done / elapsed) if self.done else float("nan")
        return f"{rate:.1f} tasks/min", "?" if eta != eta else f"{eta:.0f}s"

    def in_flight(self) -> str:
        """What is running now: "3 running (2 waiting on the model, longest 35s; 1 command); 7 steps, 840 tokens"."""
        activity = self.activity
        if activity is None:
            return ""
        parts = []
        if activity.waiting:
            parts.append(
                f"{len(activity.waiting)} waiting on the model, longest {activity.longest_wait(time.monotonic()):.0f}s"
            )
        if activity.commands:
            parts.append(_plural(activity.commands, "command"))
        detail = f" ({'; '.join(parts)})" if parts else ""
        return f"{activity.tasks} running{detail}; {_plural(activity.steps, 'step')}, {activity.tokens} tokens"

    def line(self) -> str:
        rate, eta = self._rate_and_eta()
        passed = f", {self.passed} passed" if self.verifying else ""
        flight = self.in_flight()
        return (
            f"progress: {self.done}/{self.total} done, {self.completed} completed, "
            f"{self.done - self.completed} failed{passed}{self._spent()}, {rate}, ETA {eta}"
            + (f"; {flight}" if flight else "")
            + self._images()
        )

    def _bar_postfix(self) -> str:
        rate, eta = self._rate_and_eta()
        counts = f"completed={self.completed}, failed={self.done - self.completed}"
        if self.verifying:
            counts += f", passed={self.passed}"
        flight = self.in_flight()
        return f"{counts}{self._spent()}, {rate}, ETA {eta}" + (f"; {flight}" if flight else "") + self._images()

    def _spent(self) -> str:
        return "" if self.cost is None else f", {_usd(self.cost)} spent"

    def _images(self) -> str:
        return "" if self.images is None else f"; images {self.images_text()}"

    def images_text(self) -> str:
        counts = self.images.counts()
        text = f"{counts['ready']}/{counts['images']} ready"
        if counts["pulling"]:
            text += f", {counts['pulling']} pulling"
        if counts["failed"]:
            text += f", {counts['failed']} failed"
        return text + f", {counts['bytes'] / 1e6:.0f} MB pulled"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _terminal_columns(stream) -> int | None:
    """The terminal's width (0 on a pty nobody sized, where a bar shows nothing), None when it cannot be asked."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


SampleOutcomes = report.SampleOutcomes
"""Every final sample of the run's prompts in the output, earlier runs' and this run's: the figures that need all
samples of a prompt (pass@k, samples per prompt) come from here, not from this run's records alone."""


class VerifiedIds:
    """The task_ids of the run's prompts that have a verifier, read from the prompts only when the summary needs
    them: a prompts file is read back at the end of the run, not held through it."""

    def __init__(self, prompts: Sequence[Prompt], config: "RunConfig"):
        self.prompts, self.config = prompts, config
        self._any = has_any_verifier(prompts, config)

    def __bool__(self) -> bool:
        return self._any

    def __iter__(self) -> Iterator[str]:
        if not self._any:
            return
        try:
            if isinstance(self.prompts, PromptFile):  # ids and flags only: no prompt is built
                for position, task_id in enumerate(self.prompts.task_ids()):
                    if self.config.verify is not None or self.prompts.has_own_verifier(position):
                        yield task_id
            else:
                yield from (p.task_id for p in self.prompts if verifier_for(p, self.config) is not None)
        except FatalRunError as exc:  # the summary comes at the end of a run: say what it misses, never crash
            log.warning("%s: pass figures cover the prompts read before it changed", exc)


@dataclass
class RunTally:
    """What the summary needs of the records this run wrote, added up as each is written by the one summary builder
    (report.py): the records themselves are not kept. And what the run's end needs: whether every record failed."""

    summary: report.SummaryBuilder = field(default_factory=lambda: report.SummaryBuilder(files=[], rewards=None))
    """rewards=None: pass@k comes from the run's SampleOutcomes (every final sample of its prompts)."""
    failure_errors: Counter | None = field(default_factory=Counter)
    """The errors of api_error/env_error records while every record so far is one; None once any other came."""
    spent_before: tuple[Decimal, int] | None = None
    """What the output had cost before this run (read for a budget only), else None."""

    @property
    def tasks(self) -> int:
        """Records this run wrote."""
        return self.summary.records

    def add(self, record: dict) -> None:
        self.summary.add(report.record_facts(record))
        if self.failure_errors is not None:
            if record["exit_reason"] in ("api_error", "env_error"):
                self.failure_errors[record["error"]] += 1
            else:
                self.failure_errors = None

    def all_failed(self) -> tuple[str, int] | None:
        """(the most common error, its count) when records were written and every one is api_error/env_error."""
        if not self.tasks or not self.failure_errors:
            return None
        return self.failure_errors.most_common(1)[0]


def summarize(
    tally: RunTally,
    wall_time: float,
    skipped: int,
    outcomes: SampleOutcomes,
    not_needed: int = 0,
    images: "environments.ImageSupply | None" = None,
    config: "RunConfig | None" = None,
) -> dict:
    """The run's summary, in the one schema `stats --json` prints (report.SummaryBuilder): record counts from the
    records this run wrote (``tally``); ``verification`` (null when no prompt has a verifier) and
    ``run.samples_per_prompt`` from ``outcomes``, every final sample of the run's prompts; under ``run`` what only
    a run knows; ``files`` and ``command`` from ``config`` (the command line is the CLI's to give)."""
    total = tally.tasks
    tally.summary.files = [] if config is None else [config.output_file]
    run = {
        "skipped_already_done": skipped,
        "wall_time_s": round(wall_time, 3),
        "tasks_per_minute": round(total / wall_time * 60, 2) if wall_time > 0 else 0.0,
        "samples_per_prompt": round(len(outcomes.rewards) / max(outcomes.prompt_count, 1), 3),
        "samples_not_needed": not_needed,
        "images": None if images is None else images_summary(images),
    }
    command = None if config is None else config.command
    return tally.summary.summary(0, command, outcomes, run, tally.spent_before)


def images_summary(images: "environments.ImageSupply") -> dict:
    """What the run's images cost: how many were needed, pulled and removed, and those that could not be had."""
    return {
        "needed": len(images.order),
        "pulled_bytes": images.downloaded,
        "removed": list(images.removed),
        "failed": dict(images.failed),
        "not_removed": dict(images.unremovable),
    }


def command_line(argv: list[str], secrets: Iterable[str]) -> list[str]:
    """The command line as the summary names it: --api_key and its value left out, every secret value redacted."""
    return ["mini-swe-runner", *(redact(word, secrets) for word in _without_api_key(argv)[0])]


def summary_text(summary: dict, output_file: str) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["exit_reasons"].items())) or "none"
    where = "stdout" if output_file == "-" else output_file
    run, totals = summary["run"], summary["totals"]
    text = (
        f"done: {summary['records']} tasks ({reasons}); completion {summary['completion_rate'] or 0:.1%}; "
        f"{totals.get('api_calls', 0)} API calls, {summary['tokens']['total_tokens']} tokens; "
        f"{totals.get('tool_calls', 0)} tool calls ({totals.get('tool_failures', 0)} failed); "
        f"{run['wall_time_s']:.1f}s, {run['tasks_per_minute']:.1f} tasks/min; "
        f"{run['skipped_already_done']} skipped as already done -> {where}"
    )
    if not summary["records"]:  # a rerun with nothing left to do: no rates of nothing
        text = f"done: no task run; {run['skipped_already_done']} skipped as already done -> {where}"
    images = run.get("images")
    if images and images["failed"]:
        listed = sorted(images["failed"].items())
        failed = "; ".join(f"{image} ({why})" for image, why in listed[:5])
        failed += f"; and {len(listed) - 5} more (see --stats_file)" if len(listed) > 5 else ""
        text += f"\nimages: {len(images['failed'])} of {images['needed']} could not be had (their tasks: env_error, "
        text += f"rerun on resume): {failed}"
    cost = summary.get("cost")
    if cost and cost["total"] is not None:
        per_task = cost["per_task"]
        text += (
            f"\ncost: {_usd(cost['total'])} for {cost['records_with_cost']} tasks "
            f"({', '.join(f'{k} {v}' for k, v in sorted(cost['sources'].items()))}); per task p50 "
            f"{_usd(per_task['p50'])}, p90 {_usd(per_task['p90'])}, max {_usd(per_task['max'])}; per completed task "
            + ("n/a" if cost["per_completed_task"] is None else _usd(cost["per_completed_task"]))
            + (
                ""
                if summary.get("verification") is None
                else "; per passed sample "
                + ("n/a" if cost["per_passed_sample"] is None else _usd(cost["per_passed_sample"]))
            )
            + ("" if not cost["output_before_run"] else f"; {_usd(cost['output_before_run'])} before this run")
        )
    verification = summary.get("verification")
    if verification:

        def figure(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        rate = "n/a" if verification["pass_rate"] is None else f"{verification['pass_rate']:.1%}"
        if verification["k"] == 1:  # pass@k is pass@1: once
            at_k = f"pass@1 {figure(verification['pass_at_1'])}"
        else:
            at_k = (
                f"pass@1 {figure(verification['pass_at_1'])}, pass@{verification['k']} "
                f"{figure(verification['pass_at_k'])} over {verification['pass_at_k_prompts']} prompts"
            )
        if verification["k"] > 1 and verification.get("pass_at_k_method", "").startswith("--until_passed"):
            at_k += (
                " (--until_passed stops a prompt's sampling once it passed: pass@1 is its first sample's, "
                f"pass@{verification['k']} the share solved within {verification['k']} samples)"
            )
        text += (
            f"\nverified: {verification['verified']} samples, {verification['passed']} passed (pass rate {rate}); "
            f"{at_k}; "
            f"{verification['prompts_solved']}/{verification['prompts']} prompts solved; "
            f"{run['samples_per_prompt']:g} samples/prompt"
            + (f" ({run['samples_not_needed']} not needed)" if run["samples_not_needed"] else "")
            + f"; {verification['verifier_errors']} verifier errors"
            + (" (rerun on resume)" if verification["verifier_errors"] else "")
        )
        flagged = verification.get("baseline_flagged") or []
        if flagged:
            shown = ", ".join(flagged[:5]) + (", ..." if len(flagged) > 5 else "")
            text += (
                f"\nbaseline: {len(flagged)} prompt(s) whose verifier passed or could not judge before the agent "
                f"(they teach nothing): {shown}"
            )
    return text


@dataclass
class RunOutcome:
    """How a run ended: what the command line prints and exits with."""

    exit_code: int
    """0, or the command line's exit code: 1 a fatal error (a bad key, an unusable backend, every task failed), 130
    or 143 a signal's stop."""
    summary: dict
    """The run's summary, as --stats_file writes it."""
    message: str | None = None
    """Why the run stopped early or failed, in one line; None when it simply finished."""
    records: list[dict] = field(default_factory=list)
    """The records written, in order: filled by :func:`run_sync` only (``run`` yields them instead)."""


@dataclass(frozen=True)
class Sample:
    """One run of one prompt: the unit of work."""

    prompt: Prompt
    index: int


class SampleSchedule:
    """Decides which sample starts next.

    Sample s of every prompt comes before sample s+1 of any, so a run stopped early has covered as many prompts
    as it could. With --until_passed M a prompt gets a new sample only while its passed samples plus its running
    ones are fewer than M: a sample that could turn out unneeded never starts. A prompt waiting on its running
    samples does not hold a worker: the worker takes the next prompt's sample instead, and only waits when no
    sample of any prompt can start.

    Rounds hold positions in ``prompts``, 8 bytes each, and a prompt is read (from a :class:`PromptFile`: back from
    its file) only when its sample starts; per-prompt counts are kept only for --until_passed, which needs them.
    """

    def __init__(
        self,
        prompts: Sequence[Prompt],
        samples: int,
        until_passed: int | None,
        done: "dict[tuple[str, int], float | None] | trajectory.DoneSamples",
        prompt_ids: Sequence[str] | None = None,
    ):
        """``prompt_ids``: the prompts' task_ids when the caller has read them already (one pass over a file less)."""
        self.prompts = prompts
        self.until_passed = until_passed
        if isinstance(done, trajectory.DoneSamples) and until_passed is not None:  # counts per prompt: ids read anyway
            done = dict(done.items())
        self.passed: Counter[str] = Counter()
        if until_passed is not None:
            self.passed.update(task_id for (task_id, _), reward in done.items() if reward == 1.0)
        self.running: Counter[str] = Counter()
        self.waiting: Counter[str] = Counter()
        """Samples of a prompt not started yet (zeroed when the prompt needs no more); with --until_passed only."""
        self._task_ids: list[str] = []
        """Position -> task_id, with --until_passed only: take() looks at prompts it may not start."""
        # Each round is kept reversed, so the next sample is at the end: taking it is O(1).
        self.rounds: list[array] = [array("q") for _ in range(samples)]
        if not done and until_passed is None:  # a fresh run: every sample of every prompt, nothing to read
            for round_ in self.rounds:
                round_.extend(range(len(prompts) - 1, -1, -1))
        elif isinstance(done, trajectory.DoneSamples):  # by row: nothing is read, no Python code runs per prompt
            self.rounds = [done.pending_positions(sample_index) for sample_index in range(samples)]
        else:
            for position, task_id in enumerate(task_ids(prompts) if prompt_ids is None else prompt_ids):
                if until_passed is not None:
                    self._task_ids.append(task_id)
                if self._satisfied(task_id):
                    continue
                for sample_index, round_ in enumerate(self.rounds):
                    if (task_id, sample_index) not in done:
                        round_.append(position)
                        if until_passed is not None:
                            self.waiting[task_id] += 1
            for round_ in self.rounds:
                round_.reverse()
        self.total = sum(len(round_) for round_ in self.rounds)
        self.not_needed = 0
        self._changed = asyncio.Event()

    def _satisfied(self, task_id: str) -> bool:
        return self.until_passed is not None and self.passed[task_id] >= self.until_passed

    def take(self) -> Sample | None:
        """The next sample that may start, or None when none may start now (see :meth:`wait`).

        Raises FatalRunError when a prompts file changed under the run (see :class:`PromptFile`)."""
        for sample_index, round_ in enumerate(self.rounds):
            if self.until_passed is None:
                if round_:
                    return Sample(self.prompts[round_.pop()], sample_index)
                continue
            position = len(round_) - 1
            while position >= 0:
                task_id = self._task_ids[round_[position]]
                if self._satisfied(task_id):
                    del round_[position]  # counted as not needed when the prompt was satisfied
                elif self.passed[task_id] + self.running[task_id] >= self.until_passed:
                    pass  # might become unneeded: decide when a running sample of it ends
                else:
                    sample = Sample(self.prompts[round_[position]], sample_index)
                    del round_[position]
                    self.running[task_id] += 1
                    self.waiting[task_id] -= 1
                    return sample
                position -= 1
        return None

    def finished(self) -> bool:
        """No sample is left to start (after :meth:`take` has swept out those that are no longer needed)."""
        return not any(self.rounds)

    def pending_positions(self) -> Iterator[int]:
        """Positions of the prompts that have a sample left to start (once per sample)."""
        for round_ in self.rounds:
            yield from round_

    def positions_in_order(self) -> Iterator[int]:
        """Like :meth:`pending_positions`, in the order the samples will start."""
        for round_ in self.rounds:
            yield from reversed(round_)

    async def wait(self) -> None:
        """Until a running sample ends (or the run stops: see :meth:`wake`)."""
        await self._changed.wait()

    def wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def done(self, sample: Sample, passed: bool) -> int:
        """Book a sample's end; returns how many of its prompt's samples are no longer needed."""
        released = 0
        if self.until_passed is not None:
            task_id = sample.prompt.task_id
            self.running[task_id] -= 1
            if passed:
                self.passed[task_id] += 1
                if self._satisfied(task_id):
                    released, self.waiting[task_id] = self.waiting[task_id], 0
                    self.not_needed += released
        self.wake()
        return released


def image_uses(config: RunConfig, prompts: Sequence[Prompt], schedule: "SampleSchedule") -> dict[str, int]:
    """Image -> how many of the run's pending samples run in it, in the order their first sample starts (none for
    backends without images)."""
    uses: dict[str, int] = {}
    if environments.BACKENDS[config.env.env_type].uses_image:
        for position in schedule.positions_in_order():
            image = environments.task_image(config.env, prompt_image(prompts, position))
            uses[image] = uses.get(image, 0) + 1
    return uses


class CollectorSchedule:
    """When the cycle collector runs while a command-line run lasts: the young generations every YOUNG seconds from
    the event loop, the full collection when memory says garbage has built up.

    Young collections. CPython starts one when the objects allocated since the last, less those freed, pass 700. In
    a steady run the objects of the model calls that end (promoted: they lived seconds) die as fast as the new calls'
    are born, so that count stays low while the young generation grows: 30,000-55,000 objects walked in one young
    collection at 1,000 Modal tasks in flight, 15-27 ms of CPU each, 45-72 ms at 10,000 (bench/bench_modal_scale.py).
    Collected every YOUNG seconds, each walks what that time allocated: at most 1.6 ms at 1,000 tasks, and the event
    loop's CPU over the run fell from 16.2 s to 12.4 s (fewer objects walked twice, cold, in a big collection).
    CPython's own young collections stay on for bursts in between.

    Full collections walk every object the collector tracks, and the event loop stands still for all of it. With
    ~600 Modal tasks in flight (bench/bench_modal_scale.py at 10,000 tasks) that is ~90,000 objects, most of them the
    openai SDK's per-request coroutines, options and headers, which live as long as a model call (2-5 s: long enough
    to be promoted): 80-400 ms of CPU on the 2-core machine, quiet to loaded, 20 to 94 times a run. Yet what a task
    leaves is freed by reference counting: the garbage found over 200 whole tasks (gc.DEBUG_SAVEALL) held nothing of
    the runner's or the SDK's (only the aiohttp connections closed at the run's end), and over 10,000 tasks about
    8,000 objects. So automatic full collections are off while the run lasts, and one runs from the event loop when
    the resident memory has grown by GROWTH (at least GROWTH_FLOOR) since the run's start or the last one: CPython's
    own rule (a full collection once the objects promoted since the last reach a quarter of those that survived it)
    measured in what garbage costs, so cyclic garbage (an SDK's, a bug's) is still collected and stays bounded."""

    YOUNG = 0.1
    """Seconds between young collections (generations 0 and 1) from the event loop."""
    GROWTH = 0.25
    GROWTH_FLOOR = 256 * 2**20
    """Growth allowed however small the process: on its way to 10,000 Modal tasks a run's live state alone grows by
    75 MB (90 -> 165 MB), and a floor of 64 MB set off a full collection of ~90,000 live objects for ~8,000 freed."""
    CHECK = 1.0
    """Seconds between looks at the resident memory (one read of /proc/self/statm)."""

    def __init__(self) -> None:
        self.thresholds = gc.get_threshold()
        young, middle, _ = self.thresholds
        gc.set_threshold(young, middle, 2**31 - 1)  # the oldest generation's count never gets there
        self.baseline = _resident_bytes()
        self.collections = 0

    def due(self) -> bool:
        resident = _resident_bytes()
        self.baseline = min(self.baseline, resident)  # memory handed back: growth counts from the lower mark
        return resident > self.baseline + max(self.GROWTH_FLOOR, self.baseline * self.GROWTH)

    def collect(self) -> None:
        gc.collect()
        self.collections += 1
        self.baseline = _resident_bytes()

    def close(self) -> None:
        gc.set_threshold(*self.thresholds)


def _resident_bytes() -> int:
    """The process's resident memory now; where /proc is missing, its peak, which only grows (a coarser trigger)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


async def _collect_on_schedule(schedule: CollectorSchedule) -> None:
    """Until cancelled: the young generations every YOUNG seconds (into the oldest: what outlives them is a model
    call's or the run's), a full collection whenever memory has grown enough since the last (see CollectorSchedule)."""
    checked = time.monotonic()
    while True:
        await asyncio.sleep(schedule.YOUNG)
        gc.collect(1)
        if time.monotonic() - checked >= schedule.CHECK:
            checked = time.monotonic()
            if schedule.due():
                schedule.collect()


def output_file(config: RunConfig, data_hash: str) -> trajectory.OutputFile:
    """The run's output file, given what it needs of the settings as plain values: the metadata its records carry
    that resume compares, and the flags."""
    return trajectory.OutputFile(
        config.output_file,
        {"model": config.model, "sampling": sampling_settings(config), "config_hash": data_hash},
        overwrite=config.overwrite,
        resume_any=config.resume_any,
        read_spend=config.max_cost is not None or config.max_tokens_total is not None,
    )


def resume_source(prompts: Sequence[Prompt], config: RunConfig) -> trajectory.PromptsSource | None:
    """The run's prompts as the output's resume index names them (see :func:`index_source_tag`): a prompts file, read
    back by row, or prompts loaded whole from an input that can be named; None for others (resume parses)."""
    if isinstance(prompts, PromptFile):
        tag = index_source_tag(prompts, config)
        return trajectory.PromptsSource(
            tag, prompts.file_rows, prompts.locate, run_rows=prompts.rows, task_ids=prompts.task_ids
        )
    if isinstance(prompts, PromptList) and prompts.source_tag is not None:
        tag = index_source_tag(prompts, config)
        return trajectory.PromptsSource(tag, prompts.file_rows, prompts.locate, task_id_of_row=prompts.task_id_of_row)
    return None


def prompt_hashes(prompts: Sequence[Prompt], config: RunConfig) -> Callable[[str], str | None]:
    """task_id -> the prompt_hash its records must carry to be resumed (None: not among the run's prompts)."""
    if isinstance(prompts, PromptFile):

        def from_file(task_id: str) -> str | None:
            row = prompts.locate(task_id)
            if row is None:
                return None
            prompt = prompts.prompt_of_row(row)
            return prompt_hash_for(prompt, config) if prompt.task_id == task_id else None

        return from_file
    by_id: dict[str, Prompt] | None = None

    def from_list(task_id: str) -> str | None:
        nonlocal by_id
        if by_id is None:
            by_id = {prompt.task_id: prompt for prompt in prompts}
        prompt = by_id.get(task_id)
        return None if prompt is None else prompt_hash_for(prompt, config)

    return from_list


def open_output(
    output: trajectory.OutputFile, prompts: Sequence[Prompt], config: RunConfig
) -> "dict[tuple[str, int], float | None] | trajectory.DoneSamples":
    """Lock and check the output for these prompts: the samples already done in it (see OutputFile.open). Its
    refusals are usage errors."""
    try:
        return output.open(resume_source(prompts, config), prompt_hashes(prompts, config))
    except trajectory.OutputFileError as exc:
        raise UsageError(str(exc)) from None
    finally:
        if output.lines_read is not None:
            indexed, parsed = output.lines_read
            log.debug("resume: %d line(s) of %s taken from its index, %d parsed", indexed, config.output_file, parsed)


def start_output(output: trajectory.OutputFile) -> None:
    """Every check of the run passed: the output's compaction is written (see OutputFile.start), and what it dropped
    told."""
    try:
        dropped = output.start()
    except trajectory.OutputFileError as exc:
        raise UsageError(str(exc)) from None
    if dropped:
        log.warning("resume: dropped %s from %s; those tasks run again", " and ".join(dropped), output.shown)


async def run_batch(
    config: RunConfig,
    prompts: Sequence[Prompt],
    on_record: Callable[[dict], None] | None = None,
    own_process: bool = True,
) -> RunOutcome:
    """Run every sample of every prompt not already recorded in the output, ``config.workers`` at a time.

    ``on_record`` is given each record once it is written. ``own_process``: the run is the process's only one (the
    command line), so it may change what the whole process shares: SIGINT/SIGTERM handlers on the loop (removed at
    the end), a frozen garbage collector whose young collections run on a clock and whose full ones wait for memory to
    grow (CollectorSchedule; its thresholds come back at the end), the loop's default thread pool. The Python API
    runs with it False."""
    plan = plan_batch(config, prompts)
    if (ended := plan.ended_before_start()) is not None:
        return ended
    if own_process:  # blocking SDK calls (docker) go to threads: enough of them for every worker at once
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=config.workers + 8, thread_name_prefix="msr")
        )
    ctx = await checked_context(plan, prompts)
    if isinstance(ctx, RunOutcome):  # a check failed: nothing started
        return ctx
    pool = WorkerPool(plan, ctx, on_record, own_process)
    await pool.run()
    return pool.outcome()


@dataclass
class BatchPlan:
    """What a run decided before anything starts: its system prompt and tools, its output (locked and checked, not
    yet compacted), which samples are still to run and what the done ones scored."""

    config: RunConfig
    started: float
    """time.monotonic() when the run began: its wall time counts from here."""
    tools: list[dict]
    system_prompt: str
    data_hash: str
    output: trajectory.OutputFile
    schedule: SampleSchedule
    outcomes: SampleOutcomes
    skipped: int
    """Samples already in the output, so not run again."""
    budget: RunBudget

    def summary(self, tally: RunTally, not_needed: int = 0, images: "environments.ImageSupply | None" = None) -> dict:
        return summarize(
            tally, time.monotonic() - self.started, self.skipped, self.outcomes, not_needed, images, self.config
        )

    def ended_before_start(self) -> RunOutcome | None:
        """The run's outcome when it has nothing to start (every sample done, or the budget spent), else None."""
        if self.schedule.finished():
            start_output(self.output)
            self.output.close(keep=True)
            return RunOutcome(EXIT_OK, self.summary(RunTally(), self.schedule.not_needed, None))
        if (gone := self.budget.gone()) is not None:  # resumed into an output that has spent it all: nothing starts
            self.output.close(keep=False)
            summary = self.summary(RunTally(spent_before=self.output.spent), self.schedule.not_needed)
            return RunOutcome(EXIT_OK, summary, f"{gone}: no sample started; raise the budget to run the rest")
        return None


def plan_batch(config: RunConfig, prompts: Sequence[Prompt]) -> BatchPlan:
    """The run's plan: the output opened for these prompts, and the samples it already holds left out."""
    started = time.monotonic()
    tools = [terminal_tool(config)]
    system_prompt = render_system_prompt(config.system_prompt or DEFAULT_SYSTEM_PROMPT, config.env.env_type)
    data_hash = config_hash(data_settings(config, system_prompt, tools))
    output = output_file(config, data_hash)
    done = open_output(output, prompts, config)
    ids: list[str] | None = None
    if done and not isinstance(done, trajectory.DoneSamples):  # read once: this filter and the schedule's rounds
        ids = list(task_ids(prompts))
        known = set(ids)
        if any(task_id not in known for task_id, _ in done):
            done = {key: reward for key, reward in done.items() if key[0] in known}
        del known
    schedule = SampleSchedule(prompts, config.samples, config.until_passed, done, ids)
    del ids
    if isinstance(done, trajectory.DoneSamples):
        skipped = done.count_below(config.samples)
    else:
        skipped = sum(1 for _, sample_index in done if sample_index < config.samples)
    # The schedule has read ``done``: it becomes the outcomes' rewards (no copy: an output may hold 1,000,000).
    outcomes = SampleOutcomes(
        rewards=done,
        prompt_count=len(prompts),
        verified_ids=VerifiedIds(prompts, config),
        k=config.samples,
        until_passed=config.until_passed,
    )
    if skipped:
        log.warning(
            "resume: %d of %d sample(s) already in %s are skipped (--overwrite starts afresh)",
            skipped,
            len(prompts) * config.samples,
            config.output_file,
        )
    budget = RunBudget(config, output.spent or (Decimal(0), 0))
    return BatchPlan(config, started, tools, system_prompt, data_hash, output, schedule, outcomes, skipped, budget)


async def checked_context(plan: BatchPlan, prompts: Sequence[Prompt]) -> RunContext | RunOutcome:
    """What the run's tasks share, once the backend (preflight) and the model's endpoint have passed their checks
    and the output is compacted; or the run's outcome when a check failed (the output closed, the old kept)."""
    config, output = plan.config, plan.output
    # One pass over the pending samples gives both what preflight checks and what the image supply pulls (none,
    # and no pass at all, for backends without images).
    image_counts = image_uses(config, prompts, plan.schedule)
    try:
        await environments.preflight(config.env, set(image_counts))
    except EnvError as exc:
        output.close(keep=False)
        return RunOutcome(EXIT_FATAL, plan.summary(RunTally()), str(exc))

    def model_answered() -> None:
        """The run works: --overwrite's new file replaces the old records now (once: the hook goes with it)."""
        ctx.on_model_answer = None
        output.commit()

    ctx = RunContext(
        config=config,
        model=ModelClient(config),
        tools=plan.tools,
        system_prompt=plan.system_prompt,
        config_hash=plan.data_hash,
        on_model_answer=model_answered,
        images=environments.image_supply(config.env, image_counts),
        budget=plan.budget,
    )
    try:
        await ctx.model.check_endpoint()
    except FatalRunError as exc:
        await ctx.model.close()
        output.close(keep=False)
        return RunOutcome(EXIT_FATAL, plan.summary(RunTally()), str(exc))
    try:
        start_output(output)  # every check passed: only now is the output compacted
    except UsageError:
        await ctx.model.close()
        raise
    return ctx


class WorkerPool:
    """The run's workers, ``config.workers`` of them, each taking samples from the schedule until it is finished or
    the run stops (a signal, a fatal error, the budget), and what they share: the records' writer and tally, the
    progress display, the signal handlers. Its ``run`` leaves nothing behind, however it ends: it must follow the
    constructor with no await between them, so that a cancellation cannot come before its try/finally."""

    def __init__(
        self, plan: BatchPlan, ctx: RunContext, on_record: Callable[[dict], None] | None, own_process: bool
    ) -> None:
        self.plan, self.ctx, self.on_record = plan, ctx, on_record
        self.config, self.schedule, self.output = plan.config, plan.schedule, plan.output
        self.loop = asyncio.get_running_loop()
        # What exists now (the SDKs, imported lazily up to the first request) lives as long as the run: out of the
        # collector's sight, a full collection walks only the tasks' objects. Every full collection stalls the event
        # loop; over the SDKs' ~150,000 objects alone it took ~100 ms on the 2-core machine
        # (bench/bench_modal_scale.py). Past that, young collections run on a clock and full ones wait for memory to
        # say they are due (CollectorSchedule).
        self.collector_schedule = None
        if own_process:  # the collector is the process's: a run sharing it with others leaves it alone
            gc.freeze()
            self.collector_schedule = CollectorSchedule()
        if ctx.images is not None:
            ctx.images.start()
        self.writer = self.output.writer
        # Records are written from one thread of their own: the writer takes its lock for each line anyway, and a pool
        # that grows a thread whenever none is idle blocks the loop in Thread.start() until the new thread runs, up to
        # tens of ms on a loaded machine (bench/bench_modal_scale.py caught the loop there at 1,000 tasks).
        self.write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="msr-write")
        self.progress = Progress(
            self.schedule.total,
            self.config.quiet,
            interval=self.config.progress_interval,
            verifying=bool(plan.outcomes.verified_ids),
            started=plan.started,
            activity=ctx.activity,
            images=ctx.images,
        )
        self.progress.not_needed(self.schedule.not_needed)
        self.watcher = asyncio.ensure_future(_watch_activity(self.progress, ctx))
        self.collector = (
            None
            if self.collector_schedule is None
            else asyncio.ensure_future(_collect_on_schedule(self.collector_schedule))
        )
        self.running: set[asyncio.Task] = set()
        self.waiting_turn: set[asyncio.Task] = set()
        """Workers waiting for the backend's turn (see environments.start_turn): a stop cancels their wait too."""
        self.tally = RunTally(spent_before=self.output.spent)
        self.stop_signal: int | None = None
        self.fatal: str | None = None
        self.budget_gone: str | None = None
        self.handled = [
            s
            for s in (signal.SIGINT, signal.SIGTERM)
            if own_process and _install_handler(self.loop, s, self.request_stop)
        ]

    async def run(self) -> None:
        """Start the workers and wait for them all; then close what the run opened, whatever ended it."""
        try:
            # Workers are started one turn at a time: where the backend paces its starts (Modal), the thousands not
            # yet started are a count here, not coroutines each kept alive for every garbage collection to walk
            # (bench/bench_modal_scale.py); elsewhere every turn comes at once and all start together, as before.
            workers: list[asyncio.Future] = []
            try:
                for _ in range(min(self.config.workers, self.schedule.total)):
                    if not await self.take_turn():
                        break
                    workers.append(asyncio.ensure_future(self.worker(turn_taken=True)))
            except BaseException:  # cancelled from outside: the started workers go with it, as they would in a gather
                for started_worker in workers:
                    started_worker.cancel()
                raise
            await asyncio.gather(*workers)
        finally:
            await self.close()

    async def close(self) -> None:
        """Undo what __init__ set up, in this order: the loop's timers and handlers and the collector's thresholds
        first (nothing awaits before them), then the display, the writer, the output, the model and the images."""
        ctx = self.ctx
        self.watcher.cancel()
        if self.collector is not None:
            self.collector.cancel()
            self.collector_schedule.close()
        for s in self.handled:
            self.loop.remove_signal_handler(s)
        self.progress.close()
        self.write_thread.shutdown()  # every write was awaited: nothing left in it
        # --overwrite replaces the old file only if this run got somewhere: a model answered, or records were
        # written without a fatal error (a 401 or an unusable backend keeps the old records).
        self.output.close(keep=bool(self.tally.tasks) and self.fatal is None)
        await ctx.model.close()
        if ctx.images is not None:
            await ctx.images.close()

    def outcome(self) -> RunOutcome:
        """How the run ended, once its workers are done and everything is closed."""
        tally, schedule = self.tally, self.schedule
        summary = self.plan.summary(tally, schedule.not_needed, self.ctx.images)
        if self.fatal is not None:
            return RunOutcome(EXIT_FATAL, summary, self.fatal)
        if self.stop_signal is not None:
            return RunOutcome(EXIT_SIGNAL[self.stop_signal], summary, "interrupted; rerun the same command to resume")
        if self.budget_gone is not None:
            left = sum(len(round_) for round_ in schedule.rounds)
            return RunOutcome(
                EXIT_OK,
                summary,
                f"{self.budget_gone}: {_plural(left, 'sample')} not started; raise the budget to run them",
            )
        failed = tally.all_failed()
        if failed is not None:
            # Nothing usable came out: a run that only failed must not look like a finished one to a script.
            error, count = failed
            return RunOutcome(
                EXIT_FATAL,
                summary,
                f"every task failed ({tally.tasks} api_error/env_error; {count} with: {error}); "
                "rerun the same command to retry them once the cause is fixed",
            )
        return RunOutcome(EXIT_OK, summary)

    def request_stop(self, signum: int) -> None:
        """SIGINT/SIGTERM: the run stops as a fatal error would stop it; a second one leaves at once."""
        ctx = self.ctx
        if self.stop_signal is not None or ctx.stopping:  # second signal: clean up synchronously and leave now
            _abandon_all(ctx.live_environments)
            os._exit(EXIT_SIGNAL.get(signum, EXIT_FATAL))
        self.stop_signal = signum
        ctx.stopping = True
        print(
            f"\n{signal.Signals(signum).name}: stopping; running tasks are interrupted and cleaned up "
            "(again to exit at once)",
            file=sys.stderr,
            flush=True,
        )
        for task in (*self.running, *self.waiting_turn):
            task.cancel()
        self.schedule.wake()

    def fail(self, message: str) -> None:
        """Stop the whole run: no new task starts, running ones are cancelled and cleaned up."""
        if self.fatal is None:
            self.fatal = message
        self.ctx.stopping = True
        for other in (*self.running, *self.waiting_turn):
            other.cancel()
        self.schedule.wake()

    async def take_turn(self) -> bool:
        """Wait for the backend's turn to start a task (see environments.start_turn); False once the run is over or
        stopping. A signal or a fatal error cancels the wait with the run's other waits."""
        self.waiting_turn.add(me := asyncio.current_task())
        try:
            await environments.start_turn(self.config.env)
        except asyncio.CancelledError:
            if self.ctx.stopping:
                me.uncancel()  # the stop's cancel ends here: a timeout later in this task must still be one
                return False
            raise
        finally:
            self.waiting_turn.discard(me)
        return not (self.schedule.finished() or self.ctx.stopping)

    async def record_written(self, record: dict) -> None:
        try:
            await self.loop.run_in_executor(self.write_thread, self.writer.write, record)
        except OSError as exc:  # the reader of a pipe went away, the disk is full...
            where = "stdout" if self.config.output_file == "-" else self.config.output_file
            return self.fail(f"cannot write to {where} ({exc.strerror or exc}); stopping")
        self.tally.add(record)
        if not trajectory.is_retryable(record):
            self.plan.outcomes.rewards[trajectory.record_key(record)] = record["reward"]
        self.progress.update(record)
        if self.on_record is not None:
            self.on_record(record)

    async def sample_end(self, sample: Sample, task: asyncio.Future) -> None:
        """Wait for a sample's task to end, book its end in the schedule and write its record."""
        ctx = self.ctx
        record = None
        try:
            with ctx.activity.task():
                record = await task
        except FatalRunError as exc:
            return self.fail(str(exc))
        except asyncio.CancelledError:
            if ctx.stopping and task.cancelled():
                return  # stopped before it began: nothing ran, nothing to record (resume runs it)
            raise
        finally:
            self.running.discard(task)
            released = self.schedule.done(sample, record is not None and record["reward"] == 1.0)
            self.progress.not_needed(released)
            if ctx.images is not None:
                ctx.images.forget(environments.task_image(self.config.env, sample.prompt.image), released)
        if self.fatal is not None:
            return  # tasks cut short by a fatal error are worth nothing: nothing written
        await self.record_written(record)

    async def worker(self, turn_taken: bool = False) -> None:
        # A worker takes its next sample as soon as its agent is done: the next first model call is in flight while
        # the previous sample's verifier, close and record (its fsync: records are synced one at a time, ~4 ms each
        # on the 2-core machine) finish, instead of after them (bench/bench_samples.py's timeline). At most two
        # samples per worker, only one of them past its agent, and one sandbox (see Handover).
        ctx, schedule = self.ctx, self.schedule
        ends: list[asyncio.Future] = []
        """This worker's samples not yet ended (their task, then their record): at most two."""
        tasks: list[asyncio.Future] = []
        previous_gone: asyncio.Future | None = None
        try:
            while not schedule.finished() and not ctx.stopping:
                if (gone := ctx.budget.gone()) is not None:  # running tasks' calls count: they stop at their next call
                    self.budget_gone = gone
                    schedule.wake()  # a worker waiting for a sample to end must not wait for one that never starts
                    return
                if not turn_taken and not await self.take_turn():
                    return
                turn_taken = False
                try:
                    sample = schedule.take()
                except FatalRunError as exc:  # the prompts file changed under the run
                    return self.fail(str(exc))
                if sample is None:
                    if schedule.finished():  # what was left belonged to prompts that need no more samples
                        return
                    await schedule.wait()  # every startable sample is taken; one that ends may let another start
                    continue
                handover = Handover(self.loop.create_future(), self.loop.create_future(), previous_gone)
                task = asyncio.ensure_future(run_task(sample.prompt, ctx, sample.index, handover))
                self.running.add(task)
                end = asyncio.ensure_future(self.sample_end(sample, task))
                ends.append(end)
                tasks.append(task)
                await asyncio.wait((end, handover.agent_ended), return_when=asyncio.FIRST_COMPLETED)
                previous_gone = handover.sandbox_gone
                while len(ends) > 1 or (ends and ends[0].done()):  # the previous sample's end: done by now, mostly
                    tasks.pop(0)
                    await ends.pop(0)
        except asyncio.CancelledError:  # cancelled from outside (Run.aclose): the worker's samples go with it
            for task in tasks:
                task.cancel()
            raise
        finally:
            if ends:
                await asyncio.wait(ends)
                for end in ends:
                    if not end.cancelled():
                        end.result()  # a bug of ours in the bookkeeping surfaces as it did before


async def _watch_activity(progress: Progress, ctx: RunContext) -> None:
    """Until cancelled: moves the progress display between task ends, and warns once per silence when the model has
    left every request unanswered for --stall_warning seconds (a hung endpoint would otherwise wait out
    --request_timeout and its retries, for every task, without a word)."""
    config, activity = ctx.config, ctx.activity
    pause = min(Progress.TICK, progress.interval, config.stall_warning or Progress.TICK)
    while True:
        await asyncio.sleep(pause)
        progress.tick()
        if config.stall_warning is None or activity.stall_warned:
            continue
        now = time.monotonic()
        silent = activity.silent_for(now)
        if silent >= config.stall_warning:
            activity.stall_warned = True
            log.warning(
                "the model at %s has answered nothing for %.0fs (%s waiting, the longest for %.0fs); it may be hung "
                "or overloaded: a request gives up after --request_timeout %gs and is retried up to --max_retries %d "
                "times",
                config.base_url,
                silent,
                _plural(len(activity.waiting), "request"),
                activity.longest_wait(now),
                config.request_timeout,
                config.max_retries,
            )


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
# The Python API: what the command line itself calls
# ---------------------------------------------------------------------------------------------------------------

PromptsInput = str | os.PathLike | Sequence[str | Prompt]
"""A prompts file's path (JSONL, plain text, or one of WHOLE_FILE_FORMATS), or a list of prompt texts and/or Prompt
objects."""


def run(prompts: PromptsInput, settings: RunConfig) -> "Run":
    """Start a run: ``async for record in run(prompts, settings): ...`` yields each record once it is written to
    ``settings.output_file``, with every guarantee of the command line (resume, verification, samples, limits,
    secrets). Nothing of the process or the event loop is changed, so runs can share one loop. Settings or prompts a
    run cannot take raise :class:`UsageError` here, before anything starts."""
    return Run(prompts, settings)


def run_sync(prompts: PromptsInput, settings: RunConfig) -> RunOutcome:
    """:func:`run` to its end on an event loop of its own; the outcome's ``records`` are the records written."""
    started = Run(prompts, settings)

    async def whole() -> RunOutcome:
        # The loop is this call's own: its thread pool can be sized for the run (a docker command holds a thread).
        pool = ThreadPoolExecutor(max_workers=started.settings.workers + 8, thread_name_prefix="msr")
        asyncio.get_running_loop().set_default_executor(pool)
        records = [record async for record in started]
        started.outcome.records = records
        return started.outcome

    return asyncio.run(whole())


class Run:
    """One run as an async iterator of the records it writes; ``outcome`` once the iteration has ended.

    The run starts at the first ``__anext__``. Leaving the loop early does not stop it: ``await run.aclose()`` (or
    ``async with run(...) as records:``) does, as a signal would, and what was written is resumed by the next run."""

    def __init__(self, prompts: PromptsInput, settings: RunConfig, *, own_process: bool = False):
        self.settings = prepared_settings(settings)
        """The settings the run uses: a copy of the given ones, completed (API key, secrets) and checked."""
        self.prompts = api_prompts(prompts, self.settings)
        self.outcome: RunOutcome | None = None
        """The exit code (0, or what the command line would exit with), summary and message; None until the end."""
        self._own_process = own_process
        self._records: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    def __aiter__(self) -> "Run":
        return self

    async def __anext__(self) -> dict:
        if self._task is None:
            if self.outcome is not None:
                raise StopAsyncIteration
            environments.hide_process_memory()  # the key is in this process's memory: its commands must not read it
            self._records = queue = asyncio.Queue()
            self._task = asyncio.ensure_future(
                run_batch(self.settings, self.prompts, queue.put_nowait, own_process=self._own_process)
            )
            self._task.add_done_callback(lambda _: queue.put_nowait(None))
        record = await self._records.get()
        if record is not None:
            return record
        task, self._task = self._task, None
        self.outcome = task.result()  # a UsageError of the output file is raised here
        if self.settings.stats_file:
            write_stats(self.settings.stats_file, self.outcome.summary)
        raise StopAsyncIteration

    async def to_end(self) -> RunOutcome:
        """Run to the end without looking at the records (the command line's way)."""
        async for _ in self:
            pass
        return self.outcome

    async def aclose(self) -> None:
        """Stop the run: running tasks are cancelled and cleaned up; nothing half-done is written."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                self.outcome = await task

    async def __aenter__(self) -> "Run":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def prepared_settings(settings: RunConfig) -> RunConfig:
    """A checked copy of ``settings`` as the command line would make them: the API key resolved from the environment
    when none is given, every secret it and the environment hold redacted, one worker per sandbox slot."""
    if not isinstance(settings, RunConfig):
        raise UsageError(f"settings must be a RunConfig, not {type(settings).__name__}")
    api_key = settings.api_key or resolve_api_key(settings.base_url, None, dict(os.environ))
    secrets = environments.secret_values_from_environ(
        extra=(*settings.env.secret_values, *redactable_keys(api_key, settings.base_url))
    )
    try:
        env = dataclasses.replace(settings.env, concurrency=settings.workers, secret_values=secrets)
    except environments.SettingsError as exc:
        raise UsageError(str(exc)) from None
    prepared = dataclasses.replace(
        settings,
        api_key=api_key,
        env=env,
        command_timeout=min(settings.command_timeout, settings.max_command_timeout),
    )
    check_settings(prepared)
    return prepared


def api_prompts(prompts: PromptsInput, settings: RunConfig) -> Sequence[Prompt]:
    """The run's prompts: a file read as --prompts_file reads it, or texts and Prompt objects (texts get the ids a
    prompts file's lines would get), every one checked before any task runs."""
    row_format = RowFormat.from_config(settings)
    if isinstance(prompts, (str, os.PathLike)):
        loaded = load_prompts(os.fspath(prompts), row_format, trajectory.prompts_check_path(settings.output_file))
    elif isinstance(prompts, PromptFile | PromptList):
        loaded = prompts
    else:
        rows = list(prompts)
        if rows and all(isinstance(row, Prompt) for row in rows):
            loaded = rows
            ids = Counter(prompt.task_id for prompt in rows)
            if repeated := [task_id for task_id, count in ids.items() if count > 1]:
                raise UsageError(f"prompts: id {repeated[0]!r} is used by more than one prompt")
        elif all(isinstance(row, str) for row in rows):
            loaded = prompts_from_rows(
                (InputRow(f"prompts[{i}]", f"prompts[{i}]", text) for i, text in enumerate(rows)), row_format
            )
        else:
            raise UsageError("prompts must be a file path, or a list of str or of Prompt objects (not mixed)")
        if not loaded:
            raise UsageError("prompts: the list is empty")
    check_verifiers(loaded, settings)
    return loaded


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
    except (ValueError, OverflowError):  # int(inf) overflows, int(nan) is a ValueError
        raise UsageError(f"--{name} takes {'a whole number' if kind is int else 'a number'}, not {value!r}") from None
    if not math.isfinite(number):
        raise UsageError(f"--{name} takes a finite number, not {value!r}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise UsageError(f"--{name} takes a whole number, not {value!r}")
    if number != number or number < minimum:
        raise UsageError(f"--{name} must be at least {minimum:g}, not {value!r}")
    return number


def _text(name: str, value: object, allow_none: bool = True) -> str | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool):  # a bare text flag: fire reads it as True (protect_argv quotes every value)
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


def _token_api(value: object, return_tokens: object) -> str | None:
    api = _text("token_api", value)
    if api is not None and api not in TOKEN_REQUEST_FIELDS:
        raise UsageError(f"--token_api must be one of {', '.join(TOKEN_REQUEST_FIELDS)}, not {api!r}")
    if api is not None and not _bool("return_tokens", return_tokens):
        raise UsageError("--token_api goes with --return_tokens")
    return api


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
    return tuple(item.strip() for item in str(value).split(",") if item.strip())


def _exit_codes(name: str, value: object) -> tuple[int, ...]:
    items = value if isinstance(value, (tuple, list)) else () if value is None else str(value).split(",")
    codes = []
    for item in items:
        text = str(item).strip()
        if not text.isdigit() or int(text) not in UNJUDGED_EXIT_CODES:
            known = ", ".join(map(str, UNJUDGED_EXIT_CODES))
            raise UsageError(f"--{name}: {text!r} is not one of the exit codes that cannot judge ({known})")
        codes.append(int(text))
    return tuple(codes)


def _backend_flag_value(flag: environments.Flag, value: object) -> object:
    """A backend flag's value as given -> its EnvSettings field's (the field's range and rules are its Flag's check)."""
    if flag.type is bool:
        return _bool(flag.name, value) != flag.negated
    if flag.type is tuple:
        return _names(flag.name, value)
    if flag.type in (int, float):
        return flag.type(_number(flag.name, value, flag.type, float("-inf")))
    return _text(flag.name, value, allow_none=False)


def with_backend_flags(run: Callable[..., int]) -> Callable[..., int]:
    """``run`` as the command line sees it: its own flags, and after --env every backend's (environments.ENV_FLAGS),
    in the signature fire and _flag_kinds read and in the docstring's Args that --help reads. A backend's flag is
    declared once, by the backend; ``run`` takes them as ``**backend_flags``, None for each one not given."""
    own = [p for p in inspect.signature(run).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    after_env = [p.name for p in own].index("env") + 1
    flags = environments.ENV_FLAGS.values()
    backend = [
        # A list flag is one comma-separated text on the command line.
        inspect.Parameter(flag.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=kind | None)
        for flag in flags
        for kind in [str if flag.type is tuple else flag.type]
    ]
    signature = inspect.Signature([*own[:after_env], *backend, *own[after_env:]], return_annotation=int)

    @functools.wraps(run)
    def command(*args: object, **kwargs: object) -> int:
        return run(**signature.bind(*args, **kwargs).arguments)  # fire passes every flag by position

    command.__signature__ = signature
    described = "".join(f"\n        {flag.name}: {environments.flag_help(flag)}" for flag in flags)
    command.__doc__ = run.__doc__.replace("{backends}", ", ".join(environments.BACKENDS)).replace(
        "\n        {backend_flags}", described
    )
    return command


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


@with_backend_flags
def main(
    task: str | None = None,
    prompts_file: str | None = None,
    dataset: str | None = None,
    split: str | None = None,
    prompt_template: str | None = None,
    image_template: str | None = None,
    verify_template: str | None = None,
    verify: str | None = None,
    verify_timeout: float = 300,
    verify_in: str = "sandbox",
    verify_baseline: bool = False,
    verify_failure_codes: str | None = None,
    collect_patch: bool = False,
    samples: int = 1,
    until_passed: int | None = None,
    output_file: str = "trajectories.jsonl",
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    env: str = "local",
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
    return_tokens: bool = False,
    token_api: str | None = None,
    workers: int = 8,
    overwrite: bool = False,
    resume_any: bool = False,
    shard: str | None = None,
    limit: int | None = None,
    max_rpm: float | None = None,
    max_retries: int = 6,
    max_rate_limit_wait: float = 300,
    max_retry_after: float = 60,
    request_timeout: float = 600,
    stats_file: str | None = None,
    price: str | None = None,
    prices: str | None = None,
    max_task_cost: float | None = None,
    max_cost: float | None = None,
    max_tokens_total: int | None = None,
    system_prompt: str | None = None,
    system_prompt_file: str | None = None,
    verbose: bool = False,
    quiet: bool = False,
    progress_interval: float = 10,
    stall_warning: float = 60,
    **backend_flags: object,
) -> int:
    """Run a tool-using model on prompts inside sandboxes and write Hermes trajectories as JSONL.

    Args:
        task: One prompt to run (instead of --prompts_file).
        prompts_file: .jsonl ({"prompt", "id", "image", "cwd", "verify"} or plain text lines), .json or .parquet.
        dataset: Hugging Face dataset: hub name, folder of data files or save_to_disk folder (the datasets extra).
        split: Split of --dataset, e.g. test (default: its only split).
        prompt_template: Build each row's prompt from its fields, e.g. "Fix this issue:\\n{problem_statement}".
        image_template: Build each row's image from its fields, e.g. "registry/{instance_id}:latest".
        verify_template: Build each row's verifier from its fields, e.g. "git checkout {base_commit} -- tests && make".
        verify: Verifier for prompts without one: bash run in the task's sandbox after the agent ends; exit 0 = passed.
        verify_timeout: Seconds a verifier may run before it is killed and counts as failed (default 300).
        verify_in: sandbox (the task's own, once the agent's processes ended; default) or fresh (a new sandbox of the
            same image with only the agent's patch applied: the recommended form for SWE tasks).
        verify_baseline: Also run each prompt's verifier once in a fresh sandbox before the agent: a prompt whose
            verifier already passes (or cannot judge) is flagged in verification.baseline and the summary.
        verify_failure_codes: Verifier exit codes among 4,5,126,127 that are real failures (default: could not judge).
        collect_patch: Record the task's final git diff (from the tree as the task found it) in the record's patch.
        samples: Runs of every prompt, each in a fresh environment (default 1).
        until_passed: Start no new sample of a prompt once this many of its samples passed (needs a verifier).
        output_file: Where records are appended (JSONL); '-' for stdout. Rerunning resumes: finished tasks are skipped.
        model: Model name at the endpoint (default $OPENAI_MODEL, else openai/gpt-4.1-mini).
        base_url: OpenAI-compatible endpoint (default $OPENAI_BASE_URL, else OpenRouter), e.g. http://localhost:8000/v1.
        api_key: API key; default from MINI_SWE_RUNNER_API_KEY or the provider's variable (OPENROUTER_API_KEY...).
        env: Where commands run: {backends} (default local; see the README on isolation).
        {backend_flags}
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
        return_tokens: Record each call's prompt/completion token ids and logprobs (vLLM or SGLang endpoints).
        token_api: With --return_tokens: vllm or sglang (default: ask in both layouts, read the one that answers).
        workers: Tasks run concurrently (default 8).
        overwrite: Replace the output file instead of resuming (the old one stays until the run works).
        resume_any: Resume even when the output file holds records of other settings (model, sampling...).
        shard: I/N: run only the I-th of N deterministic slices of the prompts (1-based), e.g. 2/4.
        limit: Run only the first N prompts (after --shard), for a quick trial.
        max_rpm: Cap on model requests per minute across all workers.
        max_retries: Retries of a model call on 5xx/timeouts/connection errors/unreadable answers (default 6).
        max_rate_limit_wait: Seconds one model call keeps waiting out 429 rate limits before it fails (default 300).
        max_retry_after: Longest wait honoured when the provider asks for one, e.g. Retry-After (default 60).
        request_timeout: Seconds one model request may take, the whole response included (default 600).
        stats_file: Also write the run's summary as JSON here.
        price: The model's price in USD per million tokens, e.g. input=0.15,output=0.60,cached_input=0.075 (used
            when the provider reports no cost; see the README on cost).
        prices: JSON price table keyed by model name: our layout (input/output/cached_input/cache_write per 1M
            tokens) or LiteLLM's model_prices_and_context_window.json (input_cost_per_token...).
        max_task_cost: USD one task may cost; a task that reaches it ends with exit_reason cost_limit.
        max_cost: USD the output file may cost in all, earlier runs into it included: no sample starts once it is
            spent, and running ones stop at their next model call (cost_limit).
        max_tokens_total: Tokens the output file may use in all, like --max_cost (for local models).
        system_prompt: Replace the built-in system prompt the model sees (never saved in trajectories); {env_type}
            and {marker} are filled in, any other text is sent as written.
        system_prompt_file: Read the system prompt from this UTF-8 file (same placeholders as --system_prompt).
        verbose: Log every model turn and command to stderr.
        quiet: No progress output.
        progress_interval: Seconds between progress lines when stderr is not a terminal (default 10).
        stall_warning: Warn once when the model has answered nothing for this many seconds (default 60; 0: never).
    """
    verbose, quiet = _bool("verbose", verbose), _bool("quiet", quiet)
    model = _text("model", model)
    if model is not None and not model.strip():
        raise UsageError("--model is empty: give the model's name at the endpoint, e.g. openai/gpt-4.1-mini")
    if sum(source is not None for source in (task, prompts_file, dataset)) != 1:
        raise UsageError('give exactly one of --task "...", --prompts_file FILE or --dataset NAME')
    if split is not None and dataset is None:
        raise UsageError("--split goes with --dataset")
    # The backend flags default to None so that we know which ones the user gave: a flag the chosen backend
    # ignores is a usage error. EnvSettings applies the defaults and checks the values (each flag's rule is its Flag's).
    env = _text("env", env)
    given = {name: value for name, value in backend_flags.items() if value is not None}
    if env not in environments.BACKENDS:
        raise UsageError(f"--env must be one of {', '.join(environments.BACKENDS)}, not {env!r}")
    if problem := environments.flags_not_applicable(env, set(given)):
        raise UsageError(problem)
    flags = environments.ENV_FLAGS
    try:  # every value checked before anything else happens (the secrets are added once the key is known)
        env_settings = EnvSettings(
            env_type=env,
            max_output_chars=int(_number("max_output_chars", max_output_chars, int, float("-inf"))),
            concurrency=int(_number("workers", workers, int, 1)),
            **{flags[name].setting: _backend_flag_value(flags[name], value) for name, value in given.items()},
        )
    except environments.SettingsError as exc:
        raise UsageError(str(exc)) from None
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
    env_settings.secret_values = environments.secret_values_from_environ(extra=redactable_keys(resolved_key, base_url))
    _setup_logging(verbose, quiet, env_settings.secret_values)
    config = RunConfig(
        model=model or os.environ.get("OPENAI_MODEL") or DEFAULT_MODEL,
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
        return_tokens=_bool("return_tokens", return_tokens),
        token_api=_token_api(token_api, return_tokens),
        resume_any=_bool("resume_any", resume_any),
        request_timeout=float(_number("request_timeout", request_timeout, float, 0.1)),
        max_retries=int(_number("max_retries", max_retries, int, 0)),
        max_rate_limit_wait=float(_number("max_rate_limit_wait", max_rate_limit_wait, float, 0)),
        max_retry_after=float(_number("max_retry_after", max_retry_after, float, 0)),
        max_rpm=_number("max_rpm", max_rpm, float, 0.001, allow_none=True),
        workers=int(_number("workers", workers, int, 1)),
        system_prompt=_system_prompt(
            _text("system_prompt", system_prompt), _text("system_prompt_file", system_prompt_file)
        ),
        stats_file=_text("stats_file", stats_file),
        quiet=quiet,
        progress_interval=float(_number("progress_interval", progress_interval, float, 0.1)),
        stall_warning=float(_number("stall_warning", stall_warning, float, 0)) or None,
        env=env_settings,
        verify=_text("verify", verify),
        verify_timeout=float(_number("verify_timeout", verify_timeout, float, 0.1)),
        samples=int(_number("samples", samples, int, 1)),
        until_passed=_number("until_passed", until_passed, int, 1, allow_none=True),
        dataset=_text("dataset", dataset),
        split=_text("split", split),
        prompt_template=_text("prompt_template", prompt_template),
        image_template=_text("image_template", image_template),
        verify_template=_text("verify_template", verify_template),
        collect_patch=_bool("collect_patch", collect_patch),
        verify_in=_text("verify_in", verify_in, allow_none=False),
        verify_baseline=_bool("verify_baseline", verify_baseline),
        verify_failure_codes=_exit_codes("verify_failure_codes", verify_failure_codes),
    )
    config.command_timeout = min(config.command_timeout, config.max_command_timeout)
    _cost_settings(config, _text("price", price), _text("prices", prices), max_task_cost, max_cost, max_tokens_total)
    config.command = command_line(sys.argv[1:], env_settings.secret_values)
    prompts = select_shard(load_run_prompts(config, task, prompts_file), _shard(shard))
    if limit is not None:
        prompts = prompts[: int(_number("limit", limit, int, 1))]
    outcome = asyncio.run(Run(prompts, config, own_process=True).to_end())
    if outcome.exit_code != EXIT_FATAL and (not quiet or outcome.exit_code != EXIT_OK):
        print(summary_text(outcome.summary, config.output_file), file=sys.stderr)
    if outcome.message:
        message = trajectory.terminal_safe(redact(outcome.message, env_settings.secret_values))
        print(f"mini-swe-runner: {message}", file=sys.stderr)
    return outcome.exit_code


def _cost_settings(
    config: RunConfig, price: str | None, prices: str | None, max_task_cost: object, max_cost: object, tokens: object
) -> None:
    """The model's price and the budgets, checked before any task runs."""
    if price is not None and prices is not None:
        raise UsageError("give --price (this model's) or --prices (a table by model name), not both")
    config.price = parse_price(price) if price is not None else load_prices(prices, config.model) if prices else None
    if config.price is not None:
        log.info("pricing calls without a provider-reported cost with %s", config.price.source)
    for name, value in (("max_task_cost", max_task_cost), ("max_cost", max_cost)):
        number = _number(name, value, float, 0, allow_none=True)
        if number is not None and number <= 0:
            raise UsageError(f"--{name} must be more than 0 USD, not {value!r}")
        setattr(config, name, None if number is None else Decimal(repr(number)))
    tokens = _number("max_tokens_total", tokens, int, 1, allow_none=True)
    config.max_tokens_total = None if tokens is None else int(tokens)


def load_run_prompts(config: RunConfig, task: object, prompts_file: object) -> Sequence[Prompt]:
    """The run's prompts from --task, --prompts_file or --dataset, every row checked before any task runs."""
    check_settings(config)
    row_format = RowFormat.from_config(config)
    if task is not None:
        text = _text("task", task, allow_none=False)
        if not text.strip():
            raise UsageError("--task is empty")
        prompts = prompts_from_rows([InputRow("--task", "--task", text)], row_format)
    elif prompts_file is not None:
        path = _text("prompts_file", prompts_file, allow_none=False)
        prompts = load_prompts(path, row_format, trajectory.prompts_check_path(config.output_file))
    else:
        prompts = load_dataset_prompts(config.dataset, config.split, row_format)
    check_verifiers(prompts, config)
    return prompts


def check_settings(config: RunConfig) -> None:
    """Settings that cannot go together, refused before any prompt is read (the command line's and the API's)."""
    if config.verify_in not in VERIFY_PLACES:
        raise UsageError(f"--verify_in must be one of {', '.join(VERIFY_PLACES)}, not {config.verify_in!r}")
    if config.verify is not None and not config.verify.strip():
        raise UsageError("--verify is empty")
    if config.verify is not None and config.verify_template is not None:
        raise UsageError("give --verify (one command for every prompt) or --verify_template (one per row), not both")
    if config.until_passed is not None and config.until_passed > config.samples:
        raise UsageError(f"--until_passed {config.until_passed} can never be reached with --samples {config.samples}")


def check_verifiers(prompts: Sequence[Prompt], config: RunConfig) -> None:
    """Settings that need a verifier, refused when no prompt has one."""
    if config.until_passed is not None and not has_any_verifier(prompts, config):
        raise UsageError(
            "--until_passed counts passed samples: give a verifier (--verify, --verify_template or a verify field)"
        )
    if (config.verify_baseline or config.verify_in == "fresh") and not has_any_verifier(prompts, config):
        flag = "--verify_baseline" if config.verify_baseline else "--verify_in fresh"
        raise UsageError(f"{flag} runs a verifier: give one (--verify, --verify_template or a verify field)")


class _RedactingFilter(logging.Filter):
    def __init__(self, secret_values: tuple[str, ...]):
        super().__init__()
        self.secret_values = secret_values

    def filter(self, record: logging.LogRecord) -> bool:
        # Record text (a model's content, an endpoint's error) reaches the terminal only with its controls escaped.
        record.msg = trajectory.terminal_safe(redact(record.getMessage(), self.secret_values))
        record.args = ()
        return True


def _setup_logging(verbose: bool, quiet: bool, secret_values: tuple[str, ...]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_RedactingFilter(secret_values))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)


# ---------------------------------------------------------------------------------------------------------------
# The other commands: cleanup, view and stats (the report), export (records to the formats trainers read)
# ---------------------------------------------------------------------------------------------------------------
# Each is a function like main: its flags are its parameters, its docstring's Args are its --help, a usage error is
# a UsageError, and it returns the exit code. Record files are positional arguments (FILE...).


def cleanup() -> int:
    """Remove what runs that died left behind (Docker containers, Modal sandboxes)."""
    done, failed = environments.cleanup_leftovers()
    for line in done:
        print(line, file=sys.stderr)
    for line in failed:
        print(f"mini-swe-runner: {line}", file=sys.stderr)
    return EXIT_FATAL if failed else EXIT_OK


def view(*files: str, output_file: str = "report.html") -> int:
    """Write one self-contained HTML report of record files.

    Shards and resumed runs: the last record of each task and sample wins. Open it in any browser; it needs no
    network and no server.

    Args:
        files: Record files (JSONL).
        output_file: Where the report goes (default report.html).
    """
    files = _record_files("view", files)
    output_file = _text("output_file", output_file, allow_none=False)
    if not output_file:
        raise UsageError("--output_file needs a value")
    if os.path.isdir(output_file):
        raise UsageError(f"--output_file {output_file} is a directory")
    for path in files:
        if os.path.exists(output_file) and os.path.samefile(path, output_file):
            raise UsageError(f"--output_file {output_file} is one of the record files: it would be lost")
    try:
        result = report.write_report(files, output_file)  # interrupted: its temporary files are gone already
    except OSError as exc:
        action = "read" if exc.filename in files else "write"
        print(f"mini-swe-runner: cannot {action} {exc.filename or 'the report'}: {exc.strerror}", file=sys.stderr)
        return EXIT_FATAL
    _warn_malformed(result.malformed_lines)
    if not result.records:
        print("mini-swe-runner: warning: no records found; the report is empty", file=sys.stderr)
    print(
        f"wrote {output_file}: {result.records:,} records, {result.output_bytes / 1e6:.1f} MB "
        f"({result.output_bytes / max(result.input_bytes, 1):.0%} of the input); open it in a browser",
        file=sys.stderr,
    )
    return EXIT_OK


def stats(*files: str, json: bool = False) -> int:
    """Print the summary of record files as a table.

    The same summary `view` shows and a run's --stats_file holds.

    Args:
        files: Record files (JSONL).
        json: Print the summary as JSON instead.
    """
    files, as_json = _record_files("stats", files), _bool("json", json)
    try:
        summary = report.summarize(files, command_line(sys.argv[1:], ()))
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}") from None
    _warn_malformed(summary["malformed_lines"])
    # Record fields (models, images, exit reasons) reach the terminal with their control characters escaped.
    print(report.summary_json(summary) if as_json else trajectory.terminal_safe(report.summary_table(summary)))
    return EXIT_OK


def _record_files(command: str, files: tuple[str, ...]) -> list[str]:
    """view's and stats' record files, each checked readable before any is read."""
    if not files:
        raise UsageError(f"give at least one record file: mini-swe-runner {command} FILE...")
    for path in files:
        if path == "-":
            raise UsageError(f"{command} reads record files, not stdin: give a file path")
        if os.path.isdir(path):
            raise UsageError(f"{path} is a directory, not a record file")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return list(files)


def _warn_malformed(count: int) -> None:
    if count:
        print(f"mini-swe-runner: warning: skipped {count:,} malformed line(s) (not a JSON record)", file=sys.stderr)


def export(
    *files: str,
    output_file: str,
    format: str = "hermes",
    only: str | None = None,
    exit_reason: tuple[str, ...] = (),
    min_reward: float | None = None,
    max_turns: int | None = None,
    empty_think: bool = False,
    drop_final_echo: bool = False,
    pick: str = "passed",
    model_name: str | None = None,
    arguments: str = "object",
    drop_invalid_arguments: bool = False,
) -> int:
    """Stream record files into one training file (hermes, openai, sharegpt, tokens, steps) or SWE-bench predictions.

    The last record of each (task_id, sample_index) is the one exported.

    Args:
        files: Record files, globs or directories of *.jsonl.
        output_file: The file to write.
        format: {formats} (default hermes).
        only: Keep completed tasks (completed), or verified ones (passed).
        exit_reason: Keep records with these endings (comma-separated).
        min_reward: Keep records with a reward of at least this.
        max_turns: Keep records with at most this many model turns.
        empty_think: Write an empty think block on turns without reasoning (hermes, sharegpt).
        drop_final_echo: End on the model turn that sent the completion command.
        pick: swebench: the sample exported per instance: the first that passed, else the first (passed, default),
            or the first (first).
        model_name: swebench: model_name_or_path (default: the records' model).
        arguments: openai: tool-call arguments as objects (object, what chat templates read; default) or as JSON
            text (string).
        drop_invalid_arguments: Leave out records with a tool call whose arguments are not a JSON object.
    """
    try:
        if not files:
            raise UsageError("give at least one record file: mini-swe-runner export FILE... --output_file TEXT")
        inputs = export_inputs(files)
        output = _text("output_file", output_file, allow_none=False)
        if os.path.realpath(output) in {os.path.realpath(path) for path in inputs}:
            raise UsageError(f"--output_file {output} is one of the inputs; write to a new file")
        if os.path.isdir(output) or not os.path.isdir(os.path.dirname(os.path.abspath(output))):
            raise UsageError(f"--output_file {output} is a directory or its directory does not exist")
        given_reasons = [_text("exit_reason", value, allow_none=False) for value in exit_reason]
        reasons = tuple(reason.strip() for value in given_reasons for reason in value.split(",") if reason.strip())
        try:
            options = trajectory.ExportOptions(
                format=_text("format", format),
                only=_text("only", only),
                exit_reasons=reasons,
                min_reward=_number("min_reward", min_reward, float, -math.inf, allow_none=True),
                max_turns=_number("max_turns", max_turns, int, 0, allow_none=True),
                empty_think=_bool("empty_think", empty_think),
                drop_final_echo=_bool("drop_final_echo", drop_final_echo),
                final_output_marker=FINAL_OUTPUT_MARKER,
                pick=_text("pick", pick),
                model_name=_text("model_name", model_name),
                arguments=_text("arguments", arguments),
                drop_invalid_arguments=_bool("drop_invalid_arguments", drop_invalid_arguments),
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if options.format == "swebench" and not output.endswith((".json", ".jsonl")):
            raise UsageError(f"the SWE-bench harness reads only .json or .jsonl predictions, not {output}")
    except UsageError as exc:
        raise UsageError(f"export: {exc}") from None
    try:
        result = trajectory.export(inputs, output, options)
    except OSError as exc:
        print(f"mini-swe-runner: export failed, {output} not written: {exc}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print(f"mini-swe-runner: export interrupted, {output} not written", file=sys.stderr)
        return EXIT_SIGNAL[signal.SIGINT]
    print(export_summary(result, output, options), file=sys.stderr)
    if result.written == 0 and (result.read or result.bad_lines):  # an empty training file is never a success
        print(f"mini-swe-runner: export wrote nothing of a non-empty input to {output}", file=sys.stderr)
        return EXIT_FATAL
    return EXIT_OK


export.__doc__ = export.__doc__.replace("{formats}", ", ".join(trajectory.EXPORT_FORMATS))


def export_inputs(patterns: Iterable[str]) -> list[str]:
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


def export_summary(result: trajectory.ExportResult, output: str, options: trajectory.ExportOptions) -> str:
    format = options.format
    lines = [f"exported {result.written} of {result.read} records to {output} ({format})"]
    if format == "swebench":
        lines = [f"exported {result.written} predictions (one per instance) of {result.read} records to {output}"]
    invalid = (
        "left out (--drop_invalid_arguments)" if options.drop_invalid_arguments else "written as the model sent them"
    )
    for count, what in (
        (result.superseded, "superseded by a later record of the same task and sample"),
        (result.filtered, "left out by the filters"),
        (result.not_chosen, "other samples of an exported instance, not chosen (--pick)"),
        (result.without_patch, "instances left out: the chosen sample has no patch recorded"),
        (result.cut_patch, "instances left out: the chosen sample's patch was truncated, not the whole diff"),
        (result.invalid_arguments, f"with tool-call arguments that are not a JSON object: {invalid}"),
        (
            result.unrepresentable,
            "without token ids (made without --return_tokens)"
            if format in trajectory.TOKEN_FORMATS
            else f"with no model turn that {format} can end on",
        ),
        (result.token_breaks, "whose prompts broke the token prefix, left out, not spliced (export them as steps)"),
        (result.bad_lines, "lines that are not records (torn or damaged)"),
        (result.escaped_turns, "model turns whose text held <tool_call> tags, written escaped (&lt;tool_call&gt;)"),
        (result.compressed, "records compressed by hermes-agent's trajectory compressor (its notice kept as system)"),
        (result.cut, "rows that end before a user turn right after a tool result, which sharegpt cannot alternate"),
    ):
        if count:
            lines.append(f"  {count} {what}")
    if result.unreadable:
        what = "tokens" if format in trajectory.TOKEN_FORMATS else "turns"
        lines.append(
            f"  {result.unreadable} records whose {what} cannot be read back, first: {result.first_unreadable}"
        )
    if result.first_left_out:
        lines.append(f"  first instance left out for its patch: {result.first_left_out}")
    return "\n".join(lines)


COMMANDS: dict[str, Callable[..., int]] = {"cleanup": cleanup, "view": view, "stats": stats, "export": export}
"""First words that are commands, not prompts; anything else that is not a flag is refused."""


# ---------------------------------------------------------------------------------------------------------------
# The command line's way in, one for every command: argv -> fire, --help, exit codes, secrets out of sight
# ---------------------------------------------------------------------------------------------------------------
# A command is a function (main, or one of COMMANDS). Its signature says what its flags take and its docstring's
# Args what they mean: protect_argv reads the one to hand fire every value exactly as typed, help_text both to
# write --help, and cli maps what the command raises to one line and an exit code.

_SECRETS_FD_VARIABLE = "_MINI_SWE_RUNNER_SECRETS_FD"


def _flag_kinds(command: Callable[..., int] | None = None) -> dict[str, str]:
    """A command's flags (main's by default) by kind, how their values are read: 'text' (str: exactly as typed),
    'bool' (a switch), 'list' (a tuple: texts, the flag repeatable), or 'value' (numbers: fire reads them, the
    command checks them)."""
    kinds = {}
    for name, parameter in inspect.signature(command or main).parameters.items():
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            continue
        annotation = parameter.annotation
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        taken = set(typing.get_args(annotation)) - {type(None)} if union else {annotation}
        if typing.get_origin(annotation) is tuple:
            kinds[name] = "list"
        else:
            kinds[name] = "text" if taken == {str} else "bool" if taken == {bool} else "value"
    return kinds


def _takes_files(command: Callable[..., int]) -> bool:
    return any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(command).parameters.values())


def _prog(command: Callable[..., int]) -> str:
    name = next((name for name, function in COMMANDS.items() if function is command), None)
    return f"mini-swe-runner {name}" if name else "mini-swe-runner"


def protect_argv(argv: list[str], command: Callable[..., int] | None = None) -> list[str]:
    """argv for fire with every text value made a Python string literal of itself, so that fire (which
    literal-evals every value) hands it over byte for byte: `--task '{"k": 1}'`, `--task 1e3`, `--task None`,
    `--task '"quoted"'` and `--task -x` all arrive as typed. Every flag leaves as one `--name=value` word, a
    repeated list flag as one list; a file (for a command that takes files) as one string literal.

    Raises UsageError for flags the command does not take, for a required flag not given, and for a word that is
    neither a flag nor a flag's value (nor a file): a prompt must be given with --task.
    """
    command = command or main
    kinds, takes_files, prog = _flag_kinds(command), _takes_files(command), _prog(command)

    def is_flag(word: str) -> bool:
        return word.startswith("--") and word[2:].partition("=")[0].replace("-", "_") in kinds

    protected: list[str] = []
    lists: dict[str, list[str]] = {}
    unknown: list[str] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        index += 1
        if takes_files and word == "--":  # what follows is files, whatever they look like
            protected += [repr(path) for path in argv[index:]]
            break
        if not word.startswith("--") or word == "--":
            if takes_files:
                protected.append(repr(word))
                continue
            hint = f" (a command is one of: {', '.join(sorted(COMMANDS))})" if command is main and index == 1 else ""
            what = 'give the prompt with --task "..." or flags only' if command is main else f"see {prog} --help"
            raise UsageError(f"unexpected argument {_short(word, 60)!r}: {what}{hint}")
        name, has_value, value = word[2:].partition("=")
        name = name.replace("-", "_")
        kind = kinds.get(name)
        if kind is None:
            unknown.append(name)
        if not has_value:
            following = argv[index] if index < len(argv) else None
            if following is None:
                takes_next = False
            elif kind in ("text", "list"):
                takes_next = not is_flag(following)
            else:  # beside files, a switch takes a value only with "=": `stats --json run.jsonl`
                takes_next = not following.startswith("--") and not (kind == "bool" and takes_files)
            if not takes_next and kind == "list":
                raise UsageError(f"--{name} needs a value")
            if not takes_next:  # a bare flag is True (a text flag then "needs a value"); with "=", so that fire
                protected.append(f"--{name}=True")  # never takes a file that follows for its value
                continue
            value = following
            index += 1
        if kind == "list":
            lists.setdefault(name, []).append(value)
        else:
            protected.append(f"--{name}={value!r}" if kind == "text" else f"--{name}={value}")
    if unknown:
        raise UsageError(_unknown_flags_message(unknown, list(kinds), prog))
    given = {word[2:].partition("=")[0] for word in protected if word.startswith("--")} | set(lists)
    for name, parameter in inspect.signature(command).parameters.items():
        if parameter.kind is parameter.KEYWORD_ONLY and parameter.default is parameter.empty and name not in given:
            raise UsageError(f"{prog.partition(' ')[2] or prog}: give --{name} (see {prog} --help)")
    return protected + [f"--{name}={values!r}" for name, values in lists.items()]


def _unknown_flags_message(names: list[str], known: list[str], prog: str) -> str:
    """The message for flags a command does not take, with the closest real flag of each when one is close:
    "unknown flag --prompt_file (did you mean --prompts_file?)"."""
    described = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        described.append(f"--{name}" + (f" (did you mean --{close[0]}?)" if close else ""))
    return f"unknown flag {', '.join(described)}; see {prog} --help"


def help_text(command: Callable[..., int] | None = None) -> str:
    """--help of a command (main's by default): its flags with a readable type and their descriptions, from its
    signature and its docstring's Args."""
    command = command or main
    about, _, rest = (inspect.getdoc(command) or "").partition("\nArgs:")
    described: dict[str, str] = {}
    current = None
    args = [line for line in rest.splitlines() if line.strip()]
    entry_indent = min((len(line) - len(line.lstrip()) for line in args), default=0)
    for line in args:
        stripped = line.strip()
        if len(line) - len(line.lstrip()) == entry_indent and ":" in stripped:
            current, _, text = stripped.partition(":")
            described[current] = text.strip()
        elif current:
            described[current] += " " + stripped
    kinds, prog = _flag_kinds(command), _prog(command)
    metavar = {"text": "TEXT", "list": "TEXT", "bool": "", "value": "N"}
    parameters = inspect.signature(command).parameters.values()
    files = next((p.name for p in parameters if p.kind is p.VAR_POSITIONAL), None)
    required = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    words = [f"{files.upper().removesuffix('S')}..."] if files else []
    words += [f"--{name} {metavar[kinds[name]]}".rstrip() for name in required]
    usage = [f"usage: {prog} {' '.join(words)}{' [flags]' if kinds else ''}".rstrip()]
    if command is main:
        usage = [
            "usage: mini-swe-runner --task TEXT | --prompts_file FILE | --dataset NAME [flags]",
            *(f"       mini-swe-runner {name:<8} {_first_sentence(function)}" for name, function in COMMANDS.items()),
            "       mini-swe-runner --version",
        ]
    lines = [about.strip(), "", *usage]
    if files:
        lines += ["", f"  {words[0]}", f"      {described.get(files, '')}"]
    if kinds:
        lines += ["", "Every flag also takes --name=value. Text values are used exactly as typed.", "", "flags:"]
    for name, kind in kinds.items():
        repeatable = " (repeatable)" if kind == "list" else ""
        lines += [f"  --{name} {metavar[kind]}".rstrip() + repeatable, f"      {described.get(name, '')}"]
    if command is main:
        lines += ["", "Every command has its --help: mini-swe-runner view --help"]
    return "\n".join(lines)


def _first_sentence(command: Callable[..., int]) -> str:
    first = " ".join((inspect.getdoc(command) or "").partition("\n\n")[0].split()).rstrip(".")
    return first[:1].lower() + first[1:]


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


def _reader_gone() -> int:
    """stdout's reader went away (`stats --json | head`): end quietly, as a program killed by SIGPIPE does, with no
    traceback and no second error when Python flushes stdout at exit."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def cli() -> None:
    """Console entry point of every command: loads ./.env only, checks argv, runs fire, maps errors to exit codes."""
    handed = _scrub_secrets_from_process()
    environments.hide_process_memory()  # the keys are in this process's memory from here on
    from dotenv import load_dotenv

    # Only the current directory's .env: find_dotenv would also walk up into every parent directory.
    load_dotenv(os.path.join(os.getcwd(), ".env"))
    argv = sys.argv[1:]
    command = main
    if argv[:1] and argv[0] in COMMANDS:
        command, argv = COMMANDS[argv[0]], argv[1:]
    if handed.get("api_key") is not None:  # before a "--": a command that takes files reads what follows as files
        cut = argv.index("--") if "--" in argv else len(argv)
        argv = [*argv[:cut], f"--api_key={handed['api_key']}", *argv[cut:]]
    try:
        flags = argv[: argv.index("--")] if "--" in argv else argv
        if any(word in ("--help", "-h") for word in flags):
            print(help_text(command))
            raise SystemExit(EXIT_OK)
        if command is main and argv[:1] == ["--version"]:
            print(f"mini-swe-runner {__version__}")
            raise SystemExit(EXIT_OK)
        import fire

        # Every word fire sees is a --name=value pair or a string literal made by protect_argv (fire's own flags,
        # --help, --trace, --interactive, would only be read after a "--" separator, which protect_argv never
        # leaves). A command's return value is its exit code, not output: fire prints nothing of it.
        code = fire.Fire(command, command=protect_argv(argv, command), name=_prog(command), serialize=lambda _: None)
    except UsageError as exc:  # may quote an input line or an endpoint's answer: controls escaped
        print(f"mini-swe-runner: {trajectory.terminal_safe(str(exc))}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except FatalRunError as exc:
        print(f"mini-swe-runner: {trajectory.terminal_safe(str(exc))}", file=sys.stderr)
        raise SystemExit(EXIT_FATAL) from None
    except BrokenPipeError:
        raise SystemExit(_reader_gone()) from None
    except KeyboardInterrupt:
        raise SystemExit(EXIT_SIGNAL[signal.SIGINT]) from None
    raise SystemExit(code)


if __name__ == "__main__":
    cli()
