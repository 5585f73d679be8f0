"""The progress line's rates, from worker snapshots that arrive at uneven times."""

from __future__ import annotations

import pytest

from scalechat.loadgen.progress import WorkerRates


def test_progress_rates_use_each_workers_own_clock():
    """Snapshots reach the parent at uneven times; the rate must not swing with that."""
    rates = WorkerRates()
    for k in range(12):  # two workers at 200 sends/s each, stamped 1 s apart on their own clocks
        for worker, offset in ((0, 0.0), (1, 0.37)):
            t = 100.0 + offset + k
            rates.add(worker, {"t": t, "sent": int(200 * (t - 100)), "received": int(2000 * (t - 100))})
        sent, received = rates.rates()
        if k >= 1:
            assert sent == pytest.approx(400, rel=0.01) and received == pytest.approx(4000, rel=0.01)
    assert WorkerRates().rates() == (None, None)
