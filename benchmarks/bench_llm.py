"""Benchmark of the LLM client's throughput against a loopback OpenAI-compatible server (prints figures; not a test).

The scripted server of tests/fake_openai.py, in its own process (so that its threads do not share the
client's GIL), answers every call after a fixed latency (0.5 s by default).
At each concurrency level (1, 4, 16, 64) the kit's client (`LLMClient.map` over `chat_json`, with the
response cache and the ledger ON, a fresh temporary cache per level, and distinct prompts so every call is
a miss) makes `rounds * concurrency` calls; the ideal rate is concurrency / latency calls per second, and
efficiency = measured / ideal. The last line is exactly `efficiency=<value at concurrency 16>`.

Usage: python benchmarks/bench_llm.py [--latency 0.5] [--levels 1,4,16,64] [--rounds 3] [--json out.json]
"""

import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["answer"],
    "properties": {"answer": {"type": "string", "minLength": 1}},
}


SERVER = """
import sys, threading
from fake_openai import FakeOpenAI, ok
with FakeOpenAI(responder=lambda body, n: ok({"answer": "a"}, delay=float(sys.argv[1]))) as srv:
    print(srv.base_url, flush=True)
    sys.stdin.read()   # until the benchmark closes our stdin
"""


def level(base_url, conc, n, tag):
    "Seconds for `n` cache-missing calls at concurrency `conc`, and the ledger summary."
    from causalneg.llm import LLMClient, LLMConfig

    cfg = LLMConfig(
        model="fake-model",
        base_url=base_url,
        api_key_env="CAUSALNEG_BENCH_KEY",
        concurrency=conc,
        timeout=30,
        max_retries=0,
        allow_local=False,
    )
    folder = Path(tempfile.mkdtemp(prefix=f"bench-llm-{conc}-"))
    try:
        with LLMClient(cfg, folder / "cache", progress=False) as llm:
            ask = lambda i: llm.chat_json([{"role": "user", "content": f"{tag} level {conc} prompt {i}"}], SCHEMA)
            llm._openai()  # client construction is not part of the rate
            t0 = time.perf_counter()
            out = llm.map(ask, range(n))
            secs = time.perf_counter() - t0
            s = llm.ledger.summary()
        assert len(out) == n and s["calls"] == n and s["stored"] == n, s  # every call a miss, stored
        assert (folder / "cache" / "ledger.jsonl").exists()
        return secs, s
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--rounds", type=int, default=3, help="calls per level = rounds * concurrency")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    os.environ.setdefault("CAUSALNEG_BENCH_KEY", "bench-" + "local-only")  # loopback only; not a real key
    levels = [int(x) for x in a.levels.split(",")]
    rows, tag = [], f"{time.time_ns()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    srv = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(a.latency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        base_url = srv.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:"), base_url
        level(base_url, 1, 1, "warm-up " + tag)  # imports, first connection
        for conc in levels:
            n = a.rounds * conc
            secs, s = level(base_url, conc, n, tag)
            rate, ideal = n / secs, conc / a.latency
            rows.append(
                {
                    "concurrency": conc,
                    "calls": n,
                    "seconds": round(secs, 3),
                    "calls_per_s": round(rate, 2),
                    "ideal_calls_per_s": round(ideal, 2),
                    "efficiency": round(rate / ideal, 3),
                }
            )
            print(
                f"concurrency={conc:3d}  calls={n:4d}  {secs:6.2f} s  {rate:7.2f} calls/s  "
                f"(ideal {ideal:6.1f})  efficiency={rate / ideal:.3f}",
                flush=True,
            )
    finally:
        srv.stdin.close()
        srv.wait(10)
    if a.json:
        Path(a.json).write_text(json.dumps({"latency_s": a.latency, "levels": rows}, indent=1))
    at16 = next((r["efficiency"] for r in rows if r["concurrency"] == 16), rows[-1]["efficiency"])
    print(f"efficiency={at16:.2f}")


if __name__ == "__main__":
    main()
