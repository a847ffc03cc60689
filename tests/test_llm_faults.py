"""Faults of the transport, against the scripted loopback server (tests/fake_openai.py): issue 13, LLM part.

For each fault the tests assert what is lost (nothing), what is repeated (nothing but calls in flight),
what is cached (never a transport failure) and what is said (the endpoint is named, no key appears
in any message, warning, log, ledger row or cache record).
"""

import hashlib, json, logging, os, subprocess, sys, threading, time, traceback, warnings
from pathlib import Path

import pytest

import causalneg.llm as L
from causalneg.llm import (
    LLMCallError,
    LLMClient,
    LLMConfig,
    LLMMapError,
    LLMOutputError,
    Ledger,
    ResponseCache,
    failure_key,
    request_key,
)
from fake_openai import FakeOpenAI, body, echo_key, huge, ok, raw, status, trickle

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECRET = "sk" + "-faults-" + "x7Qp2Lm9Zr4Tn8Vw3Ks6"  # built at run time: no key-shaped literal in the repo
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["answer"],
    "properties": {"answer": {"type": "string", "minLength": 2}},
}
MSGS = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Capital of France?"}]
HTML = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("CAUSALNEG_TEST_KEY", SECRET)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def fake():
    with FakeOpenAI() as srv:
        yield srv


def client(fake, tmp_path, **kw):
    base = dict(
        model="fake-model",
        base_url=fake.base_url,
        api_key_env="CAUSALNEG_TEST_KEY",
        timeout=5.0,
        max_retries=3,
        backoff_base=0.01,
        backoff_max=0.05,
        allow_local=False,
    )
    return LLMClient(LLMConfig(**{**base, **kw}), tmp_path / "cache", progress=False)


def key_of(c, msgs=MSGS, name="output"):
    return request_key(c.config.model, msgs, {**c.config.decoding(), "json_schema": {"name": name, "schema": SCHEMA}})


def ledger_rows(tmp_path):
    p = tmp_path / "cache" / "ledger.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []


def all_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def assert_no_secret(tmp_path, *texts):
    for t in texts:
        assert SECRET not in t and SECRET[8:] not in t
    assert SECRET[8:] not in all_text(tmp_path)


def strict_jsonl(folder: Path):
    for shard in folder.glob("*.jsonl"):  # the shards and the ledger
        data = shard.read_bytes()
        assert not data or data.endswith(b"\n"), shard
        for line in data.decode().splitlines():
            json.loads(line)


# ---- 1. transport vs content ----


@pytest.mark.parametrize(
    "bad, outcome",
    [
        (raw(HTML), "bad_body"),  # a proxy's HTML page, status 200
        (raw('{"id": "x", "choices": [{"message": ', content_type="application/json"), "bad_body"),  # malformed JSON
        (body({"id": "x", "object": "chat.completion", "choices": []}), "no_choices"),
        (body({"error": {"message": "model overloaded", "type": "server_error"}}), "error_object"),
        (body(["not", "an", "object"]), "bad_body"),
    ],
)
def test_a_200_that_is_not_a_completion_is_retried_logged_and_never_cached(fake, tmp_path, bad, outcome):
    fake.script = [bad, ok({"answer": "Paris"})]
    c = client(fake, tmp_path)
    assert c.chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
    assert len(fake.requests) == 2 and fake.requests[0] == fake.requests[1]  # asked again, same request
    s = c.ledger.summary()
    assert s["outcomes"] == {outcome: 1, "ok": 1} and s["retries"] == 1 and s["repairs"] == 0
    rows = ledger_rows(tmp_path)
    assert rows[0]["outcome"] == outcome and rows[0]["endpoint"] == fake.base_url and "HTTP 200" in rows[0]["error"]
    assert c.cache.get(failure_key(key_of(c))) is None and c.cache.get(key_of(c))["repairs"] == []


def test_transport_failures_beyond_the_budget_name_the_endpoint_and_a_rerun_asks_again(fake, tmp_path):
    fake.script = [raw(HTML), body({"choices": []}), body({"error": {"message": "overloaded"}})]
    c = client(fake, tmp_path, max_retries=2)
    with pytest.raises(LLMCallError) as ei:
        c.chat_json(MSGS, SCHEMA)
    msg = str(ei.value)
    assert fake.base_url in msg and "after 3 attempts" in msg and "error_object" in msg and "Nothing was cached" in msg
    assert ei.value.endpoint == fake.base_url and ei.value.outcome == "error_object"
    assert len(c.cache) == 0 and not list((tmp_path / "cache").glob("[0-9a-f][0-9a-f].jsonl"))  # no "empty reply" failure stored
    assert [r["outcome"] for r in ledger_rows(tmp_path)] == ["bad_body", "no_choices", "error_object"]
    # the endpoint recovers: a fresh run (another process) asks again and stores the answer
    fake.script = [ok({"answer": "Paris"})]
    c2 = client(fake, tmp_path)
    assert c2.chat_json(MSGS, SCHEMA) == {"answer": "Paris"} and len(fake.requests) == 4
    assert client(fake, tmp_path).chat_json(MSGS, SCHEMA) == {"answer": "Paris"} and len(fake.requests) == 4


