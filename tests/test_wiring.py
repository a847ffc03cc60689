"""Wiring: every DVC stage depends on the package modules its notebook runs, and a run's key follows its code."""

from __future__ import annotations
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest, yaml
from causalneg.provenance import module_closure, notebook_imports

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_every_module_it_runs(stage):
    "The import closure of a stage's notebook (plus the runner) must be among its deps: computed, not typed."
    deps = {d if isinstance(d, str) else next(iter(d)) for d in STAGES[stage].get("deps", [])}
    mods = module_closure(notebook_imports(ROOT / "nbs" / "pipeline" / f"{stage}.ipynb") | {"causalneg.pipeline"})
    missing = [f"causalneg/{m.split('.', 1)[1]}.py" for m in mods if f"causalneg/{m.split('.', 1)[1]}.py" not in deps]
    assert not missing, (
        f"dvc.yaml stage {stage!r} misses deps {missing}: its notebook imports them (directly or through other modules)."
    )
    assert f"nbs/pipeline/{stage}.ipynb" in deps


def test_stage_params_cover_every_params_flag():
    "Every `-P key params.path` a stage passes is declared under its `params:` (or a parent block is)."
    for name, st in STAGES.items():
        words = st["cmd"].split()
        paths = [words[i + 2] for i, w in enumerate(words) if w == "-P"]
        declared = st.get("params", [])
        for p in paths:
            assert any(p == d or p.startswith(d + ".") for d in declared), (
                f"stage {name!r} reads {p} but does not list it under params:"
            )


def test_missing_dependency_is_caught(tmp_path):
    "The check above is not vacuous: dropping a module from a stage's deps makes it fail."
    st = STAGES["experiments"]
    deps = [d for d in st["deps"] if d != "causalneg/losses.py"]
    mods = module_closure(notebook_imports(ROOT / "nbs" / "pipeline" / "experiments.ipynb"))
    assert "causalneg.losses" in mods and "causalneg/losses.py" not in deps


KEY = """
import json, sys
from causalneg.experiments import RunSettings, run_key, run_code
from causalneg.variants import main_variants
v = {x.name: x for x in main_variants(3, 3)}['causalneg']
print(json.dumps({'key': run_key(v, 0, RunSettings(), []), 'code': run_code()}))
"""


def _key(pkg_parent: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pkg_parent), "IN_TEST": "1"}
    out = subprocess.run([sys.executable, "-c", KEY], capture_output=True, text=True, env=env, cwd=pkg_parent, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_changed_method_changes_the_run_key(tmp_path):
    "Editing a loss line gives the runs a new key (they retrain); a comment or docstring edit does not."
    pkg = tmp_path / "causalneg"
    shutil.copytree(ROOT / "causalneg", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    base = _key(tmp_path)
    losses = pkg / "losses.py"
    src = losses.read_text()
    losses.write_text(src.replace('"""', '"""Edited docstring. ', 1) + "\n# a comment changes no result\n")
    same = _key(tmp_path)
    assert same["key"] == base["key"] and same["code"] == base["code"]
    line = next(l for l in src.splitlines() if "lambda_ent *" in l or "self.lambda_ent *" in l)
    losses.write_text(src.replace(line, line.replace("lambda_ent *", "lambda_ent * 100 *"), 1))
    changed = _key(tmp_path)
    assert changed["key"] != base["key"]
    assert changed["code"]["causalneg.losses"] != base["code"]["causalneg.losses"]
    assert {m for m in base["code"] if base["code"][m] != changed["code"][m]} == {"causalneg.losses", "_all"}
