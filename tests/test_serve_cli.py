"""In-process checks of the serve command line and pieces that need no server: vLLM's --speculative-config
spelling, one-line errors when an optional dependency is missing, and the incremental detokenizer."""

from __future__ import annotations

import json
import sys

import pytest

from dspark.cli import build_parser, main
from dspark.cli.common import DEFAULT_DRAFT, DEFAULT_TARGET
from dspark.cli.serve import _plan, speculative_config
from dspark.errors import ConfigError
from dspark.serve.detokenizer import TextStream


def plan(*argv: str):
    return _plan(build_parser().parse_args(["serve", *argv]))


def test_vllm_speculative_config_spelling():
    spec = json.dumps({"method": "dspark", "model": "/d", "num_speculative_tokens": 5,
                       "enable_adaptive_verification": True})
    assert plan("/t", "--speculative-config", spec)[:3] == ("/t", "/d", "dspark-async+gate")
    fixed = json.dumps({"method": "eagle", "model": "/d", "num_speculative_tokens": 3})
    target, draft, policy, parsed = plan("--model", "/t", "--speculative-config", fixed)
    assert (target, draft, policy, parsed["method"]) == ("/t", "/d", "fixed:3", "eagle3")
    assert plan("/t", "--speculative-config", spec, "--policy", "fixed:2")[2] == "fixed:2"  # an explicit policy wins
    assert plan()[:3] == (str(DEFAULT_TARGET), str(DEFAULT_DRAFT), None)  # the embedded pair
    assert plan("/t")[:2] == ("/t", None)  # a model without a drafter decodes plainly
    assert plan("--no-draft")[1] is None


@pytest.mark.parametrize("text, message", [
    ("{nope", "not JSON"), ("[1]", "JSON object"), ('{"method": "ngram", "model": "/d"}', "not supported"),
    ('{"method": "dspark"}', "needs \"model\""), ('{"model": "/d", "num_speculative_tokens": -1}', ">= 0"),
])
def test_bad_speculative_configs(text, message):
    with pytest.raises(ConfigError, match=message):
        speculative_config(text)


def test_conflicting_model_flags():
    with pytest.raises(ConfigError, match="two models"):
        plan("/a", "--model", "/b")
    with pytest.raises(ConfigError, match="drafter once"):
        plan("--draft", "/d", "--speculative-config", '{"model": "/e"}')


@pytest.mark.parametrize("spec, message", [
    ({"method": "dspark", "num_speculative_tokens": 99}, "more than the drafter proposes"),
    ({"method": "eagle3", "num_speculative_tokens": 2}, "is a 'dspark' drafter"),
])
def test_speculative_config_that_does_not_fit_the_drafter_is_one_line(capsys, spec, message):
    spec = json.dumps({**spec, "model": str(DEFAULT_DRAFT)})
    assert main(["serve", str(DEFAULT_TARGET), "--speculative-config", spec, "--max-model-len", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("argv, module, hint", [
    (["serve"], "fastapi", "dspark[serve]"),
    (["bench", "serve"], "httpx", "pip install httpx"),
    (["data", "regenerate", "--endpoint", "http://127.0.0.1:9/v1", "--input", "in.jsonl", "--output", "OUT"], "httpx",
     "pip install httpx"),
])
def test_missing_optional_dependency_is_one_line(monkeypatch, capsys, tmp_path, argv, module, hint):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ModuleNotFoundError
    argv = [str(tmp_path / "out.jsonl") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and hint in err[0], err


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEFAULT_TARGET)


@pytest.mark.parametrize("stop", [(), ("\n",), ("wör", "zz"), ("日本",)])
def test_text_stream_deltas_add_up_to_the_final_text(tokenizer, stop):
    ids = tokenizer("héllo wörld 日本語 def f(x):\n    return x", add_special_tokens=False)["input_ids"] + [1]
    stream, parts = TextStream(tokenizer, stop), []
    for n in range(1, len(ids) + 1):
        parts.append(stream.update(ids[:n], n == len(ids)))
        assert "\ufffd" not in "".join(parts)
        if stream.stopped:
            break
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    cut = min((i for i in (whole.find(s) for s in stop) if i >= 0), default=len(whole))
    assert "".join(parts) == stream.sent == whole[:cut]
    assert stream.stopped == (cut < len(whole))
