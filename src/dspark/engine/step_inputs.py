"""`StepInputs`: the reusable host and device byte buffers of graphed steps, and the one copy between them.

Where it sits: `dspark.engine.graphed_step.GraphedStep` owns one. Each graph shape's `InputLayout`
(`dspark.engine.input_layout`) is `stage`d once: typed device views (what its graph is captured on),
typed numpy views of the host buffer, and the layout's padding template. `send(staged, host)` then
writes a step: the template (one memcpy), the `HostPlan`'s values over it, and ONE non-blocking copy of
the layout's bytes into the device buffer. No device-side fill or copy remains for the inputs.

Reuse of the host buffer. On CUDA it is pinned, so the copy is asynchronous: the host must not write
the next step's inputs while the previous copy may still read them. In the engine that never happens:
every step ends with one blocking read-back of outputs that the graph computed after the copy (same
stream), so the copy has completed before the next step is planned, and a second buffer would buy
nothing. Other callers (a graph capture sending its padding right before a step's inputs, a tool that
plans twice without running) are covered by an event recorded after each copy: `send` waits on it
first, which in the engine returns at once. On the CPU (``replay_eagerly`` tests) the copy is a plain
synchronous memcpy into a separate buffer, so the round trip is exercised all the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dspark.engine.host_plan import HostPlan
from dspark.engine.input_layout import InputLayout, host_views, template, write


@dataclass
class Staged:
    """One layout over the shared buffers."""

    layout: InputLayout
    template: np.ndarray  # uint8 [nbytes]: the all-padding contents
    host: dict[str, np.ndarray]  # typed views of the host buffer
    device: dict[str, torch.Tensor]  # typed views of the device buffer (the graph's static inputs)
    host_bytes: torch.Tensor  # the host buffer's first nbytes
    device_bytes: torch.Tensor  # the device buffer's first nbytes


class StepInputs:
    def __init__(self, nbytes: int, device: torch.device) -> None:
        """`nbytes`: the largest layout any graph of this step uses."""
        self.device = device
        cuda = device.type == "cuda"
        self.host_buffer = torch.zeros(nbytes, dtype=torch.uint8, pin_memory=cuda)
        self.device_buffer = torch.zeros(nbytes, dtype=torch.uint8, device=device)
        self._host_np = self.host_buffer.numpy()
        self._copied = torch.cuda.Event() if cuda else None
        self._in_flight = False

    def stage(self, layout: InputLayout) -> Staged:
        if layout.nbytes > self.device_buffer.numel():
            raise ValueError(f"layout of {layout.nbytes} bytes exceeds the {self.device_buffer.numel()}-byte buffers")
        dev = {f.name: self.device_buffer[f.offset: f.offset + f.nbytes].view(getattr(torch, f.dtype)).view(f.shape)
               for f in layout.fields}
        return Staged(layout, template(layout), host_views(layout, self._host_np), dev,
                      self.host_buffer[: layout.nbytes], self.device_buffer[: layout.nbytes])

    def send(self, staged: Staged, host: HostPlan | None) -> None:
        """Write `host` (None: padding only) in `staged`'s layout and copy it to the device in one copy."""
        if self._in_flight:
            self._copied.synchronize()  # the previous copy read the host buffer (returns at once in the engine)
        self._host_np[: staged.layout.nbytes] = staged.template
        if host is not None:
            write(staged.host, host)
        staged.device_bytes.copy_(staged.host_bytes, non_blocking=self._copied is not None)
        if self._copied is not None:
            self._copied.record()
            self._in_flight = True
