"""The shipped detection thresholds, in one place.

``aiops.core.settings`` (the ``AIOPS_*`` variables), ``detector.verdict.Thresholds``
and the explainers of ``detector.explain`` all default to these, so a library
user, a test and the service start from the same numbers. Changing one is a
change of detection: measure it on the real labelled sets first (README,
"Detection quality").
"""

from __future__ import annotations

#: level_shift and trend_break: sds of the baseline; also the expected band's width
Z_THRESH = 3.0
#: volatility_spike: recent over baseline dispersion of the first differences
VOL_MULT = 2.0
#: percent_change: share of the baseline level
PCT_THRESH = 0.3
#: spike: expected-band sds outside the band
SPIKE_Z = 7.0
#: the IsolationForest's calibrated score an anomaly needs besides its reasons
SCORE_THRESH = 0.5
#: a reason counts only this many times stronger than its recent maximum
NOVELTY = 1.0
#: below 1: hysteresis (an ongoing anomaly holds until its reasons fall below this share)
RESOLVE_RATIO = 1.0
#: an anomaly ends once this many points in a row are back inside the expected band
RESOLVE_POINTS = 2
