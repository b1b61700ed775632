"""Benchmark: grouping a storm of anomalies into incidents (detector.incidents).

    python bench/grouping.py

Prints the wall time of one cycle's grouping (``IncidentTracker.observe``) for a
storm of 5,000 anomalous series in 200 services chained by the dependency map (one
incident), the next cycle of the same storm, and 5,000 unrelated anomalies (5,000
incidents): the cost the cycle pays in the worst minutes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.incidents import Dependencies, IncidentTracker, Member


def member(service: int, series: int, onset: float) -> Member:
    labels = {"namespace": "ns", "app": f"s{service}", "pod": str(series)}
    return Member(f"q{series}", labels, onset, ("level_shift",), 1.0, f"ns.s{service}")


def timed(tracker: IncidentTracker, now: float, members: list[Member]) -> float:
    t0 = time.perf_counter()
    tracker.observe(now, members)
    return time.perf_counter() - t0


def main() -> None:
    chain = Dependencies.parse({f"ns.s{i}": [f"ns.s{i + 1}"] for i in range(199)})
    storm = [member(i, j, 1000.0 + j % 60) for i in range(200) for j in range(25)]
    t = IncidentTracker(chain, 300)
    first = timed(t, 1100.0, storm)
    again = timed(t, 1160.0, storm[:-10])
    print(f"storm, 5,000 series in 200 chained services: {first:.3f} s, next cycle {again:.3f} s")
    (inc,) = t.incidents.values()
    print(f"  -> 1 incident, probable cause {inc.cause.service}")
    apart = IncidentTracker(Dependencies(), 300)
    alone = [member(i, 0, 1000.0) for i in range(5000)]
    first = timed(apart, 1100.0, alone)
    again = timed(apart, 1160.0, alone)
    print(f"5,000 unrelated anomalies: {first:.3f} s, next cycle {again:.3f} s")
    print(f"  -> {len(apart.incidents)} incidents")


if __name__ == "__main__":
    main()
