"""The front door's metrics: every replica's exposition merged into one, plus the front door's own registry
(requests routed, replica health, restarts)."""
from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.parser import text_string_to_metric_families


class MergedMetrics:
    """The union of several replicas' expositions (same families, different ``replica`` labels)."""

    def __init__(self, texts: list[str]):
        self.families: dict = {}
        for text in texts:
            for fam in text_string_to_metric_families(text):
                if fam.name in self.families:
                    self.families[fam.name].samples.extend(fam.samples)
                else:
                    self.families[fam.name] = fam

    def collect(self):
        return list(self.families.values())


def merge_expositions(texts: list[str], *registries) -> bytes:
    return generate_latest(MergedMetrics(texts)) + b"".join(generate_latest(r) for r in registries)


class RestartCollector:
    """fastgen_replica_restarts_total: processes started to replace a dead (or ended, unhealthy) one."""

    def __init__(self, replicas: ReplicaSet):
        self.replicas = replicas

    def collect(self):
        c = CounterMetricFamily("fastgen_replica_restarts", "Times the replica's process was restarted after it "
                                "died or stayed unhealthy.", labels=["replica"])
        for r in self.replicas:
            c.add_metric([str(r.index)], r.restarts)
        yield c
