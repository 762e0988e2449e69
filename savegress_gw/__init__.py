"""savegress-gw: a change-data-capture and event gateway into Kafka and friends.

The public API for plugin authors: :data:`hookimpl`, the component kinds and the data they exchange.
"""

from savegress_gw.components import (
    Backpressure,
    Batch,
    Component,
    ComponentConfig,
    Compressed,
    Compressor,
    Context,
    DeadLetterQueue,
    Limiter,
    Outcome,
    Sink,
    Source,
    SourceBatch,
    Status,
)
from savegress_gw.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "Backpressure", "Batch", "Component", "ComponentConfig", "Compressed", "Compressor", "Context",
    "DeadLetterQueue", "Limiter", "Outcome", "Sink", "Source", "SourceBatch", "Status", "__version__", "hookimpl",
]
