"""causalneg.losses: values against hand computation and a per-sample loop, gradient routing and direction,
padding, lambda = 0, and the sentence-transformers loss module on a tiny model."""

import math, os

import pytest
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

from causalneg.losses import (
    CausalNegLoss,
    diagnostic_keys,
    encode_sources,
    entropy_diagnostics,
    generated_mask,
    info_nce,
    query_view_entropy,
    query_view_terms,
)


# ---------------------------------------------------------------- straightforward per-sample references
def ref_info_nce(q, pos, negs, valid, t):
    "InfoNCE written as a loop over samples, from the definition."
    out = []
    for i in range(q.shape[0]):
        cands = torch.cat([pos[i : i + 1], negs[i][valid[i]]])
        out.append(-torch.log_softmax(cands @ q[i] / t, 0)[0])
    return torch.stack(out).mean()


def ref_entropy(q, negs, gen, valid, tau, entropy_term=True, balance_term=True):
    "The paper's L_ent (module 2) as a loop over samples (q and non-generated negatives detached)."
    terms = []
    for i in range(q.shape[0]):
        g = (gen[i] & valid[i])[valid[i]]
        if not g.any():
            continue
        d = negs[i][valid[i]]
        d = torch.where(g[:, None], d, d.detach())
        p = torch.softmax(d @ q[i].detach() / tau, 0)
        p_g = p[g].sum()
        r = p[g] / p_g
        h = -(r * r.log()).sum()
        target = g.sum() / len(g)
        terms.append(-h * entropy_term + (p_g - target) ** 2 * balance_term)
    return torch.stack(terms).mean() if terms else torch.zeros(())


def batch(seed=0, b=6, k=5, d=8, normalise=True):
    "Random embeddings with varied source labels: a sample without generated negatives, one with only generated ones."
    g = torch.Generator().manual_seed(seed)
    labels = (
        encode_sources(
            [
                ["mined", "causalneg", "naive", "mined", "random"],
                ["mined", "mined"],
                ["causalneg", "naive"],
                ["random", "mined", "causalneg"],
                ["naive"],
                ["mined", "causalneg", "causalneg", "causalneg", "mined"],
            ][:b][:b],
            k=k,
        )
        if k >= 5
        else encode_sources([["mined", "causalneg", "naive"]] * b, k=k)
    )
    f = (lambda x: F.normalize(x, dim=-1)) if normalise else (lambda x: x)
    q, pos, negs = f(torch.randn(b, d, generator=g)), f(torch.randn(b, d, generator=g)), f(torch.randn(b, k, d, generator=g))
    return q, pos, negs, labels


