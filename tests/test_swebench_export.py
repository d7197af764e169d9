"""`export --format swebench`: the predictions file the official SWE-bench harness reads.

The harness's reading rules, from its source (SWE-bench/SWE-bench, swebench/harness/utils.py
get_predictions_from_file and run_evaluation.py, August 2026), are reimplemented in `harness_reads` below: the
path must end .json (a JSON list, or an object whose values are the predictions) or .jsonl (json.loads of every
line, blank lines included); the file is opened without an encoding; every prediction is an object with an
instance_id; the list becomes a dict by instance_id (a second prediction of an instance replaces the first); a
model_patch of "" or null is an empty patch; the patch is written out with write_text and applied with git apply.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import make_config, run_cli, run_prompts
from model_server import ScriptedModelServer, reply

import trajectory


def harness_reads(path: Path, encoding: str = "utf-8") -> dict[str, dict]:
    """The predictions as the harness loads them: {instance_id: prediction}. ``encoding`` stands for the locale's
    (the harness passes none to open()). Fails where the harness would raise."""
    name = str(path)
    with open(name, encoding=encoding) as handle:
        if name.endswith(".json"):
            predictions = json.load(handle)
            if isinstance(predictions, dict):
                predictions = list(predictions.values())
            assert isinstance(predictions, list)
        elif name.endswith(".jsonl"):
            predictions = [json.loads(line) for line in handle]
        else:
            raise AssertionError("the harness reads only .json or .jsonl")
    for prediction in predictions:
        assert isinstance(prediction, dict) and "instance_id" in prediction
    by_id = {prediction["instance_id"]: prediction for prediction in predictions}
    assert len(by_id) == len(predictions), "two predictions of one instance: the harness keeps only the last"
    for prediction in by_id.values():
        # run_instance and the report read these two; the evaluation skips an empty patch ("" or None).
        assert isinstance(prediction["model_name_or_path"], str) and prediction["model_name_or_path"]
        assert isinstance(prediction["model_patch"], str) and prediction["model_patch"] != ""
    return by_id


def record(
    task_id: str,
    passed: bool | None,
    patch: str | None,
    *,
    sample_index: int = 0,
    model: str = "org/model-7b",
    fields: dict | None = None,
    with_patch_key: bool = True,
) -> dict:
    """A record as the runner writes it, with the top-level ``patch`` key (after ``error``, before ``metadata``)."""
    verification = None
    if passed is not None:
        verification = {"passed": passed, "exit_code": 0 if passed else 1, "output": "", "duration_s": 0.1}
    built = trajectory.build_record(
        prompt_index=0,
        task_id=task_id,
        sample_index=sample_index,
        conversations=[{"from": "system", "value": "s"}, {"from": "human", "value": "fix it"}],
        completed=True,
        exit_reason="completed",
        api_calls=1,
        tool_stats=trajectory.empty_tool_stats(),
        usage=trajectory.empty_usage(),
        duration_s=1,
        error=None,
        verification=verification,
        metadata={"model": model, "env_type": "docker", "image": "img", "timestamp": "t", "prompt_fields": fields},
    )
    if not with_patch_key:  # a record from before patches were collected
        return built
    metadata = built.pop("metadata")
    return {**built, "patch": patch, "metadata": metadata}


def write(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(trajectory.record_line(r) for r in records))
    return path


def export(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return run_cli(["export", *args], **kwargs)


def patch_of(name: str) -> str:
    return f"diff --git a/{name} b/{name}\n--- a/{name}\n+++ b/{name}\n@@ -1 +1 @@\n-old\n+new {name} é ✓\n"


SAMPLES = [
    # instance a: sample 0 failed, samples 1 and 2 passed -> sample 1 (pick first: sample 0)
    record("a", False, patch_of("a0"), sample_index=0),
    record("a", True, patch_of("a1"), sample_index=1),
    record("a", True, patch_of("a2"), sample_index=2),
    # instance b: nothing passed -> its first sample, whatever order the records come in
    record("b", False, patch_of("b1"), sample_index=1),
    record("b", None, patch_of("b0"), sample_index=0),
    # a row that had both an id and an instance_id: the instance_id is the harness's key
    record("row-7", True, patch_of("c"), fields={"instance_id": "astropy__astropy-12907", "repo": "astropy"}),
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_one_prediction_per_instance_loads_as_the_harness_reads_it(tmp_path, suffix):
    source = write(tmp_path / "run.jsonl", SAMPLES)
    out = tmp_path / f"preds{suffix}"
    result = export([str(source), "--format", "swebench", "--output_file", str(out)])
    assert result.returncode == 0, result.stderr
    # The harness opens the file in the locale's encoding: ASCII reads the same in every one.
    out.read_bytes().decode("ascii")
    predictions = harness_reads(out, encoding="latin-1")
    assert predictions == {
        "a": {"instance_id": "a", "model_name_or_path": "org/model-7b", "model_patch": patch_of("a1")},
        "b": {"instance_id": "b", "model_name_or_path": "org/model-7b", "model_patch": patch_of("b0")},
        "astropy__astropy-12907": {
            "instance_id": "astropy__astropy-12907",
            "model_name_or_path": "org/model-7b",
            "model_patch": patch_of("c"),
        },
    }
    assert harness_reads(out) == predictions
    assert "exported 3 predictions (one per instance) of 6 records" in result.stderr
    assert "3 other samples of an exported instance, not chosen" in result.stderr


def test_pick_first_only_and_model_name(tmp_path):
    source = write(tmp_path / "run.jsonl", SAMPLES)
    out = tmp_path / "first.jsonl"
    result = export([str(source), "--format", "swebench", "--pick", "first", "--output_file", str(out)])
    assert result.returncode == 0, result.stderr
    assert {k: p["model_patch"] for k, p in harness_reads(out).items()} == {
        "a": patch_of("a0"),
        "b": patch_of("b0"),
        "astropy__astropy-12907": patch_of("c"),
    }
    out = tmp_path / "passed.json"
    args = ["--only", "passed", "--model_name", "my run/v2", "--output_file", str(out)]
    result = export([str(source), "--format", "swebench", *args])
    assert result.returncode == 0, result.stderr
    predictions = harness_reads(out)
    assert sorted(predictions) == ["a", "astropy__astropy-12907"]  # b never passed
    assert {p["model_name_or_path"] for p in predictions.values()} == {"my run/v2"}
    assert "3 left out by the filters" in result.stderr


@pytest.mark.parametrize(
    "marker",
    [
        "\n[mini-swe-runner: patch cut at 60 of 120000 bytes]\n",  # the patch capture's size limit
        "\n[... 120000 characters omitted ...]\n+z\n",  # the head + tail rule of outputs
    ],
)
def test_a_truncated_or_missing_patch_is_left_out_and_counted(tmp_path, marker):
    cut = "diff --git a/x b/x\n+" + "y" * 50 + marker
    records = [
        record("cut", True, cut),
        record("cut", False, patch_of("cut-whole"), sample_index=1),  # not chosen: the passed one is
        record("none", True, None),  # no repository at the task's directory
        record("old", True, None, with_patch_key=False),  # a record from before patches: same as null
        record("empty", False, ""),  # the agent changed nothing: an empty patch is a real prediction
        record("whole", True, patch_of("whole")),
    ]
    source = write(tmp_path / "run.jsonl", records)
    out = tmp_path / "preds.json"
    result = export([str(source), "--format", "swebench", "--output_file", str(out)])
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [(r["instance_id"], r["model_patch"]) for r in rows] == [("empty", ""), ("whole", patch_of("whole"))]
    assert "1 instances left out: the chosen sample's patch was truncated" in result.stderr
    assert "2 instances left out: the chosen sample has no patch recorded" in result.stderr
    assert "first instance left out for its patch: cut" in result.stderr


def test_the_exported_patch_applies_as_the_harness_applies_it(tmp_path):
    """A real git diff (a changed file with non-ASCII text, a new file, no final newline) goes through a record
    and the export, is written out as the harness writes it and applies with `git apply` to a fresh clone."""
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str, cwd: Path = repo) -> str:
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b  # bug\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b  # fixed: é ✓\n")
    (repo / "notes.txt").write_text("no final newline")
    git("add", "-N", "notes.txt")
    diff = git("diff", "--binary")
    source = write(tmp_path / "run.jsonl", [record("calc__calc-1", True, diff)])
    out = tmp_path / "preds.jsonl"
    assert export([str(source), "--format", "swebench", "--output_file", str(out)]).returncode == 0
    prediction = harness_reads(out)["calc__calc-1"]
    assert prediction["model_patch"] == diff
    clone = tmp_path / "clone"
    git("clone", "-q", str(repo), str(clone), cwd=tmp_path)
    patch_file = tmp_path / "patch.diff"
    patch_file.write_text(prediction["model_patch"])
    git("apply", "--verbose", str(patch_file), cwd=clone)
    assert (clone / "calc.py").read_text() == (repo / "calc.py").read_text()
    assert (clone / "notes.txt").read_text() == "no final newline"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "swebench", "--output_file", "preds.txt"], "reads only .json or .jsonl predictions"),
        (["--format", "swebench", "--output_file", "p.json", "--empty_think"], "swebench writes patches"),
        (["--format", "swebench", "--output_file", "p.json", "--pick", "best"], "--pick must be one of passed, first"),
        (["--format", "swebench", "--output_file", "p.json", "--model_name", " "], "--model_name must not be empty"),
        (["--output_file", "p.jsonl", "--pick", "first"], "apply to --format swebench"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(tmp_path, args, message):
    write(tmp_path / "in.jsonl", SAMPLES)
    result = export(["in.jsonl", *args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_export_features_load_the_predictions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    datasets = pytest.importorskip("datasets")
    source = write(tmp_path / "run.jsonl", SAMPLES)
    out = tmp_path / "preds.jsonl"
    assert export([str(source), "--format", "swebench", "--output_file", str(out)]).returncode == 0
    rows = datasets.load_dataset(
        "json",
        data_files=[str(out)],
        split="train",
        features=trajectory.export_features("swebench"),
        cache_dir=str(tmp_path / "c"),
    )
    assert rows.to_list() == list(harness_reads(out).values())


def test_help_names_the_format_and_its_flags():
    result = export(["--help"])
    assert result.returncode == 0
    for text in ("swebench", "--pick", "--model_name"):
        assert text in result.stdout


def test_instance_ids_of_a_real_run(tmp_path):
    """Rows as SWE-bench gives them (instance_id, problem_statement) and a row that also has an id, run through the
    real batch driver with two samples each: one prediction per instance, under the row's instance_id."""
    rows = [
        json.dumps({"instance_id": "django__django-11099", "problem_statement": "fix the validator"}),
        json.dumps({"id": "row-2", "instance_id": "astropy__astropy-12907", "problem_statement": "fix the model"}),
    ]
    with ScriptedModelServer(lambda request: reply("done")) as server:
        _, records = run_prompts(make_config(server, tmp_path / "run.jsonl", samples=2), rows)
    assert sorted((r["task_id"], r["sample_index"]) for r in records) == [
        ("django__django-11099", 0),
        ("django__django-11099", 1),
        ("row-2", 0),
        ("row-2", 1),
    ]
    # What the patch capture adds (the swe branch): the top-level patch key, after error and before metadata.
    with_patch = []
    for r in records:
        metadata = r.pop("metadata")
        with_patch.append({**r, "patch": patch_of(f"{r['task_id']}-{r['sample_index']}"), "metadata": metadata})
    source = write(tmp_path / "with-patch.jsonl", with_patch)
    out = tmp_path / "preds.json"
    result = export([str(source), "--format", "swebench", "--output_file", str(out)])
    assert result.returncode == 0, result.stderr
    assert {k: p["model_patch"] for k, p in harness_reads(out).items()} == {
        "django__django-11099": patch_of("django__django-11099-0"),
        "astropy__astropy-12907": patch_of("row-2-0"),
    }
    result = export([str(tmp_path / "run.jsonl"), "--format", "swebench", "--output_file", str(out)])
    # Records without a patch: nothing to submit, and an export that writes nothing of a non-empty input fails,
    # saying why (the file still holds the empty list the harness would read).
    assert result.returncode == 1 and "export wrote nothing of a non-empty input" in result.stderr, result.stderr
    assert "the chosen sample has no patch recorded" in result.stderr + result.stdout
    assert json.loads(out.read_text()) == []
    assert "2 instances left out: the chosen sample has no patch recorded" in result.stderr
