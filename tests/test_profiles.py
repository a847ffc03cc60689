"""Profiles compose: each shipped profile applies cleanly, application is idempotent and order-independent, `default` undoes it."""

from pathlib import Path
import pytest, yaml
from causalneg.pipeline import use_profile

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"
NAMES = sorted(p.stem for p in PROFILES.glob("*.yaml"))


def test_params_yaml_is_the_default_profile():
    "The repo's params.yaml is exactly what `use-profile default` writes (edit profiles/default.yaml, then apply it)."
    assert (ROOT / "params.yaml").read_text() == (PROFILES / "default.yaml").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_every_profile_applies_and_is_idempotent(tmp_path, name):
    out = tmp_path / "params.yaml"
    first = use_profile(name, out, PROFILES)
    text = out.read_text()
    assert first["profile"] == name and use_profile(name, out, PROFILES) == first and out.read_text() == text
    comments = [l for l in (PROFILES / "default.yaml").read_text().splitlines() if l.lstrip().startswith("#")]
    assert all(c in text for c in comments), "every comment of the default survives a profile"


def test_order_does_not_matter_and_default_undoes(tmp_path):
    out = tmp_path / "params.yaml"
    use_profile("paper", out, PROFILES)
    paper = out.read_text()
    use_profile("smoke", out, PROFILES)
    use_profile("paper", out, PROFILES)
    assert out.read_text() == paper
    assert yaml.safe_load(paper)["experiments"]["settings"].get("max_queries") is None  # smoke's value did not leak
    use_profile("default", out, PROFILES)
    assert out.read_text() == (PROFILES / "default.yaml").read_text()


def test_broken_profiles_name_themselves(tmp_path):
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "default.yaml").write_text((PROFILES / "default.yaml").read_text())
    (d / "typo.yaml").write_text("experiment:\n  seeds: [0]\n")
    with pytest.raises(KeyError, match=r"typo.yaml sets `experiment`"):
        use_profile("typo", tmp_path / "p.yaml", d)
    (d / "deep.yaml").write_text("experiments:\n  settings:\n    lamda: 1\n")
    with pytest.raises(KeyError, match=r"deep.yaml sets `experiments.settings.lamda`"):
        use_profile("deep", tmp_path / "p.yaml", d)
    (d / "bad.yaml").write_text("experiments: [\n")
    with pytest.raises(ValueError, match="bad.yaml is not valid YAML"):
        use_profile("bad", tmp_path / "p.yaml", d)
    with pytest.raises(ValueError, match="not a plain name"):
        use_profile("../default", tmp_path / "p.yaml", d)
