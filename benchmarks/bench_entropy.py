"""Benchmark of the query-view entropy term (prints figures; not a test).

1. Forward + backward of the vectorised `causalneg.losses.query_view_entropy` against a straightforward
   per-sample Python loop of the same math (the shape of the authors' implementation), at B=64, N=18
   (15 mined + 3 generated) and D=384 / D=1024. Both are timed in the same process, interleaved repeat
   by repeat, and the medians are compared. The two are checked to agree first.
2. The entropy term's overhead inside a full MiniLM training step (forward, backward and AdamW step of
   `CausalNegLoss` on a batch of (query, positive, 18 negatives)): median step time with lambda_ent = 0.05
   against lambda_ent = 0 (interleaved), and the directly timed entropy computation as a share of the step.

Usage: python benchmarks/bench_entropy.py [--repeats 30] [--step-repeats 9] [--step-batch 4] [--threads 1]
       [--device cpu] [--json out.json]
"""

import argparse, json, os, statistics, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def loop_entropy(q, negs, gen, tau=0.1):
    "L_ent as a Python loop over samples (q and non-generated negatives detached), straight from the paper's module 2."
    import torch

    terms = []
    for i in range(q.shape[0]):
        g = gen[i]
        if not g.any():
            continue
        d = torch.where(g[:, None], negs[i], negs[i].detach())
        p = torch.softmax(d @ q[i].detach() / tau, 0)
        p_g = p[g].sum()
        r = p[g] / p_g
        h = -(r * r.log()).sum()
        terms.append(-h + (p_g - g.sum() / len(g)) ** 2)
    return torch.stack(terms).mean()


def sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def bench_kernel(d, repeats, device, b=64, n_mined=15, n_gen=3):
    "Median seconds of forward+backward: vectorised vs per-sample loop."
    import torch
    from causalneg.losses import query_view_entropy

    g = torch.Generator().manual_seed(d)
    n = n_mined + n_gen
    q = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1).to(device)
    negs = torch.nn.functional.normalize(torch.randn(b, n, d, generator=g), dim=-1).to(device)
    gen = torch.zeros(b, n, dtype=torch.bool)
    gen[:, n_mined:] = True
    gen = gen[:, torch.randperm(n, generator=g)].to(device)  # positions do not matter, labels do
    valid = torch.ones_like(gen)

    x = negs.clone().requires_grad_()

    def vec():
        x.grad = None
        query_view_entropy(q, x, gen, valid).backward()
        return x.grad

    def loop():
        x.grad = None
        loop_entropy(q, x, gen).backward()
        return x.grad

    torch.testing.assert_close(vec(), loop(), atol=1e-5, rtol=1e-4)  # same math
    for _ in range(3):
        vec()
        loop()  # warm-up
    tv, tl = [], []
    for r in range(repeats):  # interleaved, alternating order
        pair = [(tv, vec), (tl, loop)] if r % 2 == 0 else [(tl, loop), (tv, vec)]
        for acc, fn in pair:
            acc.append(timed(fn, device))
    return statistics.median(tv), statistics.median(tl)


