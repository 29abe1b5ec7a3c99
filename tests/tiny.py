"""A tiny, randomly initialised GPT-NeoX (Pythia's layout) and a tiny labelled corpus, made offline.

The model is saved with ``save_pretrained`` so tests exercise the real loading path; its tokenizer
is a byte-level BPE trained on the tiny corpus itself.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

DOMAINS = {
    "code": ["def", "return", "x", "=", "(", ")", ":", "if", "else", "for", "in", "range", "+", "1", "0"],
    "prose": ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "slept", "while", "rain", "fell", "."],
    "numbers": ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0", ",", ".", "+", "-", "="],
    "markup": ["<", ">", "/", "div", "span", "class", "=", '"', "a", "p", "{", "}", "[", "]"],
}


def write_corpus(path: Path, docs_per_domain: int = 40, words_per_doc: int = 120, seed: int = 0) -> Path:
    """Pile-format JSON lines: {"text": ..., "meta": {"pile_set_name": domain}}."""
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for domain, vocabulary in DOMAINS.items():
            for _ in range(docs_per_domain):
                words = [rng.choice(vocabulary) for _ in range(words_per_doc)]
                lines = [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
                text = "\n".join(lines)
                handle.write(json.dumps({"text": text, "meta": {"pile_set_name": domain}}) + "\n")
    return path


def write_model(directory: Path, corpus: Path, n_layers: int = 4, d_model: int = 32, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=d_model, num_hidden_layers=n_layers,
                           num_attention_heads=4, intermediate_size=2 * d_model, rotary_pct=0.25,
                           use_parallel_residual=True, max_position_embeddings=256,
                           bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    GPTNeoXForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# The paper's tasks and their control tasks (caps inherited from the base tasks'): the tiny_run fixture's.
TINY_RUN_TASKS = ["domain", "next_token_type_8", "domain_control", "next_token_type_8_control"]
# Texts of two domains whose per-token pages the tiny_run fixture makes (inspect.texts).
TINY_RUN_TEXTS = {"prose": "the cat sat on a mat and then it slept while rain fell .",
                  "code": "def x ( ) :\n  return x + 1"}


def write_config(path: Path, model_dir: Path, corpus: Path, **overrides) -> Path:
    """A complete tiny experiment: every stage runs in seconds on a CPU."""
    config = {
        "experiment": "tiny",
        "seed": 0,
        "device": "cpu",
        "model": {"id": str(model_dir)},
        "layers": [0, 2, 3],
        "corpus": {"source": "files", "files": {"paths": [str(corpus)]}},
        "windows": {"length": 24, "per_document": 3, "predictor_train": 64, "predictor_val": 8, "predictor_eval": 16,
                    "split_fractions": {"predictor_train": 0.3, "predictor_val": 0.1, "predictor_eval": 0.1,
                                        "probe_train": 0.3,
                                        "probe_val": 0.1, "probe_test": 0.1}},
        "extraction": {"batch_size": 8},
        "predictor": {"d_head": 8, "width_multiplier": 1},
        "train": {"steps": 20, "batch_size": 8, "warmup_steps": 2, "eval_every": 5, "eval_windows": 8,
                  "checkpoint_every": 10, "lr": 1e-3},
        "metrics": {"hide_first_positions": 4},
        "probes": {"caps": {"domain": {"probe_train": 20, "probe_val": 8, "probe_test": 8},
                            "next_token_type_8": {"probe_train": 60, "probe_val": 20, "probe_test": 20}},
                   # a few test windows per class are all the tiny corpus has (the default is 10)
                   "c_grid": [0.1, 1.0], "max_iter": 200, "min_test_per_class": 2},
        # windows of 24 tokens: patch from position 9 on
        "interventions": {"from_position": 9, "patching_windows": 8, "batch_size": 4},
    }
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_hub_snapshot(cache: Path, repo_id: str, revision: str, files: dict[str, Path | str]) -> Path:
    """A hub model as ``hf download`` leaves it in a hub cache (HF_HUB_CACHE): the revision's ref names a
    commit whose snapshot folder holds the files, given as a source file to copy or a text. No network."""
    import hashlib
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copyfile(content, snapshot / name)
        else:
            (snapshot / name).write_text(content)
    return snapshot
