"""Grow the shipped LLM response cache (`llm_cache/`) with the local llama.cpp backend, on several cores.

The `generate` stage builds every prompt from one mined record at a time (the query, its positive and
its mined candidates), so a block of queries can be generated from a slice of the mined files and
gives exactly the cache keys that the full run asks for. This script cuts queries [--from, --queries)
into blocks of --step, and --workers processes take the next block in order, each with its own
llama.cpp server (--threads each; 1 thread per worker and one worker per core is the fast setting).
After every block it commits `llm_cache/`, so a session that ends loses at most the blocks in flight;
rerunning replays what the cache holds (a cached block takes about 30 s) and generates the rest.

Blocks are handed out in order, so the covered prefix (what `generation.queries` may use) grows
steadily. Each block logs to .cache/llm-cache-build/blocks/START/log.txt.

Usage: python scripts/build_llm_cache.py [--queries 400] [--from 0] [--step 5] [--workers 2] [--threads 1]
       [--no-commit]
"""

import argparse, functools, json, os, queue, subprocess, sys, threading, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / ".cache" / "llm-cache-build" / "blocks"
PARTS = ("train", "heldout")
# what each block sets itself rather than take from the stage's command
BLOCK_KEYS = {"max_queries", "threads", "cache_dir", "negatives_dir", "out_dir", "reports_dir", "parts", "llm", "rewrite_from"}


def plan_blocks(start: int, stop: int, step: int) -> list:
    "Query ranges [a, b) of at most `step` queries covering [start, stop)."
    if step < 1:
        raise ValueError(f"--step must be at least 1, got {step}.")
    if start < 0 or stop < start:
        raise ValueError(f"need 0 <= --from <= --queries, got {start} and {stop}.")
    return [(a, min(a + step, stop)) for a in range(start, stop, step)]


def read_mined(negatives_dir: Path) -> dict:
    "Each part's mined records as JSON lines, read once for all blocks."
    out = {}
    for part in PARTS:
        src = Path(negatives_dir) / f"{part}_mined.jsonl"
        if not src.exists():
            raise FileNotFoundError(
                f"{src} is missing: run the mining stage first (`make repro`, or `source .venv/bin/activate && dvc repro mine`)."
            )
        out[part] = [l for l in src.read_text().splitlines() if l.strip()]
    return out


def write_block(mined: dict, block: tuple, dest: Path) -> list:
    "Write the slice `block` of each part's mined lines under `dest`; the parts that have queries in it."
    a, b = block
    dest.mkdir(parents=True, exist_ok=True)
    parts = []
    for part, lines in mined.items():
        (dest / f"{part}_mined.jsonl").write_text("".join(l + "\n" for l in lines[a:b]))
        if lines[a:b]:
            parts.append(part)
    return parts


@functools.lru_cache
def stage_settings(params_file=ROOT / "params.yaml") -> dict:
    "params.yaml's settings for the generate stage (validated, mapped as the stage maps them), less those a block sets itself."
    sys.path.insert(0, str(ROOT))
    from causalneg.config import GENERATE_STAGE, load_params, stage_settings as settings_of

    settings = settings_of(load_params(params_file), GENERATE_STAGE)
    return {k: v for k, v in settings.items() if k not in BLOCK_KEYS}


def stage_parameters() -> list:
    "The generate stage's settings as `-y KEY YAML` words (values read through causalneg.config, not dvc.yaml)."
    import yaml

    out = []
    for key, value in stage_settings().items():
        out += ["-y", key, yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()]
    return out


def block_rewrite_from(start: int, params_file=ROOT / "params.yaml"):
    "The stage's `rewrite_from` in the coordinates of a block that starts at query `start` (None: no rewrites)."
    sys.path.insert(0, str(ROOT))
    from causalneg.config import GENERATE_STAGE, load_params, stage_settings as settings_of

    value = settings_of(load_params(params_file), GENERATE_STAGE).get("rewrite_from")
    return None if value is None else max(0, value - start)


