"""The C receive path (services/loadgen/scalechat/loadgen/_fastscan.c) counts exactly what the Python path counts.

Wire bytes go through a real ``WSClient`` (its ``data_received``, no socket)
once with the C scan hook and once without, cut into reads at random places
(frames split across reads included); every counter and histogram must agree.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from scalechat.loadgen import accounting
from scalechat.loadgen.accounting import ReceiptTally, Scanner, Tally
from scalechat.loadgen.wsclient import WSClient
from loadgen_streams import frame, make_run, stream
from ws_frames import server_frame
from scalechat.loadgen.worker import NEVER



def test_the_c_receive_path_is_built():
    # `make test` installs with gcc and the Python headers present: the extension must be there,
    # or every load test silently runs the slow path.
    assert accounting.Tally is not None, "scalechat.loadgen._fastscan did not build; see pip's output"


def wire(payload: bytes, b0: int = 0x81) -> bytes:
    """A server frame whose first byte is ``b0`` (FIN bit and opcode)."""
    return server_frame(b0 & 0x0F, payload, fin=bool(b0 & 0x80))


class _Transport:
    """Collects what the client writes (pongs); the tests never close."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.scanned = 0

    def write(self, data: bytes) -> None:
        self.written.append(data)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    """Every read happens at t = 5000 ns, so both paths see the same latencies."""
    monkeypatch.setattr(accounting, "monotonic_ns", lambda: 5000)
    real = ReceiptTally.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        self.c.fixed_now_ns = 5000

    monkeypatch.setattr(ReceiptTally, "__init__", init)


def client_for(run, index: int, fast: bool) -> tuple[WSClient, _Transport]:
    """A client of ``run`` past its handshake; with ``fast``, ``transport.scanned`` counts the C path's bytes."""
    client = run.clients[index]
    transport = _Transport()
    scan = None
    if fast:
        c_scan = run.tally.scanner(client).scan

        def scan(data: bytes, pos: int) -> int:
            end = c_scan(data, pos)
            transport.scanned += end - pos
            return end
    ws = WSClient(key="k", on_message=None, on_messages=client.on_messages, max_message_size=4 * 2**20,
                  close_timeout=1.0, scan=scan)
    ws.connection_made(transport)
    ws._open = True  # past the handshake
    return ws, transport


