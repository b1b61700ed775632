"""The verdict rule, shared by the live cycle and streaming backtests.

For every (series, time):

1. each explainer fires at the series' own level for its reason: the configured
   threshold, raised by rungs of 1.4 where the series' history reached it often
   (``own_levels``: the spike's ``spike_levels``, every other reason's
   ``reason_levels``; live, the levels the nightly retrain stored), and only if the
   reason is *novel*: its strength beats every strength of the same reason in the series'
   recent history (``Thresholds.history`` points ending one longest window ago,
   ``AIOPS_NOVELTY`` times over). A pattern that recurs — a daily batch job, a
   ramp the baseline cannot follow — stops being news after its first time;
2. the IsolationForest score must reach ``AIOPS_SCORE_THRESH`` (when a forest exists;
   ``forest_gate``), unless a reason is ``STRONG`` (2) times its threshold: neither
   the forest nor the explainers silence the other;
   ``spike`` passes neither gate (``UNGATED_REASONS``): a point ``AIOPS_SPIKE_Z`` (7)
   robust sds outside the expected band is an anomaly by itself, however often the
   series has had one and whatever the forest's window features say (on real KPIs the
   owners label such points: the gates hid most of them). Its novelty still weighs
   the detection (``Judgement.weight``), so a series that spikes all the time ranks
   its spikes low;
3. a change of level (level_shift, percent_change, trend_break) that brings the
   series back to the level of the older half of its baseline (within
   ``return_ratio`` × the z threshold) is a *return*, not
   news (the end of an incident whose newer half still drags the baseline): it
   does not start an anomaly (it may continue one);
4. hysteresis: a series anomalous at the previous step stays anomalous while any
   reason fires at the relaxed thresholds (``AIOPS_RESOLVE_RATIO``), novel or not;
5. outside the band: an anomaly starts only at a point outside the expected band
   (``detector.features.robust_band``: the median of the last 100 points ± its robust
   spread, seasonal where the profile explains the series) by ``AIOPS_Z_THRESH`` band
   sds on the bad side (either side for volatility_spike; for a level_shift or a
   percent_change, the middle window's points may also leave it together,
   ``window_outside``; a trend_break needs the point itself outside). A baseline
   that extrapolates a daily ramp too far, or lags a peak, no longer makes an anomaly
   of data that a person would call normal;
6. the data is back: once ``AIOPS_RESOLVE_POINTS`` (2) points in a row lie inside that
   band, nothing holds an anomaly any more (no relaxed verdict), whatever the windows
   still hold: the episode ends when the data returns, not when the window statistics
   have decayed (a spike no longer keeps a series in alarm for the longest window). A
   new anomaly may not start there either unless those points are also inside the band
   as it was one longest window earlier (a slow drop that the band has half followed
   is still news).

The event score of an onset (what a detection "weighs") is the novelty of its
strongest reason times the forest score. The calibrated score (``aiops_anomaly_score``,
``calibrated_score``) is the strongest reason's strength over the series' own level for
it: at least 1 exactly where the series is anomalous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aiops.core import defaults
from aiops.core.settings import Settings
from detector.explain import (
    Evidence,
    Explainer,
    any_fired,
    default_explainers,
    evaluate,
    novelty,
    signed,
)
from detector.features import Features, _prefix, _window, trailing_mean

#: Reasons that are a change of level: a return to the earlier level does not start them.
LEVEL_REASONS = frozenset({"level_shift", "percent_change", "trend_break"})
#: Changes of level that start only where the point itself is outside the band: a ramp
#: whose points stay inside it is no break a person would page for (and re-firing on the
#: window's points made a ramp flap in and out of alarm).
POINT_REASONS = frozenset({"trend_break"})
#: Reasons without a direction: the point may leave the band on either side.
UNSIGNED_REASONS = frozenset({"volatility_spike"})

#: A change of level starts outside the band also when the middle window's points
#: together lie this many times AIOPS_Z_THRESH outside it (``window_outside``).
WINDOW_BAND = 3.0

#: A reason this many times its threshold starts an anomaly without the forest's score.
STRONG = 2.0
#: Reasons that start an anomaly at their threshold alone: neither novelty nor the forest
#: gates them (their threshold is strict, their band robust to past spikes).
UNGATED_REASONS = frozenset({"spike"})

#: The series' own spike level (``spike_levels``): the lowest rung of AIOPS_SPIKE_Z ×
#: SPIKE_RUNG**k (k = 0 … SPIKE_RUNGS - 1; beyond them the next rung) that at most
#: SPIKE_ALLOWED of the series' last SPIKE_MEMORY points reached, once SPIKE_MIN_KNOWN of
#: them are known (before that, AIOPS_SPIKE_Z). A 1-minute series whose tails are heavy
#: (7-sd points every few hours) keeps its spikes for what is rare for it.
SPIKE_MEMORY = 2000
SPIKE_MIN_KNOWN = 1000
SPIKE_ALLOWED = 4
SPIKE_RUNG = 1.4
SPIKE_RUNGS = 6

#: Every other reason's own level (``reason_levels``): the lowest of SPIKE_RUNG**k times
#: its threshold (k = 0 … SPIKE_RUNGS - 1) whose crossing (its strength rising to it)
#: the series made at most LEVEL_ALLOWED times in its last LEVEL_MEMORY points, once
#: LEVEL_MIN_KNOWN of them are ready (before that, the threshold). A series whose usual
#: day holds a level_shift of 2 thresholds (an ingress rate that stops every evening) pages
#: for what is rare *for it*: the same false-alarm rate on a noisy series and a quiet one.
#: Crossings, not points: a change of level lasts many points and is one event.
LEVEL_MEMORY = 1440
LEVEL_MIN_KNOWN = 1000
LEVEL_ALLOWED = 1

#: Without hysteresis (AIOPS_RESOLVE_RATIO 1, the default) an ongoing anomaly is held only
#: by points at least this share of the series' spike level outside the band: a shift
#: whose windows are still filling stays one anomaly, the point after a spike does not.
SPIKE_HOLD = 0.75


@dataclass
class Thresholds:
    z_thresh: float = defaults.Z_THRESH
    vol_mult: float = defaults.VOL_MULT
    pct_thresh: float = defaults.PCT_THRESH
    score_thresh: float = defaults.SCORE_THRESH
    #: below 1: hysteresis, an ongoing anomaly holds until its reasons fall below this
    #: share of the thresholds; 1 (the default): every point is judged on its own
    resolve_ratio: float = defaults.RESOLVE_RATIO
    #: a reason counts only this many times stronger than its recent maximum
    novelty: float = defaults.NOVELTY
    history: int = 400  # points of each reason's strength history behind the novelty
    #: a change of level back to within this share of z_thresh of the older half of the
    #: baseline is a return to normal, not an onset (see detector.verdict)
    return_ratio: float = 0.5
    #: an anomaly ends once this many points in a row are back inside the expected band
    #: (baseline ± z_thresh sds), whatever the windows still say (0: only the hysteresis)
    resolve_points: int = defaults.RESOLVE_POINTS
    #: a spike: a point this many expected-band sds outside the band (detector.explain)
    spike_z: float = defaults.SPIKE_Z
    #: the relaxed thresholds hold an anomaly: a point still outside the band holds it
    holding: bool = False

    @classmethod
    def from_settings(cls, s: Settings) -> Thresholds:
        return cls(
            s.z_thresh,
            s.vol_mult,
            s.pct_thresh,
            s.score_thresh,
            s.resolve_ratio,
            s.novelty,
            resolve_points=s.resolve_points,
            spike_z=s.spike_z,
        )

    @property
    def hysteresis(self) -> bool:
        """Whether an ongoing anomaly is held by the relaxed thresholds (resolve_ratio < 1)."""
        return self.resolve_ratio < 1.0

    def relaxed(self) -> Thresholds:
        """Thresholds an ongoing anomaly must fall below to end (hysteresis against flapping);
        without hysteresis, the ones that name the reason of a held point (SPIKE_HOLD)."""
        r = self.resolve_ratio if self.hysteresis else SPIKE_HOLD
        return Thresholds(
            z_thresh=self.z_thresh * r,
            vol_mult=1 + (self.vol_mult - 1) * r,
            pct_thresh=self.pct_thresh * r,
            score_thresh=0.0,
            resolve_ratio=r,
            novelty=0.0,
            history=self.history,
            return_ratio=self.return_ratio,
            resolve_points=self.resolve_points,
            spike_z=self.spike_z * r,
            holding=True,
        )

    def explainers(self, direction: str) -> list[Explainer]:
        return default_explainers(
            z_thresh=self.z_thresh,
            vol_mult=self.vol_mult,
            pct_thresh=self.pct_thresh,
            direction=direction,
            spike_z=self.spike_z,
            hold=self.holding,
        )


#: A score reaches the threshold to within this: a forest that cannot split its rows (all
#: alike, e.g. a query whose series are all constant) scores every point 0.5, an ordinary
#: point, give or take float rounding (0.4999999999999993 or 0.5000000000000007 by the
#: number of rows), and the rounding must not decide the verdict.
SCORE_TOLERANCE = 1e-9


@dataclass
class Judgement:
    strict: np.ndarray  # bool (n, T): starts or continues an anomaly
    relaxed: np.ndarray  # bool (n, T): may continue one
    strict_evidence: list[Evidence]
    relaxed_evidence: list[Evidence]
    weight: np.ndarray  # strongest novelty among the strict reasons (0 where none)
    #: where the strict verdict holds whatever the forest says (a STRONG or ungated reason)
    ungated: np.ndarray | None = None
    #: the strongest reason's strength over the series' own level for it (0 where none)
    calibrated: np.ndarray | None = None


def forest_gate(scores: np.ndarray, score_thresh: float) -> np.ndarray:
    """Where the forest lets a verdict through: its score reaches ``score_thresh`` (to
    ``SCORE_TOLERANCE``), or there is no score (no forest)."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(scores), scores >= score_thresh - SCORE_TOLERANCE, True)


