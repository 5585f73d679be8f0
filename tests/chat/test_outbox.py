"""One socket's outbox, sans I/O: no event loop, a recording Link instead of a socket."""

from __future__ import annotations

from scalechat.chat.outbox import SHARED_WRITE, Outbox
from scalechat.chat.framing import frame_text
from scalechat.chat.ratelimit import TokenBucket


class RecordingLink:
    compress = False

    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []  # each write, as the parts handed over
        self.unsent = 0

    def write(self, data: bytes) -> None:
        self.writes.append([data])

    def writelines(self, parts) -> None:
        self.writes.append(list(parts))

    def buffered(self) -> int:
        return self.unsent

    def payloads(self) -> list[bytes]:
        data, out = b"".join(b"".join(w) for w in self.writes), []
        while data:
            n, header = (data[1], 2) if data[1] < 126 else (int.from_bytes(data[2:4], "big"), 4)
            out.append(data[header:header + n])
            data = data[header + n:]
        return out


def outbox(limit: int = 1 << 20) -> tuple[Outbox, RecordingLink, list, list]:
    link, scheduled, condemned = RecordingLink(), [], []
    conn = Outbox(link, "r", "n", limit, TokenBucket(100, 100, 0.0), scheduled.append, condemned.append)
    return conn, link, scheduled, condemned


def test_a_joiner_gets_its_history_then_the_live_frames_it_does_not_cover_in_order():
    conn, link, scheduled, _ = outbox()
    conn.hold()
    live = [(seq, frame_text(b"live-%d" % seq)) for seq in (3, 4, 5)]
    # The room flushes twice while the history is read: seq 3 is in the history, 4 and 5 not.
    conn.write_batch([live[0][1]], [3], live[0][1])
    conn.write_batch([frame_text(b"presence"), live[1][1], live[2][1]], [0, 4, 5], b"")
    assert link.writes == []  # nothing before the history
    conn.release([frame_text(b"history-to-3")], last_seq=3)
    assert scheduled == [conn]
    conn.flush()
    assert link.payloads() == [b"history-to-3", b"presence", b"live-4", b"live-5"]


def test_own_frames_and_room_frames_keep_their_order_in_one_write():
    conn, link, _, _ = outbox()
    room = [frame_text(b"m1"), frame_text(b"m2")]
    conn.push(frame_text(b"error"))
    assert conn.write_batch(room, [1, 2], b"".join(room)) == 3
    assert len(link.writes) == 1 and link.payloads() == [b"error", b"m1", b"m2"]


def test_a_big_history_is_written_as_the_shared_parts_without_a_copy():
    conn, link, _, _ = outbox()
    stored = [frame_text(b"x" * 1000) for _ in range(SHARED_WRITE // 1000 + 1)]
    conn.hold()
    conn.release(stored, last_seq=len(stored))
    conn.flush()
    (write,) = link.writes
    assert all(a is b for a, b in zip(write, stored))  # the stored messages themselves


def test_a_socket_over_its_limit_is_condemned_and_takes_nothing_more():
    conn, link, _, condemned = outbox(limit=100)
    link.unsent = 90  # the peer stopped reading
    frame = frame_text(b"y" * 20)
    assert conn.write_batch([frame], [1], frame) == 0
    assert condemned == [conn] and conn.dead
    conn.push(frame_text(b"later"))
    assert conn.flush() == 0 and link.writes == []


def test_queued_bytes_count_what_waits_here_and_in_the_socket():
    conn, link, _, _ = outbox()
    conn.push(frame_text(b"abc"))
    link.unsent = 7
    assert conn.queued_bytes() == len(frame_text(b"abc")) + 7
