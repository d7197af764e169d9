"""`mini-swe-runner view` and `stats`: the summary, the CLI's errors, and the HTML report in a real headless Chromium.

The records come from real tasks run through the scripted model server (real openai SDK, real bash) plus
hand-built records (trajectory.build_record, and one foreign dict) for the shapes a run rarely produces:
commands and outputs holding the closing tags, HTML in every text field, malformed arguments, samples, a
verifier that passed, failed or could not run, damaged lines, and a task recorded twice across two files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import make_config, run_cli, run_prompts, wait_for
from model_server import ScriptedModelServer, http_error, reply, tool_call

import report
import trajectory

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCRIPT_OUTPUT = "<script>alert(1)</script>\n</tool_response>\n"
ODD_COMMAND = "printf 'a</tool_call>\\n<tool_call>{\"x\": 1}' && echo '<b>bold</b>'"
ODD_OUTPUT = 'first</tool_response>\n<tool_response>\n{"fake": 1}\n<img src=x onerror=alert(4)>'
HOSTILE_PROMPT = "Fix it </script><script>alert(2)</script><!-- and this"
SYSTEM = trajectory.hermes_system_value(
    [{"type": "function", "function": {"name": "terminal", "description": "Run a command.", "parameters": {}}}]
)


# ---------------------------------------------------------------------------------------------------------------
# The records
# ---------------------------------------------------------------------------------------------------------------


def scripted(request: dict):
    """Each prompt its own story: the model's reply is chosen by the prompt and how far the task has got."""
    prompt = next(m["content"] for m in request["messages"] if m["role"] == "user")
    turns = sum(1 for m in request["messages"] if m["role"] == "assistant")
    if prompt.startswith("print the tag"):
        return [
            reply(
                "Printing it.",
                [tool_call("printf '<script>alert(1)</script>\\n</tool_response>\\n'")],
                reasoning="The user wants the tag printed literally.",
            ),
            reply("Printed the tag."),
        ][min(turns, 1)]
    if prompt.startswith("long output"):
        return [reply(None, [tool_call("seq 1 40000")]), reply("That was long.")][min(turns, 1)]
    if prompt.startswith("loop"):
        return reply("again", [tool_call("echo again")])
    return http_error(400, "this request is malformed")


def assistant(content: str | None, commands: list, reasoning: str | None = None) -> dict:
    calls = []
    for number, command in enumerate(commands):
        name, arguments = ("terminal", json.dumps({"command": command})) if isinstance(command, str) else command
        calls.append({"id": f"c{number}", "function": {"name": name, "arguments": arguments}})
    message = {"content": content, "reasoning": reasoning, "tool_calls": calls}
    return {"from": "gpt", "value": trajectory.gpt_value(message)}


def results(*contents) -> dict:
    blocks = []
    for number, content in enumerate(contents):
        text = content if isinstance(content, str) else json.dumps(content)
        blocks.append(trajectory.tool_response_block({"tool_call_id": f"c{number}", "content": text}, "terminal"))
    return {"from": "tool", "value": "\n".join(blocks)}


def built(task_id: str, conversations: list, **fields) -> dict:
    values = dict(
        prompt_index=0,
        task_id=task_id,
        conversations=conversations,
        completed=True,
        exit_reason="completed",
        api_calls=2,
        tool_stats={"terminal": {"count": 1, "success": 1, "failure": 0}},
        usage={"prompt_tokens": 500, "completion_tokens": 50, "total_tokens": 550},
        duration_s=3.0,
        error=None,
        metadata={"model": "other-model", "env_type": "docker", "image": "img:odd", "timestamp": "2026-11-24T10:00Z"},
    )
    values.update(fields)
    return trajectory.build_record(**values)


def hand_built() -> list[dict]:
    odd = [
        {"from": "system", "value": SYSTEM},
        {"from": "human", "value": "odd calls: " + HOSTILE_PROMPT},
        assistant(
            "I will run three things.\n<tool_call> is only mentioned here.",
            [ODD_COMMAND, ("terminal", "{not json"), ("python", json.dumps({"code": "print(1)"}))],
            reasoning="Thinking about </think> tags and <tool_call> too.",
        ),
        results(
            {"output": ODD_OUTPUT, "exit_code": 3, "error": "command failed <i>badly</i>"},
            {"output": "", "exit_code": 2, "error": "not a valid JSON object"},
            "plain string result",
        ),
        assistant("All done.", []),
    ]
    return [
        built("odd-calls", odd, verification={"passed": True, "exit_code": 0, "output": "1 passed"}),
        built(
            "odd-calls",
            odd[:4],
            sample_index=1,
            completed=False,
            exit_reason="max_iterations",
            error="<img src=x onerror=alert(3)> stopped",
            verification={"passed": False, "exit_code": 1, "output": "F"},
        ),
        built(
            "verifier-broke",
            odd[:2] + [assistant("Nothing to do.", [])],
            usage={"total_tokens": 99_999},
            verification={"passed": False, "exit_code": None, "output": "", "error": "verifier image missing"},
        ),
        {"task_id": "foreign", "conversations": "not a list", "usage": 5, "metadata": None, "duration_s": "slow"},
    ]


