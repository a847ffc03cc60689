"""LLM client against a real local HTTP server speaking the OpenAI chat-completions protocol (tests/fake_openai.py).

Covers: success and replay, 429 + Retry-After, 5xx, timeouts, dropped connections, non-retryable
errors, malformed JSON then repair, schema-invalid output, truncated output, content checks, bounded
concurrency in `map`, cache-miss messages, concurrent writers, and kill -9 mid-run then resume.
The opt-in `llm` test runs the real llama.cpp server (`pytest -m llm`, needs `make llm`).
"""

import json, os, signal, subprocess, sys, threading, time, warnings
from pathlib import Path

import pytest

from causalneg.llm import (
    CacheMiss,
    LLMCallError,
    LLMClient,
    LLMConfig,
    LLMMapError,
    LLMOutputError,
    Ledger,
    ResponseCache,
    failure_key,
    local_backend_status,
    request_key,
)
from fake_openai import FakeOpenAI, drop, ok, status

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk" + "-test-do-not-store-0123456789"  # built at run time: no key-shaped literal in the repo
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["answer"],
    "properties": {"answer": {"type": "string", "minLength": 2}},
}
MSGS = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Capital of France?"}]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("CAUSALNEG_TEST_KEY", SECRET)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def fake():
    with FakeOpenAI() as srv:
        yield srv


def cfg(fake, **kw):
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
    return LLMConfig(**{**base, **kw})


def client(fake, tmp_path, **kw):
    return LLMClient(cfg(fake, **kw), tmp_path / "cache", progress=False)


def key_of(c: LLMClient, msgs=MSGS, schema=SCHEMA, name="output"):
    return request_key(c.config.model, msgs, {**c.config.decoding(), "json_schema": {"name": name, "schema": schema}})


def all_text(folder: Path) -> str:
    return "".join(p.read_text() for p in folder.rglob("*") if p.is_file())


def test_success_sends_the_request_stores_it_and_replays_without_a_call(fake, tmp_path):
    fake.script = [ok({"answer": "Paris"}, usage=(30, 5))]
    with client(fake, tmp_path, prices={"prompt": 2.0, "completion": 8.0}) as c:
        assert c.chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
        s = c.ledger.summary()
    body = fake.requests[0]
    assert (body["model"], body["messages"], body["temperature"], body["max_tokens"], body["seed"]) == (
        "fake-model",
        MSGS,
        0.2,
        900,  # LLMConfig's default, the same as params.yaml's llm.max_tokens
        0,
    )
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA, "strict": True}}
    assert fake.headers[0]["authorization"] == f"Bearer {SECRET}"  # the key comes from the env var
    assert (s["calls"], s["ok_calls"], s["stored"], s["prompt_tokens"], s["completion_tokens"]) == (1, 1, 1, 30, 5)
    assert s["cost_usd"] == pytest.approx((30 * 2 + 5 * 8) / 1e6)
    assert c.key_for(MSGS, SCHEMA) == key_of(c)
    rec = ResponseCache(tmp_path / "cache").get(key_of(c))
    assert rec["parsed"] == {"answer": "Paris"} and rec["usage"] == {"prompt_tokens": 30, "completion_tokens": 5}
    assert rec["request"]["messages"] == MSGS and rec["model"] == "fake-model" and rec["backend"] == "endpoint"
    # a new process-equivalent client replays from disk: no request, counted as a hit
    c2 = LLMClient(cfg(fake), tmp_path / "cache", offline=True, progress=False)
    assert c2.chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
    assert len(fake.requests) == 1 and c2.ledger.summary()["cache_hits"] == 1
    assert SECRET not in all_text(tmp_path)  # never stored in cache or ledger
    assert Ledger.read(tmp_path / "cache" / "ledger.jsonl")["calls"] == 1


def test_429_waits_for_retry_after(fake, tmp_path):
    fake.script = [status(429, retry_after=1, message="rate limited"), ok({"answer": "Paris"})]
    c = client(fake, tmp_path)
    t0 = time.monotonic()
    assert c.chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
    waited = time.monotonic() - t0
    assert 1.0 <= waited < 3.0, waited  # backoff alone would be ~0.01 s: the header was honoured
    s = c.ledger.summary()
    assert len(fake.requests) == 2 and s["retries"] == 1 and s["outcomes"] == {"http_429": 1, "ok": 1}


