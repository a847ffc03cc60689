"""Issue 13: faults an audit found in the BEIR reader and writer (BOM, graded/non-finite scores, lone surrogates,
ids that TREC runs and qrels cannot carry, non-atomic writes). Each refusal names the file and the line."""

import pytest

import causalneg.data as data
from causalneg.data import BeirFormatError, load_beir, write_beir

CORPUS = {"d1": {"title": "Ohm", "text": "A German physicist."}, "d2": {"title": "", "text": "A river."}}
QUERIES = {"q1": "german physicist", "q2": "a river"}
QRELS = {"test": {"q1": {"d1": 1}}, "dev": {"q2": {"d2": 1}}}
HEADER = "query-id\tcorpus-id\tscore\n"
BOM = b"\xef\xbb\xbf"


@pytest.fixture
def beir(tmp_path):
    write_beir(tmp_path, CORPUS, QUERIES, QRELS)
    return tmp_path


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


D1 = '{"_id": "d1", "text": "ok"}\n'
Q1 = '{"_id": "q1", "text": "ok"}\n'

# (file to overwrite, new content, substrings the error must contain: always the file and the line)
BAD = {
    "graded score 0.5": (
        "qrels/test.tsv",
        HEADER + "q1\td1\t0.5\n",
        ["test.tsv, line 2", "'0.5' is not an integer", "BEIR relevance scores are integers"],
    ),
    "score inf": ("qrels/test.tsv", HEADER + "q1\td1\tinf\n", ["test.tsv, line 2", "'inf' is not a finite number", "integers"]),
    "score -inf": ("qrels/test.tsv", HEADER + "q1\td1\t-inf\n", ["test.tsv, line 2", "not a finite number"]),
    "score nan": ("qrels/test.tsv", HEADER + "q1\td1\tnan\n", ["test.tsv, line 2", "not a finite number"]),
    "score overflowing to inf": ("qrels/test.tsv", HEADER + "q1\td1\t1e400\n", ["test.tsv, line 2", "not a finite number"]),
    "score not a number": ("qrels/test.tsv", HEADER + "q1\td1\tyes\n", ["test.tsv, line 2", "not a number", "integers"]),
    "bom then bad score": (
        "qrels/test.tsv",
        BOM + (HEADER + "q1\td1\t1\nq1\td2\t2.5\n").encode(),
        ["test.tsv, line 3", "not an integer"],
    ),
    "bom in qrels without header, bad score": ("qrels/test.tsv", BOM + b"q1\td1\t0.25\n", ["test.tsv, line 1", "not an integer"]),
    "lone high surrogate in text": (
        "corpus.jsonl",
        D1 + '{"_id": "d2", "text": "bad \\ud800 escape"}\n',
        ["corpus.jsonl, line 2", "['text']", "lone surrogate"],
    ),
    "lone low surrogate in title": (
        "corpus.jsonl",
        '{"_id": "d1", "title": "\\uDC00", "text": "x"}\n',
        ["corpus.jsonl, line 1", "['title']", "lone surrogate"],
    ),
    "reversed surrogate pair": (
        "corpus.jsonl",
        D1 + '{"_id": "d2", "text": "\\ude00\\ud83d"}\n',
        ["corpus.jsonl, line 2", "lone surrogate"],
    ),
    "lone surrogate in query": (
        "queries.jsonl",
        Q1 + '{"_id": "q2", "text": "\\ud83d"}\n',
        ["queries.jsonl, line 2", "lone surrogate"],
    ),
    "lone surrogate in id": ("corpus.jsonl", '{"_id": "d\\ud800", "text": "x"}\n', ["corpus.jsonl, line 1", "['_id']"]),
    "doc id with space": ("corpus.jsonl", D1 + '{"_id": "d 2", "text": "x"}\n', ["corpus.jsonl, line 2", "'d 2'", "whitespace"]),
    "doc id with tab": ("corpus.jsonl", '{"_id": "d\\t1", "text": "x"}\n', ["corpus.jsonl, line 1", "whitespace", "TREC"]),
    "doc id with newline": ("corpus.jsonl", '{"_id": "d\\n1", "text": "x"}\n', ["corpus.jsonl, line 1", "whitespace"]),
    "doc id with no-break space": ("corpus.jsonl", '{"_id": "d\\u00a01", "text": "x"}\n', ["corpus.jsonl, line 1", "whitespace"]),
    "doc id with trailing space": ("corpus.jsonl", '{"_id": "d1 ", "text": "x"}\n', ["corpus.jsonl, line 1", "whitespace"]),
    "query id with space": ("queries.jsonl", Q1 + Q1.replace("q1", "q 2"), ["queries.jsonl, line 2", "whitespace"]),
    "empty doc id": ("corpus.jsonl", D1 + '{"_id": "", "text": "x"}\n', ["corpus.jsonl, line 2", "empty `_id`"]),
    "qrels query id with space": (
        "qrels/test.tsv",
        HEADER + "q 1\td1\t1\n",
        ["test.tsv, line 2", "query-id 'q 1'", "whitespace"],
    ),
    "qrels doc id with space": ("qrels/test.tsv", HEADER + "q1\td 1\t1\n", ["test.tsv, line 2", "corpus-id 'd 1'", "whitespace"]),
    "qrels empty doc id": ("qrels/test.tsv", HEADER + "q1\t\t1\n", ["test.tsv, line 2", "corpus-id", "is empty"]),
    "qrels empty query id": ("qrels/test.tsv", HEADER + "\td1\t1\n", ["test.tsv, line 2", "query-id", "is empty"]),
    "bom then malformed json": (
        "corpus.jsonl",
        BOM + (D1 + '{"_id": "d2", ').encode(),
        ["corpus.jsonl, line 2", "malformed JSON"],
    ),
    "bom then non-utf8": (
        "queries.jsonl",
        BOM + Q1.encode() + b'{"_id": "q2", "text": "caf\xe9"}\n',
        ["queries.jsonl, line 2", "not UTF-8"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(beir, case):
    fname, content, expected = BAD[case]
    (beir / fname).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BeirFormatError) as err:
        load_beir(beir, "test")
    for part in expected:
        assert part in str(err.value), f"{case}: {part!r} not in {err.value}"
    with pytest.raises(BeirFormatError):  # check_beir (the downloader's validation) refuses the same
        data.check_beir(beir)


@pytest.mark.parametrize("fname", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_bom_is_skipped_in_every_file(beir, fname):
    path = beir / fname
    path.write_bytes(BOM + path.read_bytes())
    assert load_beir(beir, "test") == ({"d1": CORPUS["d1"], "d2": CORPUS["d2"]}, {"q1": "german physicist"}, {"q1": {"d1": 1}})


def test_integral_scores_kept_graded_scores_exact(beir):
    (beir / "qrels" / "test.tsv").write_text(HEADER + "q1\td1\t2.0\nq1\td2\t-1\n")
    assert load_beir(beir, "test")[2] == {"q1": {"d1": 2, "d2": -1}}


def test_valid_surrogate_pair_and_line_separators_round_trip(tmp_path):
    corpus = {"d1": {"title": "smile \U0001f600", "text": "a\u2028b\u2029c\x85d\x0be\x1cf"}}
    write_beir(tmp_path, corpus, {"q1": "x\u2028y"}, {"test": {"q1": {"d1": 1}}})
    assert load_beir(tmp_path, "test") == (corpus, {"q1": "x\u2028y"}, {"q1": {"d1": 1}})
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "\\ud83d\\ude00"}\n')
    assert load_beir(tmp_path, "test")[0]["d1"]["text"] == "\U0001f600"


def test_ids_with_quotes_round_trip_through_qrels_and_trec_runs(tmp_path):
    from causalneg.eval import read_trec_run, write_trec_run

    corpus = {'"Weird_Al"_Yankovic': {"title": "", "text": "x"}, "it's,a;doc\\": {"title": "", "text": "y"}}
    queries = {'q"1': "who"}
    qrels = {'q"1': {'"Weird_Al"_Yankovic': 1, "it's,a;doc\\": 0}}
    write_beir(tmp_path, corpus, queries, {"test": qrels})
    assert load_beir(tmp_path, "test") == (corpus, queries, qrels)
    write_trec_run({'q"1': {'"Weird_Al"_Yankovic': 0.9, "it's,a;doc\\": 0.1}}, tmp_path / "test.run")
    assert read_trec_run(tmp_path / "test.run") == {'q"1': {'"Weird_Al"_Yankovic': 0.9, "it's,a;doc\\": 0.1}}


# write_beir refuses what load_beir would refuse, before writing anything: (corpus, queries, qrels, message)
BAD_WRITES = {
    "doc id with space": ({"d 1": {"text": "x"}}, {"q1": "y"}, {}, "corpus id 'd 1' contains whitespace"),
    "doc id with tab": ({"d\t1": {"text": "x"}}, {"q1": "y"}, {}, "whitespace"),
    "query id with newline": ({"d1": {"text": "x"}}, {"q\n1": "y"}, {}, "queries id 'q\\n1' contains whitespace"),
    "empty doc id": ({"": {"text": "x"}}, {"q1": "y"}, {}, "is empty"),
    "non-string id": ({1: {"text": "x"}}, {"q1": "y"}, {}, "not a string"),
    "empty corpus": ({}, {"q1": "y"}, {}, "corpus is empty"),
    "text not a string": ({"d1": {"text": None}}, {"q1": "y"}, {}, "no string `text`"),
    "graded score 0.5": ({"d1": {"text": "x"}}, {"q1": "y"}, {"test": {"q1": {"d1": 0.5}}}, "not integers"),
    "score inf": ({"d1": {"text": "x"}}, {"q1": "y"}, {"test": {"q1": {"d1": float("inf")}}}, "not integers"),
    "score bool": ({"d1": {"text": "x"}}, {"q1": "y"}, {"test": {"q1": {"d1": True}}}, "not integers"),
    "unknown query": ({"d1": {"text": "x"}}, {"q1": "y"}, {"test": {"q9": {"d1": 1}}}, "query 'q9'"),
    "unknown doc": ({"d1": {"text": "x"}}, {"q1": "y"}, {"test": {"q1": {"d9": 1}}}, "['d9']"),
    "bad split name": ({"d1": {"text": "x"}}, {"q1": "y"}, {"../test": {"q1": {"d1": 1}}}, "split name"),
    "lone surrogate in text": (
        {"d1": {"text": "x"}, "d2": {"text": "bad \ud800"}},
        {"q1": "y"},
        {},
        "document 'd2' holds invalid Unicode",
    ),
    "lone surrogate in query": ({"d1": {"text": "x"}}, {"q1": "\udfff"}, {}, "query 'q1' holds invalid Unicode"),
}


@pytest.mark.parametrize("case", sorted(BAD_WRITES))
def test_write_refuses_and_leaves_folder_intact(beir, case):
    corpus, queries, qrels, message = BAD_WRITES[case]
    before = snapshot(beir)
    with pytest.raises(BeirFormatError, match="write_beir") as err:
        write_beir(beir, corpus, queries, qrels)
    assert message in str(err.value), f"{case}: {message!r} not in {err.value}"
    assert snapshot(beir) == before  # same files, same bytes, no temporary files left behind


class FailingFile:
    "A text file that raises OSError (a full disk) once more than `limit` characters have been written."

    def __init__(self, f, limit):
        self.f, self.limit, self.n = f, limit, 0

    def write(self, s):
        self.n += len(s)
        if self.n > self.limit:
            self.f.write(s[: len(s) // 2])
            raise OSError(28, "No space left on device")
        return self.f.write(s)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return self.f.__exit__(*a)


@pytest.mark.parametrize("fail_on", ["corpus.jsonl", "test.tsv"])
def test_atomic_write_keeps_old_files_on_failure_mid_write(beir, monkeypatch, fail_on):
    before = snapshot(beir)
    big = {f"d{i}": {"title": "", "text": "word " * 50} for i in range(200)}
    queries = {"q1": "a query"}

    def flaky_open(path, *args, **kw):
        f = open(path, *args, **kw)
        return FailingFile(f, 500) if fail_on in str(path) else f

    monkeypatch.setattr(data, "open", flaky_open, raising=False)
    with pytest.raises(OSError, match="No space left"):
        write_beir(beir, big, queries, {"test": {"q1": {f"d{i}": 1 for i in range(200)}}})
    monkeypatch.undo()
    # nothing replaced (not even the files written completely before the failure), no temporary file left
    assert snapshot(beir) == before
    assert load_beir(beir, "test")[0] == CORPUS


def test_atomic_write_replaces_all_files_on_success(beir):
    corpus = {"n1": {"title": "New", "text": "new text"}}
    write_beir(beir, corpus, {"p1": "new query"}, {"test": {"p1": {"n1": 3}}})
    assert load_beir(beir, "test") == (corpus, {"p1": "new query"}, {"p1": {"n1": 3}})
    assert not [p for p in beir.rglob("*.tmp")]
