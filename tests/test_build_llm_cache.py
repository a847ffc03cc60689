"""scripts/build_llm_cache.py: blocks, slices of the mined files, the stage's parameters, the worker pool."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml


ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_llm_cache", ROOT / "scripts" / "build_llm_cache.py")
blc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(blc)


def test_plan_blocks_cover_the_range_once():
    assert blc.plan_blocks(70, 82, 5) == [(70, 75), (75, 80), (80, 82)]
    assert blc.plan_blocks(5, 5, 5) == []
    with pytest.raises(ValueError, match="--step"):
        blc.plan_blocks(0, 10, 0)
    with pytest.raises(ValueError, match="--from"):
        blc.plan_blocks(10, 5, 5)


def _mined(folder: Path, n_train=12, n_heldout=3):
    folder.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", n_train), ("heldout", n_heldout)):
        (folder / f"{part}_mined.jsonl").write_text("".join(json.dumps({"qid": f"{part}{i}"}) + "\n" for i in range(n)))
    return folder


def test_write_block_slices_each_part(tmp_path):
    src = blc.read_mined(_mined(tmp_path / "negatives"))
    qids = lambda p: [json.loads(l)["qid"] for l in p.read_text().splitlines()]
    assert blc.write_block(src, (0, 5), tmp_path / "b0") == ["train", "heldout"]
    assert qids(tmp_path / "b0" / "heldout_mined.jsonl") == ["heldout0", "heldout1", "heldout2"]
    assert blc.write_block(src, (5, 10), tmp_path / "b5") == ["train"]  # past the held-out queries
    assert qids(tmp_path / "b5" / "train_mined.jsonl") == [f"train{i}" for i in range(5, 10)]
    assert blc.write_block(src, (20, 25), tmp_path / "b20") == []


def test_write_block_says_to_mine_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the mining stage first"):
        blc.read_mined(tmp_path / "nothing")


def test_stage_parameters_come_from_params_through_causalneg_config():
    "Every generate setting the stage reads from params.yaml reaches the blocks, except what a block sets itself."
    from causalneg.config import GENERATE_STAGE, load_params, stage_settings
    from causalneg.pipeline import parse_parameters

    words = blc.stage_parameters()
    assert set(words[0::3]) == {"-y"}
    got = parse_parameters(words)  # what the generate stage receives
    want = stage_settings(load_params(ROOT / "params.yaml"), GENERATE_STAGE)
    assert set(got) == set(want) - blc.BLOCK_KEYS and "max_queries" not in got and "llm" not in got
    for key, value in got.items():
        assert (value, type(value)) == (want[key], type(want[key])), key
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    llm = json.loads(blc._llm_params(3))
    assert llm["local_threads"] == 3 and llm["model"] == params["llm"]["model"]


def test_workers_run_every_block_once_and_stop_on_failure(tmp_path, monkeypatch, capsys):
    src = _mined(tmp_path / "negatives", n_train=23)
    monkeypatch.setattr(blc, "BUILD", tmp_path / "blocks")
    marks = tmp_path / "marks"
    marks.mkdir()

    def fake_command(block_dir, parts, n, threads, start=0):
        code = (
            f"import pathlib, sys; pathlib.Path({str(marks)!r}, {block_dir.name!r}).write_text({json.dumps(parts)!r}); "
            f"sys.exit(3 if {block_dir.name!r} == 'FAIL' else 0)"
        )
        return [sys.executable, "-c", code]

    monkeypatch.setattr(blc, "generate_command", fake_command)
    args = ["--negatives-dir", str(src), "--no-commit", "--step", "5", "--workers", "2"]
    assert blc.main(args + ["--queries", "30"]) == 0
    assert sorted(p.name for p in marks.iterdir()) == ["0000", "0005", "0010", "0015", "0020"]  # 0025: no queries left
    assert json.loads((marks / "0000").read_text()) == ["train", "heldout"] and json.loads((marks / "0020").read_text()) == [
        "train"
    ]

    monkeypatch.setattr(blc, "generate_command", lambda block_dir, *a, **kw: fake_command(block_dir.with_name("FAIL"), *a, **kw))
    assert blc.main(args + ["--queries", "10"]) == 1
    assert "generate exited 3; see" in capsys.readouterr().err


def test_commit_cache_waits_out_a_busy_git_and_gives_up_in_the_end(monkeypatch):
    import subprocess, threading

    calls, busy = [], {"left": 2}

    def fake_run(cmd, cwd=None, check=False):
        calls.append(cmd[1])
        if cmd[1] == "add" and busy["left"]:
            busy["left"] -= 1
            raise subprocess.CalledProcessError(128, cmd)  # .git/index.lock held by someone else
        return subprocess.CompletedProcess(cmd, 1 if cmd[1] == "diff" else 0)

    monkeypatch.setattr(blc.subprocess, "run", fake_run)
    monkeypatch.setattr(blc.time, "sleep", lambda s: None)
    blc.commit_cache("msg", threading.Lock())
    assert calls == ["add", "add", "add", "diff", "commit"]
    busy["left"] = 99
    with pytest.raises(subprocess.CalledProcessError):
        blc.commit_cache("msg", threading.Lock(), tries=3)


def test_blocks_ask_for_the_rewrites_their_slice_holds():
    "A block's rewrite_from is the stage's, counted from the block's first query: blocks past it rewrite every train query."
    want = yaml.safe_load((ROOT / "params.yaml").read_text())["experiments"]["train_queries"]
    assert blc.block_rewrite_from(0) == want
    assert blc.block_rewrite_from(want + 5) == 0 and blc.block_rewrite_from(want - 2) == 2
    cmd = blc.generate_command(Path("/tmp/b"), ["train"], 5, 1, start=want)
    assert cmd[cmd.index("rewrite_from") + 1] == "0"
