"""A minimal third-party sink: one ``<operation> <schema>.<table> <key>`` line per event.

Select it with ``output: {type: summary, path: ./data/summary.txt}``.
"""

from __future__ import annotations

from typing import IO

from savegress_gw import Batch, ComponentConfig, Context, Outcome, Sink, Status, hookimpl


class SummarySink(Sink):
    """Appends a human-readable line per event and reports delivery once the batch is flushed."""

    name = "summary"

    class Config(ComponentConfig):
        path: str = "./data/summary.txt"
        """File the summary lines are appended to."""

    def open(self, context: Context) -> None:
        self._file: IO[str] = open(self.config.path, "a")  # noqa: SIM115 - closed in close()

    def send(self, batch: Batch, done) -> None:
        lines = (f"{op} {schema}.{table} {key}\n" for op, schema, table, key in
                 zip(batch.operations, batch.schemas, batch.tables, batch.keys))
        try:
            self._file.writelines(lines)
            self._file.flush()
        except OSError as exc:
            done(Outcome(Status.ERRORED, str(exc)))
            return
        done(Outcome(Status.DELIVERED))

    def close(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None and not file.closed:
            file.close()


@hookimpl
def gw_register_components(register) -> None:
    register(SummarySink)


@hookimpl
def gw_worker_started(worker) -> None:
    _trace(f"started {worker.index}")


@hookimpl
def gw_worker_stopping(worker) -> None:
    _trace(f"stopping {worker.index}")


@hookimpl
def gw_worker_exited(worker, exitcode: int) -> None:
    _trace(f"exited {worker.index} {exitcode}")


def _trace(line: str) -> None:
    """Lifecycle hooks in action: with SAVEGRESS_EXAMPLE_HOOK_LOG set, note each call there."""
    import os

    path = os.environ.get("SAVEGRESS_EXAMPLE_HOOK_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(line + "\n")
