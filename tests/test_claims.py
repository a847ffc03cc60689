"""The claim verdicts: each rule on synthetic rows, the comparisons that decide each claim, and the committed verdicts
recomputed from the committed per-query files (no retraining)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from causalneg.analysis import per_query_shortcut
from causalneg.claims import CLAIM_TEXT, claim_context, claim_specs, claims_json, claims_markdown, judge_claims

ROOT = Path(__file__).resolve().parents[1]
QIDS = [f"q{i}" for i in range(60)]


def row(shift, seeds=(0, 1, 2), noise=0.2, seed=0):
    "{seed: {qid: score}}: a common per-query base plus `shift`, with per-seed noise."
    base = np.random.default_rng(99).uniform(0.3, 0.7, len(QIDS))
    rng = np.random.default_rng(seed)
    return {s: {q: float(x) for q, x in zip(QIDS, base + shift + rng.normal(0, noise, len(QIDS)))} for s in seeds}


def shortcut(gap, seeds=(0, 1, 2), noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return {s: {q: {"gap": float(gap + rng.normal(0, noise)), "auc": 0.5} for q in QIDS} for s in seeds}


def judge(ndcg, shortcuts, delta=0.01):
    return judge_claims(ndcg, shortcuts, [0, 1, 2], delta, 0.01, 0.05, 0.4, n_boot=300)


def by_part(claims):
    return {(c["claim"], c["part"]): c for c in claims}


BASE = {"mined": row(0.0, seed=1), "mined_matched": row(0.0, seed=2)}
GAPS = {"zeroshot": shortcut(0.0, seed=3), "mined": shortcut(0.0, seed=4)}


def test_each_verdict_of_claim_1():
    # claim 1 says mined + naive is *lower* than mined
    for shift, want in ((-0.2, "supported"), (+0.2, "contradicted"), (0.0, "inconclusive")):
        c = by_part(judge({**BASE, "mined_naive": row(shift, seed=5)}, GAPS))[(1, None)]
        assert c["verdict"] == want, (shift, c)
    # quiet seeds and small per-query differences centred on 0: the CI straddles 0 inside +/- delta
    calm = row(0.0, noise=0.001, seed=11)
    eps = np.random.default_rng(12).normal(0, 0.01, len(QIDS))
    eps -= eps.mean()
    near = {s: {q: v + e for (q, v), e in zip(calm[s].items(), eps)} for s in calm}
    c = by_part(judge({"mined": calm, "mined_naive": near}, GAPS, delta=0.01))[(1, None)]
    assert c["verdict"] == "no effect" and c["ci_low"] < 0 < c["ci_high"] and -0.01 < c["ci_low"] and c["ci_high"] < 0.01
    # the same rows with a delta smaller than the CI: inconclusive, not no effect
    assert by_part(judge({"mined": calm, "mined_naive": near}, GAPS, delta=0.0001))[(1, None)]["verdict"] == "inconclusive"


def test_claim_2_and_4_read_the_shortcut_gap_with_their_own_signs():
    ndcg = {**BASE, "mined_cot": row(0.0, seed=6), "causalneg_eff": row(0.3, seed=7)}
    gaps = {**GAPS, "mined_cot": shortcut(-0.05, seed=8), "causalneg_eff": shortcut(+0.02, seed=9)}
    got = by_part(judge(ndcg, gaps))
    assert got[(2, None)]["verdict"] == "supported"  # the gap moved below mined-only's: a learned shortcut
    assert got[(2, None)]["metric"].startswith("probe gap") and got[(2, None)]["comparison"] == "mined_cot - mined"
    assert got[(4, "shortcut shrinks (lambda=0.4)")]["verdict"] == "supported"  # above mined + CoT's
    assert got[(4, "beats mined-only (lambda=0.4)")]["verdict"] == "supported"
    # the same numbers with the sign of claim 2 flipped would read contradicted: the sign is part of the spec
    flipped = {**gaps, "mined_cot": shortcut(+0.05, seed=8)}
    assert by_part(judge(ndcg, flipped))[(2, None)]["verdict"] == "contradicted"


def test_rows_not_run_are_inconclusive_and_say_so():
    claims = judge(dict(BASE), dict(GAPS))
    assert len(claims) == 7 and [c["claim"] for c in claims] == [1, 2, 3, 4, 4, 4, 4]
    for c in claims:
        assert c["verdict"] == "inconclusive" and c["note"] == "rows not run" and c["delta"] is None
        assert c["seeds"] == [0, 1, 2] and c["text"] == CLAIM_TEXT[c["claim"]]
    parts = [c["part"] for c in claims if c["claim"] == 4]
    assert parts == [
        "shortcut shrinks (lambda=0.05)",
        "beats mined-only (lambda=0.05)",
        "shortcut shrinks (lambda=0.4)",
        "beats mined-only (lambda=0.4)",
    ]


def test_specs_name_the_comparison_of_each_claim():
    specs = {(n, p): (r, ref, sign, m) for n, p, r, ref, sign, m in claim_specs(0.05, 0.4)}
    assert specs[(1, None)] == ("mined_naive", "mined", -1, "ndcg")
    assert specs[(2, None)] == ("mined_cot", "mined", -1, "gap")
    assert specs[(3, None)] == ("mined_cot", "mined_naive", +1, "ndcg")
    assert specs[(4, "beats mined-only (lambda=0.05)")] == ("causalneg", "mined", +1, "ndcg")
    assert specs[(4, "shortcut shrinks (lambda=0.4)")] == ("causalneg_eff", "mined_cot", +1, "gap")
    # the profile picks which naive row claims 1 and 3 judge; the other claims do not move
    pos = {(n, p): (r, ref) for n, p, r, ref, _, _ in claim_specs(0.05, 0.4, naive_row="mined_naive_pos")}
    assert pos[(1, None)] == ("mined_naive_pos", "mined") and pos[(3, None)] == ("mined_cot", "mined_naive_pos")
    assert {k: v for k, v in pos.items() if k[0] in (2, 4)} == {k: v[:2] for k, v in specs.items() if k[0] in (2, 4)}
    with pytest.raises(ValueError, match="tables.naive_row"):
        claim_specs(0.05, 0.4, naive_row="mined_naive_pos_masked")  # a masked row would mix the prompt with the loss


def test_context_isolates_the_authors_two_baseline_choices():
    ndcg = {
        **BASE,
        "mined_naive": row(-0.2, seed=5),
        "mined_naive_pos": row(-0.05, seed=6),
        "mined_naive_pos_masked": row(0.0, seed=7),
    }
    ctx = claim_context(ndcg, GAPS, n_boot=300)
    assert ctx["naive_prompt"]["ci_low"] > 0  # the prompt that sees the positive hurts less than the query-only one
    assert ctx["masking"]["delta"] > 0 and ctx["masking_query_only"] is None  # mined_naive_masked was not run
    line = claims_markdown(judge(ndcg, GAPS), ctx, "C.", 0.01, 0.01)[-1]
    assert "(mined_naive_pos - mined_naive)" in line and "(mined_naive_pos_masked - mined_naive_pos)" in line
    assert "mined_naive_masked - mined_naive" not in line


def test_report_files():
    ndcg = {**BASE, "mined_naive": row(-0.2, seed=5)}
    claims, context = judge(ndcg, GAPS), claim_context(ndcg, GAPS, n_boot=300)
    assert json.loads(claims_json(claims)) == claims and claims_json(claims).endswith("]\n")
    md = claims_markdown(claims, context, "Caption.", 0.01, 0.01)
    assert md[:3] == ["# Claims", "", "Caption."] and "**Verdict rule.**" in md[4]
    table = [l for l in md if l.startswith("| ") and "**" in l]
    assert len(table) == 7 and "**supported**" in table[0] and "rows not run" in table[1]
    assert md[-1].startswith("Context (not verdicts): mined at a matched count vs mined, test nDCG@10:")


def committed_rows():
    "The claim split's per-query nDCG@10 and the CoT probe's per-query shortcut of every committed run."
    ndcg, probe = {}, {}
    with open(ROOT / "reports/per_query/metrics.csv") as f:
        for r in csv.DictReader(f):
            if r["split"] == "test":
                ndcg.setdefault(r["variant"], {}).setdefault(int(r["seed"]), {})[r["qid"]] = float(r["ndcg@10"])
    with open(ROOT / "reports/per_query/probe.csv") as f:
        for r in csv.DictReader(f):
            probe.setdefault(r["variant"], {}).setdefault(int(r["seed"]), []).append(
                (r["generator"], r["qid"], r["similarity"], r["source"])
            )
    shortcuts = {v: {s: per_query_shortcut(rows, "causalneg") for s, rows in by_seed.items()} for v, by_seed in probe.items()}
    return ndcg, shortcuts


@pytest.mark.skipif(not (ROOT / "reports/claims.json").exists(), reason="no committed claims")
def test_committed_verdicts_recompute_from_the_committed_per_query_files():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    t, e = params["tables"], params["experiments"]
    committed = json.loads((ROOT / "reports/claims.json").read_text())
    ndcg, shortcuts = committed_rows()
    seeds = sorted({s for v, by_seed in ndcg.items() if v != "zeroshot" for s in by_seed})
    again = judge_claims(
        ndcg,
        shortcuts,
        seeds,
        t["delta"],
        t["delta_shortcut"],
        e["lambda_ent"],
        e["lambda_effective"],
        "test",
        t["n_boot"],
        t["alpha"],
        naive_row=t.get("naive_row", "mined_naive"),
    )
    assert [(c["claim"], c["part"], c["verdict"]) for c in again] == [(c["claim"], c["part"], c["verdict"]) for c in committed]
    for a, c in zip(again, committed):
        if c["delta"] is None:
            continue
        # the CSVs round scores to 5-6 decimals: the recomputed numbers agree to about that
        for k in ("delta", "ci_low", "ci_high"):
            assert abs(a[k] - c[k]) < 2e-4, (c["comparison"], k, a[k], c[k])
        assert a["n_queries"] == c["n_queries"]
