"""A replica's Prometheus metrics: per-request latency histograms and engine gauges/counters, labelled by replica.

Each replica keeps its own registry (histograms observed on the engine loop thread; engine gauges read
from the loop's last published ``engine.stats()`` snapshot at scrape time, so a scrape never calls the
engine). The front door scrapes every replica and merges the families into one exposition
(frontdoor/metrics.py).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0, 160.0, 640.0)


class ReplicaMetrics:
    def __init__(self, replica: int, snapshot_fn):
        self.registry = CollectorRegistry(auto_describe=False)
        r, reg = str(replica), self.registry

        def hist(name, doc):
            return Histogram(name, doc, ["replica"], buckets=LATENCY_BUCKETS, registry=reg).labels(r)
        self.ttft = hist("fastgen_time_to_first_token_seconds", "Arrival to first generated token.")
        self.itl = hist("fastgen_inter_token_latency_seconds", "Time between two tokens of one request.")
        self.e2e = hist("fastgen_e2e_request_latency_seconds", "Arrival to finish (or abort).")
        self.queue_time = hist("fastgen_request_queue_time_seconds", "Arrival to first scheduled step.")
        self._requests = Counter("fastgen_requests", "Requests finished, by finish reason (abort: client left; "
                                 "timeout: past its deadline).", ["replica", "finish_reason"], registry=reg)
        self._rejected = Counter("fastgen_requests_rejected", "Requests refused before reaching the engine.",
                                 ["replica", "reason"], registry=reg)
        self._timed_out = Counter("fastgen_requests_timed_out", "Requests aborted at their deadline, by what they "
                                  "were doing (waiting: not scheduled yet; running: scheduled).",
                                  ["replica", "phase"], registry=reg)
        self._replica = r
        reg.register(_EngineCollector(r, snapshot_fn))

    def finished(self, reason: str, e2e_s: float) -> None:
        self.e2e.observe(e2e_s)
        self._requests.labels(self._replica, reason).inc()

    def rejected(self, reason: str) -> None:
        self._rejected.labels(self._replica, reason).inc()

    def timed_out(self, phase: str) -> None:
        self._timed_out.labels(self._replica, phase).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """Engine state from the loop's snapshot of ``engine.stats()``."""

    def __init__(self, replica: str, snapshot_fn):
        self.replica = replica
        self.snapshot_fn = snapshot_fn

    def collect(self):
        s = self.snapshot_fn()
        gauges = [("fastgen_num_requests_running", "Requests in the running batch.", s["running"]),
                  ("fastgen_num_requests_waiting", "Requests waiting for a slot or KV blocks.", s["waiting"]),
                  ("fastgen_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use (0..1).", s["kv_usage"]),
                  ("fastgen_kv_cache_blocks_used", "KV-cache blocks in use.", s["kv_blocks_used"]),
                  ("fastgen_kv_cache_blocks_total", "KV-cache blocks in all.", s["kv_blocks_total"]),
                  ("fastgen_prefix_cache_blocks", "KV blocks registered in the prefix cache (held or evictable).",
                   s["prefix_cache_blocks"]),
                  ("fastgen_engine_loop_alive", "1 while the engine loop thread runs.", int(s["alive"]))]
        for name, doc, value in gauges:
            g = GaugeMetricFamily(name, doc, labels=["replica"])
            g.add_metric([self.replica], value)
            yield g
        counters = [("fastgen_num_preemptions", "Sequences preempted for KV space (recomputed).", "preemptions"),
                    ("fastgen_prompt_tokens", "Prompt tokens prefilled.", "prompt_tokens"),
                    ("fastgen_generation_tokens", "Tokens generated.", "generated_tokens"),
                    ("fastgen_engine_steps", "Engine steps (forward passes).", "steps"),
                    ("fastgen_cuda_graph_steps", "Decode-only steps replayed from CUDA graphs.", "graph_steps"),
                    ("fastgen_prefix_cache_hit_tokens", "Tokens taken from the prefix cache instead of computed.",
                     "prefix_cache_hit_tokens")]
        for name, doc, key in counters:
            c = CounterMetricFamily(name, doc, labels=["replica"])
            c.add_metric([self.replica], s[key])
            yield c
