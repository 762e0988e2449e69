"""``backpressure.strategy: deadline``: events that waited too long are parked, not delivered late."""

from __future__ import annotations

from typing import Callable

from pydantic import Field

from savegress_gw import Backpressure, ComponentConfig, hookimpl
from savegress_gw.units import Duration


class DeadlineBackpressure(Backpressure):
    """While engaged the source pauses (as ``pause``); in the workers, events older than
    ``deadline`` when their batch is about to be sent go to the dead-letter queue with the reason
    (without one they are dropped and counted as ``deadline``). For feeds where a late event is
    worth less than a fresh one, and the backlog should be set aside for a later replay.
    """

    name = "deadline"
    action = "pause"

    class Config(ComponentConfig):
        deadline: Duration = Field(60.0, gt=0)
        """Longest an event may wait between ingest and its send; older ones are parked."""

    def event_deadline(self) -> float | None:
        return self.config.deadline


@hookimpl
def gw_register_components(register: Callable[[type[Backpressure]], None]) -> None:
    register(DeadlineBackpressure)
