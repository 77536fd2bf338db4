"""The chain drafters' flat absorb (`FlatChainAbsorber`: MTP-1, Eagle3) against their per-row absorb.

The engine hands MTP-1 and Eagle3 the step's flat token axis (their K/V at a position depend on its inputs
alone) and lets only each row's last committed position attend, instead of per-row updates padded to the
longest query of the step (a prefill chunk made every decoding row as wide as the chunk). Same requests,
same seeds, the same drafter seen through a proxy that hides `absorb_flat_chain` (so the engine falls back
to per-row updates): every token, round, draft and confidence must agree, with prefill chunks beside
decoding rows, staggered arrivals, greedy and sampled rows.
"""

from __future__ import annotations

import pytest
import torch

from engine_helpers import run_staggered, taught_drafter, weak_bigram_target
from dspark.drafters.base import FlatAbsorber, FlatChainAbsorber, absorbs_flat
from dspark.engine.llm import LLM
from dspark.engine.options import SamplingOptions
from dspark.engine.runner import ModelRunner

PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [4, 5, 6], [9], [i % 12 + 1 for i in range(70)], [3, 3, 3, 3, 3, 3]]
OPTIONS = [SamplingOptions(20, temperature=1.0, seed=11, ignore_eos=True),
           SamplingOptions(20, temperature=0.0, ignore_eos=True),
           SamplingOptions(20, temperature=0.8, top_k=5, seed=12, ignore_eos=True),
           SamplingOptions(20, temperature=1.0, top_p=0.7, seed=13, ignore_eos=True),
           SamplingOptions(20, temperature=1.2, seed=14, ignore_eos=True)]


class PerRow:
    """A drafter seen without its flat absorb: the engine gives it per-row updates."""

    def __init__(self, drafter: torch.nn.Module) -> None:
        self._drafter = drafter

    def __getattr__(self, name: str):
        if name == "absorb_flat_chain":
            raise AttributeError(name)
        return getattr(self._drafter, name)


@pytest.fixture(scope="module")
def target_and_map(tmp_path_factory):
    return weak_bigram_target(tmp_path_factory.mktemp("chain-flat"))


def run(target, drafter, policy: str, per_row: bool) -> list[tuple]:
    llm = LLM(target, drafter, policy=policy, page_size=4, max_num_seqs=6, max_num_batched_tokens=48,
              eos_token_ids=(-1,), runner="model")
    llm.runner = ModelRunner(target, PerRow(drafter) if per_row else drafter, llm.blocks.num_pages, 4, cuda_graphs=False)
    assert llm.runner.per_row_update == per_row
    out = run_staggered(llm, PROMPTS, OPTIONS)
    return [(tokens, rounds, [[round(c, 4) for c in conf] for conf in confs]) for tokens, rounds, confs in out]


def test_the_chain_drafters_absorb_flat_and_dspark_keeps_its_own(target_and_map):
    target, f = target_and_map
    for method in ("mtp", "eagle3"):
        drafter = taught_drafter(target, f, method, {})
        assert isinstance(drafter, FlatChainAbsorber) and absorbs_flat(drafter)
        assert not absorbs_flat(PerRow(drafter)) and not isinstance(PerRow(drafter), FlatAbsorber)
    dspark = taught_drafter(target, f, "dspark", {"markov_head_type": "vanilla"})
    assert isinstance(dspark, FlatAbsorber) and not isinstance(dspark, FlatChainAbsorber)


@pytest.mark.parametrize("method,policy", [("mtp", "fixed:1"), ("eagle3", "fixed:4")])
def test_flat_chain_absorb_equals_per_row(target_and_map, method, policy):
    target, f = target_and_map
    torch.manual_seed(0)
    drafter = taught_drafter(target, f, method, {})
    flat, per_row = run(target, drafter, policy, False), run(target, drafter, policy, True)
    assert flat == per_row
    accepted = sum(a for _, rounds, _ in flat for _, a, _ in rounds)
    assert accepted > 0  # the drafter was taught: drafts pass, so a wrong context would show


@pytest.mark.gpu
@pytest.mark.parametrize("method,policy", [("mtp", "fixed:1"), ("eagle3", "fixed:4")])
def test_gpu_chain_drafters_replay_graphs_equal_to_eager(method, policy):
    """Real CUDA graphs of whole steps with the flat chain absorb (prefill chunks beside decoding rows) == the
    eager runner, seeded sampling; every step replays a graph."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from conftest import tiny_drafter
    from dspark import load_target

    target = load_target("src/dspark/assets/tiny-target", dtype="float32", device="cuda")
    drafter = tiny_drafter(target, method).to("cuda")
    prompts = [*PROMPTS[:3], [(7 * i) % 200 + 1 for i in range(150)]]
    got = []
    for graphs in (True, False):
        llm = LLM(target, drafter, policy=policy, page_size=16, max_num_seqs=8, max_num_batched_tokens=64,
                  eos_token_ids=(-1,))
        llm.runner = ModelRunner(target, drafter, llm.blocks.num_pages, 16, cuda_graphs=graphs, max_num_seqs=8,
                                 max_num_batched_tokens=64)
        got.append(run_staggered(llm, prompts, OPTIONS[: len(prompts)]))
        if graphs:
            assert llm.runner.step.num_graph_steps > 0 and llm.runner.step.num_eager_steps == 0
    tokens = [(a, b) for (ga, _, _), (gb, _, _) in zip(*got) for a, b in zip(ga, gb)]
    assert sum(a == b for a, b in tokens) / len(tokens) > 0.97  # fp32 on the GPU: TF32 may flip a near-tie
