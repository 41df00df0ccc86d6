"""Prometheus metrics, recorded in one place (middleware and the scheduler's batch hook)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rerankrt.runtime.document_cache import DocumentCache
from rerankrt.runtime.scheduler import BatchStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class Metrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rerankrt_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "rerankrt_request_seconds", "HTTP request latency by route", ["route"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.queue_pairs = Gauge(
            "rerankrt_queue_pairs", "pairs waiting for inference (the autoscaling signal)", registry=self.registry
        )  # create_app points it and the next two at the scheduler
        self.queue_seconds = Gauge(
            "rerankrt_queue_seconds", "estimated seconds of inference pending (what a request arriving now waits)",
            registry=self.registry,
        )  # fmt: skip
        self.seconds_per_token = Gauge(
            "rerankrt_seconds_per_token", "measured forward-pass seconds per real token (0 before any measurement)",
            registry=self.registry,
        )  # fmt: skip
        self.refused_at_admission = Counter(
            "rerankrt_requests_refused_at_admission",
            "requests refused at arrival (503): the work queued ahead and their own would not finish in time",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "rerankrt_batch_pairs", "pairs per forward pass", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.padding_ratio = Histogram(
            "rerankrt_batch_padding_ratio", "share of padded positions per forward pass",
            buckets=RATIO_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.pairs = Counter("rerankrt_pairs", "pairs scored (rate() gives pairs/s)", registry=self.registry)
        self.tokens = Counter("rerankrt_tokens", "real tokens run through the model", registry=self.registry)
        self.batch_seconds = Histogram(
            "rerankrt_batch_seconds", "forward pass time", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.self_check_max_dlogit = Gauge(
            "rerankrt_self_check_max_dlogit",
            "largest |logit difference| of the served plan on the artifact's golden set at start (NaN: not checked)",
            registry=self.registry,
        )  # create_app sets it from the loaded model's self-check
        self.media_items = Counter(
            "rerankrt_media_items", "images and videos fetched, by kind", ["kind"], registry=self.registry
        )
        self.media_bytes = Counter(
            "rerankrt_media_bytes", "bytes of images and videos fetched (as sent)", registry=self.registry
        )
        self.media_seconds = Histogram(
            "rerankrt_media_fetch_seconds", "time to fetch and decode one request's media, all items together",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def watch_document_cache(self, cache: Callable[[], DocumentCache | None]) -> None:
        """Export the document cache's hits, misses, evictions and bytes (read at each scrape; 0 without one)."""
        self.registry.register(DocumentCacheCollector(cache))

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.pairs)
        self.padding_ratio.observe(1 - stats.tokens / stats.padded_tokens)
        self.pairs.inc(stats.pairs)
        self.tokens.inc(stats.tokens)
        self.batch_seconds.observe(stats.seconds)

    def observe_media(self, kind: str, size: int) -> None:
        self.media_items.labels(kind).inc()
        self.media_bytes.inc(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class DocumentCacheCollector:
    """rerankrt_doc_cache_{hits,misses,evictions}_total and rerankrt_doc_cache_bytes, from the cache's own counts."""

    def __init__(self, cache: Callable[[], DocumentCache | None]):
        self.cache = cache

    def describe(self) -> list[Metric]:
        return list(self._metrics(None))

    def collect(self) -> Iterator[Metric]:
        return self._metrics(self.cache())

    @staticmethod
    def _metrics(cache: DocumentCache | None) -> Iterator[Metric]:
        counts = (cache.hits, cache.misses, cache.evictions, cache.bytes) if cache is not None else (0, 0, 0, 0)
        yield CounterMetricFamily("rerankrt_doc_cache_hits", "documents whose encodings came from the cache",
                                  value=counts[0])  # fmt: skip
        yield CounterMetricFamily("rerankrt_doc_cache_misses", "documents encoded and offered to the cache",
                                  value=counts[1])  # fmt: skip
        yield CounterMetricFamily("rerankrt_doc_cache_evictions", "entries the byte budget pushed out",
                                  value=counts[2])  # fmt: skip
        yield GaugeMetricFamily("rerankrt_doc_cache_bytes", "bytes of document encodings held (the budget: "
                                "--document-cache-bytes)", value=counts[3])  # fmt: skip