# ---------------------------------------------------------------- values
def test_info_nce_hand_computed_default_temperature():
    q, pos = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.8, 0.6]])
    negs = torch.tensor([[[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]])
    t = 0.05
    expected = math.log(math.exp(0.8 / t) + math.exp(0.6 / t) + math.exp(0) + math.exp(1 / t)) - 0.8 / t
    assert info_nce(q, pos, negs) == pytest.approx(expected, rel=1e-6)
    assert info_nce(q, pos, negs, temperature=1.0) == pytest.approx(
        math.log(math.exp(0.8) + math.exp(0.6) + 1 + math.e) - 0.8, rel=1e-6
    )


def test_entropy_hand_computed_default_temperature():
    q = torch.tensor([[1.0, 0.0]])
    negs = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]]])
    gen = torch.tensor([[False, True, True, False]])
    tau = 0.1
    e = [math.exp(s / tau) for s in (1.0, 0.6, 0.0, 0.8)]
    p_g = (e[1] + e[2]) / sum(e)
    r = [e[1] / (e[1] + e[2]), e[2] / (e[1] + e[2])]
    h = -sum(x * math.log(x) for x in r)
    assert query_view_entropy(q, negs, gen).item() == pytest.approx(-h + (p_g - 0.5) ** 2, rel=1e-5)
    t = query_view_terms(q, negs, gen)
    assert t["H_G"].item() == pytest.approx(h, rel=1e-5) and t["P_G"].item() == pytest.approx(p_g, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("terms", [(True, True), (True, False), (False, True)])
def test_vectorised_matches_per_sample_loop(seed, terms):
    q, pos, negs, labels = batch(seed, normalise=seed != 2)
    valid, gen = labels >= 0, generated_mask(labels)
    assert info_nce(q, pos, negs, valid) == pytest.approx(ref_info_nce(q, pos, negs, valid, 0.05).item(), rel=1e-5)
    n1, n2 = negs.clone().requires_grad_(), negs.clone().requires_grad_()
    a = query_view_entropy(q, n1, gen, valid, 0.1, *terms)
    b = ref_entropy(q, n2, gen, valid, 0.1, *terms)
    assert a.item() == pytest.approx(b.item(), rel=1e-5, abs=1e-6)
    a.backward()
    b.backward()
    torch.testing.assert_close(n1.grad, n2.grad, atol=1e-6, rtol=1e-4)


def test_sample_with_only_generated_negatives():
    q, _, negs, _ = batch(3, b=1, k=3)
    gen = torch.ones(1, 3, dtype=torch.bool)
    t = query_view_terms(q, negs, gen)
    assert t["P_G"].item() == pytest.approx(1.0) and t["target"].item() == 1.0  # balance term is exactly 0
    n = negs.clone().requires_grad_()
    loss = query_view_entropy(q, n, gen)
    assert loss.item() == pytest.approx(-t["H_G"].item(), rel=1e-6)
    loss.backward()
    assert n.grad.abs().sum() > 0
    with torch.no_grad():
        n -= 1e-2 * n.grad
    assert query_view_terms(q, n, gen)["H_G"] > t["H_G"] + 1e-4


def test_no_generated_negative_returns_zero_that_backpropagates():
    q, _, negs, labels = batch(0)
    n = negs.clone().requires_grad_()
    loss = query_view_entropy(q, n, torch.zeros_like(labels, dtype=torch.bool), labels >= 0)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert not n.grad.any()


# ---------------------------------------------------------------- gradients
def test_entropy_gradient_reaches_only_generated_negatives():
    q, _, negs, labels = batch(4)
    valid, gen = labels >= 0, generated_mask(labels)
    qq, n = q.clone().requires_grad_(), negs.clone().requires_grad_()
    query_view_entropy(qq, n, gen, valid).backward()
    assert qq.grad is None or not qq.grad.any()
    per_slot = n.grad.abs().sum(-1)
    assert not per_slot[~(gen & valid)].any(), "mined, random and padding slots must get no gradient"
    # a sample whose only negative is generated has P_G = target = 1 and H_G = 0 whatever its embedding
    live = gen & valid & (valid.sum(1, keepdim=True) > 1)
    assert (per_slot[live] > 0).all(), "every generated negative with company must get a gradient"
    assert not per_slot[4].any() and valid[4].sum() == 1


def _step(q, negs, gen, valid, lr, **kw):
    "One SGD step of L_ent on the negatives; return terms before and after."
    n = negs.clone().requires_grad_()
    query_view_entropy(q, n, gen, valid, **kw).backward()
    with torch.no_grad():
        before = query_view_terms(q, negs, gen, valid)
        after = query_view_terms(q, n - lr * n.grad, gen, valid)
    return before, after


def test_gradient_step_raises_entropy_and_moves_share_to_target():
    # two generated negatives at unequal similarity, both closer to the query than the mined ones (the
    # generated text is "too easy to tell apart" from the corpus by similarity): H_G < log 2 and P_G far
    # above its target 2/4. One step of the full L_ent fixes both.
    q = torch.tensor([[1.0, 0.0, 0.0]])
    negs = torch.tensor([[[0.3, 0.95, 0.0], [0.2, 0.0, 0.98], [0.9, 0.44, 0.0], [0.6, 0.0, 0.8]]])
    gen = torch.tensor([[False, False, True, True]])
    valid = torch.ones_like(gen)
    before, after = _step(q, negs, gen, valid, lr=0.05)
    assert before["H_G"] < math.log(2) - 0.1 and before["P_G"] > 0.9
    assert after["H_G"] > before["H_G"]
    assert abs(after["P_G"] - 0.5) < abs(before["P_G"] - 0.5)
    # and on a random batch, per term: the entropy term alone raises H_G, the balance term alone moves P_G
    # (when P_G is below its target the two terms can pull against each other: raising the entropy lowers
    # the most similar generated negative; the step still lowers L_ent as a whole)
    q, _, negs, labels = batch(5)
    valid, gen = labels >= 0, generated_mask(labels)
    n = negs.clone().requires_grad_()
    l0 = query_view_entropy(q, n, gen, valid)
    l0.backward()
    assert query_view_entropy(q, negs - 1e-3 * n.grad, gen, valid) < l0
    b, a = _step(q, negs, gen, valid, lr=1e-2, balance_term=False)
    multi = (gen & valid).sum(1) > 1
    assert (a["H_G"][multi] > b["H_G"][multi]).all()
    b, a = _step(q, negs, gen, valid, lr=1e-2, entropy_term=False)
    # (where P_G is ~0 the softmax saturates and the balance gradient P_G (1 - P_G) ... vanishes)
    off = b["has_gen"] & ((b["P_G"] - b["target"]).abs() > 1e-3) & (b["P_G"] > 0.01) & (b["P_G"] < 0.99)
    assert off.any() and ((a["P_G"] - a["target"]).abs()[off] < (b["P_G"] - b["target"]).abs()[off]).all()


# ---------------------------------------------------------------- padding
@pytest.mark.parametrize("fill", [0.0, 1e4, float("nan")])
def test_padding_changes_nothing(fill):
    q, pos, negs, labels = batch(6)
    valid, gen = labels >= 0, generated_mask(labels)
    extra = torch.full((negs.shape[0], 3, negs.shape[2]), fill)
    negs_p = torch.cat([negs, extra], 1)
    valid_p = torch.cat([valid, torch.zeros(valid.shape[0], 3, dtype=torch.bool)], 1)
    gen_p = torch.cat([gen, torch.ones(gen.shape[0], 3, dtype=torch.bool)], 1)  # even a "generated" flag on padding
    for f in (
        lambda q, n, v, g: info_nce(q, pos, n, v),
        lambda q, n, v, g: query_view_entropy(q, n, g, v),
        lambda q, n, v, g: info_nce(q, pos, n, v, in_batch_negatives=True),
    ):
        q1, n1 = q.clone().requires_grad_(), negs.clone().requires_grad_()
        q2, n2 = q.clone().requires_grad_(), negs_p.clone().requires_grad_()
        a, b = f(q1, n1, valid, gen), f(q2, n2, valid_p, gen_p)
        assert torch.isfinite(b) and b.item() == pytest.approx(a.item(), rel=1e-6, abs=1e-7)
        a.backward()
        b.backward()
        torch.testing.assert_close(n2.grad[:, : negs.shape[1]], n1.grad)
        assert not n2.grad[:, negs.shape[1] :].any()
        if q1.grad is not None:
            torch.testing.assert_close(q2.grad, q1.grad)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call,msg",
    [
        (lambda q, p, n, v: info_nce(q, p, n[0], v), "negs must be"),
        (lambda q, p, n, v: info_nce(q, p[:, :3], n, v), "pos must be [batch, dim]"),
        (lambda q, p, n, v: info_nce(q, p, n, v[:, :2]), "valid must be [batch, n_negatives]"),
        (lambda q, p, n, v: info_nce(q, p, n, v.long()), "must be a bool tensor"),
        (lambda q, p, n, v: info_nce(q, p, n, v, temperature=0), "temperature must be > 0"),
        (lambda q, p, n, v: info_nce(q, p[:3], n, v), "without in-batch"),
        (lambda q, p, n, v: query_view_entropy(q, n, v[:, :2], v), "is_generated must be"),
        (lambda q, p, n, v: query_view_entropy(q[0], n, v, v), "q must be [batch, dim]"),
        (lambda q, p, n, v: query_view_entropy(q, n, v, v, temperature=-1), "temperature must be > 0"),
    ],
)
def test_bad_inputs(call, msg):
    q, pos, negs, labels = batch(0)
    with pytest.raises(ValueError, match=None) as e:
        call(q, pos, negs, labels >= 0)
    assert msg in str(e.value), str(e.value)


