from pathlib import Path

import pytest
from tiny import write_corpus, write_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "tiny.jsonl")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_corpus) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "tiny-neox", tiny_corpus)
