"""A chat model that really tokenizes, for --return_tokens: plugged into ScriptedModelServer as its script.

Nothing is downloaded: a byte-level BPE tokenizer is trained in-process (the ``tokenizers`` library) on a few KB
of text, the prompt is rendered with a jinja chat template (Qwen-style ``<|im_start|>``/``<|im_end|>`` special
tokens), and the reply's free text is sampled from the model's own distribution (per-token logits seeded by the
previous token, softmax at the request's temperature), its logprobs reported. The tool call that follows is
teacher-forced from the script and scored under the same distribution, the way a grammar-constrained server reports
the logprob of each forced token. Answers come in vLLM's field layout or SGLang's (see the README, Tokens for RL).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import random
import re
import struct
import threading
import time
from dataclasses import dataclass

import jinja2
from model_server import Step
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

_WORDS = (
    "the file list shows a test that fails because the function returns none when the input is empty so we "
    "should check the path first then run the command again and read its output before we change the code "
    "python script error value line number directory make build install package module import print return "
    "open read write close echo cat grep sed find ls cd pwd git diff status commit branch"
).split()


def _corpus() -> str:
    """A few KB of English-like text, shell commands and JSON: enough for a few hundred merges."""
    rng = random.Random(7)
    lines = []
    for _ in range(160):
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 14))).capitalize() + ".")
    for word in _WORDS:
        lines.append(json.dumps({"name": "terminal", "arguments": {"command": f"{word} -la /tmp"}}))
        lines.append(json.dumps({"output": f"{word}\n", "exit_code": 0, "error": None}))
    return "\n".join(lines)


@functools.cache
def tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<|endoftext|>", IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus().splitlines(), trainer)
    return tok


_TEMPLATE = r"""
{%- macro body(m, with_reasoning) -%}
{%- set thought = m.reasoning or m.reasoning_content -%}
{%- if with_reasoning and thought -%}{{ '<think>\n' + thought + '\n</think>\n' }}{%- endif -%}
{{- m.content or '' -}}
{%- for call in m.tool_calls or [] -%}
{{- ('\n' if m.content or not loop.first else '') + '<tool_call>\n{"name": "' + call.function.name -}}
{{- '", "arguments": ' + call.function.arguments + '}\n</tool_call>' -}}
{%- endfor -%}
{%- endmacro -%}
{%- for m in messages -%}
{{- '<|im_start|>' + m.role + '\n' -}}
{%- if m.role == 'assistant' -%}{{- body(m, keep_reasoning) -}}{%- else -%}{{- m.content -}}{%- endif -%}
{{- '<|im_end|>\n' -}}
{%- endfor -%}
{{- '<|im_start|>assistant\n' -}}
"""


@dataclass
class Turn:
    """What the model says on one call: ``words`` sampled words, then the scripted tool call (or none: the end)."""

    command: str | None = None
    words: int = 3
    reasoning: str | None = None


def _float32(value: float) -> float:
    """As vLLM and SGLang report logprobs: computed in float32."""
    return struct.unpack("f", struct.pack("f", value))[0]


class TokenModel:
    """``(request) -> Step`` for ScriptedModelServer. ``scripts`` maps a prompt (the first user message) to its
    turns, the N-th model call of a conversation getting turn N (the last repeats). ``api`` is the layout:
    "vllm", "sglang", or "sglang-meta" (an older SGLang: only meta_info.output_token_logprobs, no prompt ids).
    ``keep_reasoning=False`` is a template that drops reasoning from history (as Qwen3's does). The JSON is
    compact, as both servers write it; ``spaced`` writes Python's default ", " separators instead."""

    def __init__(
        self, scripts: dict[str, list[Turn]], api: str = "vllm", keep_reasoning: bool = True, spaced: bool = False
    ):
        self.scripts = scripts
        self.separators = (", ", ": ") if spaced else (",", ":")  # vLLM (pydantic) and SGLang (orjson): compact
        self.api = api
        self.tok = tokenizer()
        self.template = jinja2.Environment().from_string(_TEMPLATE)
        self.keep_reasoning = keep_reasoning
        self.im_end = self.tok.token_to_id(IM_END)
        self.vocab = self.tok.get_vocab_size()
        # Sampled words: single tokens that tokenize back to themselves after a space, so sampled text is stable.
        self.words = [
            i
            for i in range(self.vocab)
            if re.fullmatch(r" [a-z]+", self.tok.decode([i])) and self.tok.encode(self.tok.decode([i])).ids == [i]
        ]
        self.calls: dict[str, list[tuple[list[int], list[int], list[float]]]] = {}
        """Per prompt, each call as the server saw it: (prompt ids, completion ids, logprobs)."""
        self._lock = threading.Lock()
        self._seeds = itertools.count(1)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def _logits(self, previous: int) -> list[float]:
        rng = random.Random(previous * 7919 + 17)
        return [rng.gauss(0.0, 2.0) for _ in range(self.vocab)]

    def _logprob(self, logits: list[float], allowed: list[int], token: int, temperature: float) -> float:
        scaled = [logits[i] / temperature for i in allowed]
        top = max(scaled)
        total = top + math.log(sum(math.exp(x - top) for x in scaled))
        return _float32(logits[token] / temperature - total)

    def __call__(self, request: dict) -> Step:
        messages = request["messages"]
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        turns = self.scripts[prompt]
        index = sum(1 for m in messages if m["role"] == "assistant")
        turn = turns[min(index, len(turns) - 1)]
        temperature = request.get("temperature") or 1.0
        prompt_text = self.template.render(messages=messages, keep_reasoning=self.keep_reasoning)
        prompt_ids = self.encode(prompt_text)
        with self._lock:
            rng = random.Random(next(self._seeds))  # every request samples afresh: samples of a prompt differ
        completion: list[int] = []
        logprobs: list[float] = []
        previous = prompt_ids[-1]
        if turn.reasoning is not None:  # teacher-forced, like the tool call
            forced_head = self.encode(f"<think>\n{turn.reasoning}\n</think>\n")
        else:
            forced_head = []
        for token in forced_head:
            logits = self._logits(previous)
            logits[token] += 8.0
            completion.append(token)
            logprobs.append(self._logprob(logits, range(self.vocab), token, temperature))
            previous = token
        for _ in range(turn.words):  # really sampled, from the words the distribution allows here
            logits = self._logits(previous)
            weights = [math.exp(logits[i] / temperature) for i in self.words]
            token = rng.choices(self.words, weights)[0]
            completion.append(token)
            logprobs.append(self._logprob(logits, self.words, token, temperature))
            previous = token
        content = self.tok.decode(completion[len(forced_head) :]) if turn.words else None
        message: dict = {"role": "assistant", "content": content}
        if turn.command is not None:
            call = {
                "id": f"call_{index}",
                "type": "function",
                "function": {"name": "terminal", "arguments": json.dumps({"command": turn.command})},
            }
            message["tool_calls"] = [call]
        if turn.reasoning is not None:
            message["reasoning" if self.api == "vllm" else "reasoning_content"] = turn.reasoning
        tail_text = self.template.module.body({**message, "reasoning": None, "reasoning_content": None}, False)
        tail_text = tail_text[len(content or "") :]
        for token in self.encode(tail_text) + [self.im_end]:
            logits = self._logits(previous)
            logits[token] += 8.0
            completion.append(token)
            logprobs.append(self._logprob(logits, range(self.vocab), token, temperature))
            previous = token
        with self._lock:
            self.calls.setdefault(prompt, []).append((prompt_ids, completion, logprobs))
        finish = "tool_calls" if turn.command is not None else "stop"
        body = self._body(request, message, finish, prompt_ids, completion, logprobs)
        return Step(body=json.dumps(body, separators=self.separators).encode())

    def _body(self, request, message, finish, prompt_ids, completion, logprobs) -> dict:
        choice: dict = {"index": 0, "message": message, "finish_reason": finish}
        body: dict = {
            "id": f"chatcmpl-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "token-model",
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": len(completion),
                "total_tokens": len(prompt_ids) + len(completion),
            },
        }
        as_ids = self.api == "vllm" and request.get("return_tokens_as_token_ids")
        if request.get("logprobs") and self.api != "sglang-meta":
            choice["logprobs"] = {
                "content": [
                    {
                        "token": f"token_id:{token}" if as_ids else self.tok.decode([token], skip_special_tokens=False),
                        "logprob": value,
                        "bytes": None,
                        "top_logprobs": [],
                    }
                    for token, value in zip(completion, logprobs, strict=True)
                ]
            }
        if self.api == "vllm" and request.get("return_token_ids"):
            body["prompt_token_ids"] = prompt_ids
            choice["token_ids"] = completion
        elif self.api == "sglang":
            if request.get("return_prompt_token_ids"):
                choice["prompt_token_ids"] = prompt_ids
            if request.get("return_token_ids"):
                choice["token_ids"] = completion
        elif self.api == "sglang-meta" and request.get("return_meta_info"):
            choice["meta_info"] = {
                "output_token_logprobs": [[v, t, None] for t, v in zip(completion, logprobs, strict=True)]
            }
        return body

    def last_sequence(self, prompt: str) -> list[int]:
        """The last call's prompt + completion: the whole token sequence the server ended on."""
        prompt_ids, completion, _ = self.calls[prompt][-1]
        return prompt_ids + completion
