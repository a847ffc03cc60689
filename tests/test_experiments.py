"""Experiment runs: DDP training through torchrun matches one process, and runs resume instead of retraining."""

import json
import os

import torch

torch.set_num_threads(1)
os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")

from sentence_transformers import SentenceTransformer  # noqa: E402

from causalneg.experiments import train_distributed  # noqa: E402
from causalneg.train import TrainConfig, train  # noqa: E402
from fakes import make_tiny_backbone  # noqa: E402


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


def old_train_config(variant, seed, s):
    "run_variant's explicit TrainConfig before `variant_train_config` (kept to prove the helper changes nothing)."
    from pathlib import Path

    return TrainConfig(
        model=s.model,
        pooling=s.pooling,
        max_seq_length=s.max_seq_length,
        epochs=s.epochs,
        max_steps=s.max_steps,
        batch_size=s.batch_size,
        lr=s.lr,
        warmup_ratio=s.warmup_ratio,
        temperature=s.temperature,
        lambda_ent=variant.lambda_ent,
        tau_ent=variant.tau_ent or s.tau_ent,
        entropy_term=variant.entropy_term,
        balance_term=variant.balance_term,
        seed=seed,
        output_dir=str(Path(s.models_dir, f"{variant.name}-s{seed}")),
        num_threads=s.threads,
        save_strategy="no",
        logging_steps=1,
        device=s.device,
        grad_accum=s.grad_accum,
        dev_fraction=s.dev_fraction,
        early_stopping_patience=s.early_stopping_patience,
    )


def test_variant_train_config_equals_the_old_explicit_construction():
    from dataclasses import replace

    from causalneg.experiments import RunSettings, variant_train_config
    from causalneg.variants import ablation_variants, main_variants

    s = RunSettings(batch_size=4, lr=1e-4, threads=3, device="cpu", grad_accum=2, dev_fraction=0.1, early_stopping_patience=2)
    for v in main_variants(3, 3) + ablation_variants(3, 3, taus=[0.2]):
        for seed in (0, 2):
            # the old construction had no per-row masking or hardness weighting: a row with either differs in it only
            want = replace(
                old_train_config(v, seed, s),
                mask_margin=v.mask_margin if v.mask_margin is not None else s.mask_margin,
                hardness_strength=v.hardness_strength,
            )
            assert variant_train_config(v, seed, s) == want, v.name


def test_variant_train_config_carries_every_shared_field():
    "A field RunSettings and TrainConfig both have reaches the TrainConfig (tau_ent: unless the variant sets its own)."
    from dataclasses import fields

    from causalneg.experiments import SETTINGS_RENAMED, RunSettings, variant_train_config
    from causalneg.variants import Variant

    train_names = {f.name for f in fields(TrainConfig)}
    shared = {f.name for f in fields(RunSettings) if SETTINGS_RENAMED.get(f.name, f.name) in train_names}
    assert {"lr", "batch_size", "mask_margin", "threads", "tau_ent"} <= shared
    s = RunSettings(mask_margin=0.1, lr=3e-5, threads=4, batch_size=5, tau_ent=0.3)
    c = variant_train_config(Variant("x", "x", {"mined": 1}), 1, s)
    for name in shared:
        assert getattr(c, SETTINGS_RENAMED.get(name, name)) == getattr(s, name), name
