#!/usr/bin/env bash
# GPU check of the paper profile's training path at toy scale (issue 15 item 6); prints timings, not a benchmark.
#
# 1. a tiny randomly initialised Qwen3 backbone (make_tiny_backbone, no download) with last-token pooling;
# 2. GPU_CHECK_EXAMPLES toy examples, each with mined and causalneg negatives (source labels);
# 3. training with lambda_ent 0.4 in one process on device 'auto' (a GPU when there is one, else the CPU),
#    then through `torchrun --nproc_per_node 2 -m causalneg.train`: on 2 GPUs (NCCL) when there are at
#    least two, else as 2 CPU processes (gloo), so the DDP path runs everywhere;
# 4. encoding GPU_CHECK_TEXTS texts with the trained model on the same device.
# It ends with the line `gpu_check: ok`, or fails (non-zero exit, the failing step's log tail).
#
# Usage: benchmarks/gpu_check.sh     (from anywhere; runs in the repository root)
# Environment: PYTHON (default .venv/bin/python), GPU_CHECK_EXAMPLES (64), GPU_CHECK_TEXTS (2000),
#   GPU_CHECK_THREADS (CPU threads per process, 1), GPU_CHECK_TIMEOUT (seconds for the whole check, 290),
#   GPU_CHECK_KEEP=1 keeps the work folder (printed), CUDA_VISIBLE_DEVICES as usual.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z "${_GPU_CHECK_INNER:-}" ]]; then   # the whole check under one time limit (timeout signals the process group)
  _GPU_CHECK_INNER=1 exec timeout --kill-after=10 "${GPU_CHECK_TIMEOUT:-290}" bash "${BASH_SOURCE[0]}" "$@"
fi

PY=${PYTHON:-.venv/bin/python}
N=${GPU_CHECK_EXAMPLES:-64}
TEXTS=${GPU_CHECK_TEXTS:-2000}
THREADS=${GPU_CHECK_THREADS:-1}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false LC_NUMERIC=C
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
if [[ "${GPU_CHECK_KEEP:-0}" == 1 ]]; then echo "gpu_check: work folder $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi

step() {  # step NAME CMD...: run CMD with its output in $WORK/NAME.log; on failure show the tail and stop
  local name=$1; shift
  if ! "$@" >"$WORK/$name.log" 2>&1; then
    echo "gpu_check: step '$name' failed; last lines of its log:" >&2; tail -n 40 "$WORK/$name.log" >&2; exit 1
  fi
}

# -- 1-2. device, tiny Qwen3 backbone, toy examples, the two training configs --------------------------------
step prepare "$PY" - "$WORK" "$N" "$THREADS" <<'EOF'
import json, sys
from pathlib import Path
import torch
sys.path.insert(0, "tests")  # the tiny-backbone fixture lives with the tests (run from the repo root)
from fakes import make_tiny_backbone
work, n, threads = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
gpus = torch.cuda.device_count()
words = ("lima peru quito ecuador tiger lion savanna macau gauss river andes volcano glacier desert coral comet "
         "tsunami monsoon aurora violin chess bread lake dune storm city capital cat population mathematician").split()
w = lambda i: words[i % len(words)]
examples = [{"qid": f"q{i}", "query": f"what is the {w(i)} of {w(i + 3)}", "positive": f"the {w(i)} of {w(i + 3)} is {w(i + 7)}",
             "negatives": [{"text": f"the {w(i + 11 + j)} of {w(i + 3)} is {w(i + 5 + j)}", "source": "mined"} for j in range(3)]
                        + [{"text": f"the {w(i)} of {w(i + 13 + j)} is not {w(i + 7)}", "source": "causalneg"} for j in range(2)]}
            for i in range(n)]
with open(work / "examples.jsonl", "w") as f:
    for ex in examples: f.write(json.dumps(ex) + "\n")
corpus = [ex["query"] for ex in examples] + [ex["positive"] for ex in examples] + [x["text"] for ex in examples for x in ex["negatives"]]
make_tiny_backbone(work / "tiny", arch="qwen3", hidden_size=64, num_layers=2, texts=corpus)
common = dict(model=str(work / "tiny"), pooling="lasttoken", max_seq_length=64, lambda_ent=0.4, tau_ent=0.1, temperature=0.05,
              epochs=1, lr=1e-3, warmup_ratio=0.1, save_strategy="no", logging_steps=1, num_threads=threads, seed=0)
