"""What a run costs, from the provider's measured figure or a price table, and the budgets that stop it."""

from __future__ import annotations

import io
import json
import time
from decimal import Decimal

import pytest
from conftest import make_config, read_jsonl, run_cli, run_prompts
from model_server import (
    ScriptedModelServer,
    billed,
    per_conversation,
    raw,
    reply,
    tool_call,
    with_headers,
)

import mini_swe_runner
import trajectory


def decimal_sum(values) -> Decimal:
    """Figures as the records write them, added exactly."""
    return sum((Decimal(repr(v)) for v in values if v is not None), Decimal(0))


def step_then_done(first_usage: dict, second_usage: dict):
    return per_conversation(
        [reply(None, [tool_call("echo step")], usage=first_usage), reply("done", usage=second_usage)]
    )


# ---------------------------------------------------------------------------------------------------------------
# Where a call's cost comes from
# ---------------------------------------------------------------------------------------------------------------


def test_openrouter_usage_cost_and_cache_counts_are_the_records(out):
    script = step_then_done(
        billed(0.0012, prompt=1000, cached=600, cache_write=100), billed(0.00034, prompt=1200, cached=1000)
    )
    with ScriptedModelServer(script) as server:
        outcome, [record] = run_prompts(make_config(server, out), ["task"])
    assert record["cost"] == 0.00154 and record["cost_source"] == "provider"
    assert record["usage"]["cached_tokens"] == 1600 and record["usage"]["cache_write_tokens"] == 100
    assert tuple(record) == trajectory.RECORD_KEYS
    cost = outcome.summary["cost"]
    assert cost["total"] == 0.00154 and cost["sources"] == {"provider": 1} and cost["per_completed_task"] == 0.00154


def test_litellm_proxy_header_is_the_cost_and_a_zero_header_is_unknown(out):
    header = {"x-litellm-response-cost": "0.000415"}
    script = per_conversation(
        [
            with_headers(header, reply(None, [tool_call("echo step")])),
            with_headers({"x-litellm-response-cost": "0.0"}, reply("done")),  # LiteLLM's "no price for the model"
        ]
    )
    with ScriptedModelServer(script) as server:
        _, [unknown] = run_prompts(make_config(server, out), ["task"])
    assert unknown["cost"] is None and unknown["cost_source"] is None  # one call unknown: the sum would understate

    script = per_conversation(
        [with_headers(header, reply(None, [tool_call("echo step")])), with_headers(header, reply("done"))]
    )
    with ScriptedModelServer(script) as server:
        _, [record] = run_prompts(make_config(server, out, overwrite=True), ["task"])
    assert record["cost"] == 0.00083 and record["cost_source"] == "provider"


def test_price_table_prices_cached_and_cache_written_tokens_as_such(out):
    # per million: input 1, output 4, cached input 0.25, cache write 1.25
    price = mini_swe_runner.parse_price("input=1,output=4,cached_input=0.25,cache_write=1.25")
    script = step_then_done(
        billed(None, prompt=1000, completion=100, cached=600, cache_write=100),
        billed(None, prompt=2000, completion=50, cached=1800),
    )
    with ScriptedModelServer(script) as server:
        outcome, [record] = run_prompts(make_config(server, out, price=price), ["task"])
    first = 300 * 1 + 600 * 0.25 + 100 * 1.25 + 100 * 4  # 975 millionths
    second = 200 * 1 + 1800 * 0.25 + 50 * 4  # 850 millionths
    assert record["cost"] == float(Decimal(str(first + second)) / 1_000_000) == 0.001825
    assert record["cost_source"] == "price_table"


def test_litellm_price_map_layout_and_provider_prefix_lookup(out, tmp_path):
    table = tmp_path / "model_prices_and_context_window.json"
    table.write_text(
        json.dumps(
            {
                "sample_spec": {"input_cost_per_token": 0.0},
                "gpt-4.1-mini": {
                    "input_cost_per_token": 4e-07,
                    "output_cost_per_token": 1.6e-06,
                    "cache_read_input_token_cost": 1e-07,
                    "litellm_provider": "openai",
                    "mode": "chat",
                },
            }
        )
    )
    price = mini_swe_runner.load_prices(str(table), "openai/gpt-4.1-mini")
    assert price.source.endswith("[gpt-4.1-mini]")
    assert price.cost(1000, 100, 400, 0) == Decimal("0.00044")  # 600*4e-7 + 400*1e-7 + 100*1.6e-6
    assert price.cache_write == price.input  # no cache write price: priced as input
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({"openai/gpt-4.1-mini": {"input": 0.4, "output": 1.6, "cached_input": 0.1}}))
    assert mini_swe_runner.load_prices(str(ours), "openai/gpt-4.1-mini").cost(1000, 100, 400, 0) == Decimal("0.00044")


