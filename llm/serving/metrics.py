"""The server's Prometheus metrics, in a registry of its own (several servers may share a
process, as the tests do), served as text at GET /metrics.

  llm_requests_total{endpoint, code}        requests answered, by HTTP status
  llm_prompt_tokens_total                   prompt tokens of admitted requests
  llm_generation_tokens_total               tokens generated
  llm_requests_cancelled_total              requests whose client went away (slots freed)
  llm_queue_depth                           requests waiting for slots
  llm_active_slots / llm_slots              slots in use now / slots in all
  llm_batch_occupancy                       rows per decode step (histogram)
  llm_time_to_first_token_seconds           arrival to first token (histogram)
  llm_inter_token_latency_seconds           between a request's tokens (histogram)
  llm_prefix_cache_hits_total               requests that reused a slot's tokens
  llm_prefix_cache_tokens_total             prompt tokens not computed again
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, n_slots: int):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("llm_requests", "Requests answered", ["endpoint", "code"], registry=r)
        self.prompt_tokens = Counter("llm_prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generation_tokens = Counter("llm_generation_tokens", "Tokens generated", registry=r)
        self.cancelled = Counter("llm_requests_cancelled", "Requests whose client went away", registry=r)
        self.queue_depth = Gauge("llm_queue_depth", "Requests waiting for slots", registry=r)
        self.active_slots = Gauge("llm_active_slots", "KV-cache slots in use", registry=r)
        Gauge("llm_slots", "KV-cache slots in all", registry=r).set(n_slots)
        self.occupancy = Histogram("llm_batch_occupancy", "Rows per decode step", registry=r,
                                   buckets=tuple(range(1, n_slots + 1)))
        self.ttft = Histogram("llm_time_to_first_token_seconds", "Arrival to first token", registry=r,
                              buckets=_LATENCY_BUCKETS)
        self.itl = Histogram("llm_inter_token_latency_seconds", "Time between a request's tokens",
                             registry=r, buckets=_LATENCY_BUCKETS)
        self.prefix_hits = Counter("llm_prefix_cache_hits", "Requests that reused a slot's tokens", registry=r)
        self.prefix_tokens = Counter("llm_prefix_cache_tokens", "Prompt tokens not computed again", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
