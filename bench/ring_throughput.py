"""Ring throughput between two processes: events/s through one shared-memory SPSC ring.

The producer writes pre-encoded frames (msgpack Batch columns of ~300-byte events, as the source
process does); the consumer reads, decodes each frame back into a Batch and acknowledges it, as
a worker does. Prints events/s and frames/s.

    python bench/ring_throughput.py [--events 2000000] [--frame-events 500]
"""

from __future__ import annotations

import argparse
import os
import time

import multiprocess as mp

from savegress_gw.components import Batch
from savegress_gw.pipeline import decode_frame, encode_frame
from savegress_gw.ring import Ring, RingFull


def sample_frame(events: int) -> bytes:
    payload = b'{"id":"evt-1","source":"generator","schema":"public","table":"users","operation":"UPDATE",' \
              b'"after":{"id":1,"seq":1,"payload":"' + b"x" * 150 + b'"}}'
    return encode_frame(Batch([payload] * events, ["users:1"] * events, ["evt-1"] * events, ["UPDATE"] * events,
                              ["public"] * events, ["users"] * events, [0] * events, [0] * events))


def consume(name: str, frames: int, started: object, result: object) -> None:
    ring = Ring.attach(name)
    seen = 0
    events = 0
    started.wait()
    t0 = time.perf_counter()
    while seen < frames:
        batch = ring.read(64)
        for frame in batch:
            events += len(decode_frame(frame.payload))
        if batch:
            seen += len(batch)
            ring.ack(batch[-1].end, len(batch))
        else:
            time.sleep(0)
    result.value = time.perf_counter() - t0
    ring.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--frame-events", type=int, default=500)
    parser.add_argument("--ring-mb", type=int, default=32)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    frames = args.events // args.frame_events
    payload = sample_frame(args.frame_events)
    ring = Ring.create(f"sg-bench-{os.getpid()}", args.ring_mb * 1024 * 1024)
    started, result = ctx.Event(), ctx.Value("d", 0.0)
    consumer = ctx.Process(target=consume, args=(ring.name, frames, started, result))
    consumer.start()
    started.set()
    for _ in range(frames):
        while True:
            try:
                ring.write(payload)
                break
            except RingFull:
                time.sleep(0)
    consumer.join()
    ring.close()
    elapsed = result.value
    total = frames * args.frame_events
    print(f"ring: {total:,} events in {frames:,} frames of {args.frame_events} ({len(payload):,} B/frame), "
          f"{elapsed:.2f}s: {total / elapsed:,.0f} events/s, {frames / elapsed:,.0f} frames/s, "
          f"{len(payload) * frames / elapsed / 1e6:,.0f} MB/s")


if __name__ == "__main__":
    main()
