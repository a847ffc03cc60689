"""One of two processes sharing a cache, for the concurrent-writers test of tests/test_llm_faults.py.

Usage: python tests/llm_faults_worker.py BASE_URL FOLDER N CONCURRENCY ORDER(fwd|rev) READY_FILE GO_FILE
Writes READY_FILE once imported, waits for GO_FILE (so both processes start their calls together), maps
`chat_json` over the N items in ORDER, and prints one JSON line {"results": [...], "summary": {...}}.
"""

import json, sys, time
from pathlib import Path
from llm_kill_run import SCHEMA, config, messages
from causalneg.llm import LLMClient

if __name__ == "__main__":
    base_url, folder, n, conc, order, ready, go = sys.argv[1:8]
    n, conc = int(n), int(conc)
    items = list(range(n)) if order == "fwd" else list(reversed(range(n)))
    with LLMClient(config(base_url, conc), folder, progress=False) as llm:
        Path(ready).write_text("ready")
        deadline = time.monotonic() + 60
        while not Path(go).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        results = llm.map(lambda i: llm.chat_json(messages(i), SCHEMA, name="negative"), items)
        print(json.dumps({"results": results, "summary": llm.ledger.summary()}), flush=True)