def test_mixed_sources_and_a_billed_unusable_answer_count(out):
    price = mini_swe_runner.parse_price("input=1,output=1")
    unusable = raw(
        json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": 5}}], "usage": billed(0.5)}
        )
    )
    no_choices = raw(json.dumps({"choices": None, "error": {"message": "upstream"}, "usage": billed(0.25)}))
    script = [
        unusable,
        no_choices,
        reply(None, [tool_call("echo x")], usage=billed(0.125)),
        reply("done", usage=billed(None, prompt=1_000_000, completion=0)),  # priced: exactly 1 USD
    ]
    with ScriptedModelServer(script) as server:
        _, [record] = run_prompts(make_config(server, out, price=price), ["task"])
    assert record["exit_reason"] == "completed" and record["api_calls"] == 2
    assert record["cost"] == 1.875 and record["cost_source"] == "mixed"  # the two unusable 200s were billed


def test_an_answer_cut_off_at_max_tokens_is_billed(out):
    cut = reply("", usage=billed(0.2), finish_reason="length")
    with ScriptedModelServer(per_conversation([cut])) as server:
        _, [record] = run_prompts(make_config(server, out, max_tokens=16), ["task"])
    assert record["exit_reason"] == "context_length" and record["cost"] == 0.2


def test_no_cost_and_no_price_leaves_cost_null(out):
    with ScriptedModelServer(per_conversation([reply("done")])) as server:
        outcome, [record] = run_prompts(make_config(server, out), ["task"])
    assert record["cost"] is None and record["cost_source"] is None
    assert outcome.summary["cost"]["total"] is None and outcome.summary["cost"]["records_without_cost"] == 1
    assert "cost:" not in mini_swe_runner.summary_text(outcome.summary, str(out))


# ---------------------------------------------------------------------------------------------------------------
# Budgets
# ---------------------------------------------------------------------------------------------------------------


def endless(cost: float = 0.01):
    """A model that never finishes: every answer is one more command, each call billed ``cost``."""
    return lambda request: reply(None, [tool_call("true")], usage=billed(cost))


def test_max_task_cost_is_a_data_setting_only_when_set(out):
    with ScriptedModelServer(per_conversation([reply("done")])) as server:
        plain = make_config(server, out)
        limited = make_config(server, out, max_task_cost=Decimal("0.5"))
        budget = make_config(server, out, max_cost=Decimal("5"), price=mini_swe_runner.parse_price("input=1,output=1"))
    tools = [mini_swe_runner.terminal_tool(plain)]

    def settings(config):
        return mini_swe_runner.config_hash(mini_swe_runner.data_settings(config, "s", tools))

    assert "max_task_cost" not in mini_swe_runner.data_settings(plain, "s", tools)  # older outputs still resume
    assert settings(limited) != settings(plain) and settings(budget) == settings(plain)


def test_max_task_cost_ends_the_task_with_cost_limit_verified_and_kept_on_resume(out):
    with ScriptedModelServer(endless(0.01)) as server:
        config = make_config(server, out, max_task_cost=Decimal("0.025"), max_iterations=50, verify="true")
        outcome, [record] = run_prompts(config, ["task"])
        assert record["exit_reason"] == "cost_limit" and record["completed"] is False
        assert record["api_calls"] == 3 and record["cost"] == 0.03  # reached at its third call: no fourth
        assert "--max_task_cost 0.025" in record["error"]
        assert record["verification"]["passed"] is True and record["reward"] == 1.0
        assert not trajectory.is_retryable(record)
        requests = len(server.requests)
        again, records = run_prompts(config, ["task"])
        assert len(server.requests) == requests and len(records) == 1
        assert again.summary["run"]["skipped_already_done"] == 1


