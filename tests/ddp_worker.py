"""Worker for tests/test_ddp.py, launched as `torchrun --nproc_per_node 2 tests/ddp_worker.py WORKDIR`.

Runs on CPU with the gloo backend:
1. loss level: each process computes `CausalNegLoss` on its half of a fixed batch of leaf embeddings,
   backpropagates and averages the gradients the way DDP does (all_reduce / world size), with and
   without in-batch negatives; results go to WORKDIR/loss_rank{r}.pt.
2. trainer level: `causalneg.train.main` (the CLI) on a tiny BERT under torchrun (SentenceTransformerTrainer +
   accelerate DDP); the saved model and log land in WORKDIR/ddp_run.
The test compares both with one process on the same global batch.
"""

import os, sys
from pathlib import Path

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"
os.environ.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

import torch
import torch.distributed as dist

torch.set_num_threads(1)


def loss_level(work: Path, rank: int, world: int) -> None:
    "Per-rank loss and DDP-averaged gradients on this rank's half of the fixed batch."
    from causalneg.losses import CausalNegLoss

    data = torch.load(work / "loss_inputs.pt")
    b = data["q"].shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)
    out = {}
    for name, kw in {"per_sample": {}, "in_batch": {"in_batch_negatives": True}}.items():
        q, pos, negs = (data[k][sl].clone().requires_grad_() for k in ("q", "pos", "negs"))
        loss = CausalNegLoss(None, lambda_ent=0.5, track_diagnostics=False, **kw)
        parts = loss.compute_loss_from_embeddings(q, pos, negs, data["labels"][sl])
        total = sum(parts.values())
        total.backward()
        grads = {}
        for k, t in (("q", q), ("pos", pos), ("negs", negs)):
            g = torch.zeros_like(data[k])
            g[sl] = t.grad
            dist.all_reduce(g)  # every row belongs to one rank: the sum assembles the full gradient
            grads[k] = g / world  # DDP averages over processes
        vals = torch.stack([p.detach() for p in parts.values()])
        dist.all_reduce(vals)
        out[name] = {"parts": {k: v.item() / world for k, v in zip(parts, vals)}, "grads": grads}
    if rank == 0:
        torch.save(out, work / "loss_results.pt")


def trainer_level(work: Path) -> None:
    "Train the tiny backbone under torchrun through the kit's command line (`python -m causalneg.train`)."
    from causalneg.train import main

    main(["--examples", str(work / "examples.jsonl"), "--config", str(work / "train_config.json")])


if __name__ == "__main__":
    work = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    loss_level(work, rank, world)
    dist.barrier()
    trainer_level(work)
    if dist.is_initialized():
        dist.destroy_process_group()
