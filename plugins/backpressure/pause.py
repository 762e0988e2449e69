"""``backpressure.strategy: pause``: stop reading the source while the buffer is too full."""

from __future__ import annotations

from typing import Callable

from savegress_gw import Backpressure, hookimpl


class PauseBackpressure(Backpressure):
    """While engaged, the source process stops reading its source (``Source.pause``).

    No event is lost: a database source stops consuming its stream, and the HTTP source answers
    new requests with 429 until utilization falls to ``low_watermark`` (``Source.resume``).
    """

    name = "pause"
    action = "pause"


@hookimpl
def gw_register_components(register: Callable[[type[Backpressure]], None]) -> None:
    register(PauseBackpressure)
