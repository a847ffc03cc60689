"""causalneg.analysis verdicts: the verdict rule matrix, the paired query x seed bootstrap (determinism, paired
queries and paired seeds, seed resampling, one-seed rows, Monte Carlo error of the bounds, p-values), Holm, the
adjusted verdict and its strength, per-query shortcut measures, difference-in-differences, MDE."""

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
import math, time

import numpy as np
import pytest

from causalneg.analysis import (
    VERDICT_RULE,
    adjusted_verdict,
    bootstrap_delta,
    bootstrap_did,
    bootstrap_p,
    equivalence_p,
    holm,
    mde_paired,
    per_query_shortcut,
    quantile_mc_se,
    strength,
    verdict,
)

QS = [f"q{i}" for i in range(1000)]


def row(matrix):
    "{seed: {qid: score}} from a seeds x queries array."
    return {s: dict(zip(QS[: matrix.shape[1]], map(float, m))) for s, m in enumerate(np.atleast_2d(matrix))}


def width(r):
    return r["ci_high"] - r["ci_low"]


# ---------------------------------------------------------------- verdict rule
@pytest.mark.parametrize(
    "lo,hi,sign,expected",
    [
        (0.02, 0.05, 1, "supported"),
        (-0.05, -0.02, -1, "supported"),
        (-0.05, -0.02, 1, "contradicted"),
        (0.02, 0.05, -1, "contradicted"),
        (-0.004, 0.006, 1, "no effect"),
        (-0.004, 0.006, -1, "no effect"),
        (-0.01, 0.01, 1, "no effect"),
        (-0.02, 0.03, 1, "inconclusive"),
        (-0.02, 0.03, -1, "inconclusive"),
        (0.0, 0.03, 1, "inconclusive"),
        (0.001, 0.004, 1, "supported"),
        (-0.004, -0.001, 1, "contradicted"),  # excluding 0 wins over "no effect"
    ],
)
def test_verdict_matrix(lo, hi, sign, expected):
    assert verdict(lo, hi, sign, 0.01) == expected


def test_verdict_errors_and_rule():
    for bad in (0, 2, "+", True, None):
        with pytest.raises(ValueError, match="claimed_sign must be"):
            verdict(0, 1, bad, 0.01)
    for bad in (0, -0.1, float("nan"), float("inf"), "0.1"):
        with pytest.raises(ValueError, match="delta"):
            verdict(0, 1, 1, bad)
    with pytest.raises(ValueError, match="ci_low <= ci_high"):
        verdict(0.2, 0.1, 1, 0.01)
    with pytest.raises(ValueError, match="finite"):
        verdict(float("nan"), 0.1, 1, 0.01)
    assert all(w in VERDICT_RULE for w in ("supported", "contradicted", "no effect", "inconclusive", "delta"))
    assert all(
        w in VERDICT_RULE for w in ("10,000 replicates", "seed id", "Monte Carlo", "Holm", "at least delta", "non-zero only")
    )


# ---------------------------------------------------------------- bootstrap_delta
def test_bootstrap_recovers_effect_and_is_fast():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 1000)
    b = row(base + rng.normal(0, 0.05, (3, 1000)))
    a = row(base + 0.05 + rng.normal(0, 0.05, (3, 1000)))
    t = time.perf_counter()
    r = bootstrap_delta(a, b, n_boot=10000, delta=0.01)  # what the pipeline runs: 10,000 replicates x 1,000 queries
    dt = time.perf_counter() - t
    assert dt < 1.5
    assert 0 < r["ci_low"] < 0.05 < r["ci_high"]
    assert r["n_queries"] == 1000 and r["seeds_a"] == [0, 1, 2] and r["seeds_b"] == [0, 1, 2]
    assert r["paired_seeds"] and r["n_boot"] == 10000
    assert r["mde"] == pytest.approx(2.8016 * r["se"], rel=1e-3)
    assert r["p_value"] == 2 / 10001 and r["p_equivalence"] == 1.0
    assert set(r) == {
        "delta",
        "ci_low",
        "ci_high",
        "ci_low_mc",
        "ci_high_mc",
        "se",
        "mde",
        "p_value",
        "p_equivalence",
        "n_queries",
        "seeds_a",
        "seeds_b",
        "paired_seeds",
        "n_boot",
    }
    r0 = bootstrap_delta(b, b)
    assert r0["delta"] == 0 and r0["ci_low"] == r0["ci_high"] == 0  # paired seeds: every replicate is 0
    assert r0["p_value"] == 1.0 and r0["p_equivalence"] is None