@pytest.fixture(scope="module")
def run_files(tmp_path_factory) -> dict:
    """Two record files: real tasks + hand-built ones + damaged lines in the first, a later attempt in the second."""
    where = tmp_path_factory.mktemp("report")
    first, second = where / "run.jsonl", where / "resumed.jsonl"
    with ScriptedModelServer(scripted) as server:
        config = make_config(server, first, max_iterations=3, max_output_chars=2000, max_retries=0)
        _, real = run_prompts(config, ["print the tag please", "long output please", "loop please", "broken request"])
    assert sorted(r["exit_reason"] for r in real) == ["api_error", "completed", "completed", "max_iterations"]
    retried = built(
        "retried",
        [{"from": "system", "value": SYSTEM}, {"from": "human", "value": "retried task"}],
        completed=False,
        exit_reason="env_error",
        error="sandbox died",
    )
    with open(first, "ab") as handle:
        for record in hand_built() + [retried]:
            handle.write(trajectory.record_line(record))
        handle.write(b"[1, 2]\n")
        handle.write(b'{"task_id": "torn", "conversa')
    later = {**retried, "completed": True, "exit_reason": "completed", "error": None}
    second.write_bytes(trajectory.record_line(later))
    return {"dir": where, "files": [first, second], "real": real}


@pytest.fixture(scope="module")
def report_file(run_files) -> Path:
    output = run_files["dir"] / "report.html"
    result = run_cli(["view", *map(str, run_files["files"]), "--output_file", str(output)])
    assert result.returncode == 0, result.stderr
    assert "skipped 2 malformed line(s)" in result.stderr
    return output


# ---------------------------------------------------------------------------------------------------------------
# The summary and the command line
# ---------------------------------------------------------------------------------------------------------------


def test_summary_counts_the_last_record_of_each_task_and_sample(run_files):
    summary = report.summarize([str(path) for path in run_files["files"]])
    # 4 real + odd-calls x2 samples + verifier-broke + foreign + retried (its later attempt wins)
    assert summary["records"] == 9 and summary["tasks"] == 8
    assert summary["malformed_lines"] == 2
    assert summary["exit_reasons"] == {"completed": 5, "max_iterations": 2, "api_error": 1, "unknown": 1}
    assert summary["completed"] == 5
    verification = summary["verification"]
    assert verification["states"] == {"passed": 1, "failed": 1, "error": 1, "none": 6}
    assert verification["pass_rate"] == 0.5 and verification["verifier_errors"] == 1
    # odd-calls (1 of 2 samples passed); verifier-broke was not judged
    assert (verification["prompts"], verification["prompts_solved"], verification["k"]) == (1, 1, 2)
    assert verification["pass_at_1"] == 0.5 and verification["pass_at_k"] == 1.0
    assert summary["models"] == {"scripted-model": 4, "other-model": 4, "unknown": 1}
    assert summary["totals"]["truncated_outputs"] == 1
    assert summary["distributions"]["tokens"]["max"] == 99_999


def test_tool_outputs_are_decoded_from_the_opening_tag_on():
    record = hand_built()[0]
    assert report.tool_outputs(record) == [ODD_OUTPUT, "", "plain string result"]
    facts = report.record_facts(record)
    assert facts.turns == 2 and facts.output_chars == len(ODD_OUTPUT) + len("plain string result")


def test_a_foreign_record_gives_zeros_not_an_exception():
    facts = report.record_facts(
        {
            "task_id": "x",
            "conversations": [None, 3, {"from": "tool", "value": 7}],
            "usage": [],
            "tool_stats": {"terminal": "many"},
            "sample_index": True,
        }
    )
    assert (facts.turns, facts.tokens, facts.tool_calls, facts.sample_index) == (0, 0, 0, 0)
    assert facts.exit_reason == "unknown" and facts.verification == "none"


def test_every_record_is_embedded_whole(run_files, tmp_path):
    """Decode what the page decodes: each trajectory, with its system turn put back from the index, is the record."""
    import base64
    import gzip

    odd = tmp_path / "odd.jsonl"
    odd.write_bytes(
        trajectory.record_line({"task_id": "list-system", "conversations": [{"from": "system", "value": [1]}]})
        + trajectory.record_line({"task_id": "other-system", "conversations": [{"from": "system", "value": "x"}]})
    )
    files = [*map(str, run_files["files"]), str(odd)]
    output = tmp_path / "r.html"
    report.write_report(files, str(output))
    html = output.read_text(encoding="utf-8")
    blobs = re.findall(r'<script type="application/x-gzip-base64" id="(r\d+|index)">([^<]*)</script>', html)
    decoded = {name: json.loads(gzip.decompress(base64.b64decode(blob))) for name, blob in blobs}
    index = decoded.pop("index")
    expected = list(trajectory.last_records(files))
    assert len(decoded) == len(index["rows"]) == len(expected) == 11
    for row, record in zip(index["rows"], expected, strict=True):
        embedded = decoded[f"r{row[0]}"]
        if row[-1] >= 0:
            embedded["conversations"][0]["value"] = index["systems"][row[-1]]
        assert embedded == record
    assert index["systems"] == [expected[0]["conversations"][0]["value"], SYSTEM, "x"]  # the real run's, then ours
    assert index["summary"] == report.summarize(files) | {"files": [os.path.basename(f) for f in files]}


