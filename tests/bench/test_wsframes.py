"""bench/wsframes.py parses what it times: every frame of a chunk, in both roles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from scalechat.wsframes import FrameParser

SPEC = importlib.util.spec_from_file_location(
    "bench_wsframes", Path(__file__).resolve().parents[2] / "bench" / "wsframes.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_the_chunks_are_whole_frames_the_parsers_accept() -> None:
    for size in (1, 100, 125, 126, 1000):
        client = FrameParser()
        assert client.feed(bench.client_chunk(size)) == [b"x" * size] * bench.PER_READ
        server = FrameParser(1 << 20, masked=True, text_only=True)
        assert server.feed(bench.server_chunk(size)) == [b"x" * size] * bench.PER_READ
        assert client.error is None and server.error is None
    assert bench.per_frame_ns(FrameParser(), bench.client_chunk(100), 80) > 0