def test_5xx_is_retried_with_backoff(fake, tmp_path):
    fake.script = [status(500), status(503), ok({"answer": "Paris"})]
    c = client(fake, tmp_path)
    assert c.chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
    assert len(fake.requests) == 3 and c.ledger.summary()["outcomes"] == {"http_500": 1, "http_503": 1, "ok": 1}


def test_timeout_and_dropped_connection_are_retried(fake, tmp_path):
    fake.script = [ok({"answer": "slow"}, delay=3.0), drop(), ok({"answer": "Paris"})]
    c = client(fake, tmp_path, timeout=0.5)
    t0 = time.monotonic()
    assert c.chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
    assert time.monotonic() - t0 < 2.5  # did not wait for the slow reply
    assert c.ledger.summary()["outcomes"] == {"timeout": 1, "connection": 1, "ok": 1}


def test_retries_are_bounded_and_nothing_is_cached(fake, tmp_path):
    fake.script = [status(502)] * 3
    c = client(fake, tmp_path, max_retries=2)
    with pytest.raises(LLMCallError, match="after 3 attempts"):
        c.chat_json(MSGS, SCHEMA)
    assert len(fake.requests) == 3 and len(c.cache) == 0


def test_non_retryable_auth_error_names_the_env_var(fake, tmp_path):
    fake.script = [status(401, message="bad key")]
    with pytest.raises(LLMCallError, match=r"\$CAUSALNEG_TEST_KEY"):
        client(fake, tmp_path).chat_json(MSGS, SCHEMA)
    assert len(fake.requests) == 1


def test_malformed_json_then_repair_is_cached_under_the_original_key(fake, tmp_path):
    fake.script = [ok('{"answer": "Par'), ok({"answer": "Paris"})]
    c = client(fake, tmp_path)
    assert c.chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
    repair = fake.requests[1]["messages"]
    assert repair[:2] == MSGS and repair[2] == {"role": "assistant", "content": '{"answer": "Par'}
    assert repair[3]["role"] == "user" and "not valid JSON" in repair[3]["content"]
    rec = c.cache.get(key_of(c))
    assert rec["parsed"] == {"answer": "Paris"} and len(rec["repairs"]) == 1
    assert c.ledger.summary()["repairs"] == 1
    assert LLMClient(cfg(fake), tmp_path / "cache", offline=True).chat_json(MSGS, SCHEMA) == {"answer": "Paris"}


def test_schema_invalid_output_is_repaired_or_refused(fake, tmp_path):
    fake.script = [ok({"answer": 3}), ok({"answer": "Paris"})]
    c = client(fake, tmp_path)
    assert c.chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
    assert "does not match the JSON schema: at answer: 3 is not of type 'string'" in fake.requests[1]["messages"][-1]["content"]
    fake.script = [ok({"answer": "P"}), ok({"city": "Paris"}), ok({"answer": 1})]
    other = [{"role": "user", "content": "Capital of Peru?"}]
    with pytest.raises(LLMOutputError, match="still invalid after 2 repair") as ei:
        c.chat_json(other, SCHEMA)
    assert len(ei.value.errors) == 3 and "too short" in ei.value.errors[0]
    assert len(fake.requests) == 5 and key_of(c, other) not in c.cache  # no answer is stored for it