# ---------------------------------------------------------------- the sentence-transformers module
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from causalneg.train import load_backbone
    from fakes import make_tiny_backbone

    return {d: load_backbone(make_tiny_backbone(tmp_path_factory.mktemp(f"tiny{d}"), "bert", dropout=d)) for d in (0.0, 0.1)}


TEXTS = [
    ["what is the capital of peru", "largest cat", "population of macau"],
    ["lima is the capital of peru", "the tiger is the largest cat", "macau has 680,000 people"],
    ["quito is the capital of ecuador", "lions live in prides", "hong kong is a city"],
    ["lima ohio is a small city", "", "macau is in china"],
    ["the andes run through peru", "", ""],
]
LABELS = torch.tensor([[1, 3, 2], [2, -1, -1], [0, 3, -1]])  # columns neg_0..neg_2, -1 = padding


def feats(model, cols):
    return [model.preprocess(c) for c in cols]


def test_module_lambda_zero_is_exactly_info_nce(tiny):
    m = tiny[0.0].train()
    loss = CausalNegLoss(m, lambda_ent=0.0)
    out = loss(feats(m, TEXTS), LABELS)
    assert list(out) == ["info_nce"]
    out["info_nce"].backward()
    g1 = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    # reference: each column embedded on its own, padding slots zeroed, plain info_nce
    e = [m(f)["sentence_embedding"] for f in feats(m, TEXTS)]
    negs = torch.stack(e[2:], 1) * (LABELS >= 0)[..., None]
    ref = info_nce(e[0], e[1], negs, LABELS >= 0)
    ref.backward()
    assert out["info_nce"].item() == pytest.approx(ref.item(), rel=1e-5)
    for n, p in m.named_parameters():
        if n in g1:
            torch.testing.assert_close(g1[n], p.grad, atol=1e-6, rtol=1e-4)
    m.zero_grad()


