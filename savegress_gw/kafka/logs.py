"""librdkafka's log lines and client errors into structlog, without flooding it.

A broker that is down makes librdkafka report the same error many times a second; each kind of
line (a key such as ``("error", code)``) is written at most once per :data:`LOG_EVERY_S`, with the
number of lines suppressed since.
"""

from __future__ import annotations

import time
from typing import Any

from structlog.typing import FilteringBoundLogger

LOG_EVERY_S = 10.0
"""How often one kind of line is written at most."""


class RateLimitedLog:
    """A structlog logger that writes each kind of line at most once per :data:`LOG_EVERY_S`."""

    def __init__(self, log: FilteringBoundLogger) -> None:
        self.log = log
        """The logger lines go to (also usable directly, without rate limiting)."""
        self._times: dict[Any, tuple[float, int]] = {}

    def emit(self, level: str, key: Any, event: str, **fields: Any) -> None:
        """Write ``event`` at ``level`` unless a line with ``key`` was written less than
        :data:`LOG_EVERY_S` ago; the next written line carries ``suppressed`` (how many were not)."""
        now = time.monotonic()
        last, suppressed = self._times.get(key, (0.0, 0))
        if now - last < LOG_EVERY_S:
            self._times[key] = (last, suppressed + 1)
            return
        self._times[key] = (now, 0)
        if suppressed:
            fields["suppressed"] = suppressed
        getattr(self.log, level)(event, **fields)


class LibrdkafkaLog:
    """The ``logger`` of a librdkafka client (served by its ``poll``): warnings and errors as
    ``warning``, notices as ``info`` (both rate limited per facility), the rest as ``debug``."""

    def __init__(self, log: RateLimitedLog) -> None:
        self._log = log

    def log(self, level: int, fmt: str, *args: Any) -> None:
        facility = args[0] if args else ""
        message = fmt % args if args else fmt
        if level >= 40:
            self._log.emit("warning", ("log", facility), "librdkafka", message=message)
        elif level >= 30:
            self._log.emit("info", ("log", facility), "librdkafka", message=message)
        else:
            self._log.log.debug("librdkafka", message=message)
