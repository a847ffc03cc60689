"""A pipeline notebook runs from its own folder as well as from the root: its paths resolve against the repo root."""

import json, os, subprocess, sys
from pathlib import Path
import nbformat
import pytest
from causalneg.pipeline import project_root

ROOT = Path(__file__).resolve().parents[1]


def test_every_pipeline_notebook_moves_to_the_root_right_after_its_parameters():
    for nb_path in sorted((ROOT / "nbs" / "pipeline").glob("*.ipynb")):
        cells = [c for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "code"]
        assert "parameters" in cells[0]["metadata"].get("tags", []), nb_path.name
        assert "os.chdir(project_root())" in "".join(cells[1]["source"]), nb_path.name


def test_project_root_from_a_subfolder_and_outside(tmp_path):
    assert project_root(ROOT / "nbs" / "pipeline") == ROOT
    with pytest.raises(FileNotFoundError, match="is not inside the causalneg project"):
        project_root(tmp_path)


def _project(tmp_path):
    "A minimal project: dvc.yaml, settings.ini, params.yaml and one pipeline notebook that writes a relative path."
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "settings.ini").write_text("[DEFAULT]\n")
    (tmp_path / "params.yaml").write_text("hello: {word: from-params}\n")
    src = ROOT / "nbs" / "pipeline" / "benchmark.ipynb"
    chdir = [c for c in nbformat.read(str(src), as_version=4).cells if "project_root" in c.source][0]
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("out = 'out/hello.txt'\nword = 'default'", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell(chdir.source),
            nbformat.v4.new_code_cell(
                "from pathlib import Path\nPath(out).parent.mkdir(parents=True, exist_ok=True)\nPath(out).write_text(word)"
            ),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "nbs" / "pipeline").mkdir(parents=True)
    nbformat.write(nb, str(tmp_path / "nbs" / "pipeline" / "hello.ipynb"))
    return tmp_path


def test_stage_run_from_the_notebook_folder_writes_under_the_root(tmp_path):
    root = _project(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("IN_TEST", None)
    r = subprocess.run(
        [sys.executable, "-m", "causalneg.pipeline", "hello", "-P", "word", "hello.word"],
        cwd=root / "nbs" / "pipeline",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (root / "out" / "hello.txt").read_text() == "from-params"
    assert (root / "reports" / "hello.html").is_file() and (root / "reports" / "notebooks" / "hello.ipynb").is_file()
    assert not (root / "nbs" / "pipeline" / "out").exists() and not (root / "nbs" / "pipeline" / "reports").exists()
