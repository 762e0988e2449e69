"""The stdout sink: every event on standard output, as JSON lines or one human-readable line.

``output: {type: stdout, format: json, pretty: false}`` (``spec/reference.md`` 3.1).
"""

from __future__ import annotations

import sys
import time
from typing import BinaryIO, Callable, Literal

import orjson

from savegress_gw import Batch, Component, ComponentConfig, Context, Outcome, Sink, Status, hookimpl
from savegress_gw.components import DeliveryCallback


class StdoutSink(Sink):
    """Writes each batch to ``sys.stdout`` with one write and one flush.

    A batch is delivered once the flush returned; an ``OSError`` (a closed or broken pipe) is
    reported as ``ERRORED`` with the error as the reason, so the pipeline retries.
    """

    name = "stdout"

    class Config(ComponentConfig):
        format: Literal["json", "text"] = "json"
        """``json``: the event envelope, one per line; ``text``: one line per event,
        ``<timestamp> <OPERATION> <schema>.<table> key=<key> id=<id>``."""
        pretty: bool = False
        """With ``format: json``, indent each envelope over several lines (2 spaces)."""

    config: Config

    def open(self, context: Context) -> None:
        self._out: BinaryIO = sys.stdout.buffer

    def send(self, batch: Batch, done: DeliveryCallback) -> None:
        if not batch:
            done(Outcome(Status.DELIVERED))
            return
        try:
            self._out.write(self._render(batch))
            self._out.flush()
        except OSError as exc:
            done(Outcome(Status.ERRORED, reason=f"stdout: {exc}"))
            return
        done(Outcome(Status.DELIVERED))

    def _render(self, batch: Batch) -> bytes:
        if self.config.format == "text":
            return "".join(
                f"{_iso_ms(ts)} {op} {schema}.{table} key={key} id={id_}\n"
                for ts, op, schema, table, key, id_ in zip(
                    batch.timestamps_ms, batch.operations, batch.schemas, batch.tables, batch.keys, batch.ids
                )
            ).encode()
        if self.config.pretty:
            return b"".join(
                orjson.dumps(orjson.loads(p), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
                for p in batch.payloads
            )
        return b"\n".join(batch.payloads) + b"\n"


def _iso_ms(ms: int) -> str:
    """Unix milliseconds as ISO 8601 UTC (the batch carries event time at millisecond precision)."""
    seconds, rest = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:03d}Z"


@hookimpl
def gw_register_components(register: Callable[[type[Component]], None]) -> None:
    register(StdoutSink)