def judge(
    f: Features,
    thresholds: Thresholds,
    direction: str,
    scores: np.ndarray,
    gap: int,
    *,
    relaxed_columns: int | None = None,
    levels: dict[str, np.ndarray] | None = None,
    floors: dict[str, np.ndarray] | None = None,
) -> Judgement:
    """Strict and relaxed verdicts for every column of ``f`` (scores: NaN = no forest).

    ``relaxed_columns``: the relaxed verdict and evidence only for that many newest
    columns (the live cycle needs one; they look back no further than the shortest
    window, while the strict ones need every column for the novelty).

    ``levels``: reason → each series' own level learned by training (``latest_levels``;
    NaN: none), which replaces the one ``own_levels`` finds in ``f`` (the live lookback is
    short): the spike's in band sds, every other reason's as a multiple of its threshold.

    ``floors``: reason → the floor operators' feedback puts under each series' threshold
    for it, in the reason's statistic units (``detector.feedback.floor_columns``: series
    × columns, or series × 1; 0 = none): a threshold is never below its floor.

    ``Judgement.calibrated`` is the strongest reason's strength over the series' own level
    for it: 1 at the level (see ``calibrated_score``)."""
    strict_ev = evaluate(thresholds.explainers(direction), f)
    own = own_levels(f, strict_ev, thresholds.spike_z)
    for reason, trained in (levels or {}).items():
        if reason in own:
            t = np.asarray(trained, dtype=np.float64).reshape(-1, 1)
            floor = thresholds.spike_z if reason == "spike" else 1.0
            own[reason] = np.where(np.isfinite(t), np.maximum(t, floor), own[reason])
    floors = floors or {}
    calibrated = np.zeros(f.ready.shape)
    for ev in strict_ev:
        # a false alarm's floor (detector.feedback): bounded, decaying, per series
        floor = floors.get(ev.reason)
        if ev.reason == "spike":
            with np.errstate(invalid="ignore"):
                bad = np.nan_to_num(signed(f.band_z, direction), nan=0.0)
            level = own["spike"]
            if floor is not None:
                level = np.maximum(level, floor)
            ev.fired = ev.fired & (bad >= level - 1e-9)
            ev.threshold = level
            calibrated = np.maximum(calibrated, bad / level)
        elif ev.strength is not None and ev.reason in own:
            rel = own[ev.reason]
            if floor is not None:  # the floor in the statistic's units, rel in thresholds
                rel = np.maximum(rel, floor / ev.threshold)
            strength = np.nan_to_num(ev.strength, nan=0.0)
            ev.fired = ev.fired & (strength >= rel - 1e-9)
            ev.threshold = ev.threshold * rel
            calibrated = np.maximum(calibrated, strength / rel)
    fr = f if relaxed_columns is None else f.take(slice(-relaxed_columns, None))
    relaxed_ev = evaluate(thresholds.relaxed().explainers(direction), fr)
    weight = np.zeros(f.ready.shape)
    with np.errstate(invalid="ignore"):
        back = np.abs(f.return_z) < thresholds.z_thresh * thresholds.return_ratio
    # an anomaly starts only outside the expected band: on the bad side for the signed
    # reasons, on either side for a change of dispersion
    outside = outside_band(f, thresholds.z_thresh, direction)
    outside_any = outside if direction == "both" else outside_band(f, thresholds.z_thresh, "both")
    # a change of level may also leave the band as a window: the points of the middle
    # window together (a noisy KPI's drop that no single point makes plain)
    level_outside = outside | window_outside(f, WINDOW_BAND * thresholds.z_thresh, direction)
    for ev in strict_ev:
        if ev.reason in POINT_REASONS:
            ev.fired = ev.fired & outside
        elif ev.reason in LEVEL_REASONS:
            ev.fired = ev.fired & level_outside
        else:
            ev.fired = ev.fired & (outside_any if ev.reason in UNSIGNED_REASONS else outside)
        if ev.reason in LEVEL_REASONS:
            ev.fired = ev.fired & ~back
        if thresholds.novelty > 0 and ev.strength is not None:
            # young baselines give noisy strengths: they do not set the bar
            past = np.where(f.mature, ev.strength, 0.0)
            nov = novelty(ev.strength, thresholds.history, gap, past=past)
            if ev.reason not in UNGATED_REASONS:
                ev.fired = ev.fired & (nov >= thresholds.novelty)
            weight = np.maximum(weight, np.where(ev.fired, np.minimum(nov, 50.0), 0.0))
        elif ev.strength is not None:
            weight = np.maximum(weight, np.where(ev.fired, ev.strength, 0.0))
    # the forest must agree, unless a reason is at least STRONG times its threshold: a
    # twelve-sd spike the forest's window features barely see is not silenced by it
    strong = np.zeros_like(f.ready)
    for ev in strict_ev:
        if ev.strength is not None:
            strong |= ev.fired & (
                (np.nan_to_num(ev.strength) >= STRONG) | (ev.reason in UNGATED_REASONS)
            )
    gate = forest_gate(scores, thresholds.score_thresh) | strong
    strict = f.mature & any_fired(strict_ev) & gate
    ungated = f.mature & strong
    # a point still outside the band holds an anomaly as `spike` only until another
    # reason explains it (a shift whose windows have filled reads level_shift)
    others = any_fired([ev for ev in relaxed_ev if ev.reason != "spike"])
    for ev in relaxed_ev:
        if ev.reason == "spike":
            ev.fired = ev.fired & ~others
    if not thresholds.hysteresis:
        # without hysteresis (AIOPS_RESOLVE_RATIO 1) only a point nearly as far outside the
        # band as a spike holds an anomaly: a shift whose windows are still filling stays
        # one anomaly, the point after a spike does not
        far = np.nan_to_num(signed(fr.band_z, direction), nan=0.0) >= (
            SPIKE_HOLD * thresholds.spike_z - 1e-9
        )
        for ev in relaxed_ev:
            ev.fired = ev.fired & far
    relaxed = fr.ready & any_fired(relaxed_ev)
    if thresholds.resolve_points > 0:
        back = back_in_band(f, thresholds.z_thresh, thresholds.resolve_points)
        strict &= ~back
        ungated &= ~back
        relaxed &= ~back_in_band(fr, thresholds.z_thresh, thresholds.resolve_points, held=False)
    return Judgement(strict, relaxed, strict_ev, relaxed_ev, weight, ungated, calibrated)


