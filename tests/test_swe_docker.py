"""The SWE job on Docker: a miniature SWE-bench run with the README's exact commands, and the four attacks on the
verifier (a post-checkout hook, a background rewriter, a PATH shim, a commit of edited tests).

The instance images are built from the test rootfs image (tests/docker_support.py: git, python and pytest from
Debian's archive, then one image per instance with its repository committed in /testbed), nothing by hand."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, RUNNER, clean_environ, make_config, read_jsonl
from docker_support import docker_engine, docker_settings, swe_instance_image  # noqa: F401
from model_server import ScriptedModelServer, assistant_turns, per_conversation, reply, tool_call

import mini_swe_runner

pytestmark = pytest.mark.usefixtures("docker_engine")

# ---------------------------------------------------------------------------------------------------------------
# The miniature SWE-bench: one small Python repository, three instances, each with its bug, test_patch and tests
# ---------------------------------------------------------------------------------------------------------------

OPS = """def add(a, b):
    return a + b


def sub(a, b):
    return a - b


def mul(a, b):
    return a * b


def clamp(value, low, high):
    return max(low, min(value, high))
"""
TEST_OPS = """from calc.ops import add


def test_add():
    assert add(2, 3) == 5
"""
REPO = {
    ".gitignore": "__pycache__/\n.pytest_cache/\n",
    "calc/__init__.py": "",
    "calc/ops.py": OPS,
    "calc/tests/__init__.py": "",
    "calc/tests/test_ops.py": TEST_OPS,
}
INSTANCES = {
    # instance_id: (the bug, the tests its test_patch brings as {path: new text}, FAIL_TO_PASS)
    "mini__calc-1": (
        ("return a - b", "return a + b"),
        {"calc/tests/test_ops.py": TEST_OPS.replace("import add", "import add, sub")
         + "\n\ndef test_sub():\n    assert sub(5, 3) == 2\n"},
        ["calc/tests/test_ops.py::test_sub"],
    ),
    "mini__calc-2": (
        ("return max(low, min(value, high))", "return max(low, value)"),
        {"calc/tests/test_clamp.py": "from calc.ops import clamp\n\n\ndef test_clamp_high():\n"
         "    assert clamp(9, 0, 5) == 5\n"},
        ["calc/tests/test_clamp.py::test_clamp_high"],
    ),
    "mini__calc-3": (
        ("return a * b", "return a * b + 1"),
        {"calc/tests/test_ops.py": TEST_OPS.replace("import add", "import add, mul")
         + "\n\ndef test_mul():\n    assert mul(2, 3) == 6\n"},
        ["calc/tests/test_ops.py::test_mul"],
    ),
}  # fmt: skip


def git_diff(tmp: Path, before: dict[str, str], after: dict[str, str]) -> str:
    """The git diff that turns the files ``before`` into ``after``, as SWE-bench stores its patches."""
    repo = tmp / f"diff-{len(list(tmp.iterdir()))}"
    for path, text in before.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}  # fmt: skip
    subprocess.run("git init -q && git add -A && git commit -qm base", shell=True, cwd=repo, env=env, check=True)
    for path, text in after.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    return subprocess.run(["git", "diff", "--cached"], cwd=repo, check=True, capture_output=True, text=True).stdout


def published_image_name(instance_id: str) -> str:
    """What the README's first step names an instance's image (the published SWE-bench naming)."""
    return f"swebench/sweb.eval.x86_64.{instance_id.replace('__', '_1776_')}:latest".lower()


@pytest.fixture(scope="module")
def mini_swe_bench(tmp_path_factory) -> list[dict]:
    """SWE-bench-style rows, each instance's image built and tagged with the published name."""
    tmp = tmp_path_factory.mktemp("mini-swe-bench")
    rows = []
    for instance_id, ((good, bad), tests, fail_to_pass) in INSTANCES.items():
        files = {**REPO, "calc/ops.py": OPS.replace(good, bad)}
        image, base_commit = swe_instance_image(instance_id.replace("__", "-"), files)
        subprocess.run(["docker", "tag", image, published_image_name(instance_id)], check=True)
        rows.append(
            {
                "instance_id": instance_id,
                "repo": "mini/calc",
                "base_commit": base_commit,
                "problem_statement": f"{instance_id}: calc.ops gives wrong results; fix the function.",
                "patch": git_diff(tmp, files, {"calc/ops.py": OPS}),
                "test_patch": git_diff(tmp, files, tests),
                "FAIL_TO_PASS": json.dumps(fail_to_pass),
                "PASS_TO_PASS": json.dumps(["calc/tests/test_ops.py::test_add"]),
                "version": "1.0",
            }
        )
    return rows


