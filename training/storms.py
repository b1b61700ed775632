"""A labelled multi-series incident suite: storms that spread through a dependency map.

Each storm is a set of series of a small shop (``frontend`` calls ``checkout`` and
``search``, ``checkout`` calls ``payments``) generated like the SLO incident suite
(``training.incidents``: Prometheus rates of simulated counters, a daily profile,
counting noise), with the fault injected where it starts and its echo in the
services that call it, a little later and weaker:

- ``spread``: one app fails and the apps that call it degrade after it (the
  probable cause is the app that failed);
- ``unrelated``: two faults at the same time in services that do not call each
  other: two incidents;
- ``coincidence``: payments fails while a marketing campaign brings the frontend
  more sessions: two incidents a person would keep apart, in services the map
  links (the frontend calls payments through checkout); sessions are a demand
  series (the catalogue's ``demand: true``), whose surge after payments' fault
  cannot be its echo, so the grouping keeps them apart;
- ``single``: one series alone;
- ``deploy``: a release of the frontend, announced (``POST /changes``) two minutes
  before, fails some of its requests and doubles its calls to checkout, whose
  latency rises first: the dependency map alone would name checkout.

``storm_results`` replays every series through the live detector's streaming
replay (``training.runner.backtest_series``, what ``aiops backtest`` runs), then
replays the anomalies, row by row in time order, through the detector's own
grouping (``detector.incidents.IncidentTracker``, the catalogue's ``depends_on``
map), and scores each true incident:

- **grouped**: the members the detector flagged ended in exactly one incident,
  which holds no member of another true incident;
- **cause right**: that incident's probable cause is the service that failed;
- **merged wrongly**: an incident holds members of two true incidents;
- **pages**: incidents the storm's detected members opened (one is right).

A member counts as flagged when it is anomalous between its fault's start and
``TOLERANCE`` rows after its end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from aiops.core.settings import Settings, load_settings
from detector.catalogue import DEFAULT_QUERIES
from detector.incidents import (
    Change,
    Dependencies,
    IncidentTracker,
    Member,
)
from training.incidents import (
    STEP,
    TOLERANCE,
    CaseSpec,
    IncidentCase,
    Shift,
    generate,
    run_case,
)

NAMESPACE = "shop"
#: the catalogue's queries by name: each part's series is one of them
QUERIES = {q.name: q for q in DEFAULT_QUERIES}
#: who calls whom in the storms' shop (the catalogue's ``depends_on:``)
DEPENDS_ON = {
    "shop.frontend": ["shop.checkout", "shop.search"],
    "shop.checkout": ["shop.payments"],
}


@dataclass(frozen=True)
class Part:
    """One series of a storm: ``metric`` of ``app``, hit ``lag`` minutes after the storm
    starts by a ``factor`` on its driver (the 5xx probability, the latency median, the
    KPI's rate), as a member of true incident ``incident``."""

    app: str
    metric: str
    factor: float
    lag: float = 0.0
    incident: int = 0

    @property
    def service(self) -> str:
        return f"{NAMESPACE}.{self.app}"


@dataclass(frozen=True)
class StormSpec:
    name: str
    kind: str  # spread | unrelated | single
    seed: int
    start_hour: float
    at: float  # minutes from the judged part's start
    minutes: float
    parts: tuple[Part, ...]
    causes: tuple[str, ...]  # the service that failed, per true incident
    #: changes announced (POST /changes): (service, minutes from ``at``; negative: before)
    changes: tuple[tuple[str, float], ...] = ()

    def part_spec(self, i: int) -> CaseSpec:
        p = self.parts[i]
        return CaseSpec(
            f"{self.name}/{p.app}/{p.metric}",
            p.metric,
            "level_shift",
            self.seed * 100 + i,
            self.start_hour,
            (Shift(self.at + p.lag, self.minutes, p.factor),),
            story=f"{self.kind}: {p.app} {p.metric} ×{p.factor:g} from +{p.lag:g} min",
        )


def _payments_fails(seed: int, hour: float, at: float, lag: float) -> StormSpec:
    return StormSpec(
        f"spread/payments_errors_{seed}",
        "spread",
        seed,
        hour,
        at,
        40,
        (
            Part("payments", "success_rate", 8.0),
            Part("payments", "error_budget_burn", 8.0),
            Part("checkout", "success_rate", 4.0, lag),
            Part("checkout", "latency_p99", 1.8, lag),
            Part("frontend", "checkouts", 0.6, 2 * lag),
        ),
        ("shop.payments",),
    )


def _checkout_slow(seed: int, hour: float, at: float, lag: float) -> StormSpec:
    return StormSpec(
        f"spread/checkout_slow_{seed}",
        "spread",
        seed,
        hour,
        at,
        40,
        (
            Part("checkout", "latency_p99", 2.2),
            Part("frontend", "latency_p99", 1.6, lag),
            Part("frontend", "checkouts", 0.65, lag),
            Part("frontend", "revenue", 0.65, lag),
        ),
        ("shop.checkout",),
    )


def _unrelated(seed: int, hour: float, at: float, lag: float) -> StormSpec:
    return StormSpec(
        f"unrelated/payments_and_search_{seed}",
        "unrelated",
        seed,
        hour,
        at,
        40,
        (
            Part("payments", "success_rate", 8.0),
            Part("payments", "error_budget_burn", 8.0),
            Part("search", "latency_p99", 2.2, lag, incident=1),
        ),
        ("shop.payments", "shop.search"),
    )


def _coincidence(seed: int, hour: float, at: float, lag: float) -> StormSpec:
    return StormSpec(
        f"coincidence/payments_errors_and_a_campaign_{seed}",
        "coincidence",
        seed,
        hour,
        at,
        40,
        (
            Part("payments", "success_rate", 8.0),
            Part("payments", "error_budget_burn", 8.0),
            Part("frontend", "sessions", 1.8, lag, incident=1),
        ),
        ("shop.payments", "shop.frontend"),
    )


def _bad_release(seed: int, hour: float, at: float, lag: float) -> StormSpec:
    """The frontend's release fails some requests and doubles its calls to checkout,
    whose latency rises at once: checkout is what the frontend calls, but the deploy
    names the frontend."""
    return StormSpec(
        f"deploy/frontend_bad_release_{seed}",
        "deploy",
        seed,
        hour,
        at,
        40,
        (
            Part("checkout", "latency_p99", 2.2),
            Part("frontend", "success_rate", 6.0, lag),
            Part("frontend", "checkouts", 0.65, lag),
        ),
        ("shop.frontend",),
        changes=(("shop.frontend", -2.0),),
    )


def _single(seed: int, hour: float, at: float, lag: float) -> StormSpec:
    return StormSpec(
        f"single/search_slow_{seed}",
        "single",
        seed,
        hour,
        at,
        40,
        (Part("search", "latency_p99", 2.2),),
        ("shop.search",),
    )


#: (seed, clock hour of the first row, onset minute, lag minutes) per storm
_VARIANTS = ((11, 9.0, 420, 1.0), (12, 14.0, 440, 2.0), (13, 19.0, 400, 1.0), (14, 3.0, 450, 3.0))

#: the suite: four variants of each kind, two of the coincidences (rarer in life)
SPECS: tuple[StormSpec, ...] = tuple(
    make(seed + 10 * k, hour, at, lag)
    for k, (make, variants) in enumerate(
        (
            (_payments_fails, _VARIANTS),
            (_checkout_slow, _VARIANTS),
            (_unrelated, _VARIANTS),
            (_single, _VARIANTS),
            (_coincidence, _VARIANTS[:2]),
            (_bad_release, _VARIANTS),
        )
    )
    for seed, hour, at, lag in variants
)


@dataclass
class StormRun:
    """A storm's generated series and what the detector made of each."""

    spec: StormSpec
    cases: list[IncidentCase]
    frames: list[pd.DataFrame]  # the judged rows of each series' backtest


def run_storm(spec: StormSpec, settings: Settings) -> StormRun:
    cases = [generate(spec.part_spec(i)) for i in range(len(spec.parts))]
    frames = [run_case(c, settings).iloc[c.history :].reset_index(drop=True) for c in cases]
    return StormRun(spec, cases, frames)


def _onsets(anomalous: np.ndarray) -> np.ndarray:
    """Per row: the row its anomalous run began at (-1 outside runs)."""
    out = np.full(anomalous.shape, -1)
    start = -1
    for i, a in enumerate(anomalous):
        if a and start < 0:
            start = i
        elif not a:
            start = -1
        out[i] = start if a else -1
    return out


def group(run: StormRun, dependencies: Dependencies, window: float) -> dict[str, object]:
    """Replay the anomalies of ``run`` through the tracker, row by row; score it."""
    spec = run.spec
    tracker = IncidentTracker(dependencies, window)
    anomalous = [f["anomalous"].to_numpy() > 0 for f in run.frames]
    onsets = [_onsets(a) for a in anomalous]
    n = min(len(a) for a in anomalous)
    seconds = np.arange(n) * STEP
    home: dict[tuple[int, int], str] = {}  # (part, onset row) -> incident id
    announced = [Change(svc, (spec.at + minutes) * STEP, "deploy") for svc, minutes in spec.changes]
    causes: dict[str, str | None] = {}
    for r in range(n):
        members = []
        for i, part in enumerate(spec.parts):
            if anomalous[i][r]:
                labels = {"namespace": NAMESPACE, "app": part.app}
                reasons = str(run.frames[i]["reasons"].iat[r] or "").split(";")
                score = float(run.frames[i]["score"].iat[r])
                query = QUERIES[part.metric]
                members.append(
                    Member.of(query, labels, float(seconds[onsets[i][r]]), reasons, score)
                )
        known = [c for c in announced if c.at <= seconds[r]]  # announced by then
        changes = tracker.observe(float(seconds[r]), members, known)
        for inc in [*changes.opened, *changes.changed, *changes.closed]:
            causes[inc.id] = inc.cause.service if inc.cause else None
        for inc in tracker.incidents.values():
            for i, part in enumerate(spec.parts):
                key = (part.metric, (("app", part.app), ("namespace", NAMESPACE)))
                if anomalous[i][r] and key in inc.members:
                    home.setdefault((i, int(onsets[i][r])), inc.id)
    return _score(spec, anomalous, home, causes)


def _flagged(spec: StormSpec, i: int, anomalous: np.ndarray) -> int | None:
    """The onset row of part ``i``'s first run inside its fault (+ TOLERANCE), or None."""
    p = spec.parts[i]
    lo = int(spec.at + p.lag)
    hi = min(len(anomalous), int(spec.at + p.lag + spec.minutes) + TOLERANCE)
    rows = np.flatnonzero(anomalous[lo:hi])
    if not len(rows):
        return None
    first = lo + int(rows[0])
    start = first
    while start > 0 and anomalous[start - 1]:
        start -= 1
    return start


def _score(
    spec: StormSpec,
    anomalous: list[np.ndarray],
    home: dict[tuple[int, int], str],
    causes: dict[str, str | None],
) -> dict[str, object]:
    truth = sorted({p.incident for p in spec.parts})
    incidents_of: dict[int, set[str]] = {k: set() for k in truth}
    flagged: dict[int, int] = {k: 0 for k in truth}
    for i, p in enumerate(spec.parts):
        onset = _flagged(spec, i, anomalous[i])
        if onset is None:
            continue
        flagged[p.incident] += 1
        iid = home.get((i, onset))
        if iid is not None:
            incidents_of[p.incident].add(iid)
    rows = []
    for k in truth:
        ids = incidents_of[k]
        others = set().union(*(incidents_of[j] for j in truth if j != k))
        grouped = flagged[k] > 0 and len(ids) == 1 and not (ids & others)
        cause = causes.get(next(iter(ids))) if len(ids) == 1 else None
        rows.append(
            {
                "storm": spec.name,
                "kind": spec.kind,
                "incident": k,
                "members": sum(p.incident == k for p in spec.parts),
                "flagged": flagged[k],
                "incidents": len(ids),
                "grouped": grouped,
                "cause": cause,
                "expected_cause": spec.causes[k],
                "cause_right": grouped and cause == spec.causes[k],
                "merged": bool(ids & others),
            }
        )
    return {"rows": rows}


STORM_COLUMNS = [
    "storm",
    "kind",
    "incident",
    "members",
    "flagged",
    "incidents",
    "grouped",
    "cause",
    "expected_cause",
    "cause_right",
    "merged",
]


def storm_results(
    specs: Sequence[StormSpec] = SPECS,
    settings: Settings | None = None,
    *,
    window: float | None = None,
) -> pd.DataFrame:
    """One row per true incident of every storm (see the module docstring)."""
    settings = settings or load_settings(metrics=None, config=None)
    deps = Dependencies.parse(DEPENDS_ON)
    win = window if window is not None else settings.incident_window_seconds
    rows: list[dict[str, object]] = []
    for spec in specs:
        rows.extend(group(run_storm(spec, settings), deps, win)["rows"])  # type: ignore[arg-type]
    return pd.DataFrame(rows, columns=STORM_COLUMNS)


def summarise_storms(per: pd.DataFrame) -> dict[str, float]:
    """The suite's figures: grouped, cause right, merged wrongly, pages per incident."""
    seen = per[per["flagged"] > 0]
    multi = seen[seen["flagged"] > 1]
    return {
        "true_incidents": float(len(per)),
        "detected": float(len(seen)),
        "grouped": _share(multi["grouped"].sum(), len(multi)),
        "cause_right": _share(seen["cause_right"].sum(), len(seen)),
        "merged_wrongly": _share(seen["merged"].sum(), len(seen)),
        "pages_per_incident": _share(seen["incidents"].sum(), len(seen)),
    }


def _share(a: float, b: int) -> float:
    return float(a) / b if b else math.nan