def outside_band(f: Features, z_thresh: float, direction: str) -> np.ndarray:
    """Where the point lies outside the expected band on the bad side (``direction``),
    by ``z_thresh`` band sds or more; also where the band is not known yet (too few
    points behind it: no veto). A missing point is not outside."""
    bad = signed(f.band_z, direction)
    with np.errstate(invalid="ignore"):
        out = np.nan_to_num(bad, nan=-np.inf) >= z_thresh
    return out | (np.isfinite(f.value) & ~np.isfinite(f.band_center))


def window_outside(f: Features, z_thresh: float, direction: str) -> np.ndarray:
    """Where the points of the middle recent window (three shortest windows: 15 points at
    1 minute) lie outside the expected band together: their mean band z times the square
    root of their count reaches ``z_thresh`` on the bad side, with at least half of them
    known."""
    w = 3 * f.short_points
    ok = np.isfinite(f.band_z)
    width = np.minimum(np.arange(1, ok.shape[1] + 1), w)[None, :]
    total = trailing_mean(np.where(ok, f.band_z, 0.0), w) * width
    count = trailing_mean(ok.astype(np.float64), w) * width
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = total / np.sqrt(count)
    bad = np.nan_to_num(signed(stat, direction), nan=-np.inf)
    return (bad >= z_thresh) & (count >= w / 2)


