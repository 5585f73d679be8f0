"""The raw event log: exact round trip, chunking that changes nothing, clear errors."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalechat.eventlog import (HEADER, MAX_ID, MAX_NS, MAX_STAGE, RECEIPT, ROW_BYTES, SEND,
                                EventLogError, EventLogWriter, encode_rows, iter_chunks,
                                read_event_log)
from scalechat.histogram import LogHistogram

T0 = 1_732_700_000_000_000_000
fast = settings(deadline=None, max_examples=40)


def write(path, events):
    """events: ("S", stage, sender, msgno, scheduled, sent, size) or
    ("R", stage, sender, msgno, receiver, scheduled, received)."""
    with EventLogWriter(path) as log:
        for kind, *fields in events:
            if kind == "S":
                log.send(*fields)
            else:
                log.receipt(*fields)
    return path


def rows_of(path, chunk_rows=1 << 17):
    out = []
    for chunk in iter_chunks(path, chunk_rows=chunk_rows):
        kinds = np.where(chunk.receipt, "R", "S")
        out.extend(zip(kinds.tolist(), chunk.stage.tolist(), chunk.sender.tolist(), chunk.msgno.tolist(),
                       chunk.receiver_or_size.tolist(), chunk.scheduled_ns.tolist(), chunk.event_ns.tolist()))
    return out


def test_rows_are_fixed_width_csv_with_a_header(tmp_path):
    path = write(tmp_path / "e.csv", [("S", 1, 12, 345, T0, T0 + 13_211, 150),
                                      ("R", 1, 12, 345, 7, T0, T0 + 1_543_211)])
    lines = path.read_bytes().split(b"\n")
    assert lines[0] + b"\n" == HEADER == b"kind,stage,sender,msgno,receiver_or_size,scheduled_ns,event_ns\n"
    assert lines[1] == b"S,00001,0000012,0000345,0000150,1732700000000000000,1732700000000013211"
    assert lines[2] == b"R,00001,0000012,0000345,0000007,1732700000000000000,1732700000001543211"
    assert lines[3] == b"" and all(len(line) + 1 == ROW_BYTES for line in lines[1:3])


def test_round_trip_keeps_every_value_including_the_limits(tmp_path):
    events = [("S", 0, 0, 0, 0, 0, 0), ("R", MAX_STAGE, MAX_ID, MAX_ID, MAX_ID, MAX_NS, MAX_NS),
              ("S", 3, 1_234_567, 7_654_321, T0 + 123_456_789, T0 + 987_654_321, 65_536),
              ("R", 42, 9, 10, 11, 10**18 - 1, 10**18)]
    path = write(tmp_path / "e.csv", events)
    assert rows_of(path) == [  # send: (stage, sender, msgno, scheduled, sent, size) -> column order
        ("S", 0, 0, 0, 0, 0, 0), ("R", MAX_STAGE, MAX_ID, MAX_ID, MAX_ID, MAX_NS, MAX_NS),
        ("S", 3, 1_234_567, 7_654_321, 65_536, T0 + 123_456_789, T0 + 987_654_321),
        ("R", 42, 9, 10, 11, 10**18 - 1, 10**18)]


event = st.one_of(
    st.tuples(st.just("S"), st.integers(0, 3), st.integers(0, 5), st.integers(0, MAX_ID),
              st.integers(0, MAX_NS // 2), st.integers(0, 10**9), st.integers(0, MAX_ID)),
    st.tuples(st.just("R"), st.integers(0, 3), st.integers(0, 5), st.integers(0, MAX_ID),
              st.integers(0, 5), st.integers(0, MAX_NS // 2), st.integers(-10**9, 10**11)),
)


def absolute(events):
    """Make the generated offsets (sent/received relative to scheduled) absolute."""
    out = []
    for kind, stage, sender, msgno, a, b, c in events:
        if kind == "S":
            out.append((kind, stage, sender, msgno, a, a + b, c))
        else:
            out.append((kind, stage, sender, msgno, a, b, max(b + c, 0)))
    return out


@fast
@given(st.lists(event, max_size=300), st.sampled_from([1, 2, 7, 64, 1000]))
def test_streamed_histograms_equal_one_built_from_every_latency(tmp_path_factory, events, chunk_rows):
    events = absolute(events)
    path = write(tmp_path_factory.mktemp("log") / "e.csv", events)
    summary = read_event_log(path, chunk_rows=chunk_rows)
    assert summary.rows == len(events)
    for stage in {e[1] for e in events}:
        mine = [e for e in events if e[1] == stage]
        receipts = [e for e in mine if e[0] == "R"]
        got = summary.stages[stage]
        assert got.sends == len(mine) - len(receipts) and got.receipts == len(receipts)
        assert got.bytes_sent == sum(e[6] for e in mine if e[0] == "S")
        assert got.first_ns == min(e[5] if e[0] == "R" else e[4] for e in mine)
        for histogram, values in [
            (got.delivery, [(e[6] - e[5]) * 1e-9 for e in receipts]),
            (got.echo, [(e[6] - e[5]) * 1e-9 for e in receipts if e[2] == e[4]]),
            (got.send_lag, [(e[5] - e[4]) * 1e-9 for e in mine if e[0] == "S"]),
        ]:
            reference = LogHistogram(histogram.config)
            reference.record_many(np.array(values, dtype=np.float64))
            assert_same(histogram, reference)


def assert_same(got: LogHistogram, want: LogHistogram) -> None:
    a, b = got.to_dict(), want.to_dict()
    for key in ("count", "negative", "min", "max", "bucket_index", "bucket_count"):
        assert a[key] == b[key], key
    if want.count:
        assert got.mean == pytest.approx(want.mean, rel=1e-9, abs=1e-12)
        assert got.std == pytest.approx(want.std, rel=1e-6, abs=1e-9)


def test_chunk_size_and_threads_change_nothing(tmp_path):
    rng = np.random.default_rng(7)
    events = []
    for i in range(400):
        stage, sender = i // 140, i % 13
        scheduled = T0 + i * 1_000_000
        events.append(("S", stage, sender, i, scheduled, scheduled + 5_000, 100 + i % 7))
        for receiver in range(sender - sender % 4, sender - sender % 4 + 4):
            events.append(("R", stage, sender, i, receiver, scheduled,
                           scheduled + int(rng.lognormal(14, 1))))
    events.append(events[-1])  # one duplicate
    path = write(tmp_path / "e.csv", events)
    reference = read_event_log(path)
    for chunk_rows, workers in ((1, 1), (7, 3), (64, 2), (333, 1)):
        other = read_event_log(path, chunk_rows=chunk_rows, workers=workers)
        assert other.rows == reference.rows == len(events)
        for stage, want in reference.stages.items():
            got = other.stages[stage]
            assert (got.sends, got.receipts, got.echo_receipts, got.bytes_sent, got.duplicates,
                    got.first_ns, got.last_ns) == (want.sends, want.receipts, want.echo_receipts,
                                                   want.bytes_sent, want.duplicates, want.first_ns,
                                                   want.last_ns)
            assert got.delivery.to_dict()["bucket_count"] == want.delivery.to_dict()["bucket_count"]
            assert got.senders.sender.tolist() == want.senders.sender.tolist()
            assert got.senders.count.tolist() == want.senders.count.tolist()
            np.testing.assert_allclose(got.senders.mean, want.senders.mean, rtol=1e-12)
    assert [s.duplicates for s in reference.stages.values()] == [0, 0, 1]


def test_echo_latency_per_sender(tmp_path):
    events = [("R", 1, 3, 0, 3, T0, T0 + 1_000_000), ("R", 1, 3, 1, 3, T0, T0 + 3_000_000),
              ("R", 1, 3, 1, 4, T0, T0 + 9_000_000), ("R", 1, 8, 0, 8, T0, T0 + 2_000_000)]
    stage = read_event_log(write(tmp_path / "e.csv", events)).stages[1]
    assert stage.echo_receipts == 3 and stage.receipts == 4
    assert stage.senders.sender.tolist() == [3, 8]
    assert stage.senders.count.tolist() == [2, 1]
    np.testing.assert_allclose(stage.senders.mean, [0.002, 0.002])
    np.testing.assert_allclose(stage.senders.max, [0.003, 0.002])
    assert stage.echo.max == pytest.approx(0.003) and stage.delivery.max == pytest.approx(0.009)


def test_duplicates_are_counted_within_the_window_and_never_invented(tmp_path):
    receipt = ("R", 2, 5, 9, 6, T0, T0 + 1_000)
    filler = [("R", 2, 7, i, 8, T0, T0 + 1_000) for i in range(50)]
    path = write(tmp_path / "e.csv", [receipt, *filler[:10], receipt, receipt, *filler[10:], receipt])
    assert read_event_log(path).stages[2].duplicates == 3
    # A window of 8 rows counts every copy up to 8 rows after the last (here also the
    # copies 11 and 12 rows after the first, in the next block), misses the one 41 rows
    # after, and counts nothing that is not a copy.
    assert read_event_log(path, duplicate_window=8, chunk_rows=4).stages[2].duplicates == 2
    assert read_event_log(path, duplicate_window=0).stages[2].duplicates == 0
    # Same sender, msgno and receiver in another stage is another message.
    other = write(tmp_path / "f.csv", [receipt, ("R", 3, 5, 9, 6, T0, T0 + 1_000)])
    assert [s.duplicates for s in read_event_log(other).stages.values()] == [0, 0]


def test_wrong_header_names_the_file_and_line_1(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("time,sender,text\n1,2,hello\n")
    with pytest.raises(EventLogError, match=r"other\.csv:1: not a scalechat event log.*time,sender"):
        read_event_log(path)


def test_truncated_last_line_names_the_file_and_line(tmp_path):
    path = write(tmp_path / "e.csv", [("S", 1, 1, i, T0, T0, 10) for i in range(5)])
    path.write_bytes(path.read_bytes()[:-30])  # a writer killed mid-row
    with pytest.raises(EventLogError, match=r"e\.csv:6: truncated last line \(42 of 72 bytes\)"):
        read_event_log(path)
    summary = read_event_log(path, allow_truncated=True)
    assert summary.rows == 4 and summary.truncated_bytes == 42


def test_a_malformed_row_names_its_line(tmp_path):
    path = write(tmp_path / "e.csv", [("S", 1, 1, i, T0, T0, 10) for i in range(300)])
    data = bytearray(path.read_bytes())
    at = len(HEADER) + 200 * ROW_BYTES + 20  # row 201 is line 202
    data[at] = ord("x")
    path.write_bytes(bytes(data))
    for chunk_rows in (7, 1 << 17):
        with pytest.raises(EventLogError, match=r"e\.csv:202: not an event row"):
            read_event_log(path, chunk_rows=chunk_rows)
    data[at] = ord("0")
    data[len(HEADER) + 5 * ROW_BYTES] = ord("X")  # an unknown kind on line 7
    path.write_bytes(bytes(data))
    with pytest.raises(EventLogError, match=r"e\.csv:7: not an event row: b'X,00001"):
        read_event_log(path)


def test_missing_file_is_an_event_log_error(tmp_path):
    with pytest.raises(EventLogError, match=r"nope\.csv: cannot open event log"):
        read_event_log(tmp_path / "nope.csv")


def test_an_empty_log_has_no_stages(tmp_path):
    path = write(tmp_path / "e.csv", [])
    assert path.read_bytes() == HEADER
    assert read_event_log(path).stages == {}


def test_values_outside_the_format_are_left_out_and_reported_at_close(tmp_path):
    path = tmp_path / "e.csv"
    log = EventLogWriter(path)
    log.send(1, 1, 1, T0, T0, 10)
    log.send(1, MAX_ID + 1, 2, T0, T0, 10)  # sender too large
    log.receipt(1, 1, 1, 2, T0, -5)  # negative time
    log.receipt(1, 1, 1, 2, T0, "soon")  # not a number
    log.receipt(1, 1, 1, 2, T0, T0 + 7)
    with pytest.raises(EventLogError, match=r"e\.csv: 3 events left out.*first: \(83, 1, 10000000"):
        log.close()
    assert [row[0] for row in rows_of(path)] == ["S", "R"]
    with pytest.raises(EventLogError, match="closed"):
        log.send(1, 1, 1, T0, T0, 10)
    log.close()  # idempotent


def test_the_thread_writes_whole_rows_while_events_keep_coming(tmp_path):
    path = tmp_path / "e.csv"
    log = EventLogWriter(path, flush_interval=0.01)
    stop = threading.Event()
    sent = 0

    def produce():  # stands in for the event loop: the only thread that calls send/receipt
        nonlocal sent
        while not stop.is_set():
            for _ in range(500):
                log.receipt(1, sent % 50, sent, 3, T0 + sent, T0 + sent + 1000)
                sent += 1
            time.sleep(0.001)

    producer = threading.Thread(target=produce)
    producer.start()
    deadline = time.monotonic() + 10
    while path.stat().st_size < len(HEADER) + 1000 * ROW_BYTES:  # written before close
        assert time.monotonic() < deadline, "nothing written by the thread"
        time.sleep(0.01)
    stop.set()
    producer.join()
    log.close()
    summary = read_event_log(path)
    assert summary.rows == sent == log.written
    assert summary.stages[1].receipts == sent and summary.stages[1].duplicates == 0


def test_encode_rows_matches_percent_formatting():
    rng = np.random.default_rng(3)
    n = 1000
    rows = np.column_stack([rng.choice([SEND, RECEIPT], n), rng.integers(0, MAX_STAGE + 1, n),
                            *(rng.integers(0, MAX_ID + 1, n) for _ in range(3)),
                            rng.integers(0, MAX_NS, n, endpoint=True),
                            rng.integers(0, MAX_NS, n, endpoint=True)]).astype(np.int64)
    expected = "".join("%c,%05d,%07d,%07d,%07d,%019d,%019d\n" % tuple(row)  # noqa: UP031  (printf, as the C encoder)
                       for row in rows.tolist())
    assert encode_rows(rows) == expected.encode()


def test_latency_is_exact_to_the_nanosecond(tmp_path):
    path = write(tmp_path / "e.csv", [("R", 0, 1, 1, 2, T0 + 1, T0 + 1 + 123_456_789)])
    stage = read_event_log(path).stages[0]
    assert stage.delivery.min == stage.delivery.max == pytest.approx(0.123456789, abs=1e-15)
    assert math.isnan(stage.echo.mean)
