"""The claim verdicts: the pre-stated family of 11 comparisons, each rule on synthetic rows, Holm across the family,
and the committed verdicts recomputed from the committed per-query files (no retraining)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from causalneg.claims import CLAIM_TEXT, PREF_METRIC, claim_context, claim_specs, claims_json, claims_markdown, judge_claims

ROOT = Path(__file__).resolve().parents[1]
QIDS = [f"q{i}" for i in range(60)]
PAIRS = [f"p{i}" for i in range(80)]
M = 11  # the pre-stated family size


def row(shift, seeds=(0, 1, 2), noise=0.2, seed=0, units=QIDS):
    "{seed: {unit: score}}: a common per-unit base plus `shift`, with per-seed noise."
    base = np.random.default_rng(99).uniform(0.3, 0.7, len(units))
    rng = np.random.default_rng(seed)
    return {s: {q: float(x) for q, x in zip(units, base + shift + rng.normal(0, noise, len(units)))} for s in seeds}


def pref(shift, seeds=(0, 1, 2), seed=0):
    "A pref table row: per-pair source preference around `shift`."
    return row(shift, seeds, noise=0.02, seed=seed, units=PAIRS)


def judge(test, fanoutqa=None, prefs=None, delta=0.01, n_boot=2000):
    return judge_claims({"test": test, "fanoutqa": fanoutqa or {}}, prefs or {}, [0, 1, 2], delta, 0.01, 0.4, n_boot=n_boot)


def by_id(claims):
    return {c["id"]: c for c in claims}


BASE = {"mined": row(0.0, seed=1), "mined_matched": row(0.0, seed=2)}
PREFS = {"zeroshot": pref(0.0, seeds=(0,), seed=3), "mined": pref(0.0, seed=4)}

EXPECTED_SPECS = [
    ("1", 1, "mined_naive_pos", "mined", -1, "ndcg", "test"),
    ("2-cot", 2, "mined_cot", "mined", +1, "pref", None),
    ("2-naive", 2, "mined_naive", "mined", +1, "pref", None),
    ("2-naive_pos", 2, "mined_naive_pos", "mined", +1, "pref", None),
    ("3", 3, "mined_cot", "mined_naive_pos", +1, "ndcg", "test"),
    ("4-pref-cot", 4, "causalneg_eff", "mined_cot", -1, "pref", None),
    ("4-pref-naive", 4, "mined_naive_ent", "mined_naive", -1, "pref", None),
    ("4-pref-naive_pos", 4, "mined_naive_pos_ent", "mined_naive_pos", -1, "pref", None),
    ("4-beats", 4, "causalneg_eff", "mined", +1, "ndcg", "test"),
    ("4-transfer-naive", 4, "mined_naive_ent", "mined_naive", +1, "ndcg", "fanoutqa"),
    ("4-transfer-naive_pos", 4, "mined_naive_pos_ent", "mined_naive_pos", +1, "ndcg", "fanoutqa"),
]


def test_every_spec_is_present_with_its_sign_in_the_pre_stated_order():
    specs = claim_specs(0.4)
    assert [(s["id"], s["claim"], s["row"], s["reference"], s["sign"], s["measure"], s["split"]) for s in specs] == EXPECTED_SPECS
    assert all(set(s) == {"id", "claim", "part", "row", "reference", "sign", "measure", "split"} for s in specs)
    parts = {s["id"]: s["part"] for s in specs}
    assert parts["1"] is None and parts["3"] is None and parts["2-cot"] == "CoT negatives"
    assert parts["4-pref-cot"] == "entropy shrinks the source preference, CoT (lambda=0.4)"
    assert parts["4-beats"] == "beats mined-only (lambda=0.4)"
    assert parts["4-transfer-naive"] == "entropy repairs transfer, naive query only (lambda=0.4)"
    # the profile picks which naive row claims 1 and 3 judge; no other comparison moves
    alt = claim_specs(0.4, naive_row="mined_naive")
    assert (alt[0]["row"], alt[4]["reference"]) == ("mined_naive", "mined_naive")
    assert [s for i, s in enumerate(alt) if i not in (0, 4)] == [s for i, s in enumerate(specs) if i not in (0, 4)]
    with pytest.raises(ValueError, match="tables.naive_row"):
        claim_specs(0.4, naive_row="mined_naive_pos_masked")  # a masked row would mix the prompt with the loss
    assert "origin rather than relevance" in CLAIM_TEXT[2]


def test_each_verdict_of_claim_1():
    # claim 1 says mined + naive is *lower* than mined
    for shift, want in ((-0.2, "supported"), (+0.2, "contradicted"), (0.0, "inconclusive")):
        c = by_id(judge({**BASE, "mined_naive_pos": row(shift, seed=5)}))["1"]
        assert c["verdict"] == c["verdict_unadjusted"] == want, (shift, c)
        assert c["strength"] == (None if want == "inconclusive" else "at least delta")
    # quiet seeds and small per-query differences centred on 0: the CI straddles 0 inside +/- delta
    calm = row(0.0, noise=0.001, seed=11)
    eps = np.random.default_rng(12).normal(0, 0.01, len(QIDS))
    eps -= eps.mean()
    near = {s: {q: v + e for (q, v), e in zip(calm[s].items(), eps)} for s in calm}
    c = by_id(judge({"mined": calm, "mined_naive_pos": near}, delta=0.01))["1"]
    assert c["verdict"] == c["verdict_unadjusted"] == "no effect" and -0.01 < c["ci_low"] < 0 < c["ci_high"] < 0.01
    assert c["p_equivalence_holm"] < 0.025 and c["p_holm"] == 1.0
    # the same rows with a delta smaller than the CI: inconclusive, not no effect
    assert by_id(judge({"mined": calm, "mined_naive_pos": near}, delta=0.0001))["1"]["verdict"] == "inconclusive"


def just_significant(n=60, z=2.5):
    "(a, b): a lies below b by z standard errors of the per-query difference, the same on every seed (z = 2.5: p about 0.01-0.02)."
    d = np.random.default_rng(7).normal(size=n)
    se = 0.05 / np.sqrt(n)  # the standard error of the mean of n differences with sd 0.05
    d = z * se + 0.05 * (d - d.mean()) / d.std()
    b = {s: {q: 0.5 for q in QIDS[:n]} for s in (0, 1, 2)}
    return {s: {q: 0.5 - x for q, x in zip(QIDS[:n], d)} for s in (0, 1, 2)}, b


def test_holm_makes_a_lone_significant_claim_inconclusive_in_a_family_of_11():
    a, b = just_significant()
    c = by_id(judge({"mined": b, "mined_naive_pos": a}, n_boot=10000))["1"]
    assert 0.004 < c["p_value"] < 0.05, c  # significant alone ...
    assert c["verdict_unadjusted"] == "supported" and c["strength"] is None
    assert c["p_holm"] == pytest.approx(min(1, M * c["p_value"]), abs=2e-5)  # ... but not once for 11 comparisons
    assert c["verdict"] == "inconclusive"


def test_rows_not_run_are_inconclusive_and_keep_the_family_at_11():
    claims = judge(dict(BASE), prefs={**PREFS, "mined_cot": pref(0.1, seed=5)})
    assert [c["id"] for c in claims] == [s[0] for s in EXPECTED_SPECS]
    ran = by_id(claims)["2-cot"]
    assert ran["verdict"] == "supported" and ran["paired_seeds"] and ran["unit"] == "pairs" and ran["n"] == len(PAIRS)
    assert ran["p_value"] == round(2 / 2001, 5) and ran["p_holm"] == round(M * 2 / 2001, 5)  # m = 11, not 1
    assert ran["p_equivalence_holm"] == 1.0 and ran["metric"] == PREF_METRIC and ran["strength"] == "at least delta"
    for c in claims:
        assert c["text"] == CLAIM_TEXT[c["claim"]]
        if c["id"] == "2-cot":
            continue
        assert c["verdict"] == c["verdict_unadjusted"] == "inconclusive" and c["note"] == "rows not run"
        assert c["delta"] is None and c["p_value"] is None and c["p_holm"] is None and c["strength"] is None
        assert c["seeds"] == [0, 1, 2] and c["n"] == 0


def test_every_claim_reads_its_own_table_with_its_own_sign():
    test = {**BASE, "mined_naive_pos": row(-0.3, seed=5), "mined_cot": row(0.3, seed=6), "causalneg_eff": row(0.3, seed=7)}
    fan = {
        "mined_naive": row(-0.3, seed=8),
        "mined_naive_pos": row(-0.3, seed=9),
        "mined_naive_ent": row(0.0, seed=10),
        "mined_naive_pos_ent": row(0.0, seed=11),
    }
    prefs = {
        **PREFS,
        **{v: pref(0.1, seed=12 + i) for i, v in enumerate(("mined_cot", "mined_naive", "mined_naive_pos"))},
        **{v: pref(0.02, seed=20 + i) for i, v in enumerate(("causalneg_eff", "mined_naive_ent", "mined_naive_pos_ent"))},
    }
    claims = judge(test, fan, prefs)
    assert [c["verdict"] for c in claims] == ["supported"] * M, [(c["id"], c["verdict"]) for c in claims]
    got = by_id(claims)
    assert got["4-transfer-naive"]["metric"] == "fanoutqa nDCG@10" and got["4-beats"]["metric"] == "test nDCG@10"
    assert got["4-pref-cot"]["delta"] < 0 and got["2-cot"]["delta"] > 0
    # claim 2 with the preference reversed (the model now prefers LLM text): contradicted, the sign is part of the spec
    flipped = judge(test, fan, {**prefs, "mined_cot": pref(-0.1, seed=12)})
    assert by_id(flipped)["2-cot"]["verdict"] == "contradicted" and by_id(flipped)["2-cot"]["strength"] == "at least delta"


def test_strength_tells_at_least_delta_from_non_zero_only():
    a, b = just_significant(z=8)  # 0.052 below mined with se 0.0065: the CI clears 0 and 0.01, not 0.045
    for delta, want in ((0.01, "at least delta"), (0.045, "non-zero only")):
        c = by_id(judge({"mined": b, "mined_naive_pos": a}, delta=delta))["1"]
        assert c["verdict"] == "supported" and c["strength"] == want, (delta, c)


def test_context_isolates_the_authors_two_baseline_choices():
    test = {
        **BASE,
        "mined_naive": row(-0.2, seed=5),
        "mined_naive_pos": row(-0.05, seed=6),
        "mined_naive_pos_masked": row(0.0, seed=7),
    }
    ctx = claim_context({"test": test}, PREFS, n_boot=300)
    assert list(ctx) == [
        "claim2_vs_zeroshot",
        "matched_count",
        "cot_vs_matched",
        "naive_prompt",
        "masking",
        "masking_query_only",
        "causalneg_nominal",
        "hard_competitor",
    ]
    assert ctx["naive_prompt"]["ci_low"] > 0  # the prompt that sees the positive hurts less than the query-only one
    assert ctx["masking"]["delta"] > 0 and ctx["masking_query_only"] is None  # mined_naive_masked was not run
    assert ctx["claim2_vs_zeroshot"] is None and ctx["causalneg_nominal"] is None and ctx["hard_competitor"] is None
    line = claims_markdown(judge(test), ctx, "C.", 0.01, 0.01)[-1]
    assert "(mined_naive_pos - mined_naive)" in line and "(mined_naive_pos_masked - mined_naive_pos)" in line
    assert "mined_naive_masked - mined_naive" not in line


def test_report_files():
    test = {**BASE, "mined_naive_pos": row(-0.2, seed=5)}
    claims, context = judge(test), claim_context({"test": test}, PREFS, n_boot=300)
    assert json.loads(claims_json(claims)) == claims and claims_json(claims).endswith("]\n")
    md = claims_markdown(claims, context, "Caption.", 0.01, 0.01)
    assert md[:3] == ["# Claims", "", "Caption."] and "**Verdict rule.**" in md[4] and "Holm" in md[4]
    assert md[6] == "| claim | part | verdict (Holm) | unadjusted | strength | evidence |"
    table = [line for line in md if line.startswith("| ") and "**" in line]
    assert len(table) == M and "**supported** | supported | at least delta |" in table[0] and "rows not run" in table[1]
    assert "queries, p = 0.0010, p_Holm = 0.0110" in table[0] and " ±0.0" in table[0]
    assert md[-1].startswith("Context (not verdicts): mined at a matched count vs mined, test nDCG@10:")


def committed_tables():
    "The per-query nDCG@10 of every split and the per-pair source preference of every committed run."
    ndcg, prefs = {}, {}
    with open(ROOT / "reports/per_query/metrics.csv") as f:
        for r in csv.DictReader(f):
            ndcg.setdefault(r["split"], {}).setdefault(r["variant"], {}).setdefault(int(r["seed"]), {})[r["qid"]] = float(
                r["ndcg@10"]
            )
    with open(ROOT / "reports/per_query/pref.csv") as f:
        for r in csv.DictReader(f):
            prefs.setdefault(r["variant"], {}).setdefault(int(r["seed"]), {})[r["pair_id"]] = float(r["value"])
    return ndcg, prefs


def committed_design():
    "Why the committed claims cannot be recomputed with this design, or None when they can."
    if not (ROOT / "reports/claims.json").exists():
        return "no committed reports/claims.json"
    if not (ROOT / "reports/per_query/pref.csv").exists():
        return "reports/per_query/pref.csv not committed yet: the committed claims predate the source-preference design"
    if "id" not in json.loads((ROOT / "reports/claims.json").read_text())[0]:
        return "the committed reports/claims.json is from the old design (no claim ids): regenerate it with the tables stage"
    return None


@pytest.mark.skipif(committed_design() is not None, reason=str(committed_design()))
def test_committed_verdicts_recompute_from_the_committed_per_query_files():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    t, e = params["tables"], params["experiments"]
    committed = json.loads((ROOT / "reports/claims.json").read_text())
    ndcg, prefs = committed_tables()
    seeds = sorted({s for v, by_seed in ndcg["test"].items() if v != "zeroshot" for s in by_seed})
    again = judge_claims(
        ndcg,
        prefs,
        seeds,
        t["delta"],
        t["delta_pref"],
        e["lambda_effective"],
        t["n_boot"],
        t["alpha"],
        naive_row=t.get("naive_row", "mined_naive_pos"),
    )
    keys = ("id", "part", "verdict", "verdict_unadjusted", "strength")
    assert [tuple(c[k] for k in keys) for c in again] == [tuple(c[k] for k in keys) for c in committed]
    for a, c in zip(again, committed):
        if c["delta"] is None:
            continue
        # the CSVs round scores to 5-6 decimals: the recomputed numbers agree to about that
        for k in ("delta", "ci_low", "ci_high"):
            assert abs(a[k] - c[k]) < 2e-4, (c["comparison"], k, a[k], c[k])
        for k in ("p_value", "p_holm"):
            assert abs(a[k] - c[k]) < 5e-3, (c["comparison"], k, a[k], c[k])
        assert (a["n"], a["paired_seeds"]) == (c["n"], c["paired_seeds"])
