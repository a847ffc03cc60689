"""Source bias (Cocktail's Relative Δ): a fake encoder that favours an "LLM style" marker must show it; bad inputs fail clearly."""

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from causalneg.source_bias import NQ_UTD, load_cocktail, probe_objective, relative_delta, relative_delta_ci, source_preference

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUMAN = {
    "d1": "lima is the capital of peru",
    "d2": "quito is the capital of ecuador",
    "d3": "the tiger is the largest cat",
    "d4": "lions live in prides on the savanna",
    "d5": "macau has a population of about seven hundred thousand",
    "d6": "a german mathematician proved the theorem",
}
QUERIES = {"q1": "capital of peru", "q2": "largest cat", "q3": "population of macau"}
QRELS = {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 2, "d4": 1}, "q3": {"d5": 1, "d6": 0}}


def write_tiny(folder, human=HUMAN, llm=None, llm_name="llm-style", qrels=QRELS, extra_corpus=False):
    (folder / "corpus").mkdir(parents=True)
    (folder / "qrels").mkdir()
    llm = {k: f"{v} delve" for k, v in human.items()} if llm is None else llm
    corpora = [("human", human), (llm_name, llm)] + ([("other", llm)] if extra_corpus else [])
    for name, c in corpora:
        rows = "".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in c.items())
        (folder / "corpus" / f"{name}.jsonl").write_text(rows)
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in QUERIES.items()))
    tsv = "".join(f"{q}\t{d}\t{g}\n" for q, v in qrels.items() for d, g in v.items())
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + tsv)
    return folder


