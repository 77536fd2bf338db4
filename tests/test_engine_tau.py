"""One definition of a round and of τ, equal to DeepSpec's accounting on identical outputs.

DeepSpec's evaluation loop counts accepted + 1 per round, except the round that hits a stop token,
which counts the tokens up to and including it; a round whose tokens run past max_new_tokens still
counts accepted + 1 (the output is trimmed afterwards). `deepspec_tau` restates that rule on our
round records; the engine's τ (results, summaries, eval traces) must equal it.
"""

from dspark.engine.llm import LLM
from dspark.engine.options import SamplingOptions
from dspark.eval.metrics import summarize
from dspark.eval.traces import trace_from_results
from engine_helpers import hf_greedy, run_one, taught_drafter, weak_bigram_target


def deepspec_tau(rounds, output: list[int], stop_ids: set[int]) -> float:
    """Replay DeepSpec's counting from the drafted ids: accepted drafts, then the first stop token among them."""
    counts = []
    for r in rounds:
        accepted = r.draft_ids[: r.accepted]
        hits = [i for i, t in enumerate(accepted) if t in stop_ids]
        counts.append(hits[0] + 1 if hits else r.accepted + 1)
    return sum(counts) / len(counts)


def test_tau_matches_deepspec_with_budget_cut_and_stop_mid_round(tmp_path):
    target, f = weak_bigram_target(tmp_path)
    drafter = taught_drafter(target, f, "dspark", {"markov_head_type": "vanilla"})
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    greedy = hf_greedy(target, prompt, 40)
    llm = LLM(target, drafter, page_size=8, eos_token_ids=(-1,))
    # (a) the budget ends in the middle of a round; (b) a stop token among accepted drafts ends it
    cut = llm.result(run_one(llm, prompt, SamplingOptions(13, temperature=0.0)))
    stop = greedy[20]
    mid = llm.result(run_one(llm, prompt, SamplingOptions(40, temperature=0.0, stop_token_ids=(stop,))))
    assert cut.token_ids == greedy[:13] and mid.token_ids[-1] == stop
    assert sum(r.committed for r in cut.rounds) + 1 == 13
    last = cut.rounds[-1]
    assert last.committed < last.accepted + 1 or last.verified > 0  # the budget cut the last commit (or it fit)
    assert mid.rounds[-1].stopped and not cut.rounds[-1].stopped
    for res, stops in ((cut, set()), (mid, {stop})):
        expected = deepspec_tau(res.rounds, res.token_ids, stops)
        assert abs(res.tau - expected) < 1e-12
        assert abs(summarize([res], drafter.config.num_drafts)["tau"] - expected) < 1e-12
        trace = trace_from_results([res], drafter.config.num_drafts, "d", "x", [0])
        assert abs(trace.tau_tokens().mean() - expected) < 1e-12


def test_every_stop_id_of_the_target_ends_generation(tmp_path):
    """Generation config EOS lists and the chat template's end-of-turn token all stop a request."""
    from dspark import load_target

    target = load_target("src/dspark/assets/tiny-target")
    stops = target.stop_token_ids()
    vocab = target.tokenizer.get_vocab()
    assert vocab["<|im_end|>"] in stops and vocab["<|endoftext|>"] in stops
    llm = LLM(target, None)
    assert llm.eos_token_ids == stops


def test_stop_strings_cut_the_text_and_finish_the_request():
    from dspark import load_drafter, load_target

    target = load_target("src/dspark/assets/tiny-target")
    drafter = load_drafter("src/dspark/assets/tiny-dspark", target=target)
    ids = target.tokenizer("def fibonacci(n):\n    ", add_special_tokens=False)["input_ids"]
    llm = LLM(target, drafter)
    full = llm.generate([ids], 48, temperature=0.0, ignore_eos=True)[0].text
    stop = full[10:14]
    assert stop and full.find(stop) == 10
    rid = llm.add_request(ids, SamplingOptions(48, temperature=0.0, ignore_eos=True, stop=(stop,)))
    outs = []
    while llm.has_unfinished():
        outs += [o for o in llm.step() if o.request_id == rid]
    assert outs[-1].finished and outs[-1].finish_reason == "stop"
    assert outs[-1].text == full[:10]
    assert llm.blocks.num_used == 0
