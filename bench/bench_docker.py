"""Round trip of one command in a running container: our DockerEnvironment vs the bare SDK vs the docker CLI.

    python bench/bench_docker.py [--n 200] [--image mini-swe-runner-test:bookworm]

Runs the three interleaved (so drift on the machine hits them alike) after a warm-up, in one container, and
prints medians and the ratios ours/SDK (target <= 1.2) and ours/CLI (target < 1). Needs a running engine and the
image (scripts/docker-engine.sh). Prints numbers; never passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from environments import DockerEnvironment, EnvSettings, docker_client  # noqa: E402


async def main(n: int, warmup: int, image: str) -> None:
    settings = EnvSettings(env_type="docker", image=image, pull="never")
    env = DockerEnvironment(settings, task_id="bench")
    await env.start()
    try:
        container = docker_client().containers.get(env.container_id)
        docker_cli = shutil.which("docker")

        async def ours() -> None:
            result = await env.execute("true", 30)
            assert result.exit_code == 0, result

        async def sdk() -> None:
            assert container.exec_run(["true"]).exit_code == 0

        async def cli() -> None:
            subprocess.run([docker_cli, "exec", env.container_id, "true"], check=True)

        contenders = {"ours": ours, "sdk": sdk, "cli": cli} if docker_cli else {"ours": ours, "sdk": sdk}
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for i in range(warmup + n):
            for name, run in contenders.items():
                started = time.perf_counter()
                await run()
                if i >= warmup:
                    times[name].append(time.perf_counter() - started)
    finally:
        await env.close()

    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"{name:5} median {median * 1000:7.2f} ms  (n={len(times[name])})")
    print(f"ours/sdk = {medians['ours'] / medians['sdk']:.3f}  (target <= 1.2)")
    if "cli" in medians:
        print(f"ours/cli = {medians['ours'] / medians['cli']:.3f}  (target < 1)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--image", default="mini-swe-runner-test:bookworm")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.warmup, args.image))
