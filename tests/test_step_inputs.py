"""The graphed step's one-copy inputs (`dspark.engine.input_layout`, `dspark.engine.step_inputs`), on the CPU.

The packed layout round-trips: after every `GraphedStep.upload` of a real engine run (prefill chunks,
verify steps of varying lengths, a per-row-update drafter, synthetic acceptance), the device buffer
holds exactly the bytes the host wrote, every field of the graph's static inputs holds the step's
values in its leading rows / columns and the padding rules everywhere else, and the B-row plan handed
back equals the eager `upload_plan` of the same `HostPlan`. The layout itself: aligned, disjoint
fields; its template is all padding.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine_helpers import taught_drafter, weak_bigram_target
from dspark.engine.graphed_step import GraphedStep
from dspark.engine.graphed_target import GraphedDenseTarget
from dspark.engine.host_plan import HostPlan, upload_plan
from dspark.engine.input_layout import ALIGN, SOURCES, input_layout, template
from dspark.engine.llm import LLM
from dspark.engine.options import SamplingOptions
from dspark.engine.runner import Runner
from dspark.engine.step import StepPlan
from dspark.models import DenseLM

PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [4, 5, 6], [i % 12 + 1 for i in range(40)]]
OPTIONS = [SamplingOptions(12, temperature=1.0, seed=11, ignore_eos=True),
           SamplingOptions(12, temperature=0.0, ignore_eos=True),
           SamplingOptions(12, temperature=0.8, top_k=5, top_p=0.9, seed=12, ignore_eos=True)]


@pytest.fixture(scope="module")
def target_and_map(tmp_path_factory):
    return weak_bigram_target(tmp_path_factory.mktemp("step-inputs"))


def test_layout_fields_are_aligned_disjoint_and_template_is_padding():
    layout = input_layout(24, 6, 16, 4, 8, 10, True)
    spans = sorted((f.offset, f.offset + f.nbytes) for f in layout.fields)
    assert all(f.offset % ALIGN == 0 for f in layout.fields)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert spans[-1][1] <= layout.nbytes
    assert {name for name, _ in SOURCES} == {f.name for f in layout.fields}
    raw = template(layout)
    for f in layout.fields:
        values = raw[f.offset: f.offset + f.nbytes].view(f.dtype).reshape(f.shape)
        expect = np.full(f.shape, f.pad, dtype=f.dtype)
        if f.name == "query_start":
            expect[0] = 0
        assert np.array_equal(values, expect), f.name
    assert layout.field("query_start").pad == 24 and layout.field("slot_mapping").pad == -1
    assert "forced" not in {f.name for f in input_layout(24, 6, 16, 4, 8, 10, False).fields}


PADS = {"slot_mapping": -1, "known_anchor": -1, "next_known": -1, "block_tables": -1, "temperature": 1.0, "top_p": 1.0}


def expected_field(name: str, shape: tuple[int, ...], num_tokens: int, dtype: str, host: HostPlan, attr: str
                   ) -> np.ndarray:
    """The graphs' padding rules written out independently: the step's values in front, padding after
    (the dummy sequence's query_start entries are N_pad, padded slots and tables -1, sampling floats 1)."""
    pad = num_tokens if name == "query_start" else PADS.get(name, 0)
    out = np.full(shape, pad, dtype=dtype)
    src = getattr(host, attr)
    if name == "query_start":
        out[0] = 0
    if src is not None and src.size:
        out[tuple(slice(0, d) for d in src.shape)] = src
    return out


class Recorder:
    """Wraps a `GraphedStep.upload`, checking every graphed upload as it happens."""

    def __init__(self, step: GraphedStep) -> None:
        self.step, self.checked, self.keys = step, 0, set()
        self._upload = step.upload
        step.upload = self.upload

    def upload(self, host: HostPlan) -> StepPlan:
        plan = self._upload(host)
        if self.step._staged is None or self.step._staged[0] is not plan:
            return plan  # an eager step
        entry = self.step._staged[1]
        staged, layout = entry.inputs, entry.inputs.layout
        assert torch.equal(staged.device_bytes, staged.host_bytes)  # the one copy moved every byte
        for f in layout.fields:
            attr = dict(SOURCES)[f.name]
            device = staged.device[f.name]
            expect = expected_field(f.name, f.shape, layout.field("input_ids").shape[0], f.dtype, host, attr)
            assert np.array_equal(device.numpy(), expect), f.name
        self.check_graph_reads_the_buffer(entry)
        self.check_rows_plan(plan, upload_plan(host, torch.device("cpu")), bool(host.num_verify.any()))
        self.checked += 1
        self.keys.add(layout)
        return plan

    @staticmethod
    def check_graph_reads_the_buffer(entry) -> None:
        """The captured plan's inputs are the staged views themselves (no copy between them)."""
        v, plan = entry.inputs.device, entry.plan
        pairs = [(plan.batch.input_ids, "input_ids"), (plan.batch.block_tables, "block_tables"),
                 (plan.params.temperature, "temperature"), (plan.params.top_p, "top_p"), (plan.counters, "counters"),
                 (plan.verify_logits, "verify_logits"), (plan.update_index, "update_index")]
        for tensor, name in pairs:
            assert tensor.data_ptr() == v[name].data_ptr() and tensor.shape == v[name].shape, name

    @staticmethod
    def check_rows_plan(plan: StepPlan, eager: StepPlan, verifies: bool) -> None:
        """Every field equal; the draft distributions only when a row verifies (else nothing reads them)."""
        def tensors(p: StepPlan) -> dict:
            out = {f"batch.{f.name}": getattr(p.batch, f.name) for f in dataclasses.fields(p.batch)}
            out.update({f"params.{n}": getattr(p.params, n) for n in ("temperature", "top_k", "top_p", "max_top_k",
                                                                       "any_top_p", "any_greedy")})
            out.update({f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name not in ("batch", "params")})
            return out

        got, want = tensors(plan), tensors(eager)
        for name, value in want.items():
            if name == "draft_probs" and not verifies:
                continue
            if isinstance(value, torch.Tensor):
                assert got[name].dtype == value.dtype and torch.equal(got[name], value), name
            else:
                assert got[name] == value, name


@pytest.mark.parametrize("method,policy,synthetic", [("dspark", "fixed:4", None), ("eagle3", "fixed:4", None),
                                                     ("dspark", "dspark-async", "dspark/math")])
def test_packed_inputs_round_trip(target_and_map, method, policy, synthetic):
    target, f = target_and_map
    torch.manual_seed(0)
    kw = {"markov_head_type": "vanilla"} if method == "dspark" else {}
    drafter = taught_drafter(target, f, method, kw)
    extra = {} if synthetic is None else dict(synthetic_acceptance=synthetic, synthetic_seed=0)
    llm = LLM(target, drafter, policy=policy, page_size=4, max_num_seqs=4, max_num_batched_tokens=32,
              eos_token_ids=(-1,), runner="model", **extra)
    pages, gamma = llm.blocks.num_pages, drafter.config.num_drafts
    backend = GraphedDenseTarget(DenseLM.from_hf_model(target.model), pages, 4, max_query_len=gamma + 1,
                                 sizes=(1, 2, 4, 8, 16, 32))
    backend.replay_eagerly = True
    runner = Runner(backend, drafter, pages, 4, llm.synthetic)
    runner.step = GraphedStep(backend, drafter, runner.draft_kv, 4)
    llm.runner = runner
    recorder = Recorder(runner.step)
    for prompt, opts in zip(PROMPTS, OPTIONS):
        llm.add_request(prompt, opts)
        llm.step()
    while llm.has_unfinished():
        llm.step()
    assert recorder.checked == runner.step.num_graph_steps > 0 and runner.step.num_eager_steps == 0
    assert len(recorder.keys) >= 2  # several layouts, aliasing the same buffers
