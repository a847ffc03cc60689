"""README's results block is the run's `reports/summary.md`, word for word: the front page quotes no number a run did not write."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_block_is_the_runs_summary():
    r = subprocess.run(
        [sys.executable, "-m", "causalneg.pipeline", "readme", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr + r.stdout


def test_the_check_fails_when_they_differ(tmp_path, monkeypatch):
    import causalneg.pipeline as pl

    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "summary.md").write_text("new\n")
    (tmp_path / "README.md").write_text("a\n<!-- results:start -->\nold\n<!-- results:end -->\nb\n")
    monkeypatch.setattr(pl, "project_root", lambda *a, **k: tmp_path)
    assert pl._readme_main(["readme", "--check"]) == 1
    assert pl._readme_main(["readme"]) == 0 and pl._readme_main(["readme", "--check"]) == 0
    assert (tmp_path / "README.md").read_text() == "a\n<!-- results:start -->\nnew\n<!-- results:end -->\nb\n"