def back_in_band(f: Features, z_thresh: float, points: int, *, held: bool = True) -> np.ndarray:
    """Where the last ``points`` points (this one included) all lie inside the expected
    band, its middle ± ``z_thresh`` band sds. A missing point is not inside.

    With ``held``, they must also lie inside the band as it was one longest window
    earlier: what vetoes the *start* of an anomaly (a drop the band has half followed
    after half its points is still news). An ongoing anomaly ends on the current band
    alone (``held=False``): once the data is back, the alarm is over."""
    with np.errstate(invalid="ignore"):
        inside_now = np.abs(f.band_z) < z_thresh
        if held:
            inside_now &= np.nan_to_num(np.abs(f.held_z), nan=0.0) < z_thresh
        inside = inside_now.astype(np.float64)
    return trailing_mean(inside, points) >= 1.0 - 1e-9


def hysteresis(
    strict: np.ndarray, relaxed: np.ndarray, active: np.ndarray | None = None
) -> np.ndarray:
    """anomalous[t] = strict[t] or (anomalous[t-1] and relaxed[t]); ``active`` is t = -1."""
    out = np.zeros_like(strict)
    prev = np.zeros(strict.shape[0], dtype=bool) if active is None else active.copy()
    for t in range(strict.shape[1]):
        prev = strict[:, t] | (prev & relaxed[:, t])
        out[:, t] = prev
    return out


