"""The embedded default model (tiny target + its DSpark drafter) loads and decodes losslessly on CPU."""

import json

import pytest

from dspark import SpeculativeDecoder, load_drafter, load_target
from dspark.cli.common import DEFAULT_DRAFT, DEFAULT_TARGET
from dspark.cli import main

pytestmark = pytest.mark.skipif(not DEFAULT_DRAFT.is_dir(), reason="embedded drafter not installed")


def test_assets_are_small_and_lean():
    total = sum(p.stat().st_size for d in (DEFAULT_TARGET, DEFAULT_DRAFT) for p in d.rglob("*") if p.is_file())
    assert total <= 24 * 1024 * 1024
    assert json.loads((DEFAULT_DRAFT / "config.json").read_text())["dspark_frozen_from_target"] is True


def test_embedded_default_greedy_equivalence():
    target = load_target(DEFAULT_TARGET)
    drafter = load_drafter(DEFAULT_DRAFT, target=target)
    assert drafter.config.method == "dspark" and drafter.config.has_confidence
    prompts = [target.tokenizer(t, add_special_tokens=False)["input_ids"]
               for t in ("def fibonacci(n):", "import os\n", "class Stack:\n    def push(self, item):")]
    dec = SpeculativeDecoder(target, drafter)
    eos = target.token_id("eos_token_id")
    base = dec.generate(prompts, 40, temperature=0, speculative=False, eos_token_id=eos)
    spec = dec.generate(prompts, 40, temperature=0, eos_token_id=eos)
    assert [s.token_ids for s in spec] == [b.token_ids for b in base]
    assert sum(s.tau for s in spec) / len(spec) > 1.3  # the trained drafter really gets accepted


def test_main_job_command(capsys):
    assert main(["generate", "--prompt", "def add(a, b):", "--max-new-tokens", "16", "--temperature", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["text"] and len(out["token_ids"]) <= 16 and out["tau"] >= 1.0
