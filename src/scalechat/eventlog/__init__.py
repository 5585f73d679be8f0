"""The raw event log: one fixed-width CSV row per send and per receipt.

Format (``events-shard-<i>-of-<n>.csv`` beside the results, see :mod:`scalechat.results`)::

    kind,stage,sender,msgno,receiver_or_size,scheduled_ns,event_ns
    S,00001,0000012,0000345,0000150,1732700000123456789,1732700000123470000
    R,00001,0000012,0000345,0000007,1732700000123456789,1732700000125000000

``kind`` is ``S`` (a send: ``receiver_or_size`` is the payload size in bytes,
``event_ns`` the time it was written) or ``R`` (a receipt: ``receiver_or_size``
is the receiving client, ``event_ns`` the time it arrived). Every row carries
the message's *scheduled* send time, so a receipt's latency is
``event_ns - scheduled_ns`` without a join, and a send's ``event_ns -
scheduled_ns`` is how far the generator lagged behind its schedule.

Every row is exactly :data:`ROW_BYTES` (72) bytes: zero-padded digits, commas at
fixed places, ``\\n`` last; field widths are in :data:`COLUMNS`. It stays a
plain CSV (any tool reads it), but a reader can also view a chunk as a
``(rows, 9)`` array of little-endian 8-byte words and turn digits into integers
with a few vectorised operations per word, no per-row Python: each word holds
the digits of one field (word 6 holds the tail of ``scheduled_ns`` and the head
of ``event_ns``), so parsing is masking, shifting and an 8-digits-at-once
multiply (:func:`_parse8`). Limits: stage < 10**5; sender, receiver, msgno and
size < 10**7; times in ``[0, 2**63)`` ns.

:class:`EventLogWriter` keeps the load generator's hot path to one tuple
appended to a list; a thread encodes batches with numpy and writes whole rows.
:func:`read_event_log` streams a file in chunks, parsed by a few threads (numpy
releases the GIL), into per-stage aggregates; its memory does not grow with the
file. :func:`iter_chunks` gives the parsed columns chunk by chunk for other
uses. All raise :class:`EventLogError` naming the file (and line).
``bench/eventlog.py`` measures them against ``wc -l`` and pandas.
"""

from scalechat.eventlog.format import (COLUMNS, DEFAULT_CHUNK_ROWS, DEFAULT_DUPLICATE_WINDOW, HEADER,
                                       MAX_ID, MAX_NS, MAX_STAGE, RECEIPT, ROW_BYTES, SEND, WORDS,
                                       EventChunk, EventLogError, encode_rows, valid_rows)
from scalechat.eventlog.reader import iter_chunks
from scalechat.eventlog.summary import EventLogSummary, SenderEcho, StageEvents, read_event_log
from scalechat.eventlog.writer import EventLogWriter

__all__ = ["COLUMNS", "DEFAULT_CHUNK_ROWS", "DEFAULT_DUPLICATE_WINDOW", "HEADER", "MAX_ID", "MAX_NS",
           "MAX_STAGE", "RECEIPT", "ROW_BYTES", "SEND", "WORDS", "EventChunk", "EventLogError",
           "EventLogSummary", "EventLogWriter", "SenderEcho", "StageEvents", "encode_rows", "iter_chunks",
           "read_event_log", "valid_rows"]
