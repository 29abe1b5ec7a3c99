from pathlib import Path

import pytest
from snakemake_log import LocalRun, start_snakemake
from tiny import TINY_RUN_TASKS, TINY_RUN_TEXTS, write_config, write_corpus, write_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "tiny.jsonl")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_corpus) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "tiny-neox", tiny_corpus)


@pytest.fixture(scope="session")
def tiny_run_started(tmp_path_factory, tiny_model_dir, tiny_corpus) -> LocalRun:
    """The whole tiny workflow, run locally once (``--cores 2``, at the lowest CPU priority), started and not
    waited for: test_slurm runs its SLURM run beside it (which spends much of its time waiting for status
    checks) and compares their tables; test_workflow's tests use it finished (``tiny_run``)."""
    root = tmp_path_factory.mktemp("workflow")
    workdir = root / "run"
    workdir.mkdir()
    write_config(workdir / "config.yaml", tiny_model_dir, tiny_corpus,
                 **{"probes.tasks": TINY_RUN_TASKS, "inspect.texts": TINY_RUN_TEXTS})
    return start_snakemake(workdir, root / "snakemake.log", nice=True)


@pytest.fixture(scope="session")
def tiny_run(tiny_run_started) -> tuple[Path, str]:
    """The finished tiny run: its working directory and log."""
    return tiny_run_started.wait()