def test_map_rerun_after_recovery_asks_again_exactly_the_transport_failures(fake, tmp_path):
    msgs = lambda i: [{"role": "user", "content": f"item {i}"}]
    broken = {1, 4, 5}
    healthy = threading.Event()

    def responder(b, n):
        i = int(b["messages"][-1]["content"].split()[1])
        if i in broken and not healthy.is_set():
            return [raw(HTML), body({"choices": []}), body({"error": {"message": "down"}})][n % 3]
        return ok({"answer": f"a{i}"})

    fake.responder = responder
    c = client(fake, tmp_path, max_retries=1, concurrency=3)
    with pytest.raises(LLMMapError) as ei:
        c.map(lambda i: c.chat_json(msgs(i), SCHEMA), range(8))
    assert set(ei.value.errors) == broken and all(isinstance(e, LLMCallError) for e in ei.value.errors.values())
    assert ei.value.results[0] == {"answer": "a0"}
    assert len(ResponseCache(tmp_path / "cache")) == 5  # only the good ones
    first = len(fake.requests)
    healthy.set()
    c2 = client(fake, tmp_path, max_retries=1, concurrency=3)
    assert c2.map(lambda i: c2.chat_json(msgs(i), SCHEMA), range(8)) == [{"answer": f"a{i}"} for i in range(8)]
    again = sorted(int(r["messages"][-1]["content"].split()[1]) for r in fake.requests[first:])
    assert again == sorted(broken)  # nothing else paid twice
    assert c2.ledger.summary()["cache_hits"] == 5


def test_an_old_record_of_an_empty_reply_without_finish_reason_is_asked_again(fake, tmp_path):
    c = client(fake, tmp_path, repair_retries=0)
    k = key_of(c)
    c.cache.put(
        failure_key(k),
        {"failure_of": k, "errors": ["the reply was empty"], "response": "", "finish_reason": None, "repair_retries": 2},
    )  # what an old client cached for choices: []
    fake.script = [ok({"answer": "Paris"})]
    assert c.chat_json(MSGS, SCHEMA) == {"answer": "Paris"} and len(fake.requests) == 1


def test_a_well_formed_invalid_completion_is_a_content_failure_and_is_cached(fake, tmp_path):
    fake.script = [ok("not json at all")] * 2
    c = client(fake, tmp_path, repair_retries=1)
    with pytest.raises(LLMOutputError):
        c.chat_json(MSGS, SCHEMA)
    assert c.cache.get(failure_key(key_of(c)))["errors"][0].startswith("the reply is not valid JSON")
    with pytest.raises(LLMOutputError) as ei:  # replayed, no call
        client(fake, tmp_path, repair_retries=1).chat_json(MSGS, SCHEMA)
    assert ei.value.replayed and len(fake.requests) == 2


# ---- 2. deadlines and caps ----


def test_timeout_is_a_total_deadline_even_when_the_server_trickles_bytes(fake, tmp_path):
    fake.script = [trickle({"answer": "Paris"}, interval=0.2, chunk=4)]  # ~60 reads of 0.2 s: 12 s
    c = client(fake, tmp_path, timeout=1.0, max_retries=0)
    t0 = time.monotonic()
    with pytest.raises(LLMCallError, match="deadline") as ei:
        c.chat_json(MSGS, SCHEMA)
    took = time.monotonic() - t0
    assert 0.9 <= took < 2.0, took and fake.base_url in str(ei.value)
    assert c.ledger.summary()["outcomes"] == {"timeout": 1} and len(c.cache) == 0
    fake.script = [trickle({"answer": "Paris"}, interval=0.2, chunk=4), ok({"answer": "Paris"})]
    t0 = time.monotonic()
    assert client(fake, tmp_path, timeout=1.0, max_retries=1).chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
    assert time.monotonic() - t0 < 2.5


def test_a_reply_far_over_max_tokens_is_refused_and_not_stored(fake, tmp_path):
    fake.script = [huge(8_000_000), ok({"answer": "Paris"})]
    c = client(fake, tmp_path, max_tokens=64)
    t0 = time.monotonic()
    assert c.chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
    assert time.monotonic() - t0 < 3
    assert c.ledger.summary()["outcomes"] == {"oversize": 1, "ok": 1}
    assert "max_tokens=64" in ledger_rows(tmp_path)[0]["error"]
    assert sum(p.stat().st_size for p in (tmp_path / "cache").glob("*.jsonl")) < 20_000