def bench_step(batch, repeats, device, max_seq_length=128, n_mined=15, n_gen=3):
    "Median seconds of one MiniLM training step with and without the entropy term, and of the term alone."
    import random
    import torch
    from causalneg.losses import CausalNegLoss, query_view_entropy, generated_mask
    from causalneg.train import build_train_dataset, load_backbone

    rng = random.Random(0)
    words = (
        "river mountain capital city population novel author war peace ocean light speed telephone inventor "
        "tiger cat lion species africa peru lima quito ecuador macau colony century empire king queen law "
        "music painter theory physics chemistry element planet orbit language grammar festival"
    ).split()
    text = lambda k: " ".join(rng.choice(words) for _ in range(k))
    exs = [
        {
            "qid": str(i),
            "query": text(8),
            "positive": text(60),
            "negatives": [{"text": text(60), "source": "mined"} for _ in range(n_mined)]
            + [{"text": text(60), "source": "causalneg"} for _ in range(n_gen)],
        }
        for i in range(batch)
    ]
    ds = build_train_dataset(exs)
    cols = [c for c in ds.column_names if c != "label"]
    model = load_backbone(None, max_seq_length=max_seq_length, device=device)
    model.train()
    feats = [{k: (v.to(device) if hasattr(v, "to") else v) for k, v in model.preprocess(ds[c]).items()} for c in cols]
    labels = torch.tensor(ds["label"], device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    losses = {lam: CausalNegLoss(model, lambda_ent=lam, track_diagnostics=False) for lam in (0.0, 0.05)}
    losses["diag"] = CausalNegLoss(model, lambda_ent=0.05, track_diagnostics=True)

    def step(key):
        def run():
            out = losses[key](feats, labels)
            sum(out.values()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    with torch.no_grad():
        q, pos, negs, lab = losses[0.0].embed(feats, labels)
    gen, valid = generated_mask(lab), lab >= 0

    x = negs.clone().requires_grad_()

    def term():
        x.grad = None
        query_view_entropy(q, x, gen, valid).backward()

    for key in (0.0, 0.05):
        step(key)()  # warm-up
    times = {0.0: [], 0.05: [], "diag": [], "term": []}
    order = [0.0, 0.05, "diag"]
    for r in range(repeats):
        for key in order if r % 2 == 0 else order[::-1]:
            times[key].append(timed(step(key), device))
        times["term"].append(statistics.median(timed(term, device) for _ in range(5)))
    paired = lambda k: statistics.median(100 * (a - b) / b for a, b in zip(times[k], times[0.0]))
    spread = lambda v: 100 * (statistics.quantiles(v, n=4)[2] - statistics.quantiles(v, n=4)[0]) / statistics.median(v)
    out = {k: statistics.median(v) for k, v in times.items()}
    out |= {"paired_pct": paired(0.05), "paired_pct_diag": paired("diag"), "iqr_pct_lambda0": spread(times[0.0])}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30, help="interleaved repeats of the kernel comparison")
    ap.add_argument("--step-repeats", type=int, default=9, help="interleaved repeats of the training step")
    ap.add_argument("--step-batch", type=int, default=4, help="queries per training step (each with 1 + 18 texts)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-step", action="store_true", help="only run the kernel comparison")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    a = ap.parse_args()
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = str(a.threads)
    os.environ.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    import torch

    torch.set_num_threads(a.threads)
    res = {"device": a.device, "threads": a.threads, "torch": torch.__version__, "kernel": {}}
    print(
        f"query_view_entropy forward+backward, B=64 N=18 (15 mined + 3 generated), {a.repeats} interleaved repeats, "
        f"{a.threads} thread(s), {a.device}"
    )
    print(f"{'D':>6} {'vectorised ms':>14} {'per-sample loop ms':>19} {'loop / vectorised':>18}")
    for d in (384, 1024):
        tv, tl = bench_kernel(d, a.repeats, a.device)
        res["kernel"][d] = {"vectorised_ms": tv * 1e3, "loop_ms": tl * 1e3, "ratio": tl / tv}
        print(f"{d:>6} {tv * 1e3:>14.3f} {tl * 1e3:>19.3f} {tl / tv:>17.1f}x")
    if not a.skip_step:
        s = bench_step(a.step_batch, a.step_repeats, a.device)
        base, ent, diag, term = s[0.0], s[0.05], s["diag"], s["term"]
        res["step"] = {
            "batch": a.step_batch,
            "texts_per_step": a.step_batch * 20,
            "step_s_lambda0": base,
            "step_s_lambda005": ent,
            "step_s_lambda005_with_diagnostics": diag,
            "entropy_term_s": term,
            "overhead_pct_step_diff": 100 * (ent - base) / base,
            "overhead_pct_with_diagnostics": 100 * (diag - base) / base,
            "overhead_pct_term_alone": 100 * term / base,
            "overhead_pct_paired": s["paired_pct"],
            "overhead_pct_paired_with_diagnostics": s["paired_pct_diag"],
            "step_time_iqr_pct": s["iqr_pct_lambda0"],
        }
        print(
            f"\nMiniLM training step (batch {a.step_batch} x [query, positive, 18 negatives] = {a.step_batch * 20} texts, "
            f"max_seq_length 128), {a.step_repeats} interleaved repeats:"
        )
        print(f"  step, lambda_ent = 0             : {base:8.3f} s")
        print(f"  step, lambda_ent = 0.05          : {ent:8.3f} s   ({res['step']['overhead_pct_step_diff']:+.2f}% vs lambda 0)")
        print(f"  step, lambda_ent = 0.05 + diags  : {diag:8.3f} s   ({res['step']['overhead_pct_with_diagnostics']:+.2f}%)")
        print(f"  median of paired differences     : {s['paired_pct']:+.2f}% (with diagnostics {s['paired_pct_diag']:+.2f}%)")
        print(f"  spread of step times (IQR)       : {s['iqr_pct_lambda0']:.1f}% of the median")
        print(
            f"  entropy term alone (fwd+bwd)     : {term * 1e3:8.3f} ms  ({res['step']['overhead_pct_term_alone']:.3f}% of a step)"
        )
        print(
            "  (a step difference smaller than the spread is timing noise; the term-alone figure is the direct"
            " measurement of the added work)"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
