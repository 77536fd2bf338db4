"""`GraphedStep` (whole decode steps as one CUDA graph) against the eager step, on the CPU.

In `replay_eagerly` mode every step, prefill chunks included, is padded into the graphs' static
buffers exactly as a replay would be (padding rows, tokens and logits rows, verify blocks padded to γ,
chunk promises, the drafter's context bound, the top-k bucket) and `speculative_step` runs on those
buffers: no step may fall back to eager. Seeded sampling at T = 1 with top-k / top-p and
greedy rows in one batch must give the same tokens, acceptances and confidences as the plain eager
runner, for every drafter, staggered arrivals included; `-m gpu` tests replay real graphs
(tests/test_engine_gpu.py).
"""

from __future__ import annotations

import pytest
import torch

from engine_helpers import run_staggered, taught_drafter, weak_bigram_target
from dspark.engine.graphed_step import GraphedStep, StepKey
from dspark.engine.graphed_target import GraphedDenseTarget
from dspark.engine.llm import LLM
from dspark.engine.options import SamplingOptions
from dspark.engine.runner import ModelRunner, Runner
from dspark.models import DenseLM

# the long prompt is prefilled in chunks (max_num_batched_tokens 48) next to decoding requests
PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [4, 5, 6], [9], [i % 12 + 1 for i in range(70)], [3, 3, 3, 3, 3, 3]]
OPTIONS = [SamplingOptions(24, temperature=1.0, seed=11, ignore_eos=True),
           SamplingOptions(24, temperature=0.0, ignore_eos=True),
           SamplingOptions(24, temperature=0.8, top_k=5, seed=12, ignore_eos=True),
           SamplingOptions(24, temperature=1.0, top_p=0.7, seed=13, ignore_eos=True),
           SamplingOptions(24, temperature=1.2, top_k=3, top_p=0.9, seed=14, ignore_eos=True)]


@pytest.fixture(scope="module")
def target_and_map(tmp_path_factory):
    return weak_bigram_target(tmp_path_factory.mktemp("graphed-step"))


def graphed_runner(target, drafter, num_pages: int, page_size: int, max_seqs: int) -> Runner:
    gamma = drafter.config.num_drafts if drafter is not None else 0
    backend = GraphedDenseTarget(DenseLM.from_hf_model(target.model), num_pages, page_size, max_query_len=gamma + 1,
                                 sizes=(1, 2, 4, 8, 16, 32, 64))
    backend.replay_eagerly = True
    runner = Runner(backend, drafter, num_pages, page_size)
    runner.step = GraphedStep(backend, drafter, runner.draft_kv, max_seqs)
    return runner


def run(llm: LLM) -> list[tuple]:
    """(tokens, per-round (verified, accepted, drafts), per-round confidences) of every request."""
    return run_staggered(llm, PROMPTS, OPTIONS)


@pytest.mark.parametrize("method,kw,policy", [("dspark", {"markov_head_type": "vanilla"}, "fixed:4"),
                                              ("dspark", {"markov_head_type": "rnn"}, "threshold:0.5"),
                                              ("dflash", {}, "fixed:3"), ("eagle3", {}, "fixed:4"),
                                              ("mtp", {}, "fixed:1"), (None, {}, "none")])
def test_graphed_step_equals_eager(target_and_map, method, kw, policy):
    target, f = target_and_map
    torch.manual_seed(0)
    drafter = None if method is None else taught_drafter(target, f, method, kw)
    results, runners = [], []
    for graphed in (False, True):
        llm = LLM(target, drafter, policy=policy, page_size=4, max_num_seqs=6, max_num_batched_tokens=48,
                  eos_token_ids=(-1,), runner="model")
        pages = llm.blocks.num_pages
        llm.runner = (graphed_runner(target, drafter, pages, 4, 8) if graphed
                      else ModelRunner(target, drafter, pages, 4, cuda_graphs=False))
        results.append(run(llm))
        runners.append(llm.runner)
    eager, graphed = results
    assert [r[:2] for r in eager] == [r[:2] for r in graphed]  # tokens, verified, accepted, drafts: identical
    for a, b in zip(eager, graphed):  # confidences: equal up to float reduction order of padded shapes
        for ca, cb in zip(a[2], b[2]):
            assert ca == pytest.approx(cb, abs=1e-4)
    step = runners[1].step
    assert step.num_graph_steps > 0 and step.num_eager_steps == 0  # every step graphed, prefill chunks included
    assert len(step.graphs) >= 2  # several padded sizes served
    gamma = drafter.config.num_drafts if drafter is not None else 0
    assert any(key.target.max_query_len > gamma + 1 for key in step.graphs)  # chunk graphs
    assert any(0 < key.target.num_logits < key.target.num_tokens for key in step.graphs)  # fewer logits rows


@pytest.mark.parametrize("num_rows", [1, 3, 4, 7])
def test_siblings_cover_every_verify_length_mix(target_and_map, num_rows):
    """Rows verifying 0 .. γ drafts each: every token count maps to the first key or one of its siblings
    (both paddings: on the ladder without the dummy sequence, off it with one), so a policy that varies
    the lengths (`dspark-async`) never captures mid-run."""
    target, f = target_and_map
    drafter = taught_drafter(target, f, "dspark", {"markov_head_type": "vanilla"})
    gamma = drafter.config.num_drafts
    runner = graphed_runner(target, drafter, 64, 4, 8)
    step, backend = runner.step, runner.step.target
    layers = list(drafter.config.target_layer_ids)

    def key(tokens: int) -> StepKey:
        tkey = backend.graph_key(tokens, num_rows, gamma + 1, 20, 1, layers)
        return StepKey(tkey, 0, False, False, True, False, 64, 0)

    first = key(num_rows * (gamma + 1))
    family = {first, *step.siblings(first, num_rows)}
    for tokens in range(num_rows, num_rows * (gamma + 1) + 1):
        assert key(tokens) in family, tokens