def feed(ws: WSClient, data: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in sorted(cuts) + [len(data)]:
        if cut > start:
            ws.data_received(data[start:cut])
            start = cut


def counters(run) -> tuple:
    run.snapshot()
    run.live()
    d, e = run.result.delivery, run.result.echo
    return (run.received, run.duplicates, run.out_of_order, run.late, run.live_received,
            d.count, e.count, d.min, d.max, round(d.mean, 12), e.max)


def wire_stream() -> bytes:
    """test_worker's stream plus what only the wire has: control frames, a fragmented
    history, 16- and 64-bit lengths, and frames of senders beyond the room."""
    frames = [wire(f) for f in stream()]
    frames.insert(3, wire(b"ping", 0x89))
    history = b'{"type":"history","room":"r","epoch":"e","messages":[],"continuity_lost":false}'
    frames.insert(5, wire(history[:20], 0x01) + wire(history[20:], 0x80))
    frames.insert(40, wire(frame(1, 500, 1500) + b" " * 70_000))  # 64-bit length; a gap for sender 1
    frames.insert(60, wire(frame(77, 3, 1500)))  # a sender beyond the room
    long_text = frame(0, 9999, 1999).replace(b"xx", b"y" * 300)  # 16-bit length
    frames.append(wire(long_text))
    return b"".join(frames)


@pytest.mark.parametrize("seed", range(8))
async def test_c_and_python_paths_count_the_same_whatever_the_reads(seed):
    data = wire_stream()
    rng = random.Random(seed)
    cuts = [rng.randrange(len(data)) for _ in range(rng.choice([0, 3, 30, 300]))]
    results = []
    for fast in (False, True):
        run = make_run()
        ws, transport = client_for(run, 1, fast)
        feed(ws, data, cuts)
        assert transport.written, "the ping was answered"
        assert (transport.scanned > 0) == fast
        results.append(counters(run))
    assert results[0] == results[1]
    # The window's 200, plus sender 1's msgno 500 and sender 0's 9999 (both in the window). Sender 1's
    # early 500 leaves a gap, so its msgnos 10..59 arriving later count as out of order (50), beside
    # test_worker's one; and test_worker's one duplicate.
    assert results[0][:3] == (202, 1, 51)


async def test_a_small_tally_flushes_midway_without_changing_the_counts():
    data = b"".join(wire(frame(s, m, 1000 + m)) for m in range(300) for s in range(4))
    results = []
    for capacity in (ReceiptTally.CAPACITY, 7):
        run = make_run()
        run.tally = ReceiptTally(run, capacity)
        run.set_window(1000, 2000, NEVER)
        ws, transport = client_for(run, 2, True)
        feed(ws, data, [len(data) // 3])
        assert transport.scanned == len(data)  # the frame split by the read too
        results.append(counters(run))
    assert results[0] == results[1]
    assert results[0][:3] == (1200, 0, 0)  # 300 msgnos of 4 senders, all scheduled inside [1000, 2000)


async def test_after_the_deadline_receipts_go_to_the_python_path_as_late():
    run = make_run(deadline=0)
    ws, _ = client_for(run, 0, True)
    feed(ws, b"".join(wire(frame(s, m, 1000 + m)) for m in range(50) for s in range(4)), [])
    assert counters(run)[:4] == (0, 0, 0, 200)


def scanner(highest, idx=1, capacity=8, on_full=None):
    latencies, echoes = np.zeros(capacity, np.int64), np.zeros(capacity, np.int64)
    tally = Tally(latencies, echoes, on_full or (lambda: None))
    tally.start_ns, tally.end_ns, tally.deadline_ns, tally.fixed_now_ns = 1000, 2000, 1 << 62, 2000
    return tally, Scanner(tally, highest, idx), latencies, echoes


def test_scan_stops_at_the_first_frame_that_needs_a_decision():
    highest = np.full(4, -1, dtype=np.int64)
    tally, scan, latencies, echoes = scanner(highest)
    plain = wire(frame(0, 0, 1500)) + wire(frame(1, 0, 1600))
    gap = wire(frame(0, 2, 1700))
    assert scan.scan(b"xx" + plain + gap + wire(frame(2, 0, 1800)), 2) == 2 + len(plain)
    assert highest.tolist() == [0, 0, -1, -1]
    assert latencies[:2].tolist() == [500, 400] and echoes[:1].tolist() == [400]
    assert tally.take() == (2, 1, 2, 2) and tally.take() == (0, 0, 0, 0)
    # an incomplete frame, a ping and a presence frame stop it too, at their first byte
    for tail in (wire(frame(2, 0, 1800))[:-1], wire(b"x", 0x89), wire(b'{"type":"presence","count":1}')):
        assert scan.scan(tail) == 0
    tally.deadline_ns = 1999  # past the deadline nothing is accounted: late receipts are Python's
    assert scan.scan(wire(frame(2, 0, 1800))) == 0


def test_a_full_buffer_calls_on_full_which_must_take():
    taken = []
    tally, scan, latencies, _ = scanner(np.full(1, -1, dtype=np.int64), idx=0, capacity=3,
                                        on_full=lambda: taken.append((latencies.tolist(), tally.take())))
    data = b"".join(wire(frame(0, m, 1000 + m)) for m in range(10))
    assert scan.scan(data) == len(data)
    assert taken == [([1000 - m for m in range(k, k + 3)], (3, 3, 3, 3)) for k in (0, 3, 6)]
    assert tally.take() == (1, 1, 1, 1) and latencies[0] == 1000 - 9
    tally, scan, _, _ = scanner(np.full(1, -1, dtype=np.int64), idx=0, capacity=3)
    with pytest.raises(RuntimeError, match="must take"):
        scan.scan(data)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="highest"):
        Scanner(Tally(np.zeros(1, np.int64), np.zeros(1, np.int64), lambda: None), bytearray(3), 0)
    with pytest.raises(ValueError, match="echoes"):
        Tally(np.zeros(1, np.int64), np.zeros(0, np.int64), lambda: None)
    with pytest.raises(TypeError, match="callable"):
        Tally(np.zeros(1, np.int64), np.zeros(1, np.int64), None)
    _, scan, _, _ = scanner(np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="pos"):
        scan.scan(b"", 5)


@pytest.mark.parametrize("seed", range(6))
async def test_both_paths_agree_on_randomly_reordered_repeated_and_lost_messages(seed):
    # 3 senders' messages with some lost, repeated, delayed or stamped outside the window, in random
    # reads: every branch of the accounting (gaps, late fills, duplicates, warm-up) crosses C and Python.
    rng = random.Random(seed)
    frames = [frame(s, m, rng.choice([900, 1500, 1500, 1500, 2100])) for m in range(200) for s in range(3)]
    for _ in range(60):
        i = rng.randrange(len(frames))
        action = rng.choice(["drop", "repeat", "delay"])
        if action == "drop":
            frames.pop(i)
        elif action == "repeat":
            frames.insert(rng.randrange(i, len(frames) + 1), frames[i])
        else:
            frames.insert(min(len(frames), i + rng.randrange(1, 40)), frames.pop(i))
    data = b"".join(wire(f) for f in frames)
    cuts = [rng.randrange(len(data)) for _ in range(rng.randrange(0, 200))]
    results = []
    for fast in (False, True):
        run = make_run()
        ws, transport = client_for(run, 2, fast)
        feed(ws, data, cuts)
        results.append(counters(run))
    assert results[0] == results[1]
    assert results[0][0] > 0 and results[0][1] > 0 and results[0][2] > 0  # received, duplicates, out of order
