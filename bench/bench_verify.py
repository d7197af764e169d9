"""What --verify_in fresh costs per sample, against verifying in the task's own sandbox (no pass/fail).

Each sample is one agent command that fixes a small git repository, then the verifier `bash tests/test.sh`. With
--verify_in sandbox the verifier runs in the agent's sandbox once its processes ended (docker: a container
restart); with --verify_in fresh the patch is taken, the agent's sandbox removed, and the verifier runs in a new
one (docker: a container from the same image; local/bwrap: a fresh directory with a clone of the starting
commit) with the patch applied. Samples run one at a time (--workers 1) with no model latency, so the wall time
per sample is the runner's own work. Printed: both per-sample times and their ratio, best of --repeat runs.

    python bench/bench_verify.py                          # docker, local and bwrap, 20 samples each
    python bench/bench_verify.py --backends local --samples 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from model_server import ScriptedModelServer, per_conversation, reply, tool_call  # noqa: E402

import mini_swe_runner  # noqa: E402
from environments import EnvSettings  # noqa: E402

FILES = {"src.txt": "bug\n", "tests/test.sh": "grep -qx fixed src.txt\n"}
SCRIPT = per_conversation([reply(None, [tool_call("echo fixed > src.txt")]), reply("done")])


def local_repo() -> str:
    # Not under /tmp: bwrap gives each sandbox a private /tmp, and the fresh sandbox clones from here.
    path = tempfile.mkdtemp(prefix=".bench-verify-", dir=ROOT)
    for name, text in FILES.items():
        (Path(path) / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(path) / name).write_text(text)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}  # fmt: skip
    subprocess.run("git init -q && git add -A && git commit -qm base", shell=True, cwd=path, env=env, check=True)
    return path


def settings(backend: str, repo: str | None) -> EnvSettings:
    if backend == "docker":
        from docker_support import docker_settings, swe_instance_image

        image, _ = swe_instance_image("bench-verify", FILES)
        return docker_settings(image=image)
    return EnvSettings(env_type=backend, cwd=repo)


def per_sample(base_url: str, env: EnvSettings, verify_in: str, samples: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = mini_swe_runner.RunConfig(
            model="bench", base_url=base_url, api_key="bench-key", output_file=f"{tmp}/out.jsonl", workers=1,
            quiet=True, env=env, verify="bash tests/test.sh", verify_in=verify_in, samples=samples,
        )  # fmt: skip
        prompts = mini_swe_runner.prompts_from_rows([mini_swe_runner.InputRow("row", "row", {"prompt": "fix"})])
        started = time.monotonic()
        outcome = asyncio.run(mini_swe_runner.run_batch(config, prompts))
        wall = time.monotonic() - started
    passed = outcome.summary["verification"]["passed"]
    if passed != samples:
        raise SystemExit(f"{env.env_type} {verify_in}: {passed} of {samples} samples passed; the bench is broken")
    return wall / samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="docker,local,bwrap")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    repo = local_repo()
    try:
        with ScriptedModelServer(SCRIPT) as server:
            print(f"{'backend':8} {'sandbox s/sample':>17} {'fresh s/sample':>15} {'fresh/sandbox':>14}")
            for backend in args.backends.split(","):
                env = settings(backend, repo)
                sandbox = min(per_sample(server.base_url, env, "sandbox", args.samples) for _ in range(args.repeat))
                fresh = min(per_sample(server.base_url, env, "fresh", args.samples) for _ in range(args.repeat))
                print(f"{backend:8} {sandbox:17.3f} {fresh:15.3f} {fresh / sandbox:13.2f}x")
    finally:
        shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    main()
