"""causalneg.train: dataset layout and bad input, backbones (tiny Qwen2/Qwen3 decoders with last-token pooling),
checkpoints, resume, early stopping, determinism, the CLI, diagnostics, and a short real MiniLM run."""

import json, math, os

import pytest
import torch

torch.set_num_threads(1)
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

from causalneg.losses import CausalNegLoss
from causalneg.train import TrainConfig, build_train_dataset, load_backbone, main, split_dev, train
from fakes import make_tiny_backbone

TOPICS = [
    (
        "capital of peru",
        "Lima is the capital and largest city of Peru.",
        "Quito is the capital of Ecuador.",
        "Lima is a city in Allen County, Ohio.",
    ),
    (
        "largest living cat",
        "The tiger is the largest living cat species.",
        "The lion is a social cat of Africa.",
        "The tiger shark is the largest predatory shark.",
    ),
    (
        "population of macau",
        "Macau has about 680,000 inhabitants.",
        "Hong Kong has 7.5 million inhabitants.",
        "Macau was a Portuguese colony until 1999.",
    ),
    (
        "inventor of the telephone",
        "Alexander Graham Bell patented the telephone in 1876.",
        "Thomas Edison invented the phonograph.",
        "Bell founded a school for the deaf in Boston.",
    ),
    (
        "highest mountain in africa",
        "Kilimanjaro is the highest mountain in Africa.",
        "Mount Kenya is the second highest mountain in Africa.",
        "Kilimanjaro lies in Tanzania near Kenya.",
    ),
    (
        "author of war and peace",
        "Leo Tolstoy wrote the novel War and Peace.",
        "Dostoevsky wrote Crime and Punishment.",
        "Tolstoy was born at Yasnaya Polyana.",
    ),
    (
        "speed of light",
        "Light travels at 299,792 kilometres per second in vacuum.",
        "Sound travels at 343 metres per second in air.",
        "Light is electromagnetic radiation.",
    ),
    (
        "largest ocean",
        "The Pacific is the largest and deepest ocean.",
        "The Atlantic is the second largest ocean.",
        "The Pacific Ring of Fire has many volcanoes.",
    ),
]


def examples(n=32):
    "n examples with 1-3 negatives each, mixing mined and generated sources (variable K)."
    out = []
    for i in range(n):
        q, p, mined, cf = TOPICS[i % len(TOPICS)]
        other = TOPICS[(i + 3) % len(TOPICS)][1]
        negs = [
            {"text": mined, "source": "mined"},
            {"text": cf, "source": "causalneg", "node_id": "n1"},
            {"text": other, "source": "random"},
        ][: 1 + i % 3]
        out.append(
            {"qid": f"q{i}", "query": f"{q} ({i // len(TOPICS)})" if i >= len(TOPICS) else q, "positive": p, "negatives": negs}
        )
    return out


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_backbone(tmp_path_factory.mktemp("bert"), "bert")


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def logs(folder):
    return [json.loads(l) for l in open(os.path.join(folder, "train_log.jsonl"))]


# ---------------------------------------------------------------- dataset
def test_dataset_layout_variable_negatives():
    ds = build_train_dataset(examples(6))
    assert ds.column_names == ["query", "positive", "neg_0", "neg_1", "neg_2", "label"]
    assert ds["label"][:3] == [[1, -1, -1], [1, 3, -1], [1, 3, 0]]
    assert ds["neg_2"][:3] == ["", "", TOPICS[5][1]]
    assert build_train_dataset(examples(6), pad_text="[PAD]")["neg_1"][0] == "[PAD]"
    # zero negatives anywhere still works (InfoNCE of the positive alone), columns just query/positive/label
    assert build_train_dataset([{"qid": "a", "query": "q", "positive": "p"}]).column_names == ["query", "positive", "label"]


@pytest.mark.parametrize(
    "bad,msg",
    [
        ([], "No training examples"),
        (["not a dict"], "expected a dict"),
        ([{"qid": "a", "positive": "p", "negatives": []}], "'query' must be a non-empty string"),
        ([{"qid": "a", "query": "q", "positive": "", "negatives": []}], "'positive' must be a non-empty string"),
        ([{"qid": "a", "query": "q", "positive": "p", "negatives": "x"}], "'negatives' must be a list"),
        ([{"qid": "a", "query": "q", "positive": "p", "negatives": [{"text": " ", "source": "mined"}]}], "non-empty 'text'"),
        ([{"qid": "a", "query": "q", "positive": "p", "negatives": [{"text": "t"}]}], "unknown source None"),
        ([{"qid": "a", "query": "q", "positive": "p", "negatives": [{"text": "t", "source": "llm"}]}], "unknown source 'llm'"),
    ],
)
def test_dataset_bad_input(bad, msg):
    with pytest.raises(ValueError) as e:
        build_train_dataset(bad)
    assert msg in str(e.value)
    if bad and isinstance(bad[0], dict):
        assert "qid 'a'" in str(e.value)