def readme_blocks() -> tuple[str, str]:
    """The worked example's python and bash blocks, as the README prints them."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Worked example: a SWE-bench-style parquet file") :]
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return python, bash


def swe_model(rows: list[dict]):
    """Fixes mini__calc-1 with sed, mini__calc-2 by applying its gold patch, and leaves mini__calc-3 alone."""
    gold = {row["instance_id"]: row["patch"] for row in rows}
    fixes = {
        "mini__calc-1": "sed -i '6s/a + b/a - b/' calc/ops.py && sed -n 5,6p calc/ops.py",
        "mini__calc-2": f"git apply <<'EOF'\n{gold['mini__calc-2']}EOF",
        "mini__calc-3": "ls calc",
    }

    def choose(request: dict):
        instance_id = re.search(r"mini__calc-\d", request["messages"][1]["content"]).group(0)
        turn = assistant_turns(request)
        if turn == 0:
            return reply(None, [tool_call(fixes[instance_id])])
        if turn == 1:  # an agent runs the tests it has (creating __pycache__, which .gitignore keeps out)
            return reply(None, [tool_call("python -m pytest -q calc; true")])
        return reply("done")

    return choose


def test_the_readme_worked_example_on_a_miniature_swe_bench(tmp_path, mini_swe_bench):
    import pandas as pd

    pd.DataFrame(mini_swe_bench).to_parquet(tmp_path / "swe_bench_lite_test.parquet")
    python, bash = readme_blocks()
    subprocess.run([sys.executable, "-c", python], cwd=tmp_path, check=True)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "mini-swe-runner").write_text(f'#!/bin/sh\nexec {shlex.join(RUNNER)} "$@"\n')
    (shim / "mini-swe-runner").chmod(0o755)
    with ScriptedModelServer(swe_model(mini_swe_bench)) as server:
        environ = clean_environ(
            PATH=f"{shim}:{os.environ['PATH']}",
            OPENAI_BASE_URL=server.base_url,
            OPENAI_API_KEY="sk-test-0123456789abcdef",
            OPENAI_MODEL="scripted-model",
        )
        result = subprocess.run(["bash", "-c", bash], cwd=tmp_path, env=environ, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_jsonl(tmp_path / "swe.jsonl")
    by_id: dict[str, list[dict]] = {}
    for record in records:
        by_id.setdefault(record["task_id"], []).append(record)
    for instance_id in ("mini__calc-1", "mini__calc-2"):  # fixed at the first sample: --until_passed 1
        assert [r["reward"] for r in by_id[instance_id]] == [1.0], by_id[instance_id][0]["verification"]
        patch = by_id[instance_id][0]["patch"]
        assert "diff --git a/calc/ops.py b/calc/ops.py" in patch and "calc/tests" not in patch
    assert "+    return a - b" in by_id["mini__calc-1"][0]["patch"]
    assert "+    return max(low, min(value, high))" in by_id["mini__calc-2"][0]["patch"]
    unfixed = by_id["mini__calc-3"]
    assert [r["reward"] for r in unfixed] == [0.0] * 4 and all(r["patch"] == "" for r in unfixed)
    assert all(r["verification"]["error"] is None for r in unfixed)
    assert "1 failed, 1 passed" in unfixed[0]["verification"]["output"]  # test_mul failed, test_add passed
    fields = json.loads(unfixed[0]["metadata"]["prompt_fields"])
    assert "patch" not in fields and "test_patch" in fields and "FAIL_TO_PASS" in fields  # the gold patch left out
    stats = json.loads((tmp_path / "swe-stats.json").read_text())["verification"]
    assert stats["prompts_solved"] == 2 and stats["verifier_errors"] == 0
    # The README's next step: the predictions for the official harness, exported as it writes them.
    export_line = readme_export_line()
    exported = subprocess.run(["bash", "-c", export_line], cwd=tmp_path, env=environ, capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr
    predictions = {p["instance_id"]: p for p in read_jsonl(tmp_path / "preds.jsonl")}
    assert set(predictions) == {"mini__calc-1", "mini__calc-2", "mini__calc-3"}
    assert predictions["mini__calc-1"]["model_patch"] == by_id["mini__calc-1"][0]["patch"]
    assert predictions["mini__calc-3"]["model_patch"] == ""  # no patch: the harness counts it as empty
    assert {p["model_name_or_path"] for p in predictions.values()} == {"scripted-model"}


def readme_export_line() -> str:
    """The worked example's `mini-swe-runner export ... --format swebench` line, as the README prints it."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Worked example: a SWE-bench-style parquet file") :]
    return re.search(r"^mini-swe-runner export .*--format swebench.*$", section, re.M).group(0)


