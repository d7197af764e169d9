"""The SWE job on the local backend: the patch, verifier health, the baseline and verification the agent cannot game.

Real git repositories, real bash, the real openai SDK against the scripted model server. The Docker side (the
miniature SWE-bench and the attacks that need an image) is tests/test_swe_docker.py."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from conftest import make_config, read_jsonl
from model_server import ScriptedModelServer, per_conversation, reply, tool_call
from ssh_support import sshd_fixture  # noqa: F401

import mini_swe_runner
from environments import EnvSettings

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}


def git(repo: Path, *args: str) -> str:
    import os

    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


def make_repo(path: Path) -> tuple[Path, str]:
    """A repository whose test fails until src.txt says fixed; tests/test.sh is what a verifier restores."""
    path.mkdir()
    (path / "src.txt").write_text("bug\n")
    (path / "tests").mkdir()
    (path / "tests" / "test.sh").write_text("grep -qx fixed src.txt\n")
    git(path, "init", "-q")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "start")
    return path, git(path, "rev-parse", "HEAD").strip()


def agent(*commands: str):
    """A scripted model that runs ``commands`` one per turn, then says it is done."""
    return per_conversation([reply(None, [tool_call(c)]) for c in commands] + [reply("done")])


def run(server, out: Path, repo: Path | None, prompts: list[dict], env=None, **overrides) -> tuple[object, list[dict]]:
    env = env or EnvSettings(cwd=None if repo is None else str(repo))
    config = make_config(server, out, env=env, workers=1, **overrides)
    for index, row in enumerate(prompts):
        row.setdefault("id", f"t{index}")
    loaded = mini_swe_runner.prompts_from_rows(
        mini_swe_runner.InputRow(f"row {i}", f"row {i}", row) for i, row in enumerate(prompts)
    )
    outcome = asyncio.run(mini_swe_runner.run_batch(config, loaded))
    return outcome, read_jsonl(out)


# ---------------------------------------------------------------------------------------------------------------
# The patch
# ---------------------------------------------------------------------------------------------------------------


def test_patch_is_the_diff_from_the_starting_commit_with_new_binary_and_committed_files(tmp_path, out):
    repo, start = make_repo(tmp_path / "repo")
    commands = [
        "echo fixed > src.txt",
        "echo new > added.txt && printf 'a\\0b\\377' > blob.bin",
        "git add -A && git -c user.name=a -c user.email=a@b commit -qm mine && echo later > later.txt",
        "echo edited > tests/test.sh",  # a file of the row's test_patch: the verifier restores it
    ]
    test_patch = "--- a/tests/test.sh\n+++ b/tests/test.sh\n@@ -1 +1 @@\n-x\n+y\n"
    with ScriptedModelServer(agent(*commands)) as server:
        _, records = run(server, out, repo, [{"prompt": "fix", "test_patch": test_patch}], collect_patch=True)
    patch = records[0]["patch"]
    assert records[0]["verification"] is None and isinstance(patch, str)
    assert "GIT binary patch" in patch and "tests/test.sh" not in patch
    for name in ("src.txt", "added.txt", "blob.bin", "later.txt"):
        assert f"b/{name}" in patch
    # It applies to a clean checkout of the starting commit and gives the agent's files.
    clean = tmp_path / "clean"
    git(tmp_path, "clone", "-q", str(repo), str(clean))
    git(clean, "checkout", "-q", start)
    (tmp_path / "p.diff").write_text(patch)
    git(clean, "apply", str(tmp_path / "p.diff"))
    assert (clean / "src.txt").read_text() == "fixed\n" and (clean / "blob.bin").read_bytes() == b"a\0b\xff"
    assert (clean / "tests" / "test.sh").read_text() == "grep -qx fixed src.txt\n"
    assert git(repo, "status", "--porcelain") != ""  # the agent's own index and tree were left alone
    assert "later.txt" in git(repo, "status", "--porcelain")


def test_patch_is_null_without_a_repository_and_absent_without_the_flag(tmp_path, out):
    with ScriptedModelServer(agent("echo hi > f.txt")) as server:
        _, records = run(server, out, None, [{"prompt": "no repo"}], collect_patch=True)
    assert records[0]["patch"] is None
    repo, _ = make_repo(tmp_path / "repo")
    with ScriptedModelServer(agent("echo fixed > src.txt")) as server:
        _, records = run(server, tmp_path / "o2.jsonl", repo, [{"prompt": "no flag"}])
    assert records[0]["patch"] is None


def test_a_patch_over_the_limit_is_cut_with_a_marker(tmp_path, out):
    repo, _ = make_repo(tmp_path / "repo")
    big = "head -c 1200000 /dev/urandom | base64 > big.txt"
    with ScriptedModelServer(agent(big)) as server:
        _, records = run(server, out, repo, [{"prompt": "big"}], collect_patch=True)
    patch = records[0]["patch"]
    assert patch.endswith("bytes]\n") and "[mini-swe-runner: patch cut at 1000000 of " in patch
    assert len(patch.encode()) < 1_000_100


# ---------------------------------------------------------------------------------------------------------------
# Verifier health and the baseline
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [126, 127, 4, 5])
def test_a_verifier_that_cannot_judge_is_no_reward(tmp_path, out, code):
    with ScriptedModelServer(agent("true")) as server:
        outcome, records = run(server, out, None, [{"prompt": "p", "verify": f"exit {code}"}])
    verification = records[0]["verification"]
    assert records[0]["reward"] is None and verification["exit_code"] == code
    assert "could not judge" in verification["error"]
    assert outcome.summary["verification"]["verifier_errors"] == 1


def test_verify_failure_codes_make_a_code_a_real_failure(tmp_path, out):
    with ScriptedModelServer(agent("true")) as server:
        outcome, records = run(server, out, None, [{"prompt": "p", "verify": "exit 5"}], verify_failure_codes=(5,))
    assert records[0]["reward"] == 0.0 and records[0]["verification"]["error"] is None
    assert outcome.summary["verification"]["verifier_errors"] == 0


def test_verify_failure_codes_flag_is_checked(tmp_path):
    from conftest import run_cli

    result = run_cli(
        [
            "--task",
            "x",
            "--verify",
            "true",
            "--verify_failure_codes",
            "4,9",
            "--model",
            "m",
            "--base_url",
            "http://127.0.0.1:9/v1",
            "--api_key",
            "sk-x",
        ]
    )
    assert result.returncode != 0 and "--verify_failure_codes: '9'" in result.stderr
    assert "Traceback" not in result.stderr


def test_baseline_flags_a_prompt_whose_verifier_passes_before_the_agent(tmp_path, out):
    repo, _ = make_repo(tmp_path / "repo")
    rows = [
        {"id": "already", "prompt": "nothing to do", "verify": "true"},
        {"id": "real", "prompt": "fix it", "verify": "bash tests/test.sh", "cwd": str(repo)},
    ]
    with ScriptedModelServer(agent("echo fixed > src.txt")) as server:
        outcome, records = run(server, out, None, rows, verify_baseline=True)
    by_id = {r["task_id"]: r for r in records}
    assert by_id["already"]["verification"]["baseline"]["passed"] is True
    assert by_id["real"]["verification"]["baseline"] == {
        "passed": False,
        "exit_code": 1,
        "duration_s": by_id["real"]["verification"]["baseline"]["duration_s"],
        "error": None,
    }
    assert by_id["real"]["reward"] == 1.0
    assert outcome.summary["verification"]["baseline_flagged"] == ["already"]
    assert "baseline: 1 prompt(s)" in mini_swe_runner.summary_text(outcome.summary, str(out))


# ---------------------------------------------------------------------------------------------------------------
# Gaming the verifier
# ---------------------------------------------------------------------------------------------------------------

RESTORE_VERIFIER = "git checkout {rev} -- tests/ && sleep 0.5 && bash tests/test.sh"
"""The sleep stands for a test suite's start-up: the time a loop the agent left running has to rewrite the tests."""
HOOK = (
    "printf '#!/bin/sh\\necho exit 0 > tests/test.sh\\n' > .git/hooks/post-checkout && "
    "chmod +x .git/hooks/post-checkout && echo exit 0 > tests/test.sh"
)
REWRITER = "nohup bash -c 'while :; do echo exit 0 > tests/test.sh; sleep 0.005; done' >/dev/null 2>&1 &"
COMMIT = "echo exit 0 > tests/test.sh && git -c user.name=a -c user.email=a@b commit -qam 'tests pass'"


