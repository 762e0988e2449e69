"""Profiles of one-off runs beside a gateway: ``dlq replay`` and ``pitr replay``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from savegress_gw.profile.settings import GatewaySettings

ALWAYS_OFF = ("metrics", "exactly_once", "ha")
"""Switched off in every side run: ``metrics`` (its port belongs to the running gateway),
``exactly_once`` (a side run re-sends what it reads, at least once) and ``ha`` (it runs on this
node only and must not join the gateway's Raft cluster)."""


def side_run(data: dict[str, Any], source: dict[str, Any], suffix: str, off: Iterable[str] = ()) -> dict[str, Any]:
    """The profile data of a side run of ``data``: its ``source`` replaced, ``gateway.id`` with
    ``suffix`` appended (its own checkpoint file; Kafka client ids and process titles that do not
    clash with the running gateway), :data:`ALWAYS_OFF` and the sections in ``off`` switched off
    (``enabled: false``, where the profile has them or always for ``metrics`` and ``off``); output,
    batching, dead-letter queue and the rest stay. ``data`` is not changed."""
    gateway = dict(data.get("gateway") or {})
    gateway["id"] = gateway.get("id", GatewaySettings().id) + suffix
    run = {**data, "source": source, "gateway": gateway}
    forced = {"metrics", *off}
    for section in (*ALWAYS_OFF, *off):
        if section in forced or data.get(section):
            run[section] = {**(data.get(section) or {}), "enabled": False}
    return run
