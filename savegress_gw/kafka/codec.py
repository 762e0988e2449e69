"""Kafka's own record compression (one layer: the gateway never compresses Kafka records itself)."""

from __future__ import annotations

from typing import Any

MAX_LEVEL = 12
"""The highest ``compression.level`` librdkafka accepts (zstd's own scale goes to 22)."""


def profile_codec(profile: Any) -> tuple[str, int | None]:
    """The Kafka codec and level the profile's ``compression`` block stands for (``none`` without a profile).

    ``lz4`` or ``zstd`` → that codec at the block's level; ``hybrid`` → its ``large_algo`` and
    ``large_level``; ``enabled: false``, ``none`` or anything else → ``none``. The block may be the
    validated section or a plain dict.
    """
    if profile is None:
        return "none", None
    section = profile.compression

    def get(obj: Any, key: str, default: Any = None) -> Any:
        if isinstance(obj, dict):
            return obj.get(key, default)
        return getattr(obj, key, default)

    if not get(section, "enabled", True):
        return "none", None
    algorithm = get(section, "algorithm", "hybrid")
    if algorithm in ("lz4", "zstd"):
        return algorithm, get(get(section, algorithm, {}), "level", 3)
    if algorithm == "hybrid":
        options = get(section, "hybrid", {})
        return get(options, "large_algo", "zstd"), get(options, "large_level", 5)
    return "none", None


def codec_settings(codec: str | None, level: int | None, profile: Any) -> dict[str, Any]:
    """librdkafka ``compression.type`` (and ``compression.level``) for an explicit ``codec``/``level``.

    ``codec`` None derives codec and level from the profile (:func:`profile_codec`); an explicit
    ``level`` wins over the derived one. Levels are clamped to -1..:data:`MAX_LEVEL`; no level is
    set for ``none``.
    """
    if codec is None:
        codec, derived_level = profile_codec(profile)
        if level is None:
            level = derived_level
    conf: dict[str, Any] = {"compression.type": codec}
    if level is not None and codec != "none":
        conf["compression.level"] = max(-1, min(MAX_LEVEL, level))
    return conf