def test_module_in_batch_equals_sentence_transformers_mnrl(tiny):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    m = tiny[0.0]
    cols = [c[:2] for c in TEXTS[:3]]  # no padding: MNRL has no notion of it
    a = CausalNegLoss(m, lambda_ent=0.0, in_batch_negatives=True)(feats(m, cols), torch.tensor([[1], [2]]))["info_nce"]
    b = MultipleNegativesRankingLoss(m, scale=20.0)(feats(m, cols), None)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_module_entropy_part_and_its_gradient_path(tiny):
    m = tiny[0.0].train()
    loss = CausalNegLoss(m, lambda_ent=0.3, track_diagnostics=False)
    out = loss(feats(m, TEXTS), LABELS)
    assert set(out) == {"info_nce", "lambda_entropy"}
    out["lambda_entropy"].backward()
    g1 = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    # reference: only the generated texts are embedded with gradients
    gen = generated_mask(LABELS)
    with torch.no_grad():
        e = [m(f)["sentence_embedding"] for f in feats(m, TEXTS)]
    gen_e = [m(f)["sentence_embedding"] for f in feats(m, TEXTS[2:])]
    negs = torch.stack([torch.where(gen[:, j, None], gen_e[j], e[2 + j]) for j in range(3)], 1)
    ref = 0.3 * query_view_entropy(e[0], negs * (LABELS >= 0)[..., None], gen, LABELS >= 0)
    ref.backward()
    assert out["lambda_entropy"].item() == pytest.approx(ref.item(), rel=1e-5)
    for n, p in m.named_parameters():
        if n in g1:
            torch.testing.assert_close(g1[n], p.grad, atol=1e-6, rtol=1e-4)
    m.zero_grad()


def test_module_padding_columns_change_nothing_even_with_dropout(tiny):
    m = tiny[0.1].train()
    loss = CausalNegLoss(m, lambda_ent=0.05, track_diagnostics=False)

    def run(cols, labels):
        torch.manual_seed(0)
        out = loss(feats(m, cols), labels)
        total = sum(out.values())
        total.backward()
        g = torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])
        m.zero_grad()
        return total.item(), g

    a = run(TEXTS, LABELS)
    b = run(TEXTS + [["", "", ""], ["", "", ""]], torch.cat([LABELS, torch.full((3, 2), -1)], 1))
    assert a[0] == b[0]
    torch.testing.assert_close(a[1], b[1], atol=0, rtol=0)


