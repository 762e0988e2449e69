"""Exactly-once delivery into Kafka (``exactly_once.enabled``).

Each worker owns one transactional producer (``transactional.id`` = ``<gateway id>-w<index>``).
A transaction carries the records of a run of ring frames and, last, the worker's checkpoint
record in a compacted checkpoint topic; the frames are acknowledged only once it committed. The
source process numbers every event it reads (its *ordinal*, continuing across restarts), and
restarts from the smallest position any worker committed; a worker skips the events whose
ordinal its own committed checkpoint already covers. Modules:

* :mod:`.validation` - which profiles can be exactly-once, and why the others cannot;
* :mod:`.frames` - the ring frame format that carries ordinals and read-batch markers;
* :mod:`.checkpoints` - the checkpoint topic: records, creation, reading back to the high watermark;
* :mod:`.producer` - one transaction's life with librdkafka's error classes;
* :mod:`.loop` - the worker's transactional pipeline;
* :mod:`.parking` - events Kafka cannot take, parked in the dead-letter topic inside the transaction.
"""
