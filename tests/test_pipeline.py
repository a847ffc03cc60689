"""End-to-end: `dvc repro` of the whole pipeline on the smoke profile in a copy of the project."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def project_files():
    "Tracked files plus untracked ones git does not ignore: what a commit of the working tree would hold."
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f and (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = tmp_path_factory.mktemp("project")
    for f in project_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("IN_TEST", None)
    run = lambda *cmd: subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True)
    # a local identity: `dvc exp run` commits experiments, and CI machines may have no global git config
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "t@t"],
        ["git", "config", "user.name", "t"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "copy"],
    ):
        assert run(*cmd).returncode == 0
    shutil.rmtree(dest / "reports")  # committed reports of the default run: every one must be made anew
    r = run(sys.executable, "-m", "causalneg.pipeline", "use-profile", "smoke")
    assert r.returncode == 0, r.stderr
    first = run(str(BIN / "dvc"), "repro")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return dest, run, first


def test_stages_write_reports(project):
    dest, _, _ = project
    for f in [
        "reports/dataset_card.md",
        "reports/benchmark.html",
        "reports/zeroshot.html",
        "reports/figures/zeroshot_ndcg.png",
        "data/wikivital/corpus.jsonl",
        "results/zeroshot/test.run",
        "reports/mine.html",
        "reports/generate.html",
        "reports/generation_report.md",
        "reports/experiments.html",
        "reports/main_table.md",
        "reports/claims.md",
        "reports/claims.json",
        "reports/figures/shortcut.png",
        "reports/figures/sensitivity.png",
        "reports/figures/main_table.png",
        "reports/figures/source_bias.png",
        "reports/figures/gradients.png",
        "reports/source_bias_table.md",
        "reports/per_query/pref.csv",
        "results/zeroshot/pool.json",
        "reports/tables.html",
    ]:
        assert (dest / f).stat().st_size > 0, f
    html = (dest / "reports/zeroshot.html").read_text()
    assert "data:image/png;base64" in html, "figures must be embedded so the HTML reads offline"


def test_zeroshot_metrics(project):
    dest, _, _ = project
    m = json.loads((dest / "reports/metrics/zeroshot.json").read_text())
    assert m["corpus_size"] < m["corpus_full"] == 10033
    pool = m["pool"]
    assert pool["splits"] == ["test", "fanoutqa"] and pool["queries"] == 40 and pool["judged"] <= pool["size"] < 10033
    assert set(pool["splits_metrics"]) == {"test", "fanoutqa"}
    for split in ("test", "fanoutqa"):
        s = m["splits"][split]
        assert s["queries"] == 20
        # an untrained MiniLM on a 150-distractor corpus: far from 0, and not a perfect score either
        assert 0.3 < s["ndcg@10"] <= 1 and s["recall@100"] >= s["ndcg@10"] * 0.9 and 0 < s["mrr@10"] <= 1


def test_second_repro_runs_nothing(project):
    _, run, _ = project
    again = run(str(BIN / "dvc"), "repro")
    assert again.returncode == 0, again.stderr
    assert "Running stage" not in again.stdout, again.stdout
    status = run(str(BIN / "dvc"), "status")
    assert "up to date" in status.stdout, status.stdout


def test_generation_replayed_from_cache(project):
    "The smoke queries' LLM outputs come from the shipped cache: no LLM call, records with provenance."
    dest, _, _ = project
    for part in ("train", "heldout"):
        recs = [json.loads(l) for l in (dest / f"data/generated/{part}_causalneg.jsonl").read_text().splitlines()]
        assert len(recs) == 5
        negs = [n for r in recs for n in r["negatives"]]
        assert negs and all(n["source"] == "causalneg" and n["cache_keys"] and "filter" in n for n in negs)
    ledger = dest / "llm_cache" / "ledger.jsonl"
    committed = subprocess.run(["git", "show", "HEAD:llm_cache/ledger.jsonl"], cwd=dest, capture_output=True, text=True).stdout
    assert (ledger.read_text() if ledger.exists() else "") == committed, "a replay must not call the LLM"


def test_main_table_and_claims(project):
    dest, _, _ = project
    table = (dest / "reports/main_table.md").read_text()
    for label in ("zero-shot", "mined", "mined + CoT", "mined + CoT + entropy (CausalNeg)"):
        assert f"| {label} " in table, label
    claims = (dest / "reports/claims.md").read_text()
    verdicts = json.loads((dest / "reports/claims.json").read_text())
    assert claims.count("| **") == len(verdicts) == 11, claims
    assert {c["claim"] for c in verdicts} == {1, 2, 3, 4} and sum(c["claim"] == 4 for c in verdicts) == 6
    for c in verdicts:
        assert c["verdict"] in ("supported", "contradicted", "no effect", "inconclusive")
        assert c["verdict_unadjusted"] in ("supported", "contradicted", "no effect", "inconclusive")
    by_id = {c["id"]: c for c in verdicts}
    ran = by_id["4-beats"]
    assert ran["delta"] is None and ran["note"] == "rows not run"  # the smoke profile does not train that row
    # claim 2 on CoT: mined_cot - mined in NQ-UTD source preference, per relevant pair, both models scored on it
    c2 = by_id["2-cot"]
    assert c2["comparison"] == "mined_cot - mined" and c2["unit"] == "pairs" and c2["n"] == 32
    assert c2["ci_low"] <= c2["delta"] <= c2["ci_high"] and c2["mde"] > 0 and c2["paired_seeds"]
    assert c2["p_value"] <= c2["p_holm"] <= 1 and c2["ci_low_mc"] > 0
    pref = (dest / "reports/per_query/pref.csv").read_text().splitlines()
    assert pref[0] == "variant,seed,pair_id,value" and len(pref) == 1 + 7 * 32
    per_query = (dest / "reports/per_query/metrics.csv").read_text().splitlines()
    assert per_query[0] == "variant,seed,split,qid,ndcg@10,recall@100,mrr@10" and len(per_query) == 1 + 7 * 2 * 20
    main = json.loads((dest / "reports/metrics/main.json").read_text())
    assert (
        main["mined"]["train_queries"] == 5
        and main["mined"]["seeds"] == [0]
        and main["mined"]["queries"] == {"test": 20, "fanoutqa": 20}
    )
    html = (dest / "reports/tables.html").read_text()
    assert html.count("data:image/png;base64") >= 3, "the figures must be inline in the rendered report"
    runs = json.loads((dest / "results/runs/index.json").read_text())["runs"]
    assert set(runs) == {
        "zeroshot-s0",
        "mined-s0",
        "mined_cot-s0",
        "causalneg-s0",
        "causalneg_no_balance-s0",
        "causalneg_lambda_0.2-s0",
        "causalneg_tau_0.5-s0",
    }
    ablation = (dest / "reports/ablation_table.md").read_text()
    for label in ("CausalNeg without balance term", "CausalNeg, lambda=0.2", "CausalNeg, tau_ent=0.5"):
        assert f"| {label} " in ablation, label
    sweep = json.loads((dest / "results/runs/causalneg_lambda_0.2-s0/run.json").read_text())
    assert sweep["recipe"]["lambda_ent"] == 0.2
    rec = json.loads((dest / "results/runs/causalneg-s0/run.json").read_text())
    assert rec["recipe"]["lambda_ent"] == 0.05 and rec["negatives"]["negatives"].get("causalneg", 0) > 0
    assert "causalneg" in rec["shortcut"] and 0 <= rec["shortcut"]["causalneg"]["auc_within_query"] <= 1


def test_same_params_and_seed_give_identical_metrics(project):
    "Retraining a finished run from scratch on CPU reproduces its metrics exactly (runs last: it re-runs a stage)."
    dest, run, _ = project
    done = dest / "results/runs/causalneg-s0/run.json"
    before = json.loads(done.read_text())
    done.unlink()
    again = run(str(BIN / "dvc"), "repro", "experiments")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    after = json.loads(done.read_text())
    assert after["key"] == before["key"]
    assert after["metrics"] == before["metrics"] and after["shortcut"] == before["shortcut"]
    assert [r["loss"] for r in after["train_log"]] == [r["loss"] for r in before["train_log"]]


def test_dvc_exp_sweep(project):
    "A lambda_ent sweep with `dvc exp run -S`: one experiment per value, and runs that do not read lambda_ent are reused."
    dest, run, _ = project
    before = json.loads((dest / "results/runs/mined-s0/run.json").read_text())
    for lam in (0.02, 0.2):
        r = run(str(BIN / "dvc"), "exp", "run", "-n", f"lam-{lam:g}", "-S", f"experiments.lambda_ent={lam}")
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        rec = json.loads((dest / "results/runs/causalneg-s0/run.json").read_text())
        assert rec["recipe"]["lambda_ent"] == lam
    # InfoNCE-only runs have the same input hash whatever lambda_ent is: reused, not retrained
    assert json.loads((dest / "results/runs/mined-s0/run.json").read_text()) == before
    show = run(str(BIN / "dvc"), "exp", "show", "--csv")
    assert show.returncode == 0, show.stderr
    import csv, io

    rows = {r["Experiment"]: r for r in csv.DictReader(io.StringIO(show.stdout)) if r.get("Experiment")}
    assert {"lam-0.02", "lam-0.2"} <= set(rows), list(rows)
    for name, lam in (("lam-0.02", 0.02), ("lam-0.2", 0.2)):
        assert float(rows[name]["experiments.lambda_ent"]) == lam
        assert 0 < float(rows[name]["causalneg.test.ndcg@10"]) <= 1
        assert rows[name]["mined.test.ndcg@10"] == rows["lam-0.02"]["mined.test.ndcg@10"]