def test_bootstrap_deterministic():
    rng = np.random.default_rng(1)
    a, b = row(rng.normal(size=(3, 300))), row(rng.normal(size=(2, 300)))
    assert bootstrap_delta(a, b, seed=7) == bootstrap_delta(a, b, seed=7)
    assert bootstrap_delta(a, b, seed=7)["ci_low"] != bootstrap_delta(a, b, seed=8)["ci_low"]


def test_bootstrap_is_paired():
    rng = np.random.default_rng(2)
    shared = rng.normal(0, 0.3, 500)  # large per-query difficulty
    a = row(shared + 0.02 + rng.normal(0, 0.01, (3, 500)))
    b_shared = row(shared + rng.normal(0, 0.01, (3, 500)))
    b_indep = row(rng.normal(0, 0.3, 500) + rng.normal(0, 0.01, (3, 500)))
    assert width(bootstrap_delta(a, b_shared)) * 10 < width(bootstrap_delta(a, b_indep))
    assert bootstrap_delta(a, b_shared)["ci_low"] > 0


def test_paired_seeds_cancel_what_a_seed_does_to_both_rows():
    rng = np.random.default_rng(6)
    base = rng.uniform(0.2, 0.8, 500)
    offset = np.array([[-0.1], [0.0], [0.1]])  # seed s shifts every row alike (it fixes the data order)
    a = row(base + 0.01 + offset + rng.normal(0, 0.01, (3, 500)))
    b = row(base + offset + rng.normal(0, 0.01, (3, 500)))
    paired = bootstrap_delta(a, b)
    unpaired = bootstrap_delta(a, {s + 10: v for s, v in b.items()})  # other seed ids: nothing to pair
    assert paired["paired_seeds"] and not unpaired["paired_seeds"]
    assert paired["delta"] == pytest.approx(unpaired["delta"])
    assert width(unpaired) > 10 * width(paired)
    assert paired["ci_low"] > 0 and unpaired["ci_low"] < 0 < unpaired["ci_high"]
    # aligned by seed id, not by the order of the dict
    shuffled = bootstrap_delta(a, {s: b[s] for s in (2, 0, 1)})
    assert shuffled["ci_low"] == pytest.approx(paired["ci_low"], abs=1e-12)
    # a seed set that only overlaps is not paired either
    assert not bootstrap_delta(a, {s: b[s] for s in (0, 1)})["paired_seeds"]


def test_bootstrap_resamples_seeds():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.2, 0.8, 800)
    b = row(base + rng.normal(0, 0.02, (3, 800)))
    noise = rng.normal(0, 0.02, (3, 800))
    agree = row(base + 0.03 + noise)
    disagree = row(base + 0.03 + noise + np.array([[-0.03], [0.0], [0.03]]))  # same mean, seeds disagree
    ra, rd = bootstrap_delta(agree, b), bootstrap_delta(disagree, b)
    assert ra["delta"] == pytest.approx(rd["delta"])
    assert width(rd) > 3 * width(ra)


def test_bootstrap_one_seed_rows_and_shared_queries():
    rng = np.random.default_rng(4)
    m = rng.normal(size=(3, 50))
    zs = {"zero-shot": {q: float(v) for q, v in zip(QS[:60], rng.normal(size=60))}}  # 60 queries, 50 shared
    r = bootstrap_delta(zs, row(m))
    assert r["seeds_a"] == ["zero-shot"] and r["n_queries"] == 50
    r1 = bootstrap_delta(zs, zs)
    assert r1["delta"] == 0 and r1["ci_low"] == r1["ci_high"] == 0 and r1["se"] == 0