(work / "one.json").write_text(json.dumps({**common, "batch_size": 8, "device": "auto", "output_dir": str(work / "one")}))
(work / "two.json").write_text(json.dumps({**common, "batch_size": 4, "device": "auto" if gpus >= 2 else "cpu",
                                           "output_dir": str(work / "two")}))
(work / "device.env").write_text(f"GPUS={gpus}\nDEVICE={'cuda' if gpus else 'cpu'}\n"
                                 f"GPU_NAME='{torch.cuda.get_device_name(0) if gpus else ''}'\nTORCH={torch.__version__}\n")
EOF
# shellcheck disable=SC1091
source "$WORK/device.env"
echo "gpu_check: device $DEVICE${GPU_NAME:+ ($GPU_NAME)}, GPUs $GPUS, torch $TORCH"

# -- 3. training: one process on 'auto', then torchrun with 2 processes ----------------------------------------
ONE=()   # one process on one GPU (the Trainer would spread a single process over all visible GPUs)
if (( GPUS >= 1 )); then first=${CUDA_VISIBLE_DEVICES:-0}; ONE=(env "CUDA_VISIBLE_DEVICES=${first%%,*}"); fi
t0=$EPOCHREALTIME
step train_one "${ONE[@]}" "$PY" -m causalneg.train --examples "$WORK/examples.jsonl" --config "$WORK/one.json"
t1=$EPOCHREALTIME
if (( GPUS >= 2 )); then TWO="2 GPUs, nccl"; else TWO="2 CPU processes, gloo"; fi
step train_two "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 \
  -m causalneg.train --examples "$WORK/examples.jsonl" --config "$WORK/two.json"
t2=$EPOCHREALTIME

# -- 4. checks on both runs, encoding on the device, timings ---------------------------------------------------
step encode "${ONE[@]}" "$PY" - "$WORK" "$DEVICE" "$TEXTS" "$t0" "$t1" "$t2" "$TWO" <<'EOF'
import json, math, sys, time
from pathlib import Path
import torch
from sentence_transformers import SentenceTransformer
import transformers; transformers.logging.disable_progress_bar()
work, device, n_texts = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
t0, t1, t2, two = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
def summary(run):
    s = json.loads((work / run / "train_summary.json").read_text())
    losses = [r["loss"] for r in s["log_history"] if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses), (run, losses)
    assert any("lambda_entropy" in r and r["lambda_entropy"] != 0 for r in s["log_history"]), f"{run}: no entropy term logged"
    runtime = next((r["train_runtime"] for r in s["log_history"] if "train_runtime" in r), float("nan"))
    return s, losses, runtime
one, l1, r1 = summary("one")
two_s, l2, r2 = summary("two")
assert one["world_size"] == 1 and two_s["world_size"] == 2, (one["world_size"], two_s["world_size"])
pool = json.loads((work / "one" / "final" / "1_Pooling" / "config.json").read_text())
assert pool.get("pooling_mode") == "lasttoken" or pool.get("pooling_mode_lasttoken"), pool
model = SentenceTransformer(str(work / "one" / "final"), device=device)
words = ("lima peru quito tiger lion savanna macau gauss river andes volcano glacier desert coral comet tsunami "
         "monsoon aurora violin chess").split()
texts = [" ".join(words[(i * k + 3) % len(words)] for k in range(1, 5 + i % 20)) for i in range(n_texts)]
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
model.encode(texts[:64], batch_size=64); sync()                                  # warm-up
t = time.perf_counter()
emb = model.encode(texts, batch_size=128, convert_to_numpy=True, normalize_embeddings=True); sync()
dt = time.perf_counter() - t
assert emb.shape[0] == n_texts and bool((abs((emb ** 2).sum(1) - 1) < 1e-3).all()), emb.shape
print(f"gpu_check: train, 1 process ({device}): {t1 - t0:.1f} s wall, {r1:.1f} s in the trainer, "
      f"{one['global_step']} steps, loss {l1[0]:.3f} -> {l1[-1]:.3f}")
print(f"gpu_check: train, torchrun ({two}): {t2 - t1:.1f} s wall, {r2:.1f} s in the trainer, "
      f"{two_s['global_step']} steps, loss {l2[0]:.3f} -> {l2[-1]:.3f}")
mem = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device == "cuda" else ""
print(f"gpu_check: encode ({device}): {n_texts} texts in {dt:.2f} s, {n_texts / dt:.0f} texts/s{mem}")
EOF
cat "$WORK/encode.log"
echo "gpu_check: ok"
