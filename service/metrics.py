"""Prometheus metrics: binpose_ prefix, base units, labels of low cardinality (endpoint template, model, backend,
status class). Each app owns its registry, so several apps can live in one process (tests)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
PERSON_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "binpose_requests", "HTTP requests answered", ["endpoint", "model", "status_class"], registry=r
        )
        self.request_seconds = Histogram(
            "binpose_request_duration_seconds",
            "End-to-end request latency inside the server",
            ["endpoint", "model", "status_class"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("binpose_requests_in_flight", "Requests being handled", ["endpoint"], registry=r)
        self.queue_wait_seconds = Histogram(
            "binpose_queue_wait_seconds",
            "Time a crop waits in the micro-batch queue before its batch starts",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "binpose_compute_seconds",
            "Network time of one batch",
            ["model", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "binpose_batch_size", "Crops/images per network call", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("binpose_queue_depth", "Crops waiting per model", ["model"], registry=r)
        self.rejected = Counter(
            "binpose_rejected_requests", "Requests refused by the batcher", ["model", "reason"], registry=r
        )
        self.persons = Histogram(
            "binpose_persons_per_request", "Persons per pose request", ["model"], buckets=PERSON_BUCKETS, registry=r
        )
        self.model_info = Info("binpose_model", "Loaded model", ["model"], registry=r)
        self.model_bops = Gauge("binpose_model_bops", "Binary operations per input", ["model"], registry=r)
        self.model_flops = Gauge("binpose_model_flops", "Float multiply-accumulates per input", ["model"], registry=r)
        self.model_ops = Gauge("binpose_model_ops", "OPs = BOPs/64 + FLOPs per input", ["model"], registry=r)
        self.model_packed_bytes = Gauge("binpose_model_packed_bytes", "Packed weight size", ["model"], registry=r)
        self.model_load_seconds = Gauge("binpose_model_load_seconds", "Model load time", ["model", "backend"], registry=r)
        self.model_warmup_seconds = Gauge(
            "binpose_model_warmup_seconds", "Model warm-up time", ["model", "backend"], registry=r
        )
        self.ready = Gauge("binpose_ready", "1 once every configured model is loaded and warmed", registry=r)

    def record_model(self, name: str, backend: str, task: str, complexity: dict[str, Any], sha256: str) -> None:
        self.model_info.labels(model=name).info({"backend": backend, "task": task, "sha256": sha256 or ""})
        self.model_bops.labels(model=name).set(float(complexity.get("bops", 0) or 0))
        self.model_flops.labels(model=name).set(float(complexity.get("flops", 0) or 0))
        self.model_ops.labels(model=name).set(float(complexity.get("ops", 0) or 0))
        self.model_packed_bytes.labels(model=name).set(float(complexity.get("packed_bytes", 0) or 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
