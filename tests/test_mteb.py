"""The MTEB adapter's command line on a local BEIR folder (offline): run folders, and what is recorded next to the scores."""

import json
import os
import subprocess
import sys

from causalneg.data import write_beir

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def _tiny_beir(folder):
    corpus = {
        f"d{i}": {"title": t, "text": f"{t} is described here in a few words."}
        for i, t in enumerate(["Paris", "Berlin", "Rome", "Madrid", "Lisbon", "Vienna"])
    }
    corpus["fruit"] = {"title": "Banana", "text": "A banana is an elongated, edible fruit."}
    queries = {"q0": "capital of France", "q1": "capital of Germany", "q2": "capital of Italy"}
    write_beir(folder, corpus, queries, {"test": {"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {"d2": 1, "fruit": 1}}})
    return folder


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "causalneg.mteb_adapter", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300
    )


def test_cli_scores_a_run_folder(tmp_path):
    "A run folder (the model in final/, as `causalneg.train` saves it) is evaluated as the README says, with its provenance."
    from causalneg.encoders import resolve_model_path

    run = tmp_path / "models" / "causalneg-s0"
    run.mkdir(parents=True)
    (run / "final").symlink_to(resolve_model_path(), target_is_directory=True)  # the packaged MiniLM as the run's model
    (run / "train_summary.json").write_text(json.dumps({"config": {"query_prompt": None}}))
    beir = _tiny_beir(tmp_path / "beir")
    out = tmp_path / "scores.json"
    r = _run(run, "--beir", beir, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{run} is a run folder: loading its final model {run / 'final'}" in r.stderr
    rec = json.loads(out.read_text())
    assert json.loads(r.stdout) == rec
    scores = rec["scores"]["beir-test"]["test"]
    assert set(scores) == {"ndcg@10", "recall@100", "mrr@10"}
    assert scores["recall@100"] == 1.0 and 0 < scores["ndcg@10"] < 1  # a banana is judged for Italy: no perfect score
    import mteb

    assert rec["mteb_version"] == mteb.__version__
    m = rec["model"]
    assert m["requested"] == str(run) and m["path"] == str(run / "final") and "run folder" in m["resolved"]
    assert m["prompts"] == {"query": "", "document": ""}  # sentence-transformers gives MiniLM empty prompts
    assert m["query_prompt"] is None and m["instruction_template"] is None
    t = rec["tasks"]["beir-test"]
    assert t["version"] == "v1" and t["mteb_version"] == mteb.__version__
    assert t["dataset"] == {"path": str(beir), "revision": "local"} and t["dataset_revision"] == "local"
    assert t["instruction"] == "Retrieve text based on user query." and t["task_prompt"] is None
    assert t["prompts"] == {"query": {"name": "query", "text": ""}, "document": {"name": "document", "text": ""}}
    assert t["local_source"]["split"] == "test" and t["local_source"]["n_queries"] == 3


def test_cli_records_the_prompts_it_passes(tmp_path):
    "A query prompt and an instruction template reach the record; a task-specific instruction wins over the plain query prompt."
    beir = _tiny_beir(tmp_path / "beir")
    r = _run(
        "packaged:all-MiniLM-L6-v2",
        "--beir",
        beir,
        "--query-prompt",
        "query: ",
        "--instruction-template",
        "qwen3",
        "--max-queries",
        "2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(r.stdout)
    assert rec["model"]["path"] == "packaged:all-MiniLM-L6-v2" and rec["model"]["resolved"] is None
    assert rec["model"]["instruction_template"] == "Instruct: {instruction}\nQuery:"
    p = rec["tasks"]["beir-test"]["prompts"]
    assert p["query"] == {"name": "beir-test-query", "text": "Instruct: Retrieve text based on user query.\nQuery:"}
    assert p["document"] == {"name": "document", "text": ""}
    assert rec["model"]["prompts"] == {
        "query": "query: ",
        "document": "",
        "beir-test-query": "Instruct: Retrieve text based on user query.\nQuery:",
    }


def test_cli_explains_a_folder_without_a_model(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "train_log.jsonl").write_text("")
    r = _run(tmp_path / "run", "--beir", tmp_path)
    assert r.returncode == 2
    for looked in ("final", "checkpoint-N", "modules.json", "train_log.jsonl"):
        assert looked in r.stderr, r.stderr


def test_cli_needs_a_task():
    r = _run("packaged:all-MiniLM-L6-v2")
    assert r.returncode == 2 and "give at least one --task or a --beir folder" in r.stderr
