"""Experiment runs: DDP training through torchrun matches one process, and runs resume instead of retraining."""

import json
import os

import torch

torch.set_num_threads(1)
os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")

from sentence_transformers import SentenceTransformer  # noqa: E402

from causalneg.experiments import train_distributed  # noqa: E402
from causalneg.train import TrainConfig, make_tiny_backbone, train  # noqa: E402


def examples(n=8):
    words = ["lima", "peru", "quito", "tiger", "lion", "macau", "gauss", "river"]
    return [
        {
            "qid": f"q{i}",
            "query": f"{words[i]} question",
            "positive": f"{words[i]} {words[(i + 1) % 8]} answer",
            "negatives": [
                {"text": f"{words[(i + 3) % 8]} text", "source": "mined"},
                {"text": f"{words[(i + 5) % 8]} rewrite", "source": "causalneg"},
            ],
        }
        for i in range(n)
    ]


def test_torchrun_training_matches_one_process(tmp_path):
    "2 gloo processes x batch 2 = one process x batch 4: same weights after the same steps (DDP-correct loss)."
    backbone = make_tiny_backbone(tmp_path / "tiny", texts=[e["query"] for e in examples()])
    common = dict(
        model=backbone,
        max_steps=2,
        lr=1e-3,
        warmup_ratio=0.0,
        lambda_ent=0.05,
        shuffle=False,
        save_strategy="no",
        num_threads=1,
        logging_steps=1,
        max_seq_length=16,
    )
    single = train(examples(), TrainConfig(batch_size=4, output_dir=str(tmp_path / "single"), **common))
    ddp = train_distributed(examples(), TrainConfig(batch_size=2, output_dir=str(tmp_path / "ddp"), **common), nproc_per_node=2)
    summary = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 2
    a, b = SentenceTransformer(single, device="cpu"), SentenceTransformer(ddp, device="cpu")
    ref = SentenceTransformer(backbone, device="cpu")
    moved = max((p - r).abs().max().item() for p, r in zip(a.parameters(), ref.parameters()))
    diff = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
    assert moved > 1e-4, "training must change the weights"
    assert diff < 1e-5 * max(1.0, moved * 100), f"DDP and single-process weights differ by {diff} (moved {moved})"