def test_a_repair_turn_never_resends_a_big_invalid_reply(fake, tmp_path):
    fake.script = [ok("y" * 15_000), ok({"answer": "Paris"})]  # under the body cap, invalid
    c = client(fake, tmp_path, max_tokens=64)
    assert c.chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
    quoted = fake.requests[1]["messages"][2]
    assert quoted["role"] == "assistant" and len(quoted["content"]) < 700 and "cut" in quoted["content"]


def test_a_huge_retry_after_fails_at_once_and_a_small_one_is_announced(fake, tmp_path, caplog):
    fake.script = [status(429, retry_after=3600, message="slow down")]
    c = client(fake, tmp_path, max_retry_after=5.0)
    t0 = time.monotonic()
    with pytest.raises(LLMCallError) as ei:
        c.chat_json(MSGS, SCHEMA)
    assert time.monotonic() - t0 < 1.0 and len(fake.requests) == 1
    assert all(w in str(ei.value) for w in ("3600 s", "Retry-After", "llm.max_retry_after", fake.base_url))
    assert len(c.cache) == 0
    fake.script = [status(429, retry_after=1), ok({"answer": "Paris"})]
    with caplog.at_level(logging.WARNING, logger="causalneg.llm"):
        t0 = time.monotonic()
        assert client(fake, tmp_path, max_retry_after=5.0).chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
        assert 1.0 <= time.monotonic() - t0 < 3.0
    said = caplog.text
    assert "waiting 1." in said and "Retry-After 1 s" in said and fake.base_url in said and "http_429" in said


# ---- 3. one writer per key ----


def test_threads_asking_for_one_key_pay_once(fake, tmp_path):
    fake.responder = lambda b, n: ok({"answer": "Paris"}, delay=0.3)
    c = client(fake, tmp_path, concurrency=8)
    out = c.map(lambda _: c.chat_json(MSGS, SCHEMA), range(8))
    assert out == [{"answer": "Paris"}] * 8 and len(fake.requests) == 1
    assert c.ledger.summary()["cache_hits"] == 7


def test_claims_are_per_key_so_distinct_calls_stay_parallel(fake, tmp_path):
    # every reply waits until all 8 requests are at the server: serialised calls break the barrier (no timing)
    barrier = threading.Barrier(8, timeout=30)

    def responder(b, n):
        barrier.wait()
        return ok({"answer": "Paris"})

    fake.responder = responder
    c = client(fake, tmp_path, concurrency=8)
    out = c.map(lambda i: c.chat_json([{"role": "user", "content": f"q {i}"}], SCHEMA), range(8))
    assert out == [{"answer": "Paris"}] * 8 and fake.max_in_flight == 8 and not barrier.broken
    assert [p.name for p in (tmp_path / "cache" / ".claims").iterdir()] == [".gitignore"]  # claims released


def test_two_processes_sharing_a_cache_never_pay_twice_for_a_key(fake, tmp_path):
    def responder(b, n):
        i = int(b["messages"][-1]["content"].split()[1])
        return ok({"item": i, "text": "negative"}, delay=0.4)

    fake.responder = responder
    folder, go = tmp_path / "cache", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}", "OMP_NUM_THREADS": "1"}
    procs, ready = [], []
    for order in ("fwd", "rev"):
        r = tmp_path / f"ready-{order}"
        ready.append(r)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "llm_faults_worker.py"),
                    fake.base_url,
                    str(folder),
                    "16",
                    "4",
                    order,
                    str(r),
                    str(go),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.write_text("go")
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    for o, _ in outs:
        res = json.loads(o.strip().splitlines()[-1])["results"]
        assert sorted(r["item"] for r in res) == list(range(16))
    seen = [b["messages"][-1]["content"] for b in fake.requests]
    assert len(seen) == 16 and len(set(seen)) == 16  # each key at most once: all once
    assert fake.max_in_flight > 4  # both processes called at once
    assert len(ResponseCache(folder)) == 16 and Ledger.read(folder / "ledger.jsonl")["calls"] == 16
    strict_jsonl(folder)