def test_no_silent_truncation():
    with pytest.raises(ValueError, match="never dropped silently"):
        build_train_dataset(examples(6), max_negatives=2)
    assert len(build_train_dataset(examples(6), max_negatives=3)) == 6


def test_config_and_split_errors(tiny_bert, tmp_path):
    with pytest.raises(ValueError, match="Unknown TrainConfig keys"):
        TrainConfig.from_dict({"lambda": 0.1})
    with pytest.raises(ValueError, match="device must be"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="needs epochs > 0 or max_steps > 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="early_stopping_patience needs a dev set"):
        train(examples(4), TrainConfig(model=tiny_bert, max_steps=1, early_stopping_patience=1, output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="put none of"):
        train(examples(2), TrainConfig(model=tiny_bert, max_steps=1, dev_fraction=0.01, output_dir=str(tmp_path)))
    tr, dv = split_dev(examples(32), 0.25, seed=1)
    assert {e["qid"] for e in tr}.isdisjoint(e["qid"] for e in dv) and len(tr) + len(dv) == 32 and dv


# ---------------------------------------------------------------- decoder backbones (the paper's Qwen3 path)
@pytest.mark.parametrize("arch", ["qwen3", "qwen2"])
def test_tiny_decoder_last_token_training(arch, tmp_path):
    path = make_tiny_backbone(tmp_path / "m", arch, texts=[t for tp in TOPICS for t in tp])
    m = load_backbone(path, max_seq_length=48)
    assert m[1].pooling_mode == "lasttoken" and m.tokenizer.padding_side == "right"
    tok = m.tokenizer
    assert tok(["lima"])["input_ids"][0][-1] == tok.eos_token_id
    # last-token pooling reads the EOS position, whatever the batch padding
    one = m.encode(["lima is the capital"], convert_to_tensor=True)
    two = m.encode(["lima is the capital", "a much longer text about the largest living cat species"], convert_to_tensor=True)
    torch.testing.assert_close(one[0], two[0], atol=1e-5, rtol=1e-4)
    before = params(m)
    out = tmp_path / "run"
    final = train(
        examples(8),
        TrainConfig(
            model=path,
            max_steps=2,
            batch_size=4,
            lr=1e-3,
            lambda_ent=0.05,
            logging_steps=1,
            save_strategy="no",
            output_dir=str(out),
            max_seq_length=48,
        ),
    )
    lines = [l for l in logs(out) if "loss" in l]
    assert len(lines) == 2 and all(math.isfinite(l["loss"]) and l["info_nce"] > 0 for l in lines)
    assert "lambda_entropy" in lines[0] and "diag_H_G" in lines[0]
    from sentence_transformers import SentenceTransformer

    m2 = SentenceTransformer(final)
    assert m2[1].pooling_mode == "lasttoken" and m2.tokenizer(["lima"])["input_ids"][0][-1] == tok.eos_token_id
    assert (params(m2) - before).abs().max() > 1e-4, "two steps at lr 1e-3 must move the weights"


def test_explicit_pooling_for_hf_encoder(tiny_bert):
    m = load_backbone(tiny_bert, pooling="cls")
    assert m[1].pooling_mode == "cls"
    m = load_backbone(tiny_bert, pooling="lasttoken", append_eos=False)
    assert m[1].pooling_mode == "lasttoken"


# ---------------------------------------------------------------- checkpoints, resume, early stopping, determinism
def test_checkpoints_resume_and_early_stopping(tiny_bert, tmp_path):
    out = str(tmp_path / "run")
    base = dict(
        model=tiny_bert,
        batch_size=4,
        lr=1e-3,
        logging_steps=1,
        output_dir=out,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=None,
        max_seq_length=32,
    )
    train(examples(16), TrainConfig(max_steps=2, **base))
    assert os.path.isdir(os.path.join(out, "checkpoints", "checkpoint-2"))
    train(examples(16), TrainConfig(max_steps=4, resume=True, **base))
    s = json.load(open(os.path.join(out, "train_summary.json")))
    assert s["resumed_from"].endswith("checkpoint-2") and s["global_step"] == 4
    steps = [l["step"] for l in logs(out) if "loss" in l]
    assert steps == [1, 2, 3, 4], steps  # the resumed run continued at step 3
    # early stopping on dev InfoNCE: keeps the best checkpoint
    out2 = str(tmp_path / "es")
    train(
        examples(32),
        TrainConfig(
            **{**base, "output_dir": out2, "epochs": 20, "save_strategy": "epoch", "lr": 5e-3},
            dev_fraction=0.25,
            eval_strategy="steps",
            eval_steps=2,
            early_stopping_patience=1,
        ),
    )
    s = json.load(open(os.path.join(out2, "train_summary.json")))
    evals = [l for l in s["log_history"] if "eval_loss" in l]
    assert s["n_dev"] > 0 and evals and s["best_checkpoint"]
    best = min(evals, key=lambda l: l["eval_loss"])
    assert s["best_checkpoint"].endswith(f"checkpoint-{best['step']}") and evals[-1]["eval_loss"] > best["eval_loss"]
    from sentence_transformers import SentenceTransformer

    assert torch.equal(
        params(SentenceTransformer(os.path.join(out2, "final"))), params(SentenceTransformer(s["best_checkpoint"]))
    ), "the saved model must be the best checkpoint"
    assert s["global_step"] < 20 * math.ceil(s["n_train"] / 4), "early stopping should end the run before 20 epochs"


def test_same_seed_same_model_and_shuffle_depends_on_seed(tiny_bert, tmp_path):
    from sentence_transformers import SentenceTransformer

    run = lambda seed, name: SentenceTransformer(
        train(
            examples(16),
            TrainConfig(
                model=tiny_bert,
                max_steps=3,
                batch_size=4,
                lr=1e-3,
                lambda_ent=0.05,
                seed=seed,
                save_strategy="no",
                logging_steps=1,
                output_dir=str(tmp_path / name),
                max_seq_length=32,
            ),
        )
    )
    a, b, c = params(run(0, "a")), params(run(0, "b")), params(run(1, "c"))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    run(0, "a")  # a second, fresh run into the same folder starts a new log
    assert [l["step"] for l in logs(tmp_path / "a") if "loss" in l] == [1, 2, 3]


def test_cli(tiny_bert, tmp_path):
    ex = tmp_path / "ex.jsonl"
    ex.write_text("".join(json.dumps(e) + "\n" for e in examples(8)))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": tiny_bert, "max_steps": 1, "batch_size": 4, "save_strategy": "no"}))
    path = main(
        [
            "--examples",
            str(ex),
            "--config",
            str(cfg),
            "--set",
            f"output_dir={tmp_path / 'cli'}",
            "lambda_ent=0.05",
            "in_batch_negatives=true",
        ]
    )
    s = json.load(open(tmp_path / "cli" / "train_summary.json"))
    assert path.endswith("final") and s["config"]["lambda_ent"] == 0.05 and s["config"]["in_batch_negatives"] is True
    with pytest.raises(SystemExit):
        main(["--examples", str(ex), "--set", "oops"])


# ---------------------------------------------------------------- a short real run
def _train_loss(model, exs):
    "Mean InfoNCE over the training set, eval mode (no dropout)."
    ds = build_train_dataset(exs)
    cols = [c for c in ds.column_names if c != "label"]
    model.eval()
    with torch.no_grad():
        feats = [model.preprocess(ds[c]) for c in cols]
        return CausalNegLoss(model, lambda_ent=0.0)(feats, torch.tensor(ds["label"]))["info_nce"].item()


def test_short_minilm_run_lowers_training_loss(tmp_path):
    exs = examples(32)
    m0 = load_backbone(None, max_seq_length=64)
    before = _train_loss(m0, exs)
    train(
        exs,
        TrainConfig(
            max_steps=8,
            batch_size=8,
            lr=1e-4,
            warmup_ratio=0.0,
            lambda_ent=0.05,
            logging_steps=1,
            save_strategy="no",
            output_dir=str(tmp_path),
            max_seq_length=64,
        ),
        model=m0,
    )
    after = _train_loss(m0, exs)
    assert after < 0.8 * before, (before, after)
    lines = [l for l in logs(tmp_path) if "loss" in l]
    assert len(lines) == 8
    # diagnostics are sane: entropy within [0, log N_g], shares within [0, 1], per-source similarities present
    for l in lines:
        assert -1e-6 <= l["diag_H_G"] <= l["diag_logN_g"] + 1e-6
        assert 0 <= l["diag_P_G"] <= 1 and 0 < l["diag_P_G_target"] <= 1
        assert {"diag_sim_mined", "diag_sim_causalneg", "diag_sim_pos"} <= set(l)


def test_a_set_without_any_negative_trains(tiny_bert, tmp_path):
    "A variant whose generated negatives were all filtered out: zero negative columns, InfoNCE over the positive only."
    bare = [{**e, "negatives": []} for e in examples(8)]
    folder = train(
        bare,
        TrainConfig(
            model=tiny_bert,
            max_steps=2,
            batch_size=4,
            lambda_ent=0.05,
            save_strategy="no",
            logging_steps=1,
            output_dir=str(tmp_path / "bare"),
            max_seq_length=32,
        ),
    )
    losses = [l["loss"] for l in logs(tmp_path / "bare") if "loss" in l]
    assert os.path.isdir(folder) and losses == [0.0, 0.0]  # -log softmax of the positive among itself