def test_a_final_failure_is_cached_and_replayed_as_the_same_error(fake, tmp_path):
    fake.script = [ok({"answer": "P"}), ok({"city": "Lima"}), ok({"answer": 1})]
    peru = [{"role": "user", "content": "Capital of Peru?"}]
    with client(fake, tmp_path) as c:
        with pytest.raises(LLMOutputError) as live:
            c.chat_json(peru, SCHEMA)
        assert c.ledger.summary()["stored"] == 1
    rec = ResponseCache(tmp_path / "cache").get(failure_key(key_of(c, peru)))
    assert (rec["failure_of"], rec["repair_retries"], rec["errors"]) == (key_of(c, peru), 2, live.value.errors)
    assert json.loads(rec["response"]) == {"answer": 1} and "parsed" not in rec
    # an offline replay raises the same error (so a generation run records the same failed item) without a call
    replay = LLMClient(cfg(fake), tmp_path / "cache", offline=True, progress=False)
    with pytest.raises(LLMOutputError) as again:
        replay.chat_json(peru, SCHEMA)
    assert (str(again.value), again.value.errors, again.value.replayed) == (str(live.value), live.value.errors, True)
    assert replay.ledger.summary()["cache_hits"] == 1 and len(fake.requests) == 3
    # fewer repair turns than the failure had: the failure still stands
    with pytest.raises(LLMOutputError, match="after 2 repair"):
        LLMClient(cfg(fake, repair_retries=1), tmp_path / "cache", offline=True, progress=False).chat_json(peru, SCHEMA)
    # more repair turns than it had: a miss offline, and asked again (then stored as an answer) with a backend
    with pytest.raises(CacheMiss):
        LLMClient(cfg(fake, repair_retries=3), tmp_path / "cache", offline=True, progress=False).chat_json(peru, SCHEMA)
    fake.script = [ok({"answer": "P"}), ok({"answer": "Lima"})]
    more = client(fake, tmp_path, repair_retries=3)
    assert more.chat_json(peru, SCHEMA) == {"answer": "Lima"} and len(fake.requests) == 5
    assert LLMClient(cfg(fake), tmp_path / "cache", offline=True, progress=False).chat_json(peru, SCHEMA) == {"answer": "Lima"}


def test_truncated_output_is_reported_as_truncation(fake, tmp_path):
    fake.script = [ok('{"answer": "Pa', finish_reason="length"), ok({"answer": "Paris"})]
    c = client(fake, tmp_path, max_tokens=8)
    assert c.chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
    ask = fake.requests[1]["messages"][-1]["content"]
    assert "cut off at the token limit (max_tokens=8" in ask and "shorter" in ask
    fake.script = [ok('{"answer": "Li', finish_reason="length")] * 3
    with pytest.raises(LLMOutputError, match="max_tokens=8"):
        c.chat_json([{"role": "user", "content": "Capital of Peru?"}], SCHEMA)


def test_content_check_triggers_a_repair(fake, tmp_path):
    def not_paris(o):
        if o["answer"] == "Paris":
            raise ValueError("the negative must not contain the answer")

    fake.script = [ok({"answer": "Paris"}), ok({"answer": "Lyon"})]
    assert client(fake, tmp_path).chat_json(MSGS, SCHEMA, validate=not_paris) == {"answer": "Lyon"}
    assert "must not contain the answer" in fake.requests[1]["messages"][-1]["content"]


def test_endpoint_refusing_json_schema_falls_back_to_json_object(fake, tmp_path):
    msg = "1 validation error: {'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\"}"
    fake.script = [status(500, message=msg), ok({"answer": "Paris"}), ok({"answer": "Rome"})]
    c = client(fake, tmp_path)
    with pytest.warns(UserWarning, match="json_object"):
        assert c.chat_json(MSGS, SCHEMA) == {"answer": "Paris"}
    assert fake.requests[1]["response_format"] == {"type": "json_object", "schema": SCHEMA}
    c.chat_json([{"role": "user", "content": "Capital of Italy?"}], SCHEMA)
    assert fake.requests[2]["response_format"]["type"] == "json_object"  # remembered
    assert c.cache.get(key_of(c))["parsed"] == {"answer": "Paris"}  # same key whatever the wire format


def test_map_bounds_concurrency_keeps_order_and_finishes_before_raising(fake, tmp_path):
    def responder(body, n):
        q = body["messages"][-1]["content"]
        if q == "item 4":
            return status(400, message="cannot do item 4")
        return ok({"answer": q.upper()}, delay=0.15)

    fake.responder = responder
    c = client(fake, tmp_path, concurrency=3)
    ask = lambda i: c.chat_json([{"role": "user", "content": f"item {i}"}], SCHEMA)["answer"]
    with pytest.raises(LLMMapError, match="1 of 9 items failed") as ei:
        c.map(ask, range(9))
    assert list(ei.value.errors) == [4] and isinstance(ei.value.errors[4], LLMCallError)
    assert ei.value.results[:4] == [f"ITEM {i}" for i in range(4)] and ei.value.results[8] == "ITEM 8"
    assert 2 <= fake.max_in_flight <= 3 and len(c.cache) == 8
    fake.responder = lambda body, n: ok({"answer": "done"})
    n0 = len(fake.requests)
    assert c.map(ask, range(9))[3:6] == ["ITEM 3", "done", "ITEM 5"]  # the rerun only calls the failed item
    assert len(fake.requests) == n0 + 1