@pytest.mark.parametrize("attack", [HOOK, REWRITER], ids=["post-checkout hook", "background rewriter"])
def test_attacks_on_the_verifier_in_the_agents_sandbox_get_nothing(tmp_path, out, attack):
    repo, start = make_repo(tmp_path / "repo")
    verify = RESTORE_VERIFIER.format(rev=start)
    with ScriptedModelServer(agent(attack)) as server:
        _, records = run(server, out, repo, [{"prompt": "p", "verify": verify}])
    assert records[0]["verification"]["error"] is None
    assert records[0]["reward"] == 0.0


def test_the_attacks_work_without_the_defences(tmp_path):
    # The same attacks, by hand, on a plain shell: they would have passed (so the tests above can fail).
    repo, start = make_repo(tmp_path / "repo")
    subprocess.run(["bash", "-c", HOOK], cwd=repo, check=True)
    verify = RESTORE_VERIFIER.format(rev=start)
    assert subprocess.run(["bash", "-c", verify], cwd=repo).returncode == 0
    repo2, _ = make_repo(tmp_path / "repo2")
    subprocess.run(["bash", "-c", COMMIT], cwd=repo2, check=True, env=None)
    assert (
        subprocess.run(["bash", "-c", "git checkout HEAD -- tests/ && bash tests/test.sh"], cwd=repo2).returncode == 0
    )


