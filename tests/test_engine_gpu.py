"""The engine on the GPU (run on the device machine with `-m gpu`; never in CI).

Greedy output through the graphed dense runner (CUDA graphs, Triton attention, fused kernels) equals
plain transformers greedy decoding on the same GPU, for mixed verify lengths and staggered requests,
and equals the eager fallback (`cuda_graphs=False`)."""

import pytest
import torch

from dspark.engine.llm import LLM
from dspark.engine.options import SamplingOptions

pytestmark = pytest.mark.gpu

PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [4, 5, 6, 7, 8], [9], [10, 11, 12, 13]]


@pytest.fixture(scope="module")
def pair():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from dspark import load_drafter, load_target

    target = load_target("src/dspark/assets/tiny-target", dtype="float32", device="cuda")
    drafter = load_drafter("src/dspark/assets/tiny-dspark", target=target, device="cuda")
    return target, drafter


def _hf_greedy(target, prompt, n):
    out = target.model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=n, do_sample=False,
                                eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("policy", ["fixed:7", "fixed:3", "threshold:0.5"])
def test_graphed_engine_matches_transformers_greedy(pair, policy):
    target, drafter = pair
    want = [_hf_greedy(target, p, 40) for p in PROMPTS]
    for graphs in (True, False):
        llm = LLM(target, drafter, policy=policy, page_size=16, max_num_seqs=8, eos_token_ids=(-1,))
        if not graphs:
            from dspark.engine.runner import ModelRunner

            llm.runner = ModelRunner(target, drafter, llm.blocks.num_pages, 16, cuda_graphs=False)
        ids = []
        for i, p in enumerate(PROMPTS):  # staggered: one new request per step
            ids.append(llm.add_request(p, SamplingOptions(40, temperature=0.0, ignore_eos=True)))
            llm.step()
        while llm.has_unfinished():
            llm.step()
        got = [llm.result(i).token_ids for i in ids]
        # fp32 on the GPU: TF32 and kernel order may flip a near-tie; demand near-total agreement
        agree = sum(a == b for g, w in zip(got, want) for a, b in zip(g, w)) / sum(len(w) for w in want)
        assert agree > 0.97, (graphs, agree)


@pytest.mark.parametrize("policy", ["fixed:7", "threshold:0.5", "none"])
def test_graphed_steps_equal_eager_seeded_sampling(pair, policy):
    """Real graph replay (whole decode steps) == the eager runner, seeded T = 1 / top-k / top-p rows and greedy rows."""
    from dspark.engine.runner import ModelRunner

    target, drafter = pair
    opts = [SamplingOptions(48, temperature=1.0, seed=5, ignore_eos=True),
            SamplingOptions(48, temperature=0.0, ignore_eos=True),
            SamplingOptions(48, temperature=0.7, top_k=20, seed=6, ignore_eos=True),
            SamplingOptions(48, temperature=1.0, top_p=0.8, seed=7, ignore_eos=True)]
    opts.append(SamplingOptions(48, temperature=1.0, seed=8, ignore_eos=True))
    prompts = PROMPTS + [[(7 * i) % 200 + 1 for i in range(150)]]  # prefilled in chunks beside decoding rows
    got = []
    for graphs in (True, False):
        d = None if policy == "none" else drafter
        llm = LLM(target, d, policy=policy, page_size=16, max_num_seqs=8, max_num_batched_tokens=64,
                  eos_token_ids=(-1,))
        llm.runner = ModelRunner(target, d, llm.blocks.num_pages, 16, cuda_graphs=graphs, max_num_seqs=8,
                                 max_num_batched_tokens=64)
        ids = []
        for p, o in zip(prompts, opts):
            ids.append(llm.add_request(p, o))
            llm.step()
        while llm.has_unfinished():
            llm.step()
        if graphs:  # every step replays a graph, the chunked prefill's included
            assert llm.runner.step.num_graph_steps > 0 and llm.runner.step.num_eager_steps == 0
        got.append([llm.result(i).token_ids for i in ids])
    agree = sum(a == b for g, w in zip(*got) for a, b in zip(g, w)) / sum(len(w) for w in got[1])
    assert agree > 0.97, agree


def test_table_driven_planner_prices_steps_at_the_graph_ladder(pair):
    """A graphed engine's planner reads its SPS table padded up the graphs' ladder (what a step really costs)."""
    from dspark.scheduling import SPSTable

    target, drafter = pair
    table = SPSTable([1, 64], [100.0, 50.0], draft_cost={1: 1e-4, 8: 2e-4})
    llm = LLM(target, drafter, policy="dspark-async", sps=table, page_size=16, max_num_seqs=8, eos_token_ids=(-1,))
    ladder = llm.runner.graph_ladder()
    assert ladder and llm.planner.base_sps.ladder == ladder
    above = next(x for x in ladder if x > 5)
    assert llm.planner.sps.step_time(5) == pytest.approx(table.step_time(above if 5 not in ladder else 5))
