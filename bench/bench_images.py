"""Images at SWE-bench scale: pull-ahead against the serial pre-pull it replaced, side by side in one run.

    python bench/bench_images.py [--tasks 40] [--images 12] [--layer_mb 6] [--mbps 12] [--workers 4] [--repeat 2]

A real registry on 127.0.0.1 (Debian's docker-registry, as in the tests) is seeded with ``--images`` images, each the
test image plus ``--layer_mb`` MB of its own; a relay in front of it passes ``--mbps`` MB/s per connection (a
simulated registry link). ``--tasks`` tasks use the images in order (consecutive tasks share an image, as several
samples of one instance do), each making two model calls (0.1 s of latency each) and one command in its container.

- serial: what the runner did before: every image pulled one after another (the SDK calls its preflight made),
  then the run with everything present.
- ahead: the runner as it is: images pulled in the background, ``--pull_workers 2``, in the order of use.

Prints the time to the first task's first model call and the total wall time of each, and the ratios. Needs a
running engine and the test image (scripts/docker-engine.sh) and /usr/bin/docker-registry. Prints numbers; never
passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_config  # noqa: E402
from docker_support import engine  # noqa: E402
from model_server import ScriptedModelServer, per_conversation, reply, tool_call  # noqa: E402
from registry_support import Registry, Throttle, forget_local, seed, seeded_image  # noqa: E402

import mini_swe_runner  # noqa: E402
from environments import EnvSettings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--layer_mb", type=float, default=6)
    parser.add_argument("--mbps", type=float, default=12)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="msr-bench-registry-"))
    registry = Registry(root)
    registry.start()
    print(f"seeding {args.images} images of {args.layer_mb:g} MB each into the registry on {registry.host} ...")
    seed(registry, args.images, int(args.layer_mb * 1e6))
    throttle = Throttle(registry.host, args.mbps * 1e6)
    images = [seeded_image(throttle.host, n) for n in range(args.images)]
    step = [reply(None, [tool_call("cat /layer-id")]), reply("done")]
    script = per_conversation(step)
    first_calls: list[float] = []

    def scripted(request: dict):
        if not first_calls:
            first_calls.append(time.monotonic())
        return script(request)

    figures: dict[str, list[tuple[float, float]]] = {"serial": [], "ahead": []}
    try:
        with ScriptedModelServer(scripted, latency=0.1) as server, tempfile.TemporaryDirectory() as work:
            for _ in range(args.repeat):
                for mode in ("serial", "ahead"):
                    first_calls.clear()
                    forget_local(throttle.host)
                    started = time.monotonic()
                    total = one_run(server, images, args, mode, Path(work) / "out.jsonl")
                    figures[mode].append((first_calls[0] - started, total))
    finally:
        throttle.close()
        registry.stop()
        forget_local(throttle.host)
        forget_local(registry.host)

    print(f"{args.tasks} tasks over {args.images} images, {args.layer_mb:g} MB each at {args.mbps:g} MB/s, "
          f"{args.workers} workers; runs: {args.repeat} of each, interleaved")  # fmt: skip
    medians = {}
    for mode, runs in figures.items():
        first = statistics.median(r[0] for r in runs)
        total = statistics.median(r[1] for r in runs)
        medians[mode] = (first, total)
        listed = ", ".join(f"{r[0]:.2f}/{r[1]:.2f}" for r in runs)
        print(f"{mode:7} first task {first:6.2f} s   total {total:6.2f} s   (runs first/total: {listed})")
    print(f"time to first task, ahead/serial = {medians['ahead'][0] / medians['serial'][0]:.3f}")
    print(f"total wall,         ahead/serial = {medians['ahead'][1] / medians['serial'][1]:.3f}")


def one_run(server, images: list[str], args, mode: str, out: Path) -> float:
    """One run's total seconds, from before its first pull to its end."""
    lines = [json.dumps({"prompt": f"task {n}", "id": f"t{n}", "image": images[n * len(images) // args.tasks]})
             for n in range(args.tasks)]  # fmt: skip
    prompts = mini_swe_runner.parse_prompt_lines(lines, "bench")
    started = time.monotonic()
    if mode == "serial":
        for image in images:  # what the old preflight did: one image after another, before any task
            repository, tag = image.rsplit(":", 1)
            engine().api.pull(repository, tag=tag)
        settings = EnvSettings(env_type="docker", pull="never", concurrency=args.workers)
    else:
        settings = EnvSettings(env_type="docker", pull="missing", pull_workers=2, concurrency=args.workers)
    out.unlink(missing_ok=True)
    config = make_config(server, out, env=settings, workers=args.workers)
    outcome = asyncio.run(mini_swe_runner.run_batch(config, prompts))
    assert outcome.exit_code == 0, outcome.error
    return time.monotonic() - started


if __name__ == "__main__":
    main()