@pytest.mark.parametrize("attack", [HOOK, REWRITER, COMMIT], ids=["hook", "rewriter", "commit"])
def test_fresh_verification_gets_nothing_from_the_attacks(tmp_path, out, attack):
    repo, _ = make_repo(tmp_path / "repo")
    with ScriptedModelServer(agent(attack)) as server:
        _, records = run(
            server,
            out,
            repo,
            [{"prompt": "p", "verify": "git checkout HEAD -- tests/ && bash tests/test.sh"}],
            verify_in="fresh",
        )
    assert records[0]["verification"]["error"] is None, records[0]["verification"]
    assert records[0]["reward"] == 0.0


@pytest.mark.parametrize("backend", ["bwrap", "ssh"])
def test_the_other_backends_end_the_agents_processes_and_verify_fresh(tmp_path, out, backend, request):
    # Not under /tmp: bwrap gives its sandbox a private /tmp (the fresh sandbox clones the repository from here).
    repo, _ = make_repo(Path(tmp_path_outside_tmp(request, tmp_path)) / "repo")
    env = request.getfixturevalue("sshd").settings(cwd=str(repo)) if backend == "ssh" else None
    env = env or EnvSettings(env_type="bwrap", cwd=str(repo))
    verify = "git checkout HEAD -- tests/ && sleep 0.5 && bash tests/test.sh"
    with ScriptedModelServer(agent(REWRITER)) as server:
        _, records = run(server, out, repo, [{"prompt": "p", "verify": verify}], env=env)
    assert records[0]["verification"]["error"] is None and records[0]["reward"] == 0.0
    repo2, _ = make_repo(Path(tmp_path_outside_tmp(request, tmp_path)) / "repo2")
    env = dataclasses_replace(env, cwd=str(repo2))
    with ScriptedModelServer(agent(COMMIT)) as server:
        _, records = run(
            server, tmp_path / "o2.jsonl", repo2, [{"prompt": "p", "verify": verify}], env=env, verify_in="fresh"
        )
    assert records[0]["verification"]["error"] is None, records[0]["verification"]
    assert records[0]["reward"] == 0.0 and "tests/test.sh" in records[0]["patch"]


def test_modal_ends_the_agents_processes_by_their_task_token(tmp_path):
    # Modal has no supervisor and no restart: the processes are found by the MSR_TASK token every command of the
    # task hands down (the fake runs real bash on this machine, so only this task's processes may die).
    from fake_modal import FakeModal

    from environments import ModalEnvironment

    settings = EnvSettings(env_type="modal")
    env = ModalEnvironment(settings, task_id="t1", sdk=FakeModal(tmp_path / "sandboxes"))
    bystander = subprocess.Popen(["sleep", "30"])

    async def scenario() -> tuple[str, str]:
        await env.start()
        try:
            loop = "nohup bash -c 'while :; do date +%s%N > beat; sleep 0.01; done' >/dev/null 2>&1 &"
            await env.execute(loop, 10)
            await env.execute("sleep 0.2", 10)
            await env.end_processes()
            first = (await env.execute("cat beat", 10)).output
            await env.execute("sleep 0.3", 10)
            return first, (await env.execute("cat beat", 10)).output
        finally:
            await env.close()

    try:
        first, later = asyncio.run(scenario())
        assert later.splitlines()[0] == first.strip()  # the loop no longer beats
        assert bystander.poll() is None  # a process of this machine outside the task lives on
    finally:
        bystander.kill()