def test_stats_prints_the_summary_table_and_json(run_files):
    files = list(map(str, run_files["files"]))
    table = run_cli(["stats", *files])
    assert table.returncode == 0, table.stderr
    assert re.search(r"^records\s+9 \(2 malformed lines skipped\)$", table.stdout, re.M)
    assert re.search(r"^completed\s+5 \(55\.6%\)$", table.stdout, re.M)
    assert re.search(r"^verified\s+1 passed, 1 failed \(pass rate 50\.0%\), 1 verifier errors", table.stdout, re.M)
    assert re.search(r"^tokens\s+\d", table.stdout, re.M) and "p90" in table.stdout
    assert "skipped 2 malformed line(s)" in table.stderr
    as_json = run_cli(["stats", *files, "--json"])
    assert json.loads(as_json.stdout) == report.summarize(files, ["mini-swe-runner", "stats", *files, "--json"])


def test_view_takes_text_flags_exactly_as_typed(run_files, tmp_path):
    for name in ("1e3", "None", '{"a": 1}', "007", "x,y"):
        result = run_cli(["view", str(run_files["files"][1]), "--output_file", name], cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / name).read_bytes().startswith(b"<!DOCTYPE html>")
    result = run_cli(["view", f"--output-file={tmp_path / 'eq.html'}", "--", str(run_files["files"][1])])
    assert result.returncode == 0 and (tmp_path / "eq.html").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["view"], "give at least one record file"),
        (["stats"], "give at least one record file"),
        (["view", "missing.jsonl"], "cannot read missing.jsonl: No such file or directory"),
        (["stats", "missing.jsonl"], "cannot read missing.jsonl"),
        (["view", "."], ". is a directory"),
        (["view", "IN", "--colour"], "unknown flag --colour"),
        (["stats", "IN", "--json=maybe"], "--json takes true or false"),
        (["view", "IN", "--output_file"], "--output_file needs a value"),
        (["view", "IN", "--output_file="], "--output_file needs a value"),
        (["view", "IN", "--output_file", "IN"], "is one of the record files: it would be lost"),
        (["view", "IN", "--output_file", "."], "is a directory"),
        (["view", "-"], "not stdin"),
    ],
)
def test_usage_errors_are_one_line_exit_2(run_files, args, message, tmp_path):
    source = tmp_path / "in.jsonl"
    shutil.copy(run_files["files"][0], source)
    before = source.read_bytes()
    result = run_cli([str(source) if arg == "IN" else arg for arg in args], cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert source.read_bytes() == before


def test_unwritable_output_is_one_line_exit_1(run_files, tmp_path):
    result = run_cli(["view", str(run_files["files"][1]), "--output_file", str(tmp_path / "no" / "such" / "r.html")])
    assert result.returncode == 1 and "cannot write" in result.stderr and "Traceback" not in result.stderr


def test_help_and_empty_input(tmp_path):
    assert "--output_file" in run_cli(["view", "--help"]).stdout
    assert "--json" in run_cli(["stats", "-h"]).stdout
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run_cli(["view", str(empty), "--output_file", str(tmp_path / "r.html")])
    assert result.returncode == 0 and "no records found" in result.stderr
    assert run_cli(["stats", str(empty)]).stdout.startswith("files")


def test_report_is_self_contained_and_carries_no_record_text(report_file):
    html = report_file.read_text(encoding="utf-8")
    # No resource from anywhere: no src/href to a URL, a policy that forbids every request.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "default-src 'none'" in html
    # The data is base64 only: record text cannot appear, let alone close the element that carries it.
    for text in ("alert(", "</tool_response>", "odd calls", "onerror"):
        assert text not in html
    assert html.count("<script") == html.count("</script>")
    # The page tells a cut patch by the pattern the export uses.
    assert f"const PATCH_CUT = /{trajectory.PATCH_CUT_MARKER.pattern}/;" in report.PAGE_SCRIPT
    for fragment in ("<script", "</script", "<!--"):  # what could end or re-nest the element our code is in
        assert fragment not in report.PAGE_SCRIPT.lower()
    # No untrusted text is ever parsed as HTML by the page.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in report.PAGE_SCRIPT


# ---------------------------------------------------------------------------------------------------------------
# In the browser
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI") == "true":
            pytest.fail("CI requires Debian's chromium and chromium-driver (scripts/test installs them)")
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/test installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager, which would try to download one, never runs.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.console = []
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, report_file):
    browser.get(report_file.as_uri())
    wait_for(lambda: browser.execute_script("return document.body.dataset.ready") == "1", timeout=20)
    yield browser
    browser.console += browser.get_log("browser")
    errors = [entry["message"] for entry in browser.console if entry["level"] == "SEVERE"]
    assert not errors, f"errors in the page's console: {errors}"


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def shown(driver) -> int:
    return int(js(driver, "return document.getElementById('count').dataset.shown"))