def test_in_flight_requests_are_bounded_even_from_callers_own_threads(fake, tmp_path):
    fake.responder = lambda body, n: ok({"answer": body["messages"][-1]["content"]}, delay=0.2)
    c = client(fake, tmp_path, concurrency=2)
    ts = [threading.Thread(target=c.chat_json, args=([{"role": "user", "content": f"q{i}"}], SCHEMA)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(c.cache) == 6 and fake.max_in_flight == 2


def test_cache_miss_without_a_backend_counts_the_missing_items(fake, tmp_path):
    fake.script = [ok({"answer": "Paris"})]
    client(fake, tmp_path).chat_json(MSGS, SCHEMA)
    for kw in ({"offline": True}, {}):
        conf = cfg(fake, **({} if kw else {"base_url": None}))
        c = LLMClient(conf, tmp_path / "cache", progress=False, **kw)
        items = ["France", "Peru", "Chad"]
        ask = lambda x: c.chat_json(
            [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": f"Capital of {x}?"}], SCHEMA
        )
        with pytest.raises(CacheMiss) as ei:
            c.map(ask, items)
        msg = str(ei.value)
        assert f"2 of 3 items need LLM calls that are not in the cache at {tmp_path / 'cache'}" in msg
        assert "llm.base_url" in msg and "make llm" in msg and ei.value.results[0] == {"answer": "Paris"}
    assert len(fake.requests) == 1


def test_concurrent_writers_in_threads_and_processes_never_interleave(tmp_path):
    folder = tmp_path / "cache"
    code = (
        "import sys, hashlib; from causalneg.llm import ResponseCache\n"
        "c = ResponseCache(sys.argv[1]); w = sys.argv[2]\n"
        "for i in range(60):\n"
        "    k = 'ab' + hashlib.sha256(f'{w}-{i}'.encode()).hexdigest()[2:]\n"
        "    c.put(k, {'writer': w, 'i': i, 'text': 'x' * 3000})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(folder), f"p{j}"], env=env) for j in range(3)]
    cache = ResponseCache(folder)

    def put_many(w):
        import hashlib

        for i in range(60):
            cache.put("ab" + hashlib.sha256(f"{w}-{i}".encode()).hexdigest()[2:], {"writer": w, "i": i, "text": "y" * 3000})

    ts = [threading.Thread(target=put_many, args=(f"t{j}",)) for j in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(p.wait(60) == 0 for p in procs)
    lines = (folder / "ab.jsonl").read_text().splitlines()  # every record went to the same shard
    assert len(lines) == 360 and all(json.loads(l)["key"].startswith("ab") for l in lines)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ResponseCache(folder)) == 360


def test_kill_9_mid_run_then_resume_pays_once_and_loses_nothing(fake, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    import llm_kill_run as run

    fake.responder = lambda body, n: ok({"item": int(body["messages"][-1]["content"].split()[1]), "text": "negative"}, delay=0.15)
    folder, n, conc = tmp_path / "cache", 20, 2
    cmd = [sys.executable, str(Path(run.__file__)), fake.base_url, str(folder), str(n), str(conc)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "default"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    done = 0
    while done < 8:
        line = p.stdout.readline()
        assert line, f"the run ended early: {p.stderr.read()}"
        done += line.startswith("done ")
    deadline = time.monotonic() + 5
    while fake.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert fake.in_flight > 0  # kill while calls are in flight
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    first = list(fake.requests)

    cache = ResponseCache(folder)
    cached = {r["request"]["messages"][-1]["content"] for r in map(cache.get, cache.keys())}
    assert 8 <= len(cached) < n and not cache.skipped
    # simulate the worst case kill -9 can leave: a record torn half-way through its line, for an uncached item
    todo = next(i for i in range(n) if f"item {i}" not in cached)
    k = request_key(
        "fake-model",
        run.messages(todo),
        {**run.config("http://x").decoding(), "json_schema": {"name": "negative", "schema": run.SCHEMA}},
    )
    torn = json.dumps({"key": k, "parsed": {"item": todo, "text": "negative"}, "response": "..."}, sort_keys=True)
    with open(folder / f"{k[:2]}.jsonl", "a") as f:
        f.write(torn[: len(torn) // 2])

    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "torn by a killed writer" in r.stderr  # the torn line was reported...
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["results"] == [{"item": i, "text": "negative"} for i in range(n)]
    second = [b["messages"][-1]["content"] for b in fake.requests[len(first) :]]
    assert not set(second) & cached  # no paid call for a cached key
    assert sorted(second) == sorted(f"item {i}" for i in range(n) if f"item {i}" not in cached)
    assert n < len(first) + len(second) <= n + conc  # only calls in flight at the kill repeat

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        final = ResponseCache(folder)
    assert len(final) == n and not final.skipped and not w  # ...and cut on open, nothing else lost
    assert final.get(k)["parsed"] == {"item": todo, "text": "negative"}  # recomputed and stored
    for shard in folder.glob("*.jsonl"):  # every shard is strict JSONL again
        assert all(json.loads(line)["key"] for line in shard.read_text().splitlines())
    for key in final.keys():
        rec = final.get(key)
        assert (
            request_key(
                "fake-model",
                rec["request"]["messages"],
                {**rec["request"]["decoding"], "json_schema": {"name": "negative", "schema": run.SCHEMA}},
            )
            == key
        )
    led = Ledger.read(folder / "ledger.jsonl")
    assert n <= led["calls"] <= len(first) + len(second) and led["unreadable_lines"] == 0


# ---- opt-in: the real local llama.cpp server (`make llm`, then `pytest -m llm tests/test_llm.py`) ----


def _llm_opted_in(config) -> bool:
    return "llm" in (config.getoption("-m") or "") or os.environ.get("CAUSALNEG_LLM_TESTS") == "1"


@pytest.mark.llm
def test_real_llama_cpp_server(request, tmp_path):
    usable, why = local_backend_status()
    if not usable:
        pytest.skip(f"local llama.cpp backend not installed: {why}")
    if not _llm_opted_in(request.config):
        pytest.skip("opt-in: run with `-m llm` or CAUSALNEG_LLM_TESTS=1")
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["capital", "country"],
        "properties": {"capital": {"type": "string", "minLength": 2}, "country": {"type": "string"}},
    }
    msgs = [
        {"role": "system", "content": "You answer geography questions in JSON."},
        {"role": "user", "content": "What is the capital of Australia? Give the capital and the country."},
    ]
    conf = LLMConfig(max_tokens=64, local_threads=1)
    c = LLMClient(conf, tmp_path / "cache", progress=False)
    t0 = time.monotonic()
    out = c.chat_json(msgs, schema)
    secs = time.monotonic() - t0
    server = c._server
    assert c._kind == "local" and server is not None and server.proc.poll() is None
    rec = c.cache.get(key_of(c, msgs, schema))
    s = c.ledger.summary()
    print(
        f"\nreal llama.cpp: {out} in {secs:.1f} s (incl. server start); usage {rec['usage']}; "
        f"call {rec['seconds']:.1f} s; ledger {s}"
    )
    assert "canberra" in out["capital"].lower()
    proc = server.proc
    c.close()
    assert proc.poll() is not None  # the client stopped its server
    assert LLMClient(conf, tmp_path / "cache", offline=True).chat_json(msgs, schema) == out  # replay, no server


@pytest.mark.llm
def test_real_server_dies_with_its_parent(request, tmp_path):
    usable, why = local_backend_status()
    if not usable:
        pytest.skip(f"local llama.cpp backend not installed: {why}")
    if not _llm_opted_in(request.config):
        pytest.skip("opt-in: run with `-m llm` or CAUSALNEG_LLM_TESTS=1")
    code = (
        "from causalneg.llm import LocalServer, assemble_gguf\n"
        "s = LocalServer(assemble_gguf()).start(); print(s.proc.pid, flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    server_pid = int(p.stdout.readline())
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)  # no cleanup runs in the parent
    deadline = time.monotonic() + 30

    def alive(pid):  # a zombie (exited, not yet reaped by an init that does not reap) counts as dead
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    while time.monotonic() < deadline:
        if not alive(server_pid):
            break
        time.sleep(0.5)
    else:
        os.kill(server_pid, signal.SIGKILL)
        pytest.fail("the llama.cpp server outlived its parent by 30 s")
