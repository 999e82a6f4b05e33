"""bench/studio_responsiveness.py finds a GUI stall, and --trace names what ran in it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import studio_responsiveness  # noqa: E402
from engine import events as ev  # noqa: E402


class _SlowOnce:
    """A dashboard whose first batch of events blocks the GUI thread for 150 ms in Python."""

    redraw_count = 0

    def __init__(self) -> None:
        self.blocked = False

    def handle_events(self, events) -> None:
        if not self.blocked:
            self.blocked = True
            self.block_the_gui_thread()

    def block_the_gui_thread(self) -> None:
        t = time.perf_counter()
        while time.perf_counter() - t < 0.15:
            sum(range(1000))


def test_a_stall_is_measured_and_traced_to_its_function(qapp) -> None:
    def feeder(q, stop) -> None:
        q.put(ev.LiveChange(1, key="optim.lr", old=0.1, new=0.05))
        stop.wait()

    res = studio_responsiveness.measure(1.5, feeder, dashboard=_SlowOnce(), trace=2)
    assert 140 <= res["max_gap_ms"] < 1000, res
    assert res["gaps_over_100ms"] >= 1 and res["events"] == 1  # more only if this machine stalls too
    assert len(res["trace"]) == 2  # the two longest gaps, longest first
    assert res["trace"][0]["gap_ms"] >= res["trace"][1]["gap_ms"]
    blocked = [t for t in res["trace"] if any("block_the_gui_thread" in s for s in t["stacks"])]
    assert blocked and blocked[0]["gap_ms"] >= 140, res["trace"]