def test_the_readme_verifier_judges_the_gold_patch_and_no_patch_and_flags_a_broken_task(tmp_path, out, mini_swe_bench):
    # --verify_baseline on the same rows: before any agent, every instance's FAIL_TO_PASS fails (a valid task);
    # a row whose test_patch does not apply cannot be judged, and is flagged.
    _, bash = readme_blocks()
    verify = subprocess.run(
        ["bash", "-c", bash.split("\nmini-swe-runner ")[0] + '\nprintf %s "$VERIFY"'], capture_output=True, text=True
    ).stdout
    rows = [dict(row, image=published_image_name(row["instance_id"])) for row in mini_swe_bench]
    rows.append(dict(rows[0], instance_id="mini__broken", test_patch="not a patch\n"))
    script = per_conversation([reply(None, [tool_call(f"git apply <<'EOF'\n{rows[0]['patch']}EOF")]), reply("done")])
    with ScriptedModelServer(script) as server:
        config = make_config(
            server, out, env=docker_settings(cwd="/testbed"), verify_template=verify, verify_in="fresh",
            verify_baseline=True, workers=4,
        )  # fmt: skip
        loaded = mini_swe_runner.prompts_from_rows(
            (mini_swe_runner.InputRow(f"row {i}", f"row {i}", row) for i, row in enumerate(rows)),
            mini_swe_runner.RowFormat.from_config(config),
        )
        outcome = asyncio.run(mini_swe_runner.run_batch(config, loaded))
    by_id = {r["task_id"]: r for r in read_jsonl(out)}
    for instance_id in INSTANCES:
        assert by_id[instance_id]["verification"]["baseline"]["passed"] is False
        assert by_id[instance_id]["verification"]["baseline"]["exit_code"] == 1
    assert by_id["mini__calc-1"]["reward"] == 1.0  # the gold patch passes
    assert by_id["mini__calc-2"]["reward"] == 0.0  # calc-1's gold patch does not fix calc-2 (and applies there)
    broken = by_id["mini__broken"]["verification"]
    assert broken["baseline"]["error"] is not None and by_id["mini__broken"]["reward"] is None
    assert outcome.summary["verification"]["baseline_flagged"] == ["mini__broken"]


# ---------------------------------------------------------------------------------------------------------------
# The four attacks on a verifier that restores the tests and runs them
# ---------------------------------------------------------------------------------------------------------------

ATTACK_VERIFIER = "git checkout HEAD -- tests/ && sleep 0.5 && bash tests/test.sh"
"""The sleep stands for a test suite's start-up: the time a loop the agent left running has to rewrite the tests."""
ATTACKS = {
    "post-checkout hook": (
        "printf '#!/bin/sh\\necho exit 0 > tests/test.sh\\n' > .git/hooks/post-checkout && "
        "chmod +x .git/hooks/post-checkout && echo exit 0 > tests/test.sh"
    ),
    "background rewriter": (
        "nohup bash -c 'while :; do echo exit 0 > tests/test.sh; sleep 0.005; done' >/dev/null 2>&1 &"
    ),
    "PATH shim": "printf '#!/bin/sh\\nexit 0\\n' > /usr/local/bin/grep && chmod +x /usr/local/bin/grep",
    "commit of edited tests": "echo exit 0 > tests/test.sh && git commit -qam 'tests pass'",
}


@pytest.fixture(scope="module")
def attack_image() -> str:
    image, _ = swe_instance_image("attack", {"src.txt": "bug\n", "tests/test.sh": "grep -qx fixed src.txt\n"})
    return image


def run_attack(out: Path, image: str, command: str, verify_in: str) -> dict:
    with ScriptedModelServer(per_conversation([reply(None, [tool_call(command)]), reply("done")])) as server:
        config = make_config(server, out, env=docker_settings(image=image), verify=ATTACK_VERIFIER, verify_in=verify_in)
        prompts = mini_swe_runner.prompts_from_rows([mini_swe_runner.InputRow("row", "row", {"prompt": "fix"})])
        asyncio.run(mini_swe_runner.run_batch(config, prompts))
    [record] = read_jsonl(out)
    assert record["verification"]["error"] is None, record["verification"]
    return record


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_fresh_verification_defeats_every_attack(out, attack_image, attack):
    assert run_attack(out, attack_image, ATTACKS[attack], "fresh")["reward"] == 0.0


@pytest.mark.parametrize("attack", ["post-checkout hook", "background rewriter"])
def test_in_sandbox_verification_defeats_the_hook_and_the_rewriter(out, attack_image, attack):
    assert run_attack(out, attack_image, ATTACKS[attack], "sandbox")["reward"] == 0.0


def test_a_path_shim_games_in_sandbox_verification_which_is_why_fresh_exists(out, attack_image):
    # The limit of verifying in the agent's own container, kept visible (and proof that the attack is real).
    assert run_attack(out, attack_image, ATTACKS["PATH shim"], "sandbox")["reward"] == 1.0


def test_a_real_fix_passes_fresh_verification_with_its_patch(out, attack_image):
    record = run_attack(out, attack_image, "echo fixed > src.txt", "fresh")
    assert record["reward"] == 1.0 and "+fixed" in record["patch"]


def test_fresh_verification_of_an_image_whose_tree_was_not_clean(out):
    # An install step's leftovers (untracked, not ignored) and a tracked file changed after the commit: the patch
    # is the agent's work alone, so it applies to a fresh container of the same image.
    image, _ = swe_instance_image(
        "dirty",
        {"src.txt": "bug\n", "tests/test.sh": "grep -qx fixed src.txt\n", "setup.cfg": "[a]\n"},
        leftovers={"build.log": "built\n", "setup.cfg": "[a]\nversion = 2\n"},
    )
    record = run_attack(out, image, "echo fixed > src.txt && cat build.log", "fresh")
    assert record["reward"] == 1.0, record["verification"]
    assert "build.log" not in record["patch"] and "setup.cfg" not in record["patch"] and "+fixed" in record["patch"]
