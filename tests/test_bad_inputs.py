"""Bad configs, corpora, numerics and files: each fails before any work, with a message that names
the config key (or the file and line), the bad value and what would be valid.

Every case of the table goes through what a user runs first:

* ``cli``: the snakemake CLI on a ``config.yaml`` in a temporary working directory. All CLI cases
  run in one child process that calls ``snakemake.cli.main`` once per case (the CLI's own entry
  point, argument parsing and workflow profile included), so the interpreter, torch and snakemake
  start once instead of once per case. One test also runs ``python -m snakemake`` as its own
  process to check the exit status a shell sees.
* ``call``: the function of the rule that hits the bad input first (``prepare_stages.make_windows`` for
  corpora), where starting Snakemake and its job would only add seconds.

A case fails either while Snakemake builds the DAG (``dag``: nothing may exist under ``results/``)
or in ``make_windows``, the first and cheapest rule (none of its outputs may exist).

Run as a script (``python test_bad_inputs.py WORKDIR...``) this file is that child process.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from tiny import write_config

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
EXPERIMENT = "tiny"
CLI_LOG = "cli.log"  # beside config.yaml, outside results/
CLI_RC = "cli.rc"


# ---------------------------------------------------------------- bad corpora

LONG_TEXT = " ".join(["the cat sat on a mat and then it slept while rain fell ."] * 12)


def _record(text=LONG_TEXT, domain="prose") -> dict:
    return {"text": text, "meta": {"pile_set_name": domain}}


def _jsonl(directory: Path, name: str, lines: list) -> list[str]:
    path = directory / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return [str(path)]


def malformed_line(directory: Path) -> list[str]:
    return _jsonl(directory, "bad.jsonl", [_record(), _record(), '{"text": "cut short', _record()])


def bad_lines_of_two_kinds(directory: Path) -> list[str]:
    """A Pile-like corpus of four domains with one malformed line (3) and one record without text (5)."""
    # every text distinct (46 split units, not 12 groups of exact duplicates): each split gets documents
    lines = [_record(LONG_TEXT.replace("cat", f"{domain}{word}"), domain)
             for domain in ("prose", "code", "markup", "numbers") for word in range(12)]
    lines[2] = '{"text": "cut short'
    lines[4] = {"meta": {"pile_set_name": "prose"}}
    return _jsonl(directory, "mixed.jsonl", lines)


def record_without_text(directory: Path) -> list[str]:
    return _jsonl(directory, "notext.jsonl", [_record(), _record(), {"content": LONG_TEXT, "meta": {}}])


def record_with_null_text(directory: Path) -> list[str]:
    return _jsonl(directory, "nulltext.jsonl", [_record(), {"text": None, "meta": {"pile_set_name": "prose"}}])


def record_without_label(directory: Path) -> list[str]:
    return _jsonl(directory, "nolabel.jsonl", [_record(), _record(), {"text": LONG_TEXT, "meta": {}}])


def empty_file(directory: Path) -> list[str]:
    (directory / "empty.jsonl").write_text("")
    return [str(directory / "empty.jsonl")]


def blank_lines_only(directory: Path) -> list[str]:
    (directory / "blank.jsonl").write_text("\n\n  \n")
    return [str(directory / "blank.jsonl")]


def all_documents_short(directory: Path) -> list[str]:
    return _jsonl(directory, "short.jsonl", [_record("the cat sat", d) for d in ("prose", "code") for _ in range(30)])


def without_labels(directory: Path) -> list[str]:
    """A jsonl whose records have no meta.pile_set_name (the default corpus.files.label_field)."""
    return _jsonl(directory, "unlabelled.jsonl", [{"text": LONG_TEXT.replace("cat", str(i))} for i in range(60)])


def one_domain_only(directory: Path) -> list[str]:
    return _jsonl(directory, "onedomain.jsonl", [_record(LONG_TEXT.replace("cat", str(i))) for i in range(60)])


def not_zstd(directory: Path) -> list[str]:
    (directory / "corpus.jsonl.zst").write_bytes(b"this is not zstandard data\n" * 10)
    return [str(directory / "corpus.jsonl.zst")]


def truncated_zstd(directory: Path) -> list[str]:
    import zstandard

    data = zstandard.ZstdCompressor().compress(("\n".join(json.dumps(_record()) for _ in range(50)) + "\n").encode())
    (directory / "cut.jsonl.zst").write_bytes(data[: len(data) // 2])
    return [str(directory / "cut.jsonl.zst")]


def not_utf8(directory: Path) -> list[str]:
    latin1 = '{"text": "caf\xe9"}\n'.encode("latin-1")
    (directory / "latin1.jsonl").write_bytes(json.dumps(_record()).encode() + b"\n" + latin1)
    return [str(directory / "latin1.jsonl")]


def not_parquet(directory: Path) -> list[str]:
    (directory / "corpus.parquet").write_bytes(b"PAR1 but not really a parquet file")
    return [str(directory / "corpus.parquet")]


def missing_file(directory: Path) -> list[str]:
    return [str(directory / "no-such-corpus.jsonl")]


def unknown_extension(directory: Path) -> list[str]:
    (directory / "corpus.txt").write_text(json.dumps(_record()) + "\n")
    return [str(directory / "corpus.txt")]


def same_file_name_twice(directory: Path) -> list[str]:
    paths = []
    for sub in ("a", "b"):
        (directory / sub).mkdir()
        paths += _jsonl(directory / sub, "pile.jsonl", [_record()])
    return paths


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Bad:
    overrides: dict  # dotted config overrides, as tiny.write_config takes them
    expect: tuple[str, ...]  # every one must appear in the message (key, value, what is valid)
    stage: str = "dag"  # "dag" or "make_windows": where it must fail
    via: str = "cli"  # "cli" or "call"
    corpus: Callable[[Path], list[str]] | None = None  # writes the corpus; its paths go to corpus.files.paths
    error: str = ""  # for "call": the exception class name


CASES = {
    # ---- JSON schema (types, ranges, names), at DAG construction
    "steps-zero": Bad({"train.steps": 0}, ("train.steps: 0 is less than the minimum of 1 (allowed: integer, ≥ 1)",)),
    "eval-windows-one": Bad({"train.eval_windows": 1}, ("train.eval_windows: 1 is less than the minimum of 2",)),
    "predictor-eval-one": Bad({"windows.predictor_eval": 1},
                              ("windows.predictor_eval: 1 is less than the minimum of 2",)),
    "unknown-task": Bad({"probes.tasks": ["domain", "sentiment"]},
                        ("probes.tasks", "'sentiment'", "'domain', 'domain_control', 'in_code_comment', "
                         "'next_token_type_8', 'next_token_type_8_control'",
                         "src/pndecomp/tasks.py")),
    "caps-for-unlisted-task": Bad({"probes.caps.sentiment": {"probe_train": 1, "probe_val": 1, "probe_test": 1}},
                                  ("probes.caps.sentiment", "not in probes.tasks")),
    "control-without-base": Bad({"probes.tasks": ["domain", "next_token_type_8_control"]},
                                ("probes.tasks", "'next_token_type_8_control'", "base task 'next_token_type_8'")),
    "caps-for-control-task": Bad({"probes.tasks": ["domain", "next_token_type_8", "domain_control"],
                                  "probes.caps.domain_control": {"probe_train": 1, "probe_val": 1, "probe_test": 1}},
                                 ("probes.caps.domain_control", "set probes.caps.domain instead")),
    "unknown-predictor": Bad({"predictor.kind": "lstm"}, ("predictor.kind", "'lstm'", "'attn1'",
                                                          "src/pndecomp/predictor_kinds.py")),
    "layer-name": Bad({"layers": [0, "last"]}, ("layers[1]: 'last'", '"embed"')),
    "no-layers": Bad({"layers": []}, ("layers: [] should be non-empty", "at least 1 item")),
    "d-head-zero": Bad({"predictor.d_head": 0}, ("predictor.d_head: 0 is less than the minimum of 1",)),
    "n-heads-zero": Bad({"predictor.n_heads": 0}, ("predictor.n_heads: 0 is less than the minimum of 1",)),
    "width-multiplier-zero": Bad({"predictor.width_multiplier": 0},
                                 ("predictor.width_multiplier: 0 is less than or equal to the minimum of 0",)),
    "batch-size-zero": Bad({"train.batch_size": 0}, ("train.batch_size: 0 is less than the minimum of 1",)),
    "storage-dtype": Bad({"extraction.dtype": "float8"},
                         ("extraction.dtype: 'float8' is not one of", 'one of "auto", "float16", "bfloat16"')),
    "device-name": Bad({"device": "gpu"}, ("device: 'gpu' does not match",)),
    "experiment-name": Bad({"experiment": "my run/1"}, ("experiment: 'my run/1' does not match",)),
    "bad-record-policy": Bad({"corpus.on_bad_record": "ignore"},
                             ("corpus.on_bad_record: 'ignore' is not one of ['error', 'skip']",)),
    "misspelt-key": Bad({"train.step": 10}, ("unknown key `train.step`; did you mean `train.steps`?",)),
    # ---- semantic checks (pndecomp.config.check), at DAG construction, model read without weights
    "layer-out-of-range": Bad({"layers": [0, 4]}, ("layers: 4 is out of range", "4 blocks", "valid are 0..3")),
    "window-over-context": Bad({"windows.length": 257}, ("windows.length is 257", "context", "256 tokens")),
    "rotary-odd-head": Bad({"predictor.rotary": True, "predictor.d_head": 7}, ("predictor.d_head is 7", "even")),
    "warmup-over-steps": Bad({"train.warmup_steps": 50}, ("train.warmup_steps is 50", "train.steps (20)")),
    "budget-without-steps": Bad({"predictors": {"attn1": None, "attn1_long": {"kind": "attn1", "train": {"steps": 0}}}},
                                ("predictors.attn1_long.train.steps is 0", "at least 1")),
    "eval-windows-over-val-split": Bad({"train.eval_windows": 32},
                                       ("train.eval_windows is 32", "windows.predictor_val (8)")),
    "split-fraction-zero": Bad({"windows.split_fractions.probe_val": 0},
                               ("windows.split_fractions.probe_val is 0", "positive")),
    "domain-task-without-label-field": Bad({"corpus.files.label_field": None},
                                           ("corpus.files.label_field", "null", "domain")),
    "no-corpus-paths": Bad({"corpus.files.paths": []}, ("corpus.files.paths is empty", ".jsonl")),
    "hf-corpus-without-name": Bad({"corpus.source": "hf"}, ("corpus.hf.name", "dataset id")),
    "missing-model-dir": Bad({"model.id": "/no/such/model-dir"}, ("model.id", "/no/such/model-dir", "does not exist")),
    "missing-gguf": Bad({"model.id": "models/no-such.gguf"},
                        ("model.id: GGUF file 'models/no-such.gguf' does not exist", "accepts 'embedded'",
                         "relative path resolves from the directory Snakemake runs in")),
    # the first record of each corpus file is read while the DAG is built, before any job
    "corpus-without-label-field": Bad({}, ("unlabelled.jsonl, line 1", "no label field 'meta.pile_set_name'",
                                           "set it to null for an unlabelled corpus"), corpus=without_labels),
    # a corpus file is an input of make_windows: Snakemake itself reports a missing one
    "missing-corpus-file": Bad({}, ("Missing input files for rule make_windows", "no-such-corpus.jsonl"),
                               corpus=missing_file),
    "unknown-corpus-extension": Bad({}, ("corpus.files.paths", "corpus.txt", "unknown extension", ".jsonl.zst"),
                                    corpus=unknown_extension),
    "same-corpus-file-name-twice": Bad({}, ("corpus.files.paths", "pile.jsonl", "corpus.files.id_field"),
                                       corpus=same_file_name_twice),
    # ---- bad corpora, in make_windows (the first rule), through the CLI
    "malformed-json-line": Bad({}, ("bad.jsonl, line 3", "malformed JSON", "corpus.on_bad_record"),
                               stage="make_windows", corpus=malformed_line),
    "every-document-shorter-than-window": Bad({}, ("NotEnoughWindows", "60 of 60 documents are shorter than "
                                                   "windows.length = 24 tokens", "lower windows.length"),
                                              stage="make_windows", corpus=all_documents_short),
    # ---- bad corpora, in make_windows, through the rule's function
    "record-without-text": Bad({}, ("notext.jsonl, line 3", "'text'", "corpus.files.text_field"),
                               stage="make_windows", via="call", corpus=record_without_text, error="CorpusError"),
    "record-with-null-text": Bad({}, ("nulltext.jsonl, line 2", "NoneType, not a string"),
                                 stage="make_windows", via="call", corpus=record_with_null_text, error="CorpusError"),
    "record-without-label": Bad({}, ("nolabel.jsonl, line 3", "'meta.pile_set_name'", "corpus.files.label_field"),
                                stage="make_windows", via="call", corpus=record_without_label, error="CorpusError"),
    "empty-corpus-file": Bad({}, ("empty.jsonl", "has no documents"),
                             stage="make_windows", via="call", corpus=empty_file, error="CorpusError"),
    "blank-lines-only": Bad({}, ("blank.jsonl", "has no documents"),
                            stage="make_windows", via="call", corpus=blank_lines_only, error="CorpusError"),
    "all-records-skipped": Bad({"corpus.on_bad_record": "skip"}, ("has no documents", "'malformed_json': 1"),
                               stage="make_windows", via="call", corpus=lambda d: _jsonl(d, "x.jsonl", ["{oops"]),
                               error="CorpusError"),
    "not-zstd": Bad({}, ("corpus.jsonl.zst", "unreadable", "zstd"),
                    stage="make_windows", via="call", corpus=not_zstd, error="CorpusError"),
    "truncated-zstd": Bad({}, ("cut.jsonl.zst", "truncated"),
                          stage="make_windows", via="call", corpus=truncated_zstd, error="CorpusError"),
    "not-utf8": Bad({}, ("latin1.jsonl", "unreadable", "can't decode byte 0xe9", "UTF-8"),
                    stage="make_windows", via="call", corpus=not_utf8, error="CorpusError"),
    "not-parquet": Bad({}, ("corpus.parquet", "Parquet"),
                       stage="make_windows", via="call", corpus=not_parquet, error="CorpusError"),
    "missing-corpus-file-when-read": Bad({}, ("corpus.files.paths", "no-such-corpus.jsonl", "does not exist"),
                                         stage="make_windows", via="call", corpus=missing_file, error="CorpusError"),
    "probe-task-with-one-class": Bad({}, ("probe task 'domain'", "2 classes", "'probe_train': {'prose': "),
                                     stage="make_windows", via="call", corpus=one_domain_only,
                                     error="NotEnoughWindows"),
    "probe-split-without-documents": Bad({"windows.split_fractions.probe_test": 1e-6},
                                         ("probe task 'domain'", "windows in probe_val and probe_test",
                                          "'probe_test': {}", "windows.split_fractions"),
                                         stage="make_windows", via="call", error="NotEnoughWindows"),
    "max-documents-too-few": Bad({"corpus.max_documents": 2},
                                 ("'predictor_eval': 0", "0 of 2 documents",
                                  "predictor_eval and predictor_val need at least 2"),
                                 stage="make_windows", via="call", error="NotEnoughWindows"),
}

CLI_CASES = [name for name, case in CASES.items() if case.via == "cli"]
CALL_CASES = [name for name, case in CASES.items() if case.via == "call"]


def make_workdir(directory: Path, case: Bad, model_dir: Path, good_corpus: Path) -> Path:
    directory.mkdir(parents=True)
    overrides = dict(case.overrides)
    if case.corpus is not None:
        overrides["corpus.files.paths"] = case.corpus(directory)
    write_config(directory / "config.yaml", model_dir, good_corpus, **overrides)
    return directory


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


# ---------------------------------------------------------------- the CLI cases, in one child process


# The target of every CLI run: make_windows is the last rule a case may reach, so a check that
# stopped working costs one cheap job, not the whole workflow.
WINDOWS_SUMMARY = f"results/{EXPERIMENT}/windows/summary.json"


def run_cli_cases(workdirs: list[str]) -> None:
    """``snakemake.cli.main`` once per working directory; its stdout and stderr (file descriptors,
    so job processes' output too) go to ``cli.log`` and its exit status to ``cli.rc`` there."""
    from snakemake.cli import main

    for workdir in workdirs:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(Path(workdir) / CLI_LOG, "w") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                main(["--snakefile", str(SNAKEFILE), "--directory", workdir, "--cores", "1", WINDOWS_SUMMARY])
                rc = 0
            except SystemExit as exit_:
                rc = exit_.code if isinstance(exit_.code, int) else 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
        (Path(workdir) / CLI_RC).write_text(str(rc))


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, tiny_model_dir, tiny_corpus) -> dict[str, tuple[int, str, Path]]:
    root = tmp_path_factory.mktemp("bad-cli")
    workdirs = {name: make_workdir(root / name, CASES[name], tiny_model_dir, tiny_corpus) for name in CLI_CASES}
    workdirs["skip-policy"] = make_workdir(
        root / "skip-policy", Bad({"corpus.on_bad_record": "skip"}, (), corpus=bad_lines_of_two_kinds),
        tiny_model_dir, tiny_corpus)
    result = subprocess.run([sys.executable, __file__, *map(str, workdirs.values())], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {name: (int((path / CLI_RC).read_text()), (path / CLI_LOG).read_text(), path)
            for name, path in workdirs.items()}


@pytest.mark.parametrize("name", CLI_CASES)
def test_bad_input_through_snakemake_cli(name, cli_runs):
    case = CASES[name]
    rc, log, workdir = cli_runs[name]
    assert rc != 0, log[-3000:]
    for expected in case.expect:
        assert expected in log, f"{expected!r} not in the CLI output:\n{log[-3000:]}"
    if case.stage == "dag":
        assert files_under(workdir / "results") == []
    else:
        assert "Error in rule make_windows" in log, log[-3000:]
        assert files_under(workdir / "results" / EXPERIMENT / "windows") == []


def test_bad_record_policy_skip_counts_in_the_log(cli_runs):
    rc, log, workdir = cli_runs["skip-policy"]
    assert rc == 0, log[-3000:]
    rule_log = (workdir / "results" / EXPERIMENT / "logs" / "make_windows.log").read_text()
    assert "skipped 2 bad records: {'malformed_json': 1, 'missing_text': 1}" in rule_log, rule_log
    assert "read 46 documents" in rule_log, rule_log
    summary = json.loads((workdir / "results" / EXPERIMENT / "windows" / "summary.json").read_text())
    assert summary["documents"] == 46


def test_real_cli_process_exits_non_zero_with_the_message(tmp_path, tiny_model_dir, tiny_corpus):
    """One case of the table (layer-out-of-range) as ``python -m snakemake`` in its own process."""
    workdir = make_workdir(tmp_path / "w", CASES["layer-out-of-range"], tiny_model_dir, tiny_corpus)
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory",
                             str(workdir), "--cores", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "ConfigError" in output and "layers: 4 is out of range" in output, output[-2000:]
    assert files_under(workdir / "results") == []


# ---------------------------------------------------------------- the corpus cases, through the rule's function


def validated_config(config_path: Path) -> dict:
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load(config_path.read_text())
    validate(config, str(SCHEMA))  # fills in the defaults, as common.smk does
    return config


@pytest.mark.parametrize("name", CALL_CASES)
def test_bad_corpus_in_make_windows(name, tmp_path, tiny_model_dir, tiny_corpus, monkeypatch):
    from pndecomp.stages import prepare as prepare_stages

    case = CASES[name]
    workdir = make_workdir(tmp_path / name, case, tiny_model_dir, tiny_corpus)
    monkeypatch.chdir(workdir)
    config = validated_config(workdir / "config.yaml")
    out = workdir / "results" / EXPERIMENT / "windows"
    outputs = {name: str(out / f"{name}.parquet") for name in ("predictor_train", "predictor_eval", "probe")}
    outputs["summary"] = str(out / "summary.json")
    outputs["predictor_train_tokens"] = str(out / "predictor_train_tokens")
    with pytest.raises(Exception) as raised:
        prepare_stages.make_windows(config, None, None, outputs)
    assert type(raised.value).__name__ == case.error, repr(raised.value)
    message = str(raised.value)
    for expected in case.expect:
        assert expected in message, f"{expected!r} not in {message!r}"
    assert files_under(out) == []


# ---------------------------------------------------------------- numerics


def test_non_finite_hidden_state_names_layer_window_position_and_magnitude(tmp_path, tiny_model_dir):
    """A hidden state that overflows fp16 fails the extraction, and leaves no output behind."""
    import numpy as np
    import torch

    from pndecomp import extract, lm, model_files

    model = lm.load_model(model_files.ModelSource(str(tiny_model_dir)))
    tokens = np.full((4, 16), 5, dtype=np.int64)
    tokens[1, 6] = 7  # window 1, position 7 (1-based): the only place token 7 occurs
    with torch.no_grad():
        model.get_input_embeddings().weight[7] *= 1e8  # ~1e6 after block 0: finite in fp32, inf in fp16
    out = tmp_path / "activations"
    paths = {0: str(out / "layer-0.safetensors"), 2: str(out / "layer-2.safetensors")}

    def run(storage_dtype):
        extract.extract_hidden_states(model, tokens, [0, 2], paths, surprisal_path=None, batch_size=2,
                                      device=torch.device("cpu"), storage_dtype=storage_dtype, metadata={})

    with pytest.raises(extract.NonFiniteHiddenState) as raised:
        run(torch.float16)
    message = str(raised.value)
    for expected in ("layer 0", "window 1", "position 7", "torch.float16", "max |h|", "extraction.dtype"):
        assert expected in message, message
    magnitude = float(re.search(r"max \|h\| in the batch: ([0-9.e+]+)", message).group(1))
    assert magnitude > torch.finfo(torch.float16).max
    assert files_under(out) == []  # neither the final names nor temporary files
    run(torch.float32)  # the same states stored in float32 are fine
    assert files_under(out) == ["layer-0.safetensors", "layer-2.safetensors"]


# ---------------------------------------------------------------- safe loading


def _python_sources() -> list[Path]:
    return sorted([*(REPO / "src").rglob("*.py"), *(REPO / "workflow").rglob("*.py")])


def test_source_never_unpickles():
    """torch.load only with weights_only=True; no pickle, joblib, dill, or np.load(allow_pickle=True)."""
    import ast

    problems = []
    for path in _python_sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + ([node.module] if isinstance(node, ast.ImportFrom)
                                                               else [])
                if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle") for n in names):
                    problems.append(f"{where}: imports a pickle library")
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if func.endswith("torch.load"):
                value = keywords.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{where}: {func}(...) without weights_only=True")
            value = keywords.get("allow_pickle")
            if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                problems.append(f"{where}: {func}(..., allow_pickle=...)")
            if func.endswith(("read_pickle", "to_pickle")):
                problems.append(f"{where}: {func}")
    smk = [*(REPO / "workflow" / "rules").glob("*.smk"), SNAKEFILE]
    for path in smk:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if re.search(r"\bpickle\b|torch\.load\(|allow_pickle", line):
                problems.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert problems == []


def test_resume_checkpoint_never_runs_code(tmp_path):
    """A resume file that would run code when unpickled is refused, not run."""
    import torch

    from pndecomp.predictor_kinds import AttentionConfig
    from pndecomp.train import TrainConfig, train_predictor

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return Path.touch, (marker,)

    resume = tmp_path / ".resume.pt"
    with open(resume, "wb") as handle:
        pickle.dump({"model": Payload()}, handle, protocol=2)
    hidden = torch.randn(4, 6, 8)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        train_predictor(AttentionConfig(d_model=8, n_heads=2, d_head=4), TrainConfig(steps=2, batch_size=2),
                        lambda step: hidden[:2], hidden, n_windows=4, resume_path=resume)
    assert not marker.exists()


def test_trust_remote_code_off_unless_set_and_warns_when_set(tmp_path, tiny_model_dir, tiny_corpus):
    from pndecomp import model_files

    config = validated_config(write_config(tmp_path / "config.yaml", tiny_model_dir, tiny_corpus))
    assert config["model"]["trust_remote_code"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source = model_files.resolve_source(config["model"])
    assert source.trust_remote_code is False and source.kwargs()["trust_remote_code"] is False
    with pytest.warns(UserWarning, match="model.trust_remote_code is true"):
        source = model_files.resolve_source({**config["model"], "trust_remote_code": True})
    assert source.kwargs()["trust_remote_code"] is True


if __name__ == "__main__":
    run_cli_cases(sys.argv[1:])