def choose(driver, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


def open_task(driver, text: str, matching: int = 1) -> None:
    """Search for a task, click the first row found, wait for the trajectory to render."""
    search = driver.find_element("id", "f-text")
    search.clear()
    search.send_keys(text)
    wait_for(lambda: js(driver, "return document.getElementById('count').dataset.query") == text, timeout=10)
    assert shown(driver) == matching
    row = driver.find_element("css selector", "#list a.row")
    number = row.get_attribute("data-num")
    row.click()
    wait_for(lambda: js(driver, "return document.getElementById('t-body').dataset.shown") == number, timeout=10)


def no_dialog(driver) -> bool:
    """True when no alert/confirm/prompt is open; a dialog fails the test with its text."""
    from selenium.common.exceptions import NoAlertPresentException

    try:
        text = driver.switch_to.alert.text  # raises when no dialog is open
    except NoAlertPresentException:
        return True
    raise AssertionError(f"a dialog was raised: {text!r}")


def test_overview_shows_the_run_at_a_glance(page):
    cards = page.find_element("id", "cards").text
    assert "9\nrecords" in cards and "8\ndistinct tasks" in cards and "55.6%\ncompleted (5)" in cards
    assert "50.0%\npassed (1 of 2 verified)" in cards and "2\nmalformed lines skipped" in cards
    assert "100.0%\npass@k: tasks with a passing sample (1 of 1, k up to 2)" in cards  # odd-calls: 1 of 2 passed
    breakdowns = page.find_element("id", "breakdowns").text
    assert "max_iterations\n2" in breakdowns and "img:odd\n4" in breakdowns
    charts = page.find_elements("css selector", "#charts .chart")
    assert [c.find_element("tag name", "h3").text for c in charts] == [
        "turns",
        "tokens",
        "duration",
        "output size (characters)",
    ]
    assert all(c.find_elements("css selector", "svg rect.b") for c in charts)
    assert page.find_element("id", "count").text == "8 tasks (9 samples)"  # the two samples of odd-calls: one row


def test_filters_and_their_counts(page):
    assert shown(page) == 8
    choose(page, "f-exit", "max_iterations")
    assert shown(page) == 2 and page.find_element("id", "count").text == "2 of 8 tasks match (2 samples)"
    # The other menus count what the exit-reason filter lets through.
    labels = [o.text for o in page.find_elements("css selector", "#f-model option")]
    assert labels == ["all (2)", "scripted-model (1)", "other-model (1)", "unknown (0)"]
    choose(page, "f-model", "other-model")
    assert shown(page) == 1
    choose(page, "f-exit", "")
    assert shown(page) == 3  # odd-calls (both samples), verifier-broke, retried
    choose(page, "f-outcome", "passed")
    assert shown(page) == 1
    choose(page, "f-outcome", "error")
    assert shown(page) == 1
    page.find_element("id", "f-reset").click()
    choose(page, "f-outcome", "incomplete")
    assert shown(page) == 4
    choose(page, "f-image", "img:odd")  # odd-calls sample 1; "retried" is complete in its later attempt
    assert shown(page) == 1
    page.find_element("id", "f-reset").click()
    search = page.find_element("id", "f-text")
    search.send_keys("PLEASE")  # case-insensitive, over the prompts
    wait_for(lambda: shown(page) == 3, timeout=10)
    search.send_keys(" long")
    wait_for(lambda: shown(page) == 1, timeout=10)
    assert page.find_element("id", "charts-title").text == "Per task (1 shown)"
    assert len(page.find_elements("css selector", "#list a.row")) == 1


def test_sorting_by_tokens_and_duration(page):
    choose(page, "f-sort", "tokens-desc")
    first = page.find_element("css selector", "#list a.row")
    assert first.get_attribute("title") == "verifier-broke"
    choose(page, "f-sort", "tokens-asc")
    rows = page.find_elements("css selector", "#list a.row")
    assert rows[0].find_elements("css selector", "span.num")[1].text == "0"  # the failed API call and the foreign one
    assert rows[-1].get_attribute("title") == "verifier-broke"
    choose(page, "f-sort", "duration-desc")
    rows = page.find_elements("css selector", "#list a.row")
    durations = [row.find_elements("css selector", "span.num")[2].text for row in rows]
    assert durations[0] == "3.0 s" and durations[-1] == "0.0 s"


def test_a_real_trajectory_shows_output_as_text_and_runs_nothing(page):
    scripts_before = js(page, "return document.scripts.length")
    open_task(page, "print the tag")
    body = page.find_element("id", "t-body")
    assert "print the tag please" in body.find_element("css selector", ".turn.human").text
    reasoning = body.find_element("css selector", "details.reasoning")
    assert reasoning.get_attribute("open") is None  # folded away
    assert reasoning.find_element("tag name", "summary").text.startswith("reasoning (")
    assert "The user wants the tag printed literally." in reasoning.get_attribute("textContent")
    reasoning.find_element("tag name", "summary").click()
    assert reasoning.get_attribute("open") is not None
    command = body.find_element("css selector", "pre.cmd").get_attribute("textContent")
    assert command == "$ printf '<script>alert(1)</script>\\n</tool_response>\\n'"
    output = body.find_element("css selector", ".result pre.out").get_attribute("textContent")
    assert output == SCRIPT_OUTPUT
    assert body.find_element("css selector", ".result .badge").text == "exit 0"
    assert js(page, "return document.scripts.length") == scripts_before
    assert not body.find_elements("tag name", "script")
    time.sleep(0.3)
    assert no_dialog(page)


def test_a_truncated_output_is_folded_with_its_marker_visible(page):
    open_task(page, "long output")
    result = page.find_element("css selector", "#t-body .result")
    assert re.fullmatch(r"truncated: [\d,]+ characters omitted", result.find_elements("css selector", ".badge")[1].text)
    fold = result.find_element("css selector", "details.fold")
    assert fold.get_attribute("open") is None and "show all" in fold.text
    assert not fold.find_elements("tag name", "pre")  # the whole output is rendered only when asked for
    fold.find_element("tag name", "summary").click()
    # <details> fires its toggle event as a task after the click returns: the output is drawn then, not at once.
    wait_for(lambda: fold.find_elements("tag name", "pre"), timeout=10)
    full = fold.find_element("tag name", "pre")
    marker = full.find_element("css selector", "span.marker")
    assert re.fullmatch(r"\[\.\.\. \d+ characters omitted \.\.\.\]", marker.text)
    assert full.get_attribute("textContent").startswith("1\n2\n3\n")
    stats = page.find_element("css selector", "#t-body .stats").text
    assert "(1 truncated)" in stats


def test_odd_blocks_are_decoded_from_the_opening_tag_on(page):
    open_task(page, "odd calls", matching=2)  # odd-calls (two samples) and verifier-broke share the prompt
    body = page.find_element("css selector", "#t-body .sample")  # sample 0, the first column
    assert js(page, "return document.getElementById('t-body').querySelector('.t-title').textContent") == "odd-calls"
    assert [badge.text for badge in body.find_elements("css selector", ".t-title + div .badge")] == [
        "completed",
        "verifier passed",
    ]
    prompt = body.find_element("css selector", ".turn.human .text").get_attribute("textContent")
    assert prompt == "odd calls: " + HOSTILE_PROMPT
    gpt = body.find_elements("css selector", ".turn.gpt")[0]
    assert gpt.find_element("css selector", "details.reasoning pre").get_attribute("textContent") == (
        "Thinking about </think> tags and <tool_call> too."
    )
    assert gpt.find_element("css selector", ".text").get_attribute("textContent") == (
        "I will run three things.\n<tool_call> is only mentioned here."
    )
    commands = [e.get_attribute("textContent") for e in gpt.find_elements("css selector", "pre.cmd")]
    assert commands == ["$ " + ODD_COMMAND, "{not json", json.dumps({"code": "print(1)"}, indent=2)]
    assert "exactly as the model sent them" in gpt.text and "tool: python" in gpt.text
    results_ = body.find_elements("css selector", ".turn.tool .result")
    assert len(results_) == 3
    assert results_[0].find_element("css selector", "pre.out").get_attribute("textContent") == ODD_OUTPUT
    assert results_[0].find_element("css selector", ".errorbox").text == "error: command failed <i>badly</i>"
    assert results_[0].find_element("css selector", ".badge").text == "exit 3"
    assert results_[2].get_attribute("textContent") == "plain string result"
    system = body.find_element("css selector", ".turn.system details")
    assert system.get_attribute("open") is None
    assert system.find_element("tag name", "pre").get_attribute("textContent") == SYSTEM  # put back from the index
    assert not body.find_elements("tag name", "img") and not body.find_elements("tag name", "script")
    assert no_dialog(page)


def test_sample_error_and_damaged_records_render(page):
    open_task(page, "onerror")  # the error text of sample 1 of odd-calls: the task opens with both samples
    body = page.find_elements("css selector", "#t-body .sample")[1]
    assert body.find_element("css selector", ".t-title").text == "odd-calls · sample 1"
    assert [badge.text for badge in body.find_elements("css selector", ".t-title + div .badge")] == [
        "max_iterations",
        "not completed",
        "verifier failed",
    ]
    assert body.find_element("css selector", ".errorbox").text == "error: <img src=x onerror=alert(3)> stopped"
    assert not body.find_elements("tag name", "img")
    page.find_element("id", "t-back").click()
    open_task(page, "foreign")
    assert "this record has no conversation" in page.find_element("id", "t-body").text
    page.find_element("id", "t-back").click()
    open_task(page, "verifier-broke")
    assert "verifier could not run" in page.find_element("id", "t-body").text
    assert "verifier image missing" in page.find_element("css selector", "#t-body details.verification").get_attribute(
        "textContent"
    )
    assert no_dialog(page)


def test_previous_and_next_walk_the_filtered_list(page):
    choose(page, "f-exit", "completed")
    page.find_elements("css selector", "#list a.row")[0].click()
    wait_for(lambda: page.find_element("id", "t-position").text == "1 of 5 tasks", timeout=10)
    assert not page.find_element("id", "t-prev").is_enabled()
    page.find_element("id", "t-next").click()
    wait_for(lambda: page.find_element("id", "t-position").text == "2 of 5 tasks", timeout=10)
    page.back()
    wait_for(lambda: page.find_element("id", "t-position").text == "1 of 5 tasks", timeout=10)
    page.find_element("id", "t-back").click()
    wait_for(lambda: page.find_element("id", "tasks").is_displayed(), timeout=10)
    assert shown(page) == 5  # the filter survived the visit


# ---------------------------------------------------------------------------------------------------------------
# The page's own code, linted: its markup, style and script are strings in report.py, out of the linter's sight
# ---------------------------------------------------------------------------------------------------------------

VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class TagBalance(HTMLParser):
    """Every element closed, in order (script and style bodies are raw text to html.parser, as to a browser)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open: list[tuple[str, int]] = []
        self.problems: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.ids += [value for name, value in attrs if name == "id"]
        if tag not in VOID_ELEMENTS:
            self.open.append((tag, self.getpos()[0]))

    def handle_startendtag(self, tag, attrs):
        self.ids += [value for name, value in attrs if name == "id"]

    def handle_endtag(self, tag):
        line = self.getpos()[0]
        if self.open and self.open[-1][0] == tag:
            self.open.pop()
        else:
            inner = f"<{self.open[-1][0]}> of line {self.open[-1][1]}" if self.open else "nothing"
            self.problems.append(f"line {line}: </{tag}> closes {inner}")


def markup_problems(html: str) -> list[str]:
    """What keeps ``html`` from being well-formed: stray or crossed end tags, unclosed elements, repeated ids."""
    checker = TagBalance()
    checker.feed(html)
    checker.close()
    problems = checker.problems + [f"line {line}: <{tag}> is never closed" for tag, line in checker.open]
    repeated = sorted({name for name in checker.ids if checker.ids.count(name) > 1})
    return problems + [f'id "{name}" is used twice' for name in repeated]


def test_the_page_markup_is_well_formed(report_file):
    assert markup_problems(report.PAGE_BODY) == []
    page = report_file.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>\n") and markup_problems(page) == []
    assert markup_problems(report.PAGE_BODY.replace("</div>", "", 1))  # the check can fail


def script_problem(driver, source: str) -> str:
    """The SyntaxError Chromium finds in ``source`` ('' when none): parsed, not run, on a blank page (the report's
    own policy forbids compiling code at run time)."""
    driver.get("about:blank")
    check = "try { new Function(arguments[0]); return '' } catch (error) { return error.name + ': ' + error.message }"
    return js(driver, check, source)


def test_the_page_script_parses(browser):
    assert report.PAGE_SCRIPT.lstrip().startswith('"use strict";')  # assignments to undeclared names throw
    assert script_problem(browser, report.PAGE_SCRIPT) == ""
    assert script_problem(browser, report.PAGE_SCRIPT.replace(")", "", 1)).startswith("SyntaxError")


def top_level_rules(css: str) -> int:
    """How many rules a style sheet holds at its top level (a media query is one), counted from its braces."""
    depth = rules = 0
    for char in re.sub(r"/\*.*?\*/", "", css, flags=re.S):
        if char == "{":
            rules += depth == 0
            depth += 1
        elif char == "}":
            depth -= 1
    assert depth == 0, "unbalanced braces in the style sheet"
    return rules


def test_the_page_runs_without_a_console_message_and_keeps_every_style_rule(browser, report_file):
    browser.get(report_file.as_uri())
    wait_for(lambda: js(browser, "return document.body.dataset.ready") == "1", timeout=20)
    assert js(browser, "return document.getElementById('status').textContent") == ""
    # Not only errors: a warning (a deprecated call, a policy report) is a defect of the page too.
    messages = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert messages == []
    # A rule Chromium could not parse is dropped without a word: count what it kept.
    kept = js(browser, "return document.styleSheets[0].cssRules.length")
    assert kept == top_level_rules(report.PAGE_STYLE)


# ---------------------------------------------------------------------------------------------------------------
# A SWE-style run: k samples per task, patches, long image names that differ only at the end
# ---------------------------------------------------------------------------------------------------------------

IMAGE = "ghcr.io/example-org/swe-bench-images/sweb.eval.x86_64.{}:latest"
CUT = "\n[mini-swe-runner: patch cut at 200 of 90000 bytes]\n"


def swe_patch(task: str, sample: int) -> str:
    name = f"src/{task}.py"
    head = f"diff --git a/{name} b/{name}\n--- a/{name}\n+++ b/{name}\n"
    return head + f"@@ -1,2 +1,2 @@\n-bug()\n+fix({sample}) <b>\n ok\n"


def swe_record(task: str, sample: int, passed: bool, patch: str | None = "", *, patch_key: bool = True) -> dict:
    record = built(
        task,
        [{"from": "system", "value": SYSTEM}, {"from": "human", "value": f"solve {task}"}],
        sample_index=sample,
        duration_s=10.0 * (sample + 1),
        verification={"passed": passed, "exit_code": 0 if passed else 1, "output": "tests"},
        metadata={"model": "m", "env_type": "docker", "image": IMAGE.format(task), "timestamp": "t"},
    )
    if not patch_key:  # a record from before patches were recorded
        return record
    metadata = record.pop("metadata")
    return {**record, "patch": swe_patch(task, sample) if patch == "" else patch, "metadata": metadata}


@pytest.fixture(scope="module")
def swe_report(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("swe-report")
    records = [
        swe_record("django__django-11099", 0, False),
        swe_record("astropy__astropy-12907", 0, False, None),  # no repository: patch null
        swe_record("django__django-11099", 1, True),
        swe_record("django__django-11099", 2, False, swe_patch("django__django-11099", 2) + CUT),
        swe_record("astropy__astropy-12907", 1, False, patch_key=False),
        swe_record("sympy__sympy-20590", 0, True),
    ]
    source = where / "swe.jsonl"
    source.write_bytes(b"".join(trajectory.record_line(r) for r in records))
    output = where / "swe.html"
    result = run_cli(["view", str(source), "--output_file", str(output)])
    assert result.returncode == 0, result.stderr
    return output


def open_row(driver, position: int) -> None:
    """Click the list's row at ``position`` (no filter), wait for its task to render."""
    row = driver.find_elements("css selector", "#list a.row")[position]
    number = row.get_attribute("data-num")
    row.click()
    wait_for(lambda: js(driver, "return document.getElementById('t-body').dataset.shown") == number, timeout=10)


@pytest.fixture
def swe_page(browser, swe_report):
    browser.get(swe_report.as_uri())
    wait_for(lambda: browser.execute_script("return document.body.dataset.ready") == "1", timeout=20)
    yield browser
    browser.console += browser.get_log("browser")
    errors = [entry["message"] for entry in browser.console if entry["level"] == "SEVERE"]
    assert not errors, f"errors in the page's console: {errors}"


def test_the_samples_of_a_task_are_one_row_with_passes_out_of_k(swe_page):
    page = swe_page
    assert page.find_element("id", "count").text == "3 tasks (6 samples)"
    rows = page.find_elements("css selector", "#list a.row")
    cells = [[span.text for span in row.find_elements("tag name", "span")][:3] for row in rows]
    assert cells == [
        ["django__django-11099 ×3", "✔", "1/3"],
        ["astropy__astropy-12907 ×2", "✘", "0/2"],
        ["sympy__sympy-20590", "✔", "1/1"],
    ]
    status = rows[0].find_elements("tag name", "span")[1]
    assert status.get_attribute("title") == "pass@3 = 1: 1 of 3 samples passed"
    assert rows[0].find_elements("css selector", "span.num")[2].text == "20 s"  # the mean of 10, 20 and 30 s
    cards = page.find_element("id", "cards").text
    assert "66.7%\npass@k: tasks with a passing sample (2 of 3, k up to 3)" in cards
    assert "33.3%\npassed (2 of 6 verified)" in cards
    choose(page, "f-outcome", "passed")  # a task is listed when one of its samples matches
    assert shown(page) == 2 and page.find_element("id", "count").text == "2 of 3 tasks match (2 samples)"
    choose(page, "f-sort", "duration-desc")
    assert [row.get_attribute("data-num") for row in page.find_elements("css selector", "#list a.row")] == ["0", "5"]


def test_a_task_opens_with_its_samples_side_by_side(swe_page):
    page = swe_page
    open_row(page, 0)
    assert page.find_element("css selector", "#t-body .t-group").text == (
        "django__django-11099 · 3 samples · pass@3 = 1: 1 of 3 samples passed"
    )
    columns = page.find_elements("css selector", "#t-body .samples > .sample")
    assert [c.find_element("css selector", ".t-title").text for c in columns] == [
        "django__django-11099",
        "django__django-11099 · sample 1",
        "django__django-11099 · sample 2",
    ]
    assert [c.find_elements("css selector", ".t-title + div .badge")[-1].text for c in columns] == [
        "verifier failed",
        "verifier passed",
        "verifier failed",
    ]
    places = [c.rect for c in columns]
    assert places[0]["y"] == places[1]["y"] == places[2]["y"]  # side by side, not one under the other
    assert places[0]["x"] + places[0]["width"] <= places[1]["x"] < places[2]["x"]
    assert page.find_element("id", "t-position").text == "1 of 3 tasks"
    page.find_element("id", "t-next").click()
    wait_for(lambda: page.find_element("id", "t-position").text == "2 of 3 tasks", timeout=10)
    assert len(page.find_elements("css selector", "#t-body .samples > .sample")) == 2


def test_each_trajectory_shows_its_patch(swe_page):
    page = swe_page
    open_row(page, 0)
    columns = page.find_elements("css selector", "#t-body .sample")
    patch = columns[1].find_element("css selector", "details.patch")
    summary = patch.find_element("tag name", "summary")
    assert summary.text == "patch: 1 file(s), +1 −1"
    assert patch.get_attribute("open") is None and not patch.find_elements("tag name", "pre")
    summary.click()
    wait_for(lambda: patch.find_elements("tag name", "pre"), timeout=10)
    diff = patch.find_element("css selector", "pre.diff")
    assert diff.get_attribute("textContent") == swe_patch("django__django-11099", 1)  # exact, markup as text
    assert diff.find_element("css selector", ".d-add").get_attribute("textContent") == "+fix(1) <b>\n"
    assert diff.find_element("css selector", ".d-del").get_attribute("textContent") == "-bug()\n"
    assert not diff.find_elements("tag name", "b")
    cut = columns[2].find_element("css selector", "details.patch summary")
    assert "truncated: not the whole diff" in cut.text
    page.find_element("id", "t-next").click()
    wait_for(lambda: page.find_element("id", "t-position").text == "2 of 3 tasks", timeout=10)
    assert not page.find_elements("css selector", "#t-body details.patch")  # null, and absent in an old record


def test_image_names_are_shown_from_where_they_differ(swe_page):
    page = swe_page
    names = page.find_elements("css selector", "#breakdowns .breakdown:last-child .bd-name")
    assert [n.text for n in names] == [
        "…django__django-11099:latest",
        "…astropy__astropy-12907:latest",
        "…sympy__sympy-20590:latest",
    ]
    for name in names:  # nothing hidden: the whole label is on screen
        assert js(page, "return arguments[0].scrollWidth <= arguments[0].clientWidth", name)
    rows = page.find_elements("css selector", "#breakdowns .breakdown:last-child .bd-row")
    assert rows[0].get_attribute("title") == "show only " + IMAGE.format("django__django-11099")
    options = [o.text for o in page.find_elements("css selector", "#f-image option")]
    assert options == [  # the menus count samples
        "all (6)",
        "…django__django-11099:latest (3)",
        "…astropy__astropy-12907:latest (2)",
        "…sympy__sympy-20590:latest (1)",
    ]
    choose(page, "f-image", IMAGE.format("sympy__sympy-20590"))
    assert shown(page) == 1


def test_stats_gives_pass_at_k_as_the_page_does(swe_report):
    result = run_cli(["stats", str(swe_report.parent / "swe.jsonl")])
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"^pass@k\s+2 of 3 verified tasks have a sample that passed \(66\.7%\), k up to 3$", result.stdout, re.M
    )