def test_a_torn_tail_is_cut_on_open_and_a_lost_newline_is_restored(tmp_path):
    folder = tmp_path / "cache"
    c = ResponseCache(folder)
    k1, k2, k3 = (hashlib.sha256(s.encode()).hexdigest() for s in ("one", "two", "three"))
    k2 = k1[:2] + k2[2:]
    k3 = k1[:2] + k3[2:]  # one shard
    assert c.put(k1, {"parsed": {"x": 1}})
    shard = folder / f"{k1[:2]}.jsonl"
    rec = json.dumps({"key": k2, "parsed": {"x": 2}}, sort_keys=True)
    with open(shard, "a") as f:
        f.write(rec[:25])  # kill -9 mid-write
    with pytest.warns(UserWarning, match="torn by a killed writer"):
        c2 = ResponseCache(folder)
    assert shard.read_text().count("\n") == 1 and not c2.skipped and k2 not in c2 and c2.get(k1)["parsed"] == {"x": 1}
    strict_jsonl(folder)
    with open(shard, "a") as f:
        f.write(rec)  # complete, newline lost
    with pytest.warns(UserWarning, match="lost its newline"):
        c3 = ResponseCache(folder)
    assert c3.get(k2)["parsed"] == {"x": 2} and c3.put(k3, {"parsed": {"x": 3}})
    strict_jsonl(folder)
    assert [json.loads(l)["key"] for l in shard.read_text().splitlines()] == [k1, k2, k3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ResponseCache(folder)) == 3


# ---- 4. secrets ----


@pytest.mark.parametrize("code, retries", [(401, 0), (500, 1)])
def test_a_key_echoed_in_an_error_body_is_never_stored_or_shown(fake, tmp_path, code, retries, caplog):
    fake.script = [echo_key(code)] * (retries + 1)
    c = client(fake, tmp_path, max_retries=retries)
    with warnings.catch_warnings(record=True) as w, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        with pytest.raises(LLMCallError) as ei:
            c.chat_json(MSGS, SCHEMA)
    assert fake.headers[0]["authorization"] == f"Bearer {SECRET}"  # the server did echo the real key
    shown = "".join(traceback.format_exception(ei.value))
    assert fake.base_url in str(ei.value) and (code == 401 or "[REDACTED]" in str(ei.value))
    rows = ledger_rows(tmp_path)
    assert len(rows) == retries + 1 and all("[REDACTED]" in r["error"] for r in rows)
    assert_no_secret(tmp_path, shown, caplog.text, *(str(x.message) for x in w))


def test_a_key_in_a_reply_is_scrubbed_from_the_cached_failure_and_the_error(fake, tmp_path):
    fake.script = [ok(f"my key is {SECRET} and Bearer {SECRET[3:]}")] * 2
    c = client(fake, tmp_path, repair_retries=1)
    with pytest.raises(LLMOutputError) as ei:
        c.chat_json(MSGS, SCHEMA)
    rec = c.cache.get(failure_key(key_of(c)))
    assert "[REDACTED]" in rec["response"]
    assert_no_secret(tmp_path, str(ei.value), json.dumps(rec))


def test_no_key_over_plain_http_to_a_host_that_is_not_loopback_unless_allowed(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(L, "_is_loopback", lambda host: False)  # pretend 127.0.0.1 is remote
    fake.script = [ok({"answer": "Paris"})]
    with pytest.raises(LLMCallError, match="allow_insecure_http") as ei:
        client(fake, tmp_path).chat_json(MSGS, SCHEMA)
    assert fake.requests == [] and SECRET not in str(ei.value)  # refused before sending anything
    c = client(fake, tmp_path, allow_insecure_http=True)
    assert c.chat_json(MSGS, SCHEMA) == {"answer": "Paris"} and len(fake.requests) == 1
    monkeypatch.delenv("CAUSALNEG_TEST_KEY")  # no key: nothing secret to leak
    fake.script = [ok({"answer": "Rome"})]
    with pytest.warns(UserWarning, match="without an API key"):
        assert client(fake, tmp_path).chat_json([{"role": "user", "content": "Italy?"}], SCHEMA) == {"answer": "Rome"}


def test_a_key_pasted_into_api_key_env_is_refused_without_printing_it():
    for bad in (SECRET, SECRET[3:].replace("-", "_"), "Bearer " + SECRET):
        with pytest.raises(ValueError) as ei:
            LLMConfig(api_key_env=bad)
        assert "NAME of an environment variable" in str(ei.value) and bad not in str(ei.value)
        assert SECRET[8:] not in str(ei.value)
    assert LLMConfig(api_key_env="CAUSALNEG_TEST_KEY").api_key_env == "CAUSALNEG_TEST_KEY"


def test_an_unfinished_empty_choice_is_transport_but_a_finished_empty_reply_is_content(fake, tmp_path):
    fake.script = [body({"choices": [{"index": 0, "message": {"role": "assistant", "content": None}}]}), ok({"answer": "Paris"})]
    c = client(fake, tmp_path)
    assert c.chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
    assert c.ledger.summary()["outcomes"] == {"bad_body": 1, "ok": 1}
    fake.script = [ok("")] * 2  # finish_reason "stop", empty
    c2 = client(fake, tmp_path, repair_retries=1)
    with pytest.raises(LLMOutputError, match="empty"):
        c2.chat_json([{"role": "user", "content": "again"}], SCHEMA)
