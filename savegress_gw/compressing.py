"""Wrapping the profile's compressor so that what it does shows in the metrics."""

from __future__ import annotations

import time

from savegress_gw.components import Compressed, Compressor
from savegress_gw.metrics import ENCODINGS, ProcessMetrics


class MeteredCompressor(Compressor):
    """Delegates to a compressor and records bytes in/out and duration by encoding used."""

    name = "metered"

    def __init__(self, inner: Compressor, metrics: ProcessMetrics) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.metrics = metrics

    def compress(self, data: bytes) -> Compressed:
        started = time.perf_counter()
        result = self.inner.compress(data)
        elapsed = time.perf_counter() - started
        encoding = result.encoding if result.encoding in ENCODINGS else "identity"
        self.metrics.inc("compression_bytes_in_total", len(data), label=encoding)
        self.metrics.inc("compression_bytes_out_total", len(result.data), label=encoding)
        self.metrics.observe("compression_duration_seconds", elapsed, label=encoding)
        return result
