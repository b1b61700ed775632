"""bench/feedback.py on a slice of ../shared/cloudmon: the operator's verdicts come from the
labels of the first halves, are applied from when they were given, and both replays are
scored on the second halves by the data set's own scorer."""

from __future__ import annotations

import json

from bench import feedback
from bench.cloudmon import load_scorer
from tests.training.test_cloudmon_bench import dataset  # noqa: F401  (the fixture)


def test_the_bench_gives_verdicts_on_the_first_half_and_scores_the_second(dataset, tmp_path):  # noqa: F811
    scorer = load_scorer(dataset)
    got = feedback.run(dataset, tmp_path / "before", tmp_path / "after", scorer)
    halves = {s.name: s for s in got["series"]}
    full = {s.name: s for s in scorer.load_dataset(dataset)}
    for name, half in halves.items():
        assert len(half.ts) == len(full[name].ts) - len(full[name].ts) // 2
        out = (tmp_path / "after" / name).read_text().splitlines()
        assert len(out) == len(half.ts) + 1  # the second half only, with its header
    before = feedback.score(scorer, got["series"], tmp_path / "before")
    after = feedback.score(scorer, got["series"], tmp_path / "after")
    for figures in (before, after):
        assert set(figures) >= {"pa_f1", "fa_pts_per_1k", "episodes_outside_labels"}
    # verdicts only ever raise thresholds: never more alarm episodes outside the labels
    assert after["episodes_outside_labels"] <= before["episodes_outside_labels"]
    out = tmp_path / "figures.json"
    assert feedback.main(["--dataset", str(dataset), "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())["rows"]) == {"without feedback", "with feedback"}