def test_max_cost_stops_a_40_task_run_at_8_workers_within_one_call_per_worker(out, tmp_path):
    prompts = [f"task {i}" for i in range(40)]
    with ScriptedModelServer(endless(0.01), latency=0.01) as server:
        config = make_config(server, out, workers=8, max_iterations=1000, max_cost=Decimal("0.5"))
        outcome, records = run_prompts(config, prompts)
        billed_calls = len(server.requests)
    spent = decimal_sum(r["cost"] for r in records)
    assert spent == Decimal("0.01") * billed_calls  # every billed call is in a record, exactly
    assert Decimal("0.5") <= spent <= Decimal("0.5") + 8 * Decimal("0.01")
    assert outcome.exit_code == 0 and "budget is spent" in outcome.message and "not started" in outcome.message
    assert {r["exit_reason"] for r in records} == {"cost_limit"}
    assert len(records) < 40
    assert Decimal(repr(outcome.summary["cost"]["total"])) == spent  # the records add up to the run's total


def test_resume_counts_what_the_output_already_cost(out):
    prompts = [f"task {i}" for i in range(10)]
    one_call = per_conversation([reply("done", usage=billed(0.03))])
    with ScriptedModelServer(one_call) as server:
        first, records = run_prompts(make_config(server, out, max_cost=Decimal("0.1")), prompts)
        first_calls = len(server.requests)
        assert 4 <= len(records) <= 6 and "budget is spent" in first.message
        # The same budget again: the output has spent it, nothing starts.
        again, same = run_prompts(make_config(server, out, max_cost=Decimal("0.1")), prompts)
        assert len(server.requests) == first_calls and len(same) == len(records)
        assert "no sample started" in again.message and again.summary["cost"]["output_before_run"] > 0.1
        # A larger budget spends only the difference.
        more, total = run_prompts(make_config(server, out, max_cost=Decimal("0.2")), prompts)
    spent = decimal_sum(r["cost"] for r in total)
    assert spent == Decimal("0.03") * len(server.requests)
    assert Decimal("0.2") <= spent <= Decimal("0.2") + 2 * Decimal("0.03")
    assert more.summary["cost"]["output_before_run"] == float(decimal_sum(r["cost"] for r in records))


def test_max_tokens_total_counts_tokens_like_money(out):
    with ScriptedModelServer(
        per_conversation([reply("done", usage=billed(None, prompt=100, completion=20))])
    ) as server:
        outcome, records = run_prompts(
            make_config(server, out, workers=1, max_tokens_total=500), [f"t{i}" for i in range(9)]
        )
    assert len(records) == 5 and sum(r["usage"]["total_tokens"] for r in records) == 600
    assert "--max_tokens_total 500" in outcome.message


def test_a_budget_stops_the_run_at_the_first_response_without_a_cost(out):
    with ScriptedModelServer(per_conversation([reply("done")])) as server:
        outcome, records = run_prompts(make_config(server, out, max_cost=Decimal("1")), ["a", "b", "c"])
    assert outcome.exit_code == 1 and records == []
    assert "came without a cost" in outcome.message and "--price" in outcome.message


# ---------------------------------------------------------------------------------------------------------------
# The summary, the progress line, and old records
# ---------------------------------------------------------------------------------------------------------------


