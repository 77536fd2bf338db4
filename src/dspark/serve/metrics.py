"""Prometheus metrics of `dspark serve` (`GET /metrics`), named like vLLM's with a `dspark:` prefix.

Written by the engine thread after every step (gauges, counters, latency histograms) and by the request
handlers (HTTP refusals); prometheus-client's metrics are thread-safe. Each server has its own
`CollectorRegistry`, so several apps in one process (tests) do not collide.

Speculation: `spec_decode_num_rounds` verification rounds, `..._num_draft_tokens` drafted,
`..._num_verified_tokens` checked by the target (the policy's ℓ), `..._num_accepted_tokens` accepted;
`spec_decode_mean_verify_length` is the planner's Σℓ / rows and `spec_decode_gate_skip_share` the share
of engine steps in which the draft gate skipped drafting.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                   40.0, 80.0)
PREFIX = "dspark:"


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        r, labels = self.registry, {"model_name": model_name}

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(PREFIX + name, doc, list(labels), registry=r).labels(**labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(PREFIX + name, doc, list(labels), registry=r).labels(**labels)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(PREFIX + name, doc, list(labels), buckets=LATENCY_BUCKETS, registry=r).labels(**labels)

        self.running = gauge("num_requests_running", "Requests decoding or prefilling in the engine")
        self.waiting = gauge("num_requests_waiting", "Requests queued in the engine")
        self.kv_pages_used = gauge("kv_cache_pages_used", "KV pages held by requests")
        self.kv_pages_total = gauge("kv_cache_pages_total", "KV pages of the pool")
        self.kv_usage = gauge("kv_cache_usage_perc", "KV pages used / pages of the pool (0..1)")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens admitted")
        self.generation_tokens = counter("generation_tokens", "Tokens generated")
        self.ttft = histogram("time_to_first_token_seconds", "Arrival to the first output token")
        self.itl = histogram("inter_token_latency_seconds", "Time between output tokens of a request")
        self.e2e = histogram("e2e_request_latency_seconds", "Arrival to the last output token")
        self._finished = Counter(PREFIX + "request_success", "Requests finished, by reason",
                                 [*labels, "finished_reason"], registry=r)
        self.aborted = counter("num_requests_aborted", "Requests aborted (client gone or shutdown)")
        self._rejected = Counter(PREFIX + "http_requests_rejected", "HTTP requests refused, by status",
                                 [*labels, "status"], registry=r)
        self.engine_steps = counter("engine_steps", "Engine steps run")
        self.engine_errors = counter("engine_errors", "Engine steps that raised (their requests got a 500)")
        self.spec_rounds = counter("spec_decode_num_rounds", "Verification rounds")
        self.spec_drafted = counter("spec_decode_num_draft_tokens", "Draft tokens proposed")
        self.spec_verified = counter("spec_decode_num_verified_tokens", "Draft tokens the target verified")
        self.spec_accepted = counter("spec_decode_num_accepted_tokens", "Draft tokens accepted")
        self.mean_verify_len = gauge("spec_decode_mean_verify_length", "Mean verify length the policy chose")
        self.gate_skip_share = gauge("spec_decode_gate_skip_share", "Share of engine steps the draft gate skipped")
        self._labels = labels

    def finished(self, reason: str) -> None:
        self._finished.labels(finished_reason=reason, **self._labels).inc()

    def rejected(self, status: int) -> None:
        self._rejected.labels(status=str(status), **self._labels).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
