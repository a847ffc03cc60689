"""CausalNegLoss and the trainer under DDP: 2 CPU processes (gloo, torchrun) match one process on the same global batch."""

import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

from causalneg.losses import CausalNegLoss, encode_sources

ROOT = Path(__file__).resolve().parents[1]
WORLD, PER_RANK = 2, 4


def _examples():
    "16 examples with 1-4 negatives each; generated negatives are concentrated in the first half."
    srcs = [
        ["mined", "causalneg", "naive"],
        ["mined", "mined"],
        ["causalneg", "causalneg", "mined", "random"],
        ["naive"],
        ["mined"],
        ["random", "mined"],
        ["mined", "causalneg"],
        ["mined", "mined", "mined"],
    ]
    words = ["lima", "peru", "quito", "tiger", "lion", "macau", "gauss", "river", "andes", "cat", "prides", "city"]
    out = []
    for i in range(16):
        s = srcs[i] if i < 8 else ["mined", "random", "mined"][: 1 + i % 3]
        w = lambda k: words[(i * 5 + k) % len(words)]
        out.append(
            {
                "qid": f"q{i}",
                "query": f"{w(0)} {w(1)} question {i}",
                "positive": f"{w(0)} {w(1)} {w(2)} answer",
                "negatives": [{"text": f"{w(3 + j)} {w(j)} text {j}", "source": src} for j, src in enumerate(s)],
            }
        )
    return out


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    "Launch the 2-process worker once; return its work folder."
    from fakes import make_tiny_backbone

    work = tmp_path_factory.mktemp("ddp")
    g = torch.Generator().manual_seed(0)
    b, k, d = WORLD * PER_RANK, 4, 16
    labels = encode_sources(
        [
            ["mined", "causalneg", "naive", "mined"],
            ["mined", "random"],
            ["causalneg"],
            ["naive", "causalneg", "mined"],
            ["mined", "mined", "random"],
            ["random"],
            ["mined", "mined", "mined", "mined"],
            ["mined", "naive"],
        ],
        k=k,
    )
    emb = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1)
    torch.save({"q": emb(b, d), "pos": emb(b, d), "negs": emb(b, k, d), "labels": labels}, work / "loss_inputs.pt")
    backbone = make_tiny_backbone(work / "tiny", "bert")
    with open(work / "examples.jsonl", "w") as f:
        for ex in _examples():
            f.write(json.dumps(ex) + "\n")
    cfg = dict(
        model=backbone,
        max_steps=3,
        batch_size=PER_RANK,
        lr=2e-3,
        warmup_ratio=0.0,
        lambda_ent=0.5,
        logging_steps=1,
        save_strategy="no",
        shuffle=True,
        seed=3,
        max_seq_length=32,
    )
    (work / "train_config.json").write_text(json.dumps({**cfg, "output_dir": str(work / "ddp_run")}))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(WORLD),
        str(ROOT / "tests" / "ddp_worker.py"),
        str(work),
    ]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"torchrun failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return work, cfg


@pytest.mark.parametrize("mode", ["per_sample", "in_batch"])
def test_loss_matches_single_process(ddp_run, mode):
    work, _ = ddp_run
    data = torch.load(work / "loss_inputs.pt")
    res = torch.load(work / "loss_results.pt")[mode]
    q, pos, negs = (data[k].clone().requires_grad_() for k in ("q", "pos", "negs"))
    loss = CausalNegLoss(None, lambda_ent=0.5, track_diagnostics=False, in_batch_negatives=mode == "in_batch")
    parts = loss.compute_loss_from_embeddings(q, pos, negs, data["labels"])
    sum(parts.values()).backward()
    # the two halves hold different numbers of samples with generated negatives (3 vs 1), so a per-rank
    # mean averaged over ranks differs from the global mean: the test can tell the two apart
    halves = [
        loss.compute_loss_from_embeddings(data["q"][s], data["pos"][s], data["negs"][s], data["labels"][s])
        for s in (slice(0, PER_RANK), slice(PER_RANK, None))
    ]
    naive = sum(h["lambda_entropy"] for h in halves).item() / WORLD
    assert abs(naive - parts["lambda_entropy"].item()) > 1e-3
    for k, v in parts.items():
        assert abs(res["parts"][k] - v.item()) < 1e-5, (k, res["parts"][k], v.item())
    for k, t in (("q", q), ("pos", pos), ("negs", negs)):
        torch.testing.assert_close(res["grads"][k], t.grad, atol=1e-6, rtol=1e-5)


def test_trainer_matches_single_process(ddp_run, tmp_path):
    from causalneg.train import TrainConfig, read_examples, train
    from sentence_transformers import SentenceTransformer

    work, cfg = ddp_run
    single = train(
        read_examples(work / "examples.jsonl"),
        TrainConfig(**{**cfg, "batch_size": WORLD * PER_RANK, "output_dir": str(tmp_path / "single")}),
    )
    log_ddp = [json.loads(l) for l in open(work / "ddp_run" / "train_log.jsonl") if '"loss"' in l]
    log_one = [json.loads(l) for l in open(tmp_path / "single" / "train_log.jsonl") if '"loss"' in l]
    summary = json.loads((work / "ddp_run" / "train_summary.json").read_text())
    assert summary["world_size"] == WORLD and summary["global_step"] == cfg["max_steps"]
    assert len(log_ddp) == len(log_one) == cfg["max_steps"]
    for a, b in zip(log_ddp, log_one):
        for key in ("loss", "info_nce", "lambda_entropy", "diag_H_G", "diag_P_G", "diag_sim_mined", "diag_sim_gen"):
            assert abs(a[key] - b[key]) < 2e-4, (a["step"], key, a[key], b[key])
    m_ddp = SentenceTransformer(str(work / "ddp_run" / "final"))
    m_one = SentenceTransformer(single)
    assert list(m_one.state_dict()) == list(m_ddp.state_dict())
    for (n, p1), p2 in zip(m_one.state_dict().items(), m_ddp.state_dict().values()):
        torch.testing.assert_close(p2, p1, atol=2e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")
    from causalneg.train import load_backbone

    p0 = load_backbone(str(work / "tiny")).state_dict()
    moved = max((p0[n] - p).abs().max().item() for n, p in m_one.state_dict().items() if n in p0)
    assert moved > 1e-3, "training must change the parameters for the comparison to mean anything"