def test_cli_summary_stats_file_and_progress_show_the_money(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"t{i}", "verify": f"test $(({i} % 2)) = 0"}) + "\n" for i in range(4))
    )
    stats = tmp_path / "stats.json"
    with ScriptedModelServer(per_conversation([reply("done", usage=billed(0.25))])) as server:
        result = run_cli(
            # A price is given too: the provider's measured cost wins over it.
            ["--prompts_file", str(prompts), "--base_url", server.base_url, "--stats_file", str(stats)]
            + ["--price", "input=1,output=1"],
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr
    assert ", $1.00 spent" in result.stderr  # the progress line
    assert "cost: $1.00 for 4 tasks (provider 4)" in result.stderr
    cost = json.loads(stats.read_text())["cost"]
    assert cost["total"] == 1.0 and cost["per_completed_task"] == 0.25 and cost["per_passed_sample"] == 0.5
    assert cost["per_task"]["p50"] == 0.25
    table = run_cli(["stats", "trajectories.jsonl"], cwd=tmp_path)
    assert "cost          $1.00 over 4 records; per task p50 $0.25" in table.stdout
    assert "per passed sample $0.50" in table.stdout
    stats_json = json.loads(run_cli(["stats", "trajectories.jsonl", "--json"], cwd=tmp_path).stdout)["cost"]
    assert stats_json["total"] == 1.0 and stats_json["per_passed_sample"] == 0.5
    assert stats_json["per_completed_task"] == 0.25 and stats_json["records_without_cost"] == 0


def test_view_shows_the_cost_card(tmp_path):
    import os

    import report

    chromium, driver_path = "/usr/bin/chromium", "/usr/bin/chromedriver"
    if not (os.path.exists(chromium) and os.path.exists(driver_path)):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/test installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    records = tmp_path / "o.jsonl"
    with ScriptedModelServer(per_conversation([reply("done", usage=billed(0.125))])) as server:
        run_prompts(make_config(server, records, verify="true"), ["a", "b"])
    page = tmp_path / "r.html"
    report.write_report([str(records)], str(page))
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(page.as_uri())
        for _ in range(200):
            if driver.execute_script("return document.body.dataset.ready") == "1":
                break
            time.sleep(0.1)
        cards = driver.find_element("id", "cards").text
    finally:
        driver.quit()
    assert "$0.250000" in cards and "$0.125000 per passed sample" in cards


def test_old_records_without_cost_resume_count_and_export(out, tmp_path):
    with ScriptedModelServer(per_conversation([reply("done", usage=billed(0.5))])) as server:
        run_prompts(make_config(server, out), ["new"])
    new = read_jsonl(out)[0]
    old = {key: value for key, value in new.items() if key not in ("cost", "cost_source")}
    old["task_id"], old["usage"] = "old-task", {k: v for k, v in new["usage"].items() if "cache" not in k}
    old["conversations"] = [*new["conversations"][:1], {"from": "human", "value": "old"}, new["conversations"][2]]
    out.write_text(json.dumps(old) + "\n" + json.dumps(new) + "\n")
    assert trajectory.output_spend(str(out)) == (Decimal("0.5"), 240)
    with ScriptedModelServer(per_conversation([reply("done", usage=billed(0.5))])) as server:
        outcome, records = run_prompts(make_config(server, out, max_cost=Decimal("5")), ["new", "other"])
    assert outcome.summary["run"]["skipped_already_done"] == 1 and len(records) == 3
    exported = tmp_path / "hermes.jsonl"
    result = run_cli(["export", str(out), "--output_file", str(exported)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(exported)
    assert all(tuple(row) == trajectory.RECORD_KEYS for row in rows)
    by_id = {row["task_id"]: row for row in rows}
    assert by_id["old-task"]["cost"] is None and by_id["old-task"]["usage"]["cached_tokens"] == 0
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(
        "json", data_files=str(out), split="train", features=trajectory.record_features(), cache_dir=str(tmp_path / "c")
    )
    assert sorted(loaded["cost"], key=lambda v: v is None) == [0.5, 0.5, None]


def test_progress_line_shows_money_only_when_known():
    stream = io.StringIO()
    progress = mini_swe_runner.Progress(3, quiet=False, stream=stream, interval=0)
    progress.update({"completed": True, "reward": None, "cost": None})
    assert "spent" not in stream.getvalue()
    progress.update({"completed": True, "reward": None, "cost": 0.0025})
    assert ", 0 failed, $0.0025 spent, " in stream.getvalue().splitlines()[-1]


def test_output_spend_adds_every_line_exactly(tmp_path):
    path = tmp_path / "o.jsonl"
    costs = [0.1, 0.2, 0.3, 1e-10, None]
    with trajectory.JsonlWriter(str(path)) as writer:
        for i, cost in enumerate(costs):
            writer.write(
                trajectory.build_record(
                    prompt_index=i,
                    task_id=f"t{i}",
                    conversations=[],
                    completed=True,
                    exit_reason="api_error" if i == 2 else "completed",  # a retryable record was billed too
                    api_calls=1,
                    tool_stats=trajectory.empty_tool_stats(),
                    usage={"total_tokens": 10},
                    duration_s=1,
                    error=None,
                    metadata={},
                    cost=cost,
                    cost_source=None if cost is None else "provider",
                )
            )
    assert trajectory.output_spend(str(path)) == (Decimal("0.6000000001"), 50)
    assert trajectory.output_spend(str(tmp_path / "none.jsonl")) == (Decimal(0), 0)
