"""scripts/run_times.py: per-row times from run records, totals, and refusals of what is not a runs folder."""

import importlib.util
import json
import os
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("run_times", ROOT / "scripts" / "run_times.py")
rt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rt)


def _run(folder: Path, name, label, seed, train, evaluate, finished):
    (folder / name).mkdir(parents=True)
    record = folder / name / "run.json"
    record.write_text(json.dumps({"label": label, "seed": seed, "train_seconds": train, "eval_seconds": evaluate}))
    os.utime(record, (finished, finished))


def test_rows_keep_finishing_order_and_sum(tmp_path):
    _run(tmp_path, "b-s0", "mined", 0, 80.0, 100.0, 1000)
    _run(tmp_path, "a-s0", "zero-shot", 0, 0.0, 6.0, 900)
    _run(tmp_path, "b-s1", "mined", 1, 70.0, 110.0, 1100)
    (tmp_path / "unfinished").mkdir()  # a run still training has no run.json yet
    rows = rt.row_times(rt.read_times(tmp_path))
    assert [r["row"] for r in rows] == ["zero-shot", "mined"]
    assert rows[1] == {"row": "mined", "runs": 2, "train_s": 75.0, "eval_s": 105.0, "total_s": 360.0}
    table = rt.render(rows, markdown=True).splitlines()
    assert table[-1] == "| all | 3 |  |  | 366 (6.1 min) |"


def test_refuses_missing_folder_and_broken_record(tmp_path):
    with pytest.raises(SystemExit, match="not a folder"):
        rt.read_times(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "run.json").write_text(json.dumps({"label": "mined"}))
    with pytest.raises(SystemExit, match="remove its folder"):
        rt.read_times(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no finished runs"):
        rt.main([str(tmp_path / "empty")])