def reasons_behind(j: Judgement, anomalous: np.ndarray) -> list[Evidence]:
    """The evidence behind each verdict: strict reasons, or the relaxed ones while held."""
    held = anomalous & ~j.strict
    out = []
    for s_ev, r_ev in zip(j.strict_evidence, j.relaxed_evidence, strict=True):
        out.append(
            Evidence(
                reason=s_ev.reason,
                fired=np.where(held, r_ev.fired, s_ev.fired & j.strict),
                window=np.where(held, r_ev.window, s_ev.window),
                zscore=np.where(held, r_ev.zscore, s_ev.zscore),
                delta=np.where(held, r_ev.delta, s_ev.delta),
                threshold=np.where(held, r_ev.threshold, s_ev.threshold),
                strength=s_ev.strength,
            )
        )
    return out


def crossing_levels(
    stat: np.ndarray,
    known: np.ndarray,
    base: float,
    *,
    memory: int,
    allowed: int,
    min_known: int,
    crossings: bool,
) -> np.ndarray:
    """A series' own level for a statistic, at every (series, time): the lowest of
    ``base`` × SPIKE_RUNG**k (k = 0 … SPIKE_RUNGS - 1; beyond them the next rung) that the
    ``memory`` points before it reached at most ``allowed`` times (each point at or above
    the rung, or with ``crossings`` each rise to it), or ``base`` while fewer than
    ``min_known`` of them are ``known``.

    Counts per rung over a trailing window (prefix sums): a discrete upper quantile of
    the series' own statistic, causal, the same in backtests and wherever the history is
    long enough."""
    if np.shape(stat)[-1] <= min_known:  # no point has min_known before it (the live lookback)
        return np.full(np.shape(stat), base)
    s = np.where(known, np.nan_to_num(np.asarray(stat, dtype=np.float64), nan=0.0), 0.0)
    n_known = _window(_prefix(known.astype(np.float64)), 1, memory)
    level = np.full(s.shape, base * SPIKE_RUNG**SPIKE_RUNGS)
    for k in range(SPIKE_RUNGS - 1, -1, -1):  # the lowest rung that qualifies wins
        rung = base * SPIKE_RUNG**k
        hit = s >= rung
        if crossings:
            hit[:, 1:] &= ~hit[:, :-1]
        reached = _window(_prefix(hit.astype(np.float64)), 1, memory)
        level = np.where(reached <= allowed, rung, level)
    return np.where(n_known >= min_known, level, base)