def generate_command(block_dir: Path, parts: list, n: int, threads: int, start: int = 0) -> list:
    "The generate stage's command for one block: its params.yaml settings, the block's slice and this worker's threads."
    cmd = [sys.executable, "-m", "causalneg.pipeline", "generate", "--as", "llm-cache-block", "--reports", str(block_dir)]
    rewrite_from = block_rewrite_from(start)
    return (
        cmd
        + ["-y", "rewrite_from", "null" if rewrite_from is None else str(rewrite_from)]
        + stage_parameters()
        + [
            "-y",
            "llm",
            _llm_params(threads),
            "-p",
            "threads",
            str(threads),
            "-p",
            "max_queries",
            str(n),
            "-y",
            "parts",
            json.dumps(parts),
            "-p",
            "cache_dir",
            str(block_dir / "embeddings"),
            "-p",
            "negatives_dir",
            str(block_dir / "negatives"),
            "-p",
            "out_dir",
            str(block_dir / "generated"),
            "-p",
            "reports_dir",
            str(block_dir),
        ]
    )


@functools.lru_cache
def _llm_params(threads: int) -> str:
    "params.yaml's `llm` block with this worker's llama.cpp thread count (not part of any cache key)."
    sys.path.insert(0, str(ROOT))
    from causalneg.config import load_params

    llm = dict(load_params(ROOT / "params.yaml")["llm"])
    llm["local_threads"] = threads
    return json.dumps(llm)


def commit_cache(message: str, lock: threading.Lock, tries: int = 5, wait: float = 2.0):
    "Commit llm_cache/ if it changed (serialised: workers finish blocks concurrently; retried while git is busy)."
    with lock:
        for attempt in range(tries):
            try:
                subprocess.run(["git", "add", "llm_cache"], cwd=ROOT, check=True)
                if subprocess.run(["git", "diff", "--cached", "--quiet", "--", "llm_cache"], cwd=ROOT).returncode:
                    subprocess.run(["git", "commit", "-q", "-m", message, "--", "llm_cache"], cwd=ROOT, check=True)
                return
            except subprocess.CalledProcessError:
                # another git command (a person committing beside the build) holds .git/index.lock; the records
                # are on disk either way, so wait and retry rather than kill the worker
                if attempt == tries - 1:
                    raise
                time.sleep(wait * (attempt + 1))


def run(args) -> int:
    from tqdm.auto import tqdm
    from causalneg.llm import ResponseCache

    blocks = plan_blocks(args.start, args.queries, args.step)
    todo, failed, lock = queue.Queue(), [], threading.Lock()
    for blk in blocks:
        todo.put(blk)
    mined = read_mined(ROOT / args.negatives_dir)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    bar = tqdm(total=len(blocks), desc=f"blocks of {args.step} queries", unit="block")

    def worker():
        while not failed:
            try:
                a, b = todo.get_nowait()
            except queue.Empty:
                return
            block_dir = BUILD / f"{a:04d}"
            parts = write_block(mined, (a, b), block_dir / "negatives")
            if not parts:
                bar.update()
                continue  # past the end of the mined files
            t0 = time.time()
            with open(block_dir / "log.txt", "w") as log:
                rc = subprocess.run(
                    generate_command(block_dir, parts, b - a, args.threads, start=a),
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ).returncode
            if rc:
                failed.append(f"queries {a}-{b}: generate exited {rc}; see {block_dir / 'log.txt'}")
                return
            if not args.no_commit:
                commit_cache(f"LLM response cache: queries {a}-{b} (block of {b - a})", lock)
            bar.set_postfix(last=f"{a}-{b} {time.time() - t0:.0f}s", records=len(ResponseCache(ROOT / "llm_cache")))
            bar.update()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    for msg in failed:
        print(f"[build_llm_cache] {msg}", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=400, help="end of the query range (exclusive), per part")
    p.add_argument("--from", dest="start", type=int, default=0, help="first query (blocks before it are skipped)")
    p.add_argument("--step", type=int, default=5, help="queries per block (one commit per block)")
    p.add_argument(
        "--workers",
        type=int,
        default=max(1, (os.cpu_count() or 1)),
        help="parallel generate runs, each with its own llama.cpp server",
    )
    p.add_argument("--threads", type=int, default=1, help="llama.cpp and torch threads per worker")
    p.add_argument("--negatives-dir", default="data/negatives", help="the mining stage's output")
    p.add_argument("--no-commit", action="store_true", help="do not commit llm_cache/ after each block")
    args = p.parse_args(argv)
    if args.workers < 1 or args.threads < 1:
        p.error("--workers and --threads must be at least 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