class StyleEncoder:
    "Hashed bag of words (the marker excluded), plus a fixed bonus on the query's extra axis for documents holding `marker`."

    def __init__(self, marker="delve", bonus=0.6, dim=64):
        self.marker, self.bonus, self.dim = marker, bonus, dim

    def get_sentence_embedding_dimension(self):
        return self.dim + 1

    def _embed(self, texts, extra):
        out = []
        for t in texts:
            v = np.zeros(self.dim)
            for w in re.findall(r"[a-z]+", t.lower()):
                if w != self.marker:
                    v[int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1
            e = extra(t)
            out.append(np.r_[v / np.linalg.norm(v) * math.sqrt(1 - e * e), e])
        return np.array(out, dtype=np.float32)

    def encode_query(self, texts, **kw):
        return self._embed(texts, lambda t: 0.5)

    def encode_document(self, texts, **kw):
        return self._embed(texts, lambda t: self.bonus if self.marker in t.lower().split() else 0.0)


def test_style_bonus_shows_as_negative_relative_delta(tmp_path):
    r = source_preference(StyleEncoder(), load_cocktail(write_tiny(tmp_path / "t")))
    assert (r["queries"], r["pairs"], r["corpus"]) == (3, 4, "llm-style")
    assert r["relative_delta"] < 0 and r["mean_pref"] < 0 and r["human_higher_share"] == 0
    assert r["relative_delta"] == pytest.approx(relative_delta(r["ndcg_human"], r["ndcg_llm"]))
    assert set(r["per_pair"]) == {"q1/d1", "q2/d3", "q2/d4", "q3/d5"} and all(v < 0 for v in r["per_pair"].values())
    assert r["relative_delta_alone"] == pytest.approx(0, abs=1e-9)  # each side filtered alone cannot see a uniform bonus
    none = source_preference(StyleEncoder(bonus=0.0), load_cocktail(write_tiny(tmp_path / "n")))
    assert none["mean_pref"] == pytest.approx(0, abs=1e-6)


def test_swapping_the_corpora_flips_the_sign(tmp_path):
    d = load_cocktail(write_tiny(tmp_path / "t"))
    a = source_preference(StyleEncoder(), d)
    b = source_preference(StyleEncoder(), load_cocktail(write_tiny(tmp_path / "s", human=d.llm, llm=d.human)))
    assert b["relative_delta"] > 0 and b["mean_pref"] > 0 and b["human_higher_share"] == 1
    assert b["mean_pref"] == pytest.approx(-a["mean_pref"], abs=1e-6)


def test_zip_loads_like_the_folder(tmp_path):
    folder = write_tiny(tmp_path / "t")
    z = tmp_path / "t.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in folder.rglob("*.*"):
            f.write(p, "nq/" + p.relative_to(folder).as_posix())  # with a top folder
    a, b = load_cocktail(folder), load_cocktail(z)
    assert (a.human, a.llm, a.queries, a.qrels, a.llm_name) == (b.human, b.llm, b.queries, b.qrels, b.llm_name)


def test_vendored_nq_utd_loads():
    d = load_cocktail(os.path.join(ROOT, NQ_UTD))
    assert (len(d.human), len(d.llm), len(d.queries), d.llm_name) == (800, 800, 80, "llama-2-7b-chat-tmp0.2")
    assert sum(len(v) for v in d.qrels.values()) == 800


@pytest.mark.parametrize(
    "kw, remove, parts",
    [
        ({}, "corpus/human.jsonl", ["corpus/human.jsonl is missing"]),
        ({}, "corpus/llm-style.jsonl", ["exactly one LLM corpus", "found 0"]),
        ({"extra_corpus": True}, None, ["exactly one LLM corpus", "found 2"]),
        ({"llm": {"d1": "x", "d9": "y"}}, None, ["different ids", "d9"]),
        ({"qrels": {"q9": {"d1": 1}}}, None, ["qrels/test.tsv", "query id", "q9"]),
        ({"qrels": {"q1": {"d7": 1}}}, None, ["qrels/test.tsv", "document id", "d7"]),
    ],
)
def test_bad_folders(tmp_path, kw, remove, parts):
    folder = write_tiny(tmp_path / "t", **kw)
    if remove:
        (folder / remove).unlink()
    with pytest.raises(ValueError) as e:
        load_cocktail(folder)
    assert all(p in str(e.value) for p in parts), str(e.value)


def test_ci_and_probe_objective():
    rng = np.random.default_rng(0)
    rows = {
        s: {f"q{i}": {"ndcg_human": h, "ndcg_llm": h + 0.1} for i, h in enumerate(rng.uniform(0.3, 0.7, 30))} for s in range(2)
    }
    ci = relative_delta_ci(rows, n_boot=1000)
    assert ci["ci_low"] <= ci["relative_delta"] <= ci["ci_high"] < 0
    e = math.e
    rows = [["g", "a", 0.0, "mined"], ["g", "a", 0.1, "g"], ["g", "a", 0.1, "g"]]
    p = probe_objective(rows, "g")["a"]
    assert p["pg_minus_target"] == pytest.approx(2 * e / (1 + 2 * e) - 2 / 3)
    assert (p["h_ratio"], p["auc_dev"]) == (pytest.approx(1.0), pytest.approx(0.5))
    up = probe_objective([[g, q, s + 0.05 * (src != "mined"), src] for g, q, s, src in rows], "g")["a"]
    assert up["pg_minus_target"] > p["pg_minus_target"]


def _cli(*args):
    cmd = [sys.executable, "-m", "causalneg.source_bias", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)


def test_cli_missing_folder_one_line(tmp_path):
    r = _cli("packaged:all-MiniLM-L6-v2", tmp_path / "missing")
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_cli_packaged_minilm(tmp_path):
    out = tmp_path / "r.json"
    r = _cli("packaged:all-MiniLM-L6-v2", write_tiny(tmp_path / "t"), "--threads", "1", "--device", "cpu", "--json", out)
    assert r.returncode == 0, r.stderr
    assert "Relative Δ" in r.stdout and "relevant pairs" in r.stdout
    res = json.loads(out.read_text())
    assert res["pairs"] == 4 and math.isfinite(res["relative_delta"]) and res["max_seq_length"] > 0