def tmp_path_outside_tmp(request, tmp_path: Path) -> Path:
    import shutil
    import tempfile

    # Not under the checkout: CI may clone it under /tmp, which is private inside a bwrap sandbox.
    path = Path(tempfile.mkdtemp(prefix="msr-test-swe-", dir="/var/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


def dataclasses_replace(settings: EnvSettings, **changes) -> EnvSettings:
    import dataclasses

    return dataclasses.replace(settings, **changes)


def test_the_patch_and_fresh_verification_start_from_the_tree_as_the_task_found_it(tmp_path, out):
    # Uncommitted and untracked files before the agent (a build's leftovers) are neither in the patch nor missing
    # from the fresh directory the verifier runs in.
    repo, _ = make_repo(tmp_path / "repo")
    (repo / "leftover.txt").write_text("built\n")
    (repo / "tests" / "test.sh").write_text("test -f leftover.txt && grep -qx fixed src.txt\n")
    with ScriptedModelServer(agent("echo fixed > src.txt")) as server:
        _, records = run(server, out, repo, [{"prompt": "p", "verify": "bash tests/test.sh"}], verify_in="fresh")
    patch = records[0]["patch"]
    assert records[0]["reward"] == 1.0, records[0]["verification"]
    assert "+fixed" in patch and "leftover.txt" not in patch and "tests/test.sh" not in patch


def test_fresh_verification_passes_a_real_fix_and_records_its_patch(tmp_path, out):
    repo, _ = make_repo(tmp_path / "repo")
    with ScriptedModelServer(agent("echo fixed > src.txt")) as server:
        _, records = run(server, out, repo, [{"prompt": "p", "verify": "bash tests/test.sh"}], verify_in="fresh")
    assert records[0]["reward"] == 1.0, records[0]["verification"]
    assert "+fixed" in records[0]["patch"]


# ---------------------------------------------------------------------------------------------------------------
# The record: old records without the new keys still load and export
# ---------------------------------------------------------------------------------------------------------------


def test_records_with_and_without_patch_and_baseline_load_in_one_schema(tmp_path, monkeypatch):
    import json

    import trajectory

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    datasets = pytest.importorskip("datasets")
    verification = {"passed": True, "exit_code": 0, "output": "", "duration_s": 1.0, "error": None}
    new = trajectory.build_record(
        prompt_index=0, task_id="a", conversations=[{"from": "human", "value": "x"}], completed=True,
        exit_reason="completed", api_calls=1, tool_stats=trajectory.empty_tool_stats(),
        usage=trajectory.empty_usage(), duration_s=1.0, error=None, metadata={},
        verification={**verification, "baseline": {"passed": False, "exit_code": 1, "duration_s": 0.5}},
        patch="diff --git a/x b/x\n",
    )  # fmt: skip
    old = {key: value for key, value in new.items() if key != "patch"}
    old["task_id"], old["verification"] = "b", verification  # written before patch and baseline existed
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(new) + "\n" + json.dumps(old) + "\n")
    loaded = datasets.load_dataset(
        "json", data_files=str(path), features=trajectory.record_features(), cache_dir=str(tmp_path / "c")
    )["train"]
    assert loaded["patch"] == ["diff --git a/x b/x\n", None]
    assert loaded["verification"][0]["baseline"]["exit_code"] == 1
    assert loaded["verification"][1]["baseline"] is None
    exported = trajectory.export_row(old, trajectory.ExportOptions())
    assert list(exported) == list(trajectory.RECORD_KEYS) and exported["patch"] is None


def test_a_verifier_that_could_not_judge_runs_again_on_resume(tmp_path, out):
    # The image lacked python (exit 127): once it is fixed, a rerun judges the sample instead of keeping a wrong 0.
    marker = tmp_path / "python-installed"
    verify = f"test -e {marker} || exit 127"
    with ScriptedModelServer(agent("true")) as server:
        _, first = run(server, out, None, [{"id": "t", "prompt": "p", "verify": verify}])
        marker.touch()
        outcome, records = run(server, out, None, [{"id": "t", "prompt": "p", "verify": verify}])
    assert first[0]["reward"] is None and outcome.summary["tasks"] == 1
    assert [r["reward"] for r in records] == [1.0]
