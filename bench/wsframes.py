"""The shared frame parser's cost per frame, in each end's role.

Feeds ``scalechat.wsframes.FrameParser`` chunks of 40 text frames as one read
would bring them: unmasked server frames to a client's parser (the load
generator's, when its C scanner is not built or a frame is split), masked
client frames to a server's parser (every message the chat server reads,
unmasking included). Reports ns per frame for each role and the server's over
the client's, measured in alternating rounds in one process, pinned to one
core when it can be. No sockets, nothing else running.

    .venv/bin/python bench/wsframes.py [--size 100] [--frames 400000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time

from scalechat.wsframes import FrameParser, mask

PER_READ = 40


def client_chunk(size: int) -> bytes:
    header = bytes((0x81, size)) if size < 126 else bytes((0x81, 126)) + size.to_bytes(2, "big")
    return (header + b"x" * size) * PER_READ


def server_chunk(size: int) -> bytes:
    key = b"\x37\xfa\x21\x3d"
    length = bytes((0x80 | size,)) if size < 126 else bytes((0x80 | 126,)) + size.to_bytes(2, "big")
    return (bytes((0x81,)) + length + key + bytes(mask(key, b"x" * size))) * PER_READ


def per_frame_ns(parser: FrameParser, chunk: bytes, frames: int) -> float:
    reads = max(1, frames // PER_READ)
    start = time.perf_counter()
    for _ in range(reads):
        parser.feed(chunk)
    return (time.perf_counter() - start) / (reads * PER_READ) * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100, help="payload bytes per frame (1-65535)")
    parser.add_argument("--frames", type=int, default=400_000, help="frames per role per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not 1 <= args.size <= 65535:
        raise SystemExit("--size must be between 1 and 65535")
    if args.frames < PER_READ or args.rounds < 1:
        raise SystemExit(f"--frames must be >= {PER_READ} and --rounds >= 1")
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {0})
    client, server = client_chunk(args.size), server_chunk(args.size)
    for _ in range(args.rounds):
        as_client = per_frame_ns(FrameParser(), client, args.frames)
        as_server = per_frame_ns(FrameParser(1 << 20, masked=True, text_only=True), server, args.frames)
        print(f"{args.size}-byte frames: client's role {as_client:.0f} ns, server's role "
              f"{as_server:.0f} ns per frame ({as_server / as_client:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
