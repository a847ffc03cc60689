"""A generation run for the kill -9 test: `LLMClient.map` over N items against BASE_URL, cache in FOLDER.

Usage: python tests/llm_kill_run.py BASE_URL FOLDER N CONCURRENCY
Prints "done <i>" as each item finishes, then one JSON line {"results": [...], "summary": {...}}.
"""

import json, sys
from causalneg.llm import LLMClient, LLMConfig

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["item", "text"],
    "properties": {"item": {"type": "integer"}, "text": {"type": "string", "minLength": 1}},
}


def config(base_url, concurrency=2) -> LLMConfig:
    return LLMConfig(
        model="fake-model",
        base_url=base_url,
        api_key_env="CAUSALNEG_TEST_KEY",
        concurrency=concurrency,
        max_retries=2,
        backoff_base=0.05,
        backoff_max=0.2,
        timeout=10,
    )


def messages(i: int) -> list:
    return [{"role": "system", "content": "Write a negative passage as JSON."}, {"role": "user", "content": f"item {i}"}]


if __name__ == "__main__":
    base_url, folder, n, conc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    with LLMClient(config(base_url, conc), folder, progress=False) as llm:

        def one(i):
            out = llm.chat_json(messages(i), SCHEMA, name="negative")
            print(f"done {i}", flush=True)
            return out

        results = llm.map(one, range(n), desc="kill-test")
        print(json.dumps({"results": results, "summary": llm.ledger.summary()}), flush=True)
