"""bench/cloudmon.py on a slice of ../shared/cloudmon: its scoring (through the data set's
own score.py), issue 18's targets and the alarm episodes on series without labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import cloudmon
from tests.conftest import IN_CI

#: the shared cloudmon folder beside the checkout (../shared/cloudmon), else the workplace's
SHARED = next(
    (
        p
        for p in (
            Path(__file__).resolve().parents[3] / "shared" / "cloudmon",
            Path("/work/shared/cloudmon"),
        )
        if (p / "score.py").exists()
    ),
    Path(__file__).resolve().parents[3] / "shared" / "cloudmon",
)
LABELLED, QUIET = "app1-09.csv", "outbound-16.csv"  # 168 hourly rows, one window; 720, none
METHODS = ["aiops", "aiops:score", "robust_z", "gauss", "random"]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Two short hourly files, their labels and the scorer, as a data set folder."""
    if not (SHARED / "labels.json").exists():
        message = f"{SHARED} is missing (the shared cloud monitoring set)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path / "cloudmon"
    (root / "data").mkdir(parents=True)
    labels = json.loads((SHARED / "labels.json").read_text())
    for name in (LABELLED, QUIET):
        shutil.copy(SHARED / "data" / name, root / "data" / name)
    (root / "labels.json").write_text(json.dumps({n: labels[n] for n in (LABELLED, QUIET)}))
    shutil.copy(SHARED / "score.py", root / "score.py")
    return root


def write_output(out: Path, name: str, data: pd.DataFrame, alarm: np.ndarray) -> None:
    """A backtest output: the alarmed rows, a weight on each episode's onset."""
    onset = alarm & ~np.concatenate([[False], alarm[:-1]])
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "timestamp": data["timestamp"],
            "value": data["value"],
            "score": np.where(alarm, 0.8, 0.4),
            "anomalous": alarm.astype(int),
            "anomaly_score": np.where(onset, 1.0, 0.0),
        }
    ).to_csv(out / name, index=False)


def table_methods(table: str) -> list[str]:
    return [line.split("|")[1].strip() for line in table.splitlines()[2:]]


def test_scoring_hand_made_outputs(dataset: Path, tmp_path: Path):
    labels = json.loads((dataset / "labels.json").read_text())
    out = tmp_path / "out"
    labelled = pd.read_csv(dataset / "data" / LABELLED)
    # the detector alarms on exactly the labelled rows of the labelled file
    write_output(out, LABELLED, labelled, labelled["timestamp"].isin(labels[LABELLED]["points"]))
    quiet = pd.read_csv(dataset / "data" / QUIET)
    alarm = np.zeros(len(quiet), dtype=bool)
    alarm[10] = True  # inside the probationary rows (15 %: 108): not scored
    alarm[200:203] = True  # two false alarm episodes, 4 alarmed normal rows
    alarm[400] = True
    write_output(out, QUIET, quiet, alarm)

    scored = cloudmon.score(dataset, out)

    assert table_methods(scored["table"]) == METHODS
    assert scored["files"] == 2 and scored["rows"] == 168 + 720
    assert scored["labelled_windows"] == 1
    overall = scored["result"]["overall"]["aiops"]
    # PA: the 7 labelled points found, 4 false alarm points
    assert (overall["pa"]["tp"], overall["pa"]["fn"], overall["pa"]["fp"]) == (7, 0, 4)
    assert overall["pa"]["f1"] == pytest.approx(2 * (7 / 11) / (7 / 11 + 1))
    normal = (168 - 25 - 7) + (720 - 108)
    assert overall["events"]["fa_pts_per_1k"] == pytest.approx(1000 * 4 / normal)
    assert overall["events"]["recall_any"] == 1.0
    assert scored["quiet"] == {
        QUIET: {"episodes": 2, "episodes_all_rows": 3, "alarmed_rows": 4},
    }
    targets = {t["target"].split(" (")[0]: t for t in scored["targets"]}
    assert [t["met"] for t in scored["targets"]] == [True, True, True, False]
    assert targets["PA-F1"]["value"] == pytest.approx(0.778, abs=1e-3)
    assert targets["incidents found"]["text"] == "100%"
    assert targets["alarmed normal points per 1,000"]["value"] == pytest.approx(5.3, abs=0.05)
    quiet_target = scored["targets"][3]
    assert quiet_target["value"] == 2 and "1 series" in quiet_target["target"]

    # a silent detector: nothing found, nothing false
    write_output(out, LABELLED, labelled, np.zeros(len(labelled), dtype=bool))
    write_output(out, QUIET, quiet, np.zeros(len(quiet), dtype=bool))
    silent = cloudmon.score(dataset, out)
    assert silent["result"]["overall"]["aiops"]["pa"]["f1"] == 0.0
    assert [t["met"] for t in silent["targets"]] == [False, False, True, True]
    assert silent["quiet"][QUIET]["episodes"] == 0


def test_replay_and_score_agree_with_score_py(dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    speed = cloudmon.replay(dataset, out)
    assert speed["files"] == 2 and speed["rows"] == 168 + 720
    assert set(speed["by_step"]) == {"3600"} and speed["rows_per_s"] > 0
    assert sorted(p.name for p in out.glob("*.csv")) == [LABELLED, QUIET]

    scored = cloudmon.score(dataset, out)
    assert table_methods(scored["table"]) == METHODS
    assert len(scored["targets"]) == 4 and all(
        isinstance(t["met"], bool) for t in scored["targets"]
    )
    assert set(scored["quiet"]) == {QUIET}
    alarmed = pd.read_csv(out / QUIET)["anomalous"].to_numpy().astype(bool)
    assert scored["quiet"][QUIET]["episodes_all_rows"] == int(
        (alarmed & ~np.concatenate([[False], alarmed[:-1]])).sum()
    )

    # the same table as score.py's own command line on the same outputs
    capsys.readouterr()
    scorer = cloudmon.load_scorer(dataset)
    assert scorer.main([str(dataset), "--detector", f"aiops={out}"]) == 0
    # (score.py names the output's ``score`` column ":forest"; it is the calibrated score)
    table = capsys.readouterr().out.strip().replace("| aiops:forest |", "| aiops:score |")
    assert table == scored["table"]

    env = {"cpu": "cpu", "cores": 2, "python": "3", "commit": "abc", "date": "2026-01-02 03:04 UTC"}
    text = cloudmon.report(scored, speed, env, "python bench/cloudmon.py")
    assert "rows/s" in text and "command: python bench/cloudmon.py" in text
    block = cloudmon.markdown_block(scored, speed, env, "python bench/cloudmon.py --markdown")
    assert "2026-01-02" in block and "| FluxEV | 0.79 |" in block
