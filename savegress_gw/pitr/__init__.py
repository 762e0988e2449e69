"""Point-in-time recovery: every worker archives the events it delivered, in time segments, so
``savegress-gw pitr replay --from <time>`` can send the stream again (docs/recovery.md).

Modules, one job each:

- :mod:`.layout` — segment file names, buckets and where the archive lives;
- :mod:`.sealing` — turning a finished ``.open`` segment into a ``.jsonl.zst`` one, torn tails;
- :mod:`.retention` — deleting sealed segments older than ``pitr.retention``;
- :mod:`.writer` — the per-worker :class:`~savegress_gw.pitr.writer.ArchiveWriter` (hot path);
- :mod:`.reader` — listing segments and reading their envelopes back (replay, ``pitr list``).
"""

from savegress_gw.pitr.layout import Segment, archive_dir, bucket_seconds
from savegress_gw.pitr.writer import ArchiveWriter

__all__ = ["ArchiveWriter", "Segment", "archive_dir", "bucket_seconds"]