def test_stats_file_and_stats_json_share_one_schema_naming_models_command_and_time(tmp_path):
    """The run's --stats_file and `stats --json` over its output are the same schema (one builder): the same keys,
    the same record figures, pass@k in both; each names the model, its command line (no secret) and time range."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"t{i}", "verify": f"test {i} = 0"}) + "\n" for i in range(2)))
    stats = tmp_path / "stats.json"
    secret = "sk-summary-secret-123"
    with ScriptedModelServer(lambda request: reply("done")) as server:
        result = run_cli(
            ["--prompts_file", str(prompts), "--base_url", server.base_url, "--stats_file", str(stats)]
            + ["--api_key", secret, "--model", "scripted-model", "--samples", "2"],
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr
    run = json.loads(stats.read_text())
    later = json.loads(run_cli(["stats", "trajectories.jsonl", "--json"], cwd=tmp_path).stdout)
    assert set(run) == set(later) and set(run["verification"]) == set(later["verification"])
    assert set(run["cost"]) == set(later["cost"])
    for key in ("records", "tasks", "completed", "exit_reasons", "models", "tokens", "totals", "time_range"):
        assert run[key] == later[key], key
    assert run["models"] == {"scripted-model": 4} and run["records"] == 4 and run["tasks"] == 2
    first, last = run["time_range"]["first"], run["time_range"]["last"]
    assert first is not None and first <= last
    for figure in ("verified", "passed", "pass_at_1", "pass_at_k", "k", "prompts_solved", "states"):
        assert run["verification"][figure] == later["verification"][figure], figure
    assert run["verification"]["pass_at_k"] == 0.5 and run["verification"]["k"] == 2  # t0 passes, t1 never
    assert run["command"][0] == "mini-swe-runner" and "--stats_file" in run["command"]
    assert "scripted-model" in run["command"] and secret not in json.dumps(run) and "--api_key" not in run["command"]
    assert later["command"] == ["mini-swe-runner", "stats", "trajectories.jsonl", "--json"]
    assert run["run"]["skipped_already_done"] == 0 and later["run"] is None


def test_stats_with_only_verifier_errors_shows_them_and_no_pass_at_k(tmp_path):
    """Samples whose verifier never judged: the verifier errors are counted, pass@k has nothing to divide."""
    path = tmp_path / "errors.jsonl"
    records = [
        {"task_id": "t", "sample_index": i, "verification": {"passed": False, "error": "no image"}} for i in range(2)
    ]
    path.write_bytes(b"".join(trajectory.record_line(record) for record in records))
    result = run_cli(["stats", str(path)])
    assert result.returncode == 0, result.stderr
    assert re.search(r"^verified\s+0 passed, 0 failed, 2 verifier errors", result.stdout, re.M)
    assert "pass@k" not in result.stdout
    summary = report.summarize([str(path)])
    assert summary["verification"]["verifier_errors"] == 2 and summary["verification"]["prompts"] == 0