def test_monte_carlo_error_of_the_bounds():
    rng = np.random.default_rng(8)
    base = rng.uniform(0.2, 0.8, 300)
    a, b = row(base + 0.02 + rng.normal(0, 0.1, (3, 300))), row(base + rng.normal(0, 0.1, (3, 300)))
    # it matches the spread of the bound over bootstrap seeds ...
    runs = [bootstrap_delta(a, b, n_boot=1000, seed=i) for i in range(40)]
    spread = np.std([r["ci_low"] for r in runs], ddof=1)
    reported = np.mean([r["ci_low_mc"] for r in runs])
    assert 0.6 < reported / spread < 1.6, (reported, spread)
    # ... and shrinks like 1 / sqrt(B): 16 times the replicates, about a quarter of the error
    big = np.mean([bootstrap_delta(a, b, n_boot=16000, seed=i)["ci_high_mc"] for i in range(5)])
    small = np.mean([r["ci_high_mc"] for r in runs])
    assert 3 < small / big < 5.5, (small, big)


def test_quantile_mc_se_ranks():
    u = np.arange(1, 10001) / 10001
    assert quantile_mc_se(u, 0.025) == pytest.approx((266 - 234) / 2 / 10001)  # ranks 250 -/+ 15.6
    assert quantile_mc_se(u[::-1], 0.975) == pytest.approx((9766 - 9734) / 2 / 10001)  # order of the input does not matter
    with pytest.raises(ValueError, match="0 < p < 1"):
        quantile_mc_se(u, 1.0)


def test_p_values():
    assert bootstrap_p(np.r_[-np.ones(9), np.ones(90)]) == pytest.approx(2 * 10 / 100)
    assert bootstrap_p(np.r_[np.zeros(50), np.ones(49)]) == 1.0  # half the replicates at 0 count on both sides
    assert equivalence_p(np.r_[np.full(5, -0.2), np.zeros(90), np.full(4, 0.2)], 0.1) == pytest.approx(6 / 100)
    assert equivalence_p(np.full(99, 0.1), 0.1) == 1.0  # at delta counts as not inside
    # under no difference the bootstrap p-value is not small, and the CI and the p-value agree at 5%
    rng = np.random.default_rng(9)
    base = rng.uniform(0.2, 0.8, 400)
    for shift in (0.0, 0.004, 0.008, 0.02):
        r = bootstrap_delta(
            row(base + shift + rng.normal(0, 0.05, (3, 400))), row(base + rng.normal(0, 0.05, (3, 400))), delta=0.02
        )
        assert (r["p_value"] < 0.05) == (r["ci_low"] > 0 or r["ci_high"] < 0), r
        assert (r["p_equivalence"] < 0.025) == (-0.02 < r["ci_low"] and r["ci_high"] < 0.02), r


def test_bootstrap_errors():
    a = {0: {"q1": 1.0, "q2": 2.0}, 1: {"q1": 1.0, "q3": 2.0}}
    with pytest.raises(ValueError, match=r"seeds of row a cover different queries \(seed 0: 2, seed 1: 2; 1 shared\)"):
        bootstrap_delta(a, {0: {"q1": 0.0}})
    with pytest.raises(ValueError, match="row b cover different"):
        bootstrap_delta({0: {"q1": 0.0}}, a)
    with pytest.raises(ValueError, match=r"at least 2 queries shared .* \(2 queries\) and b \(2\), got 1"):
        bootstrap_delta({0: {"q1": 1.0, "q2": 2.0}}, {0: {"q1": 1.0, "q3": 2.0}})
    with pytest.raises(ValueError, match="non-empty dict"):
        bootstrap_delta({}, {0: {"q1": 0.0}})
    with pytest.raises(ValueError, match="finite"):
        bootstrap_delta({0: {"q1": float("nan"), "q2": 1.0}}, {0: {"q1": 0.0, "q2": 0.0}})


# ---------------------------------------------------------------- Holm, adjusted verdict, strength
def test_holm_textbook():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.04, 0.001, 0.2]) == pytest.approx([0.08, 0.003, 0.2])  # monotone in the sorted order
    assert holm([0.3, 0.4]) == pytest.approx([0.6, 0.6]) and holm([0.6, 0.9]) == [1.0, 1.0]  # capped at 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, float("nan")])


