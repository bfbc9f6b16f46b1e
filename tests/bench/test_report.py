"""The table, the JSON document, the plot, and the flags they come from."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from exo.bench.cli import add_parser, placements
from exo.bench.plot import write_plot
from exo.bench.records import Config, Placement, RequestResult
from exo.bench.report import document, measured_anything, notes, table
from exo.bench.stats import summarize
from exo.bench.sweep import ConfigResult


def result(concurrency: int, gen_got: int = 4, **config: object) -> ConfigResult:
    fields = {"placement": Placement(), "prompt_tokens": 16, "gen_tokens": 4, **config}
    cfg = Config(concurrency=concurrency, requests=2, **fields)  # type: ignore[arg-type]
    times = tuple(0.2 + 0.05 * i for i in range(gen_got))
    requests = [
        RequestResult(i, "ok", 0.0, 0.5, times, prompt_tokens=16, completion_tokens=gen_got)
        for i in range(2)
    ]
    return ConfigResult(cfg, tuple(requests), summarize(requests, wall_s=1.0))


def test_table_has_a_row_per_configuration_and_says_what_differed() -> None:
    failed = ConfigResult(Config(Placement("tensor", 2), 16, 4, 1, 2), error="placement failed: x")
    text = table([result(1), result(2, gen_got=3), failed])
    lines = text.splitlines()
    assert lines[0].startswith("placement") and "TTFT ms p50/90/99" in lines[0]
    assert "node's choice" in lines[1] and lines[1].rstrip().endswith("8.0")  # agg tok/s
    assert "gen 3 of 4" in lines[2]
    assert "tensor x2" in lines[3] and "placement failed: x" in lines[3]
    assert "agg tok/s: generated tokens / wall time" in text


def test_notes_count_rejections_and_failures() -> None:
    requests = [
        RequestResult(0, "rejected", 0.0, 0.0, http_status=429),
        RequestResult(1, "failed", 0.0, 0.0, error="HTTP 503: down"),
    ]
    config = Config(Placement(), 16, 4, 1, 2)
    text = notes(ConfigResult(config, tuple(requests), summarize(requests, 1.0)))
    assert "1 rejected (429)" in text and "1 failed: HTTP 503: down" in text
    assert "nothing measured" in text


def test_the_document_holds_raw_requests_and_summaries() -> None:
    results = [result(1), ConfigResult(Config(Placement("pipeline", 3), 16, 4, 1, 2), error="e")]
    doc = json.loads(json.dumps(document({"model": "m"}, results)))
    assert doc["format"] == "exo-bench/1" and doc["model"] == "m"
    first, second = doc["configurations"]
    assert first["config"] == {
        "strategy": None,
        "nodes": None,
        "prompt_tokens": 16,
        "gen_tokens": 4,
        "concurrency": 1,
        "requests": 2,
    }
    assert len(first["requests"]) == 2
    assert first["requests"][0]["chunk_times"] == pytest.approx([0.2, 0.25, 0.3, 0.35])
    assert first["requests"][0]["metrics"]["ttft"] == pytest.approx(0.2)
    assert first["summary"]["ttft"]["p99"] == pytest.approx(0.2)
    assert second["error"] == "e" and second["summary"] is None
    assert measured_anything(results) and not measured_anything(results[1:])


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "bench.png"
    assert write_plot([result(1), result(2), result(4, prompt_tokens=64)], path, "exo bench")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not write_plot([], tmp_path / "none.png", "nothing")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def test_flags_are_comma_separated_sweeps() -> None:
    args = parse("--prompt-tokens", "128,512", "--concurrency", "1, 8", "--gen-tokens", "64")
    assert (args.prompt_tokens, args.gen_tokens, args.concurrency) == ([128, 512], [64], [1, 8])
    assert placements(args) == [Placement()]
    args = parse("--strategy", "pipeline,tensor", "--nodes", "1,2")
    assert placements(args) == [
        Placement("pipeline", 1),
        Placement("pipeline", 2),
        Placement("tensor", 1),
        Placement("tensor", 2),
    ]
    assert placements(parse("--nodes", "2")) == [Placement("pipeline", 2)]
    assert placements(parse("--strategy", "tensor")) == [Placement("tensor", None)]


@pytest.mark.parametrize(
    "argv",
    [["--prompt-tokens", "0"], ["--concurrency", "1,x"], ["--strategy", "ring"], ["--nodes", ""]],
)
def test_bad_flags_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
