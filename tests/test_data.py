"""Bad-input matrix for the BEIR loader: every broken file fails with the file, the line and a fix."""

import json

import pytest

from causalneg.data import BeirFormatError, load_beir, write_beir

CORPUS = {"d1": {"title": "Ohm", "text": "A German physicist."}, "d2": {"title": "", "text": "A river."}}
QUERIES = {"q1": "german physicist", "q2": "a river"}
QRELS = {"test": {"q1": {"d1": 1}}, "dev": {"q2": {"d2": 1}}}


@pytest.fixture
def beir(tmp_path):
    write_beir(tmp_path, CORPUS, QUERIES, QRELS)
    return tmp_path


def test_round_trip(beir):
    corpus, queries, qrels = load_beir(beir, "dev")
    assert corpus == CORPUS and queries == {"q2": "a river"} and qrels == {"q2": {"d2": 1}}


def lines(*objs):
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs)


# (file to overwrite, its new content as bytes, split, substrings the error must contain)
CASES = {
    "malformed json": (
        "corpus.jsonl",
        lines({"_id": "d1", "text": "x"}, '{"_id": "d2", "text": '),
        "test",
        ["corpus.jsonl, line 2", "malformed JSON"],
    ),
    "missing _id": ("corpus.jsonl", lines({"text": "x"}), "test", ["line 1", "lacks field(s) ['_id']"]),
    "missing text": ("queries.jsonl", lines({"_id": "q1"}), "test", ["queries.jsonl, line 1", "['text']"]),
    "text not a string": ("corpus.jsonl", lines({"_id": "d1", "text": 3}), "test", ["line 1", "must be strings"]),
    "not an object": ("corpus.jsonl", lines([1, 2]), "test", ["line 1", "expected a JSON object"]),
    "duplicate doc id": (
        "corpus.jsonl",
        lines({"_id": "d1", "text": "x"}, {"_id": "d2", "text": "y"}, {"_id": "d1", "text": "z"}),
        "test",
        ["corpus.jsonl, line 3", "duplicate `_id` 'd1'"],
    ),
    "duplicate query id": (
        "queries.jsonl",
        lines({"_id": "q1", "text": "x"}, {"_id": "q1", "text": "y"}),
        "test",
        ["queries.jsonl, line 2", "duplicate"],
    ),
    "empty corpus": ("corpus.jsonl", "", "test", ["corpus.jsonl is empty"]),
    "blank-only queries": ("queries.jsonl", "\n\n  \n", "test", ["queries.jsonl is empty"]),
    "non-utf8": (
        "corpus.jsonl",
        lines({"_id": "d1", "text": "ok"}).encode() + b'{"_id": "d2", "text": "caf\xe9"}\n',
        "test",
        ["corpus.jsonl, line 2", "not UTF-8", "iconv"],
    ),
    "qrels unknown query": (
        "qrels/test.tsv",
        "query-id\tcorpus-id\tscore\nq9\td1\t1\n",
        "test",
        ["query 'q9'", "not in queries.jsonl"],
    ),
    "qrels unknown doc": ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td9\t1\n", "test", ["['d9']", "not in corpus.jsonl"]),
    "qrels wrong columns": (
        "qrels/test.tsv",
        "query-id\tcorpus-id\tscore\nq1 d1 1\n",
        "test",
        ["test.tsv, line 2", "3 tab-separated"],
    ),
    "qrels bad score": (
        "qrels/test.tsv",
        "query-id\tcorpus-id\tscore\nq1\td1\thigh\n",
        "test",
        ["line 2", "'high' is not a number"],
    ),
    "qrels duplicate": (
        "qrels/test.tsv",
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t1\n",
        "test",
        ["line 3", "duplicate judgement"],
    ),
    "qrels empty": ("qrels/test.tsv", "", "test", ["test.tsv is empty"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(beir, case):
    fname, content, split, expected = CASES[case]
    path = beir / fname
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BeirFormatError) as err:
        load_beir(beir, split)
    for part in expected:
        assert part in str(err.value), f"{case}: {part!r} not in {err.value}"


def test_missing_split_lists_available(beir):
    with pytest.raises(BeirFormatError, match=r"no split 'train'.*Available splits: \['dev', 'test'\]"):
        load_beir(beir, "train")


def test_missing_files(beir, tmp_path):
    (beir / "corpus.jsonl").unlink()
    with pytest.raises(BeirFormatError, match="corpus.jsonl does not exist"):
        load_beir(beir, "test")
    with pytest.raises(BeirFormatError, match="is not a folder"):
        load_beir(tmp_path / "nowhere", "test")


def test_trec_style_qrels_and_no_header(beir):
    (beir / "qrels" / "test.tsv").write_text("q1\t0\td1\t2\n")
    assert load_beir(beir, "test")[2] == {"q1": {"d1": 2}}
