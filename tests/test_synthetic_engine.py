"""Synthetic acceptance through the engine and the commands: exact budgets, NOT lossless labels everywhere, refusals."""

from __future__ import annotations

import json
import re

import pytest

from dspark.cli import build_parser, main
from dspark.engine.llm import LLM
from dspark.engine.options import SamplingOptions
from dspark.errors import ConfigError
from dspark.scheduling import SPSTable
from dspark.targets.random_weights import random_drafter, random_target

TABLE = SPSTable([1, 8, 64], [100.0, 90.0, 40.0], draft_cost={1: 0.002, 8: 0.003})


@pytest.fixture(scope="module")
def pair():
    target = random_target("tiny", seed=0)
    return target, random_drafter(target, "dspark", num_layers=1, block_size=5), random_drafter(target, "mtp")


def test_engine_makes_exactly_max_tokens_and_says_not_lossless(pair):
    target, drafter, _ = pair
    llm = LLM(target, drafter, policy="fixed:5", synthetic_acceptance="dspark/math", max_num_seqs=4, detokenize=False)
    budgets = [9, 23, 40]
    results = llm.generate([[1, 2, 3], [4, 5], [6, 7, 8, 9]], max_new_tokens=budgets, seed=0, ignore_eos=True)
    assert [len(r.token_ids) for r in results] == budgets
    assert all(r.synthetic_acceptance == "synthetic-acceptance:dspark/math (NOT lossless)" for r in results)
    assert "NOT lossless" in json.dumps(results[0].to_dict())
    assert "NOT lossless" in llm.stats().synthetic_acceptance
    rounds = [rec for r in results for rec in r.rounds]
    assert all(rec.accepted <= rec.verified for rec in rounds)
    assert sum(rec.accepted for rec in rounds) > len(rounds)  # dspark/math accepts ~4 of 5 drafts a round
    plain = LLM(target, drafter, policy="fixed:5", max_num_seqs=4, detokenize=False)
    assert plain.stats().synthetic_acceptance is None and plain.synthetic_label is None


def test_a_drafter_without_confidence_head_schedules_on_the_models_confidences(pair):
    target, _, mtp = pair
    llm = LLM(target, mtp, policy="dspark-async+gate", sps=TABLE, synthetic_acceptance="mtp/chat", max_num_seqs=2,
              detokenize=False)
    rid = llm.add_request([1, 2, 3], SamplingOptions(12, seed=1, ignore_eos=True))
    while llm.has_unfinished():
        llm.step()
    assert len(llm.result(rid).token_ids) == 12
    with pytest.raises(ConfigError, match="confidence head"):
        LLM(target, mtp, policy="dspark", sps=TABLE, max_num_seqs=2)


@pytest.mark.parametrize("policy, with_drafter, spec, message", [
    ("none", True, "dspark/math", "drafts nothing"),
    ("fixed:0", True, "dspark/math", "drafts nothing"),
    ("none", False, "dspark/math", "without a drafter"),
    ("fixed:5", True, "mtp/math", "has 1 slot(s), but the drafter proposes 5"),
    ("fixed:5", True, "bogus", "'bogus' is neither a preset"),
])
def test_refusals(pair, policy, with_drafter, spec, message):
    target, drafter, _ = pair
    with pytest.raises(ConfigError, match=re.escape(message)):
        LLM(target, drafter if with_drafter else None, policy=policy, synthetic_acceptance=spec, max_num_seqs=2)


def test_generate_labels_every_line(capsys):
    argv = ["generate", "--synthetic-acceptance", "dspark/math", "--max-new-tokens", "6", "--prompt-ids", "1,2,3"]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lossless"] is False and "NOT lossless" in out["synthetic_acceptance"]
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[dspark]")]
    assert len(lines) == 3 and all("NOT lossless" in line for line in lines)
    assert main(argv + ["--no-spec"]) == 2
    assert "--no-spec drafts nothing" in capsys.readouterr().err


def test_serve_refuses_without_benchmark(capsys):
    assert main(["serve", "--synthetic-acceptance", "dspark/math"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--benchmark" in err[0] and "NOT lossless" in err[0]


def test_benchmark_server_says_not_lossless_and_bench_serve_labels_it(monkeypatch):
    from fastapi.testclient import TestClient

    from dspark.cli.serve import build_llm
    from dspark.serve import bench
    from dspark.serve.app import create_app
    from dspark.serve.engine_loop import EngineLoop
    from dspark.serve.inputs import ModelInfo
    from dspark.serve.metrics import ServerMetrics

    args = build_parser().parse_args(["serve", "--benchmark", "--synthetic-acceptance", "dspark/math", "--policy",
                                      "fixed:7", "--max-model-len", "128", "--num-pages", "64", "--max-num-seqs", "2"])
    llm, _, _ = build_llm(args)
    metrics = ServerMetrics("tiny")
    app = create_app(EngineLoop(llm, metrics), ModelInfo.from_llm(llm, ["tiny"]), metrics)
    with TestClient(app) as client:
        card = client.get("/v1/models").json()["data"][0]
        assert "NOT lossless" in card["dspark_acceptance"]
        reply = client.post("/v1/completions", json={"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 4})
        assert reply.status_code == 200 and "NOT lossless" in reply.headers["x-dspark-acceptance"]

        async def get(base: str, path: str, key: str | None):
            return client.get(base.removeprefix("http://test") + path)

        monkeypatch.setattr(bench, "_get", get)
        import asyncio

        label = asyncio.run(bench.server_acceptance("http://test/v1", None))
    assert label == card["dspark_acceptance"]
    bench.check_acceptance(label, "dspark/math")
    with pytest.raises(ConfigError, match="server reports"):
        bench.check_acceptance(label, "dspark/chat")
    with pytest.raises(ConfigError, match="lossless acceptance"):
        bench.check_acceptance(None, "dspark/math")
    level = {"concurrency": 1, "completed": 1, "failed": 0, "output_tok_s": 1.0, "per_user_tok_s": 1.0, "tau": None,
             **{k: {"p50": 1.0, "p99": 1.0} for k in ("ttft_ms", "tpot_ms", "latency_ms")}}
    result = {"model": "tiny", "base_url": "u", "dataset": "d", "num_prompts": 1, "max_tokens": 4, "levels": [level],
              "synthetic_acceptance": label}
    assert all("NOT lossless" in line for line in bench.table(result).splitlines())