def test_module_diagnostics_accumulate_over_steps(tiny):
    m = tiny[0.0]
    loss = CausalNegLoss(m, lambda_ent=0.05)
    f = feats(m, TEXTS)
    loss(f, LABELS)
    loss(f, LABELS)
    with torch.no_grad():
        loss(f, LABELS)  # eval batches are not counted
    d = loss.pop_diagnostics()
    with torch.no_grad():
        q, pos, negs, labels = loss.embed(f, LABELS)
    ref = entropy_diagnostics(q, pos, negs, labels)
    for k in ("H_G", "P_G", "P_G_target", "sim_mined", "sim_gen", "sim_pos", "logN_g"):
        s, c = ref[k]
        assert d[k] == pytest.approx((s / c).item(), rel=1e-4, abs=1e-6), k
    assert d["frac_with_gen"] == 1.0 and d["logN_g"] == pytest.approx(math.log(2) / 3)
    assert set(d) <= set(diagnostic_keys()) and "sim_random" in d
    assert loss.pop_diagnostics() == {}


@pytest.mark.parametrize(
    "labels,msg",
    [
        (None, "needs a 'label' column"),
        (torch.tensor([[1, 3], [2, -1], [0, 3]]), "labels must be [batch, K] = [3, 3]"),
        (torch.tensor([[1, 3, 9], [2, -1, -1], [0, 3, -1]]), "codes outside [-1, 4]"),
    ],
)
def test_module_bad_labels(tiny, labels, msg):
    m = tiny[0.0]
    with pytest.raises(ValueError) as e:
        CausalNegLoss(m)(feats(m, TEXTS), labels)
    assert msg in str(e.value)


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"temperature": 0}, "temperature must be > 0"),
        ({"lambda_ent": -1}, "lambda_ent must be >= 0"),
        ({"entropy_term": False, "balance_term": False}, "both entropy_term and balance_term are off"),
        ({"generated_sources": ("gpt",)}, "not in sources"),
    ],
)
def test_module_bad_settings(kw, msg):
    with pytest.raises(ValueError) as e:
        CausalNegLoss(None, **kw)
    assert msg in str(e.value)


# ---------------------------------------------------------------- fake-negative masking
def masking_inputs():
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[0.5, 0.5]])  # q.pos = 0.5
    negs = torch.tensor([[[0.9, 0.1], [0.55, 0.3]]], requires_grad=True)  # q.neg = 0.9 (> 0.5 + 0.1), 0.55 (not)
    return q, pos, negs, encode_sources([["mined", "mined"]])


def test_mask_margin_drops_a_negative_above_the_positive_plus_margin():
    "A negative above pos + margin leaves the softmax and gets no gradient; one below stays."
    q, pos, negs, labels = masking_inputs()
    loss = CausalNegLoss(None, lambda_ent=0.0, mask_margin=0.1, track_diagnostics=False)
    out = loss.compute_loss_from_embeddings(q, pos, negs, labels)["info_nce"]
    t = 0.05
    want = math.log(math.exp(0.5 / t) + math.exp(0.55 / t)) - 0.5 / t  # only the second negative competes
    assert out.item() == pytest.approx(want, rel=1e-6)
    out.backward()
    assert negs.grad[0, 0].abs().sum() == 0 and negs.grad[0, 1].abs().sum() > 0


def test_mask_margin_none_is_bitwise_the_loss_without_masking(monkeypatch):
    "With mask_margin=None the loss and its gradient are bitwise unchanged and the masking code never runs."
    import causalneg.losses as L

    q, pos, negs, labels = masking_inputs()
    plain = CausalNegLoss(None, lambda_ent=0.0, track_diagnostics=False).compute_loss_from_embeddings(q, pos, negs, labels)[
        "info_nce"
    ]
    (g_plain,) = torch.autograd.grad(plain, negs)
    monkeypatch.setattr(L, "fake_negative_mask", lambda *a, **k: pytest.fail("masking ran with mask_margin=None"))
    off = CausalNegLoss(None, lambda_ent=0.0, mask_margin=None, track_diagnostics=False).compute_loss_from_embeddings(
        q, pos, negs, labels
    )
    (g_off,) = torch.autograd.grad(off["info_nce"], negs)
    assert torch.equal(plain, off["info_nce"]) and torch.equal(g_plain, g_off)
    ref = ref_info_nce(q, pos, negs.detach(), torch.ones(1, 2, dtype=torch.bool), 0.05)
    assert plain.item() == pytest.approx(float(ref), rel=1e-6)
