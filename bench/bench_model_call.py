"""The model call's CPU in the runner's process, by the layer it goes through: ratios side by side (no pass/fail).

Each way sends the same chat-completions request body (a few KB, as a mid-task request) to the scripted model
server (tests/model_server.py, in a process of its own so that its CPU is not counted) and reads the answer's
bytes; the client process's CPU per call is measured N calls in a row and N calls 32 at a time, each way in turn,
best of --repeat. The ways:

    sdk        AsyncOpenAI.post("/chat/completions", content=..., cast_to=Response): how the runner sent it before
    runner     ModelClient._send, how the runner sends it now (below: the same, its parts measured bare)
    http       the http client the SDK was given (DefaultAioHttpClient), its public httpx API: send(Request)
               with the URL and headers built once
    http.own   the same, but the headers set once on the client itself (build_request without headers)
    http.post  the same client's post(url, content=, headers=), headers given per call
    aiohttp    a bare aiohttp session (a floor, not a candidate: the SDK is the dependency that owns the transport)

    python bench/bench_model_call.py                   # 2000 calls per way, best of 3
    python bench/bench_model_call.py --calls 500 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def serve(ready: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    from model_server import ScriptedModelServer, reply, tool_call

    answer = reply(tool_calls=[tool_call("ls -la")])
    with ScriptedModelServer(lambda request: answer) as server:
        ready.put(server.base_url)
        stop.wait()


def request_body() -> bytes:
    messages = [{"role": "system", "content": "You are a helpful assistant. " * 20}]
    for turn in range(6):
        messages.append({"role": "user" if turn == 0 else "tool", "content": f"output line {turn}\n" * 30})
        messages.append({"role": "assistant", "content": "thinking " * 10})
    return json.dumps({"model": "bench", "messages": messages}, separators=(",", ":")).encode()


async def measure(base_url: str, calls: int, concurrency: int, body: bytes) -> dict[str, float]:
    import aiohttp
    import openai

    import mini_swe_runner

    try:
        import httpx2 as httpx
    except ImportError:
        import httpx

    limits = httpx.Limits(max_connections=36, max_keepalive_connections=36)
    http_client = openai.DefaultAioHttpClient(limits=limits, timeout=600.0)
    client = openai.AsyncOpenAI(
        api_key="bench-key", base_url=base_url, max_retries=0, timeout=600.0, http_client=http_client
    )
    url = str(client.base_url) + "chat/completions"
    headers = {k: v for k, v in client.default_headers.items() if isinstance(v, str)}
    headers["Authorization"] = "Bearer bench-key"
    prebuilt = httpx.Headers(headers)
    runner = mini_swe_runner.ModelClient(
        mini_swe_runner.RunConfig(model="bench", base_url=base_url, api_key="bench-key", workers=32, quiet=True)
    )
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=36))
    own_client = openai.DefaultAioHttpClient(limits=limits, timeout=600.0, headers=headers)

    async def sdk() -> bytes:
        return (await client.post("/chat/completions", content=body, cast_to=httpx.Response)).content

    async def through_runner() -> bytes:
        return (await runner._send("POST", runner.chat_url, body)).content

    async def http_send() -> bytes:
        response = await http_client.send(http_client.build_request("POST", url, content=body, headers=prebuilt))
        return response.content

    async def http_own() -> bytes:
        return (await own_client.send(own_client.build_request("POST", url, content=body))).content

    async def http_post() -> bytes:
        return (await http_client.post(url, content=body, headers=headers)).content

    async def bare() -> bytes:
        async with session.post(url, data=body, headers=headers) as response:
            return await response.read()

    ways = {
        "sdk": sdk,
        "runner": through_runner,
        "http": http_send,
        "http.own": http_own,
        "http.post": http_post,
        "aiohttp": bare,
    }
    for way in ways.values():  # connections opened, lazy imports done, before anything is timed
        await asyncio.gather(*(way() for _ in range(concurrency)))
    results: dict[str, float] = {}
    for name, way in ways.items():
        semaphore = asyncio.Semaphore(concurrency)

        async def one(way=way, semaphore=semaphore) -> None:
            async with semaphore:
                assert b"choices" in await way()

        started = time.process_time()
        await asyncio.gather(*(one() for _ in range(calls)))
        results[name] = (time.process_time() - started) / calls * 1000
    await client.close()
    await session.close()
    await own_client.aclose()
    await runner.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    ready: multiprocessing.Queue = multiprocessing.Queue()
    stop = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(ready, stop), daemon=True)
    server.start()
    base_url = ready.get(timeout=30)
    body = request_body()
    best: dict[tuple[int, str], float] = {}
    try:
        for run in range(args.repeat):
            for concurrency in (1, 32):
                figures = asyncio.run(measure(base_url, args.calls, concurrency, body))
                shown = ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
                print(f"run {run + 1}, {concurrency:>2} at a time: {shown}")
                for name, value in figures.items():
                    best[concurrency, name] = min(best.get((concurrency, name), value), value)
    finally:
        stop.set()
        server.join(5)
    print(f"\nclient CPU per call, ms (best of {args.repeat}, {args.calls} calls, request {len(body)} bytes)")
    print(f"{'way':<10} {'1 at a time':>12} {'32 at a time':>13} {'saved vs sdk (32)':>18}")
    for name in ("sdk", "runner", "http", "http.own", "http.post", "aiohttp"):
        one, many = best[1, name], best[32, name]
        saved = best[32, "sdk"] - many
        print(f"{name:<10} {one:>12.3f} {many:>13.3f} {saved:>13.3f} ({many / best[32, 'sdk']:.2f}x)")


if __name__ == "__main__":
    main()