def test_adjusted_verdict_in_a_family_of_11():
    p = 0.04  # just under 0.05 alone
    adjusted = holm([p] + [1.0] * 10)[0]
    assert adjusted == pytest.approx(0.44)
    assert verdict(0.001, 0.02, 1, 0.01) == "supported" and adjusted_verdict(0.01, p, 1.0, 1) == "supported"
    assert adjusted_verdict(0.01, adjusted, 1.0, 1) == "inconclusive"
    assert adjusted_verdict(0.01, holm([0.004] + [1.0] * 10)[0], 1.0, 1) == "supported"
    assert adjusted_verdict(-0.01, 0.001, 1.0, 1) == "contradicted" and adjusted_verdict(0.01, 0.001, 1.0, -1) == "contradicted"
    # no effect mirrors the CI rule: both one-sided tests at alpha / 2
    assert adjusted_verdict(0.0, 0.9, 0.02, 1) == "no effect" and adjusted_verdict(0.0, 0.9, 0.03, 1) == "inconclusive"
    assert adjusted_verdict(0.0, 0.9, None, 1) == "inconclusive"


@pytest.mark.parametrize(
    "lo,hi,sign,v,expected",
    [
        (0.02, 0.05, 1, "supported", "at least delta"),
        (0.005, 0.05, 1, "supported", "non-zero only"),
        (-0.05, -0.02, -1, "supported", "at least delta"),
        (-0.05, -0.005, -1, "supported", "non-zero only"),
        (-0.05, -0.02, 1, "contradicted", "at least delta"),
        (-0.05, -0.005, 1, "contradicted", "non-zero only"),
        (0.02, 0.05, -1, "contradicted", "at least delta"),
        (0.01, 0.05, -1, "contradicted", "non-zero only"),  # exactly delta is not beyond it
        (-0.005, 0.005, 1, "no effect", None),
        (-0.02, 0.05, 1, "inconclusive", None),
    ],
)
def test_strength(lo, hi, sign, v, expected):
    assert strength(lo, hi, sign, 0.01, v) == expected


# ---------------------------------------------------------------- shortcut per query and DiD
def test_per_query_shortcut():
    rows = [
        ["naive", "q1", 0.2, "mined"],
        ["naive", "q1", 0.4, "mined"],
        ["naive", "q1", 0.5, "naive"],
        ["naive", "q1", 0.3, "naive"],
        ["naive", "q2", 0.1, "mined"],
        ["naive", "q2", 0.1, "naive"],
        ["naive", "q3", 0.9, "naive"],
        ["causalneg", "q1", 0.0, "mined"],
        ["causalneg", "q1", 0.9, "causalneg"],
    ]
    pq = per_query_shortcut(rows, "naive")
    assert sorted(pq) == ["q1", "q2"]
    assert pq["q1"]["gap"] == pytest.approx(0.1) and pq["q1"]["auc"] == 0.75
    assert pq["q2"] == {"gap": 0.0, "auc": 0.5}
    assert per_query_shortcut(rows, "causalneg") == {"q1": {"gap": pytest.approx(0.9), "auc": 1.0}}
    assert per_query_shortcut(rows, "other") == {}


def test_bootstrap_did():
    rng = np.random.default_rng(5)

    def probe(shift, n=300):
        return [
            ["naive", f"q{i}", float(x + (shift if s != "mined" else 0)), s]
            for i in range(n)
            for s, x in zip(["mined"] * 3 + ["naive"] * 3, rng.normal(0, 0.1, 6))
        ]

    a = {s: per_query_shortcut(probe(0.10), "naive") for s in range(3)}
    b = {s: per_query_shortcut(probe(0.10), "naive") for s in range(2)}
    c = {s: per_query_shortcut(probe(0.02), "naive") for s in range(3)}
    assert verdict(**{k: bootstrap_did(a, c)[k] for k in ("ci_low", "ci_high")}, claimed_sign=1, delta=0.02) == "supported"
    assert bootstrap_did(a, c, "auc")["ci_low"] > 0
    r = bootstrap_did(a, b, n_boot=500, seed=1)
    assert r["ci_low"] < 0 < r["ci_high"] and r["seeds_b"] == [0, 1]
    with pytest.raises(ValueError, match="measure"):
        bootstrap_did(a, b, "mi")


def test_mde_paired():
    assert mde_paired(0.08, 200) == pytest.approx(0.01585, abs=1e-4)
    assert mde_paired(0.08, 200, power=0.5) == pytest.approx(1.959964 * 0.08 / math.sqrt(200), rel=1e-5)
    with pytest.raises(ValueError):
        mde_paired(0.08, 0)
