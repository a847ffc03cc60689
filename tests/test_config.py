"Params are validated once, before a stage does any work, and a bad profile never reaches params.yaml."

import shutil
from pathlib import Path
import pytest, yaml
from causalneg.config import ParamsError, load_params, validate_params
from causalneg.pipeline import main, use_profile

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_block(block, **values):
    return {**PARAMS, block: {**PARAMS[block], **values}}


@pytest.mark.parametrize(
    "params, says",
    [
        ({**PARAMS, "experiment": {"seeds": [0]}}, "`experiment` is not a known key; did you mean `experiments`?"),
        (with_block("mining", n_mined=-2), "`mining.n_mined` = -2: expected an integer in [0, inf)"),
        (with_block("queries", heldout=-1), "`queries.heldout` = -1"),
        (with_block("benchmark", dev_fraction=1.5), "`benchmark.dev_fraction` = 1.5"),
        (with_block("zeroshot", splits=["../../x"]), "item 0 ('../../x') should be a plain name"),
        (with_block("queries", heldout_split="/etc"), "`queries.heldout_split`"),
        (with_block("runtime", device="gpu"), "`runtime.device`"),
        (with_block("llm", temperature="hot"), "`llm.temperature`"),
        (with_block("experiments", settings={**PARAMS["experiments"]["settings"], "lr": 0}), "`experiments.settings.lr` = 0"),
        (
            with_block("experiments", settings={**PARAMS["experiments"]["settings"], "lamda": 1}),
            "`experiments.settings.lamda` is not a known key",
        ),
        ({**PARAMS, "mining": 3}, "`mining` must be a block of keys"),
    ],
)
def test_each_bad_value_is_named_with_its_key(params, says):
    with pytest.raises(ParamsError) as e:
        validate_params(params)
    assert says in str(e.value) and "params.yaml has 1 problem" in str(e.value)


def test_numbers_written_as_strings_are_numbers():
    out = validate_params(with_block("experiments", lambda_ent="5e-2", n_mined="3"))
    assert out["experiments"]["lambda_ent"] == 0.05 and out["experiments"]["n_mined"] == 3


def test_every_problem_is_reported_at_once():
    bad = {**with_block("mining", n_mined=-2, n_random="x"), "tabels": {}}
    with pytest.raises(ParamsError, match="3 problems"):
        validate_params(bad)


def test_a_stage_refuses_bad_params_before_running(tmp_path, monkeypatch):
    for f in ("dvc.yaml", "settings.ini"):
        shutil.copy(ROOT / f, tmp_path / f)
    (tmp_path / "nbs" / "pipeline").mkdir(parents=True)
    shutil.copy(ROOT / "nbs" / "pipeline" / "benchmark.ipynb", tmp_path / "nbs" / "pipeline" / "benchmark.ipynb")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_block("benchmark", test_fraction=-0.1)))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match=r"`benchmark.test_fraction` = -0.1"):
        main(["benchmark", "-P", "out_dir", "benchmark.folder"])
    assert not (tmp_path / "reports").exists()  # nothing ran


def test_a_bad_profile_never_reaches_params_yaml(tmp_path):
    profiles = tmp_path / "profiles"
    shutil.copytree(ROOT / "profiles", profiles)
    (profiles / "neg.yaml").write_text("mining: {n_mined: -2}\n")
    out = tmp_path / "params.yaml"
    out.write_text("untouched\n")
    with pytest.raises(ParamsError, match="mining.n_mined"):
        use_profile("neg", out, profiles)
    assert out.read_text() == "untouched\n"


@pytest.mark.parametrize("name", ["default", "smoke", "full", "paper"])
def test_every_shipped_profile_validates(tmp_path, name):
    use_profile(name, tmp_path / "params.yaml", ROOT / "profiles")
    assert load_params(tmp_path / "params.yaml")["profile"] == name


# params block -> the dataclass its keys fill (the code default of a key is what a run gets when the key is left out)
def bindings():
    from causalneg.experiments import RunSettings
    from causalneg.llm_config import LLMConfig

    profile = yaml.safe_load((ROOT / "profiles" / "default.yaml").read_text())
    return [("experiments.settings", profile["experiments"]["settings"], RunSettings), ("llm", profile["llm"], LLMConfig)]


# profile values the code deliberately leaves to params: a price table is an accounting choice, None = not priced
NOT_A_CODE_DEFAULT = {"llm.prices"}


def disagreements(block: str, values: dict, cls) -> list:
    import dataclasses

    out = []
    for f in dataclasses.fields(cls):
        key = f"{block}.{f.name}"
        if f.name not in values or key in NOT_A_CODE_DEFAULT:
            continue
        code = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if values[f.name] != code:
            out.append(f"{key}: profiles/default.yaml says {values[f.name]!r}, {cls.__name__}.{f.name} defaults to {code!r}")
    return out


def test_code_defaults_equal_the_default_profile():
    "Every default exists once: a key the default profile sets has the same value as its dataclass default."
    bad = [d for block, values, cls in bindings() for d in disagreements(block, values, cls)]
    assert not bad, "code defaults disagree with the default profile:\n" + "\n".join(bad)


def test_the_defaults_check_catches_a_disagreement():
    from causalneg.experiments import RunSettings

    values = {**bindings()[0][1], "batch_size": 999}
    assert disagreements("experiments.settings", values, RunSettings) == [
        "experiments.settings.batch_size: profiles/default.yaml says 999, RunSettings.batch_size defaults to 8"
    ]


def test_every_dataclass_key_is_in_the_schema():
    from causalneg.config import LLM, RUN_SETTINGS

    for (_, _, cls), schema in zip(bindings(), (RUN_SETTINGS, LLM)):
        import dataclasses

        names = {f.name for f in dataclasses.fields(cls)}
        assert set(schema) <= names, f"schema keys {set(schema) - names} are not {cls.__name__} fields"


def test_generate_stage_mapping_is_dvc_yamls():
    "causalneg.config.GENERATE_STAGE lists exactly the `-P KEY PATH` pairs of dvc.yaml's generate stage."
    import shlex

    from causalneg.config import GENERATE_STAGE

    words = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["generate"]["cmd"])
    pairs = {words[i + 1]: words[i + 2] for i, w in enumerate(words) if w == "-P"}
    assert pairs == GENERATE_STAGE