def spike_levels(band_z: np.ndarray, base: float) -> np.ndarray:
    """The spike level of every (series, time), in band sds: the lowest of ``base`` ×
    SPIKE_RUNG**k that at most SPIKE_ALLOWED of the SPIKE_MEMORY points before it reached
    (either side), or ``base`` while fewer than SPIKE_MIN_KNOWN of them are known."""
    z = np.abs(np.asarray(band_z, dtype=np.float64))
    return crossing_levels(
        z,
        np.isfinite(z),
        base,
        memory=SPIKE_MEMORY,
        allowed=SPIKE_ALLOWED,
        min_known=SPIKE_MIN_KNOWN,
        crossings=False,
    )


def reason_levels(strength: np.ndarray, ready: np.ndarray) -> np.ndarray:
    """A reason's own level at every (series, time), as a multiple of its threshold: the
    lowest of SPIKE_RUNG**k that the series' strength rose to at most LEVEL_ALLOWED times
    in its last LEVEL_MEMORY points, or 1 while fewer than LEVEL_MIN_KNOWN are ready."""
    return crossing_levels(
        strength,
        np.asarray(ready, dtype=bool),
        1.0,
        memory=LEVEL_MEMORY,
        allowed=LEVEL_ALLOWED,
        min_known=LEVEL_MIN_KNOWN,
        crossings=True,
    )


def own_levels(f: Features, strict_ev: list[Evidence], spike_z: float) -> dict[str, np.ndarray]:
    """Reason → the series' own level at every (series, time), from the history in
    ``f``: the spike's in band sds (``spike_levels``), the others' as a multiple of their
    threshold (``reason_levels``, from the strength before any gate)."""
    out = {"spike": spike_levels(f.band_z, spike_z)}
    for ev in strict_ev:
        if ev.reason != "spike" and ev.strength is not None:
            out[ev.reason] = reason_levels(ev.strength, f.ready)
    return out


def latest_levels(f: Features, thresholds: Thresholds, direction: str) -> dict[str, np.ndarray]:
    """Reason → each series' own level for the point after its history ``f`` (training
    stores them with the model); NaN where the history is too short to say."""
    n = f.ready.shape[0]
    nan = np.full((n, 1), np.nan)
    z = np.concatenate([f.band_z, nan], axis=1)
    z_known = _window(_prefix(np.isfinite(z).astype(np.float64)), 1, SPIKE_MEMORY)[:, -1]
    out = {
        "spike": np.where(
            z_known >= SPIKE_MIN_KNOWN, spike_levels(z, thresholds.spike_z)[:, -1], np.nan
        )
    }
    ready = np.concatenate([f.ready, np.zeros((n, 1), dtype=bool)], axis=1)
    r_known = _window(_prefix(ready.astype(np.float64)), 1, LEVEL_MEMORY)[:, -1]
    for ev in evaluate(thresholds.explainers(direction), f):
        if ev.reason != "spike" and ev.strength is not None:
            s = np.concatenate([ev.strength, nan], axis=1)
            level = reason_levels(s, ready)[:, -1]
            out[ev.reason] = np.where(r_known >= LEVEL_MIN_KNOWN, level, np.nan)
    return out


def calibrated_score(calibrated: np.ndarray, anomalous: np.ndarray) -> np.ndarray:
    """``aiops_anomaly_score``: the strongest reason's strength over the series' own level
    for it, so that 1 means the same on every series, and at least 1 exactly where the
    series is anomalous: an anomaly held on (its reasons at the relaxed thresholds) reads
    1, a point that reaches its level but that a gate holds back (inside the expected
    band, not novel, the forest disagrees) just below 1 (``BELOW_ONE``); never above
    ``SCORE_CAP``."""
    c = np.nan_to_num(np.asarray(calibrated, dtype=np.float64), nan=0.0, posinf=SCORE_CAP)
    c = np.minimum(c, SCORE_CAP)
    return np.where(anomalous, np.maximum(c, 1.0), np.minimum(c, BELOW_ONE))


#: The highest score of a point that is not anomalous.
BELOW_ONE = 0.99
#: The highest score: a change on a series that never moved before (a flat line, whose
#: standard errors are all but 0) would otherwise read 10^12 and flatten every panel.
SCORE_CAP = 100.0
