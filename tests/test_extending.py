"""The worked example of docs/development.md "Extending": a third probe task, ``in_code_comment``, added by one
entry in ``pndecomp.tasks.TASKS``; a config that lists it gets its windows, probes, table and heatmap
from the same rules as the paper's two tasks."""
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from snakemake_log import job_stats
from tiny import write_config

from pndecomp.corpus import Document
from pndecomp.tasks import TASKS, ProbeWindow

REPO = Path(__file__).resolve().parents[1]


def window(text: str) -> ProbeWindow:
    """A window of one token per character (ids are code points)."""
    return ProbeWindow(Document("d", text, None, "d"), np.array([ord(c) for c in text]),
                       lambda ids: "".join(map(chr, ids)))


@pytest.mark.parametrize("text,label", [
    ("x = 1  # the count", "comment"),
    ("x = 1\ny = 2  # t", "comment"),
    ("# a comment\ny = x", "code"),  # the comment is on an earlier line
    ("s = 'no hash here'", "code"),
    ("x = 1 #", "comment"),  # the last token is the hash itself
])
def test_in_code_comment_label(text, label):
    assert TASKS["in_code_comment"].label(window(text)) == label


def write_commented_code(path: Path, n_docs: int = 160, seed: int = 0) -> Path:
    """Code-like documents in which about half the lines end in a '#' comment."""
    rng = random.Random(seed)
    words = ["x", "y", "total", "=", "+", "1", "2", "(", ")", "return", "if", "count"]
    comment_words = ["the", "sum", "of", "all", "items", "note", "fix", "later"]
    with open(path, "w") as handle:
        for _ in range(n_docs):
            lines = []
            for _ in range(14):
                code = " ".join(rng.choice(words) for _ in range(rng.randint(3, 7)))
                if rng.random() < 0.5:
                    code += "  # " + " ".join(rng.choice(comment_words) for _ in range(rng.randint(2, 6)))
                lines.append(code)
            handle.write(json.dumps({"text": "\n".join(lines), "meta": {"pile_set_name": "code"}}) + "\n")
    return path


@pytest.mark.slow
def test_a_registered_task_runs_through_the_workflow(tmp_path, tiny_model_dir):
    corpus = write_commented_code(tmp_path / "commented.jsonl")
    write_config(tmp_path / "config.yaml", tiny_model_dir, corpus, layers=[1],
                 **{"probes.tasks": ["in_code_comment"],
                    "probes.caps": {"in_code_comment": {"probe_train": 40, "probe_val": 10, "probe_test": 20}}})
    out = Path("results/tiny")
    targets = [out / "probes/attn1/in_code_comment.tsv", out / "figures/probe_in_code_comment.png"]
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2",
                             "--directory", str(tmp_path), *map(str, targets)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = job_stats(result.stdout + result.stderr)
    assert jobs["fit_probe"] == 1 and jobs["draw_probe_heatmap"] == 1
    table = pd.read_csv(tmp_path / targets[0], sep="\t", dtype={"layer": str})
    assert list(table["representation"]) == ["h", "h_mean", "hhat", "r", "hhat_r"]
    assert set(table["task"]) == {"in_code_comment"} and (table["n_classes"] == 2).all()
    assert (tmp_path / targets[1]).stat().st_size > 1000
    test_classes = json.loads((tmp_path / out / "windows/summary.json").read_text())["probe_classes"][
        "in_code_comment"]["probe_test"]
    assert set(test_classes) == {"code", "comment"} and max(test_classes.values()) <= 20  # the per-class cap
    assert (table["n_test"] == sum(test_classes.values())).all()


# ---------------------------------------------------------------- "Extending": the places each recipe counts

# What each recipe adds, as (file under src/pndecomp, the text it goes before, the text): only those
# files change in the test's copy of the package.
TOY_ENTRIES = {
    "a predictor architecture": [
        ("predictor_kinds.py", "def _heads(", '''@dataclass(frozen=True)
class ScaledLastConfig:
    d_model: int

    @property
    def kind(self) -> str:
        return "scaled_last"

    @property
    def parameter_count(self) -> int:
        return 2 * self.d_model


def _scaled_last_config(section, d_model, attention_width, _parameter=None) -> ScaledLastConfig:
    return ScaledLastConfig(d_model)

'''),
        ("predictor_kinds.py", "}\n\n_SUFFIXED",
         '    "scaled_last": PredictorKind(f"{_MODULES}:ScaledLastPredictor", ScaledLastConfig,\n'
         '                                 _scaled_last_config),\n'),
        ("predictor.py", "def lag_stack(", '''class ScaledLastPredictor(nn.Module):
    """ĥ_{t+1} = a ⊙ h_t + b."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.scale = nn.Parameter(torch.ones(config.d_model))
        self.shift = nn.Parameter(torch.zeros(config.d_model))

    def forward(self, hidden):
        return self.scale * hidden + self.shift

'''),
    ],
    "a probe task": [
        ("tasks.py", "_BY_NAME = {task.name",
         '_BASE_TASKS += (ProbeTask("token_parity", "token_parity", lambda w: "even" if int(w.tokens[-1]) % 2 == 0 '
         'else "odd", "per_class", {"probe_train": 10, "probe_val": 4, "probe_test": 4},\n'
         '                          "Parity of the last token id", "probe_token_parity"),)\n'),
    ],
    "a patch kind": [
        ("patch_kinds.py", "}\n\n\ndef patch_function(",
         '    "halfway": lambda h, hhat, r_other, mean: 0.5 * (h + hhat),\n'),
    ],
}


def readme_places(recipe: str) -> set[str]:
    """The files under src/pndecomp that docs/development.md "Extending" says the recipe touches."""
    readme = (REPO / "docs" / "development.md").read_text()
    section = readme[readme.index("## Extending"):]
    row = next(line for line in section.splitlines() if line.startswith(f"| {recipe} |"))
    touch = row.split("|")[2]
    return set(re.findall(r"`src/pndecomp/([\w/]+\.py)`", touch))


@pytest.mark.parametrize("recipe", sorted(TOY_ENTRIES))
def test_each_recipe_names_the_files_its_entry_touches(recipe):
    assert readme_places(recipe) == {path for path, _, _ in TOY_ENTRIES[recipe]}, recipe


def test_a_toy_predictor_task_and_patch_kind_run_through_the_workflow(tmp_path, tiny_model_dir, tiny_corpus):
    """In a copy of the package, only the files "Extending" names change: a predictor (trained by SGD), a
    probe task and a patch kind appear in the workflow's outputs with no other edit."""
    package = tmp_path / "src" / "pndecomp"
    shutil.copytree(REPO / "src" / "pndecomp", package, ignore=shutil.ignore_patterns("__pycache__"))
    for entries in TOY_ENTRIES.values():
        for path, anchor, text in entries:
            source = (package / path).read_text()
            assert source.count(anchor) == 1, (path, anchor)
            (package / path).write_text(source.replace(anchor, text + anchor))
    workdir = tmp_path / "run"
    workdir.mkdir()
    write_config(workdir / "config.yaml", tiny_model_dir, tiny_corpus, layers=[1], predictors=["scaled_last"],
                 **{"probes.tasks": ["token_parity"], "probes.caps": {}, "probes.min_test_per_class": 1})
    out = Path("results/tiny")
    targets = [out / "probes/scaled_last/token_parity.tsv", out / "interventions/scaled_last/patching.tsv"]
    environment = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2",
                             "--directory", str(workdir), *map(str, targets)], capture_output=True, text=True,
                            env=environment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    probes = pd.read_csv(workdir / targets[0], sep="\t", dtype={"layer": str})
    assert set(probes["task"]) == {"token_parity"} and (probes["n_classes"] == 2).all()
    patching = pd.read_csv(workdir / targets[1], sep="\t")
    assert "halfway" in set(patching["kind"])
    cost = json.loads((workdir / out / "predictors/scaled_last/layer-1/cost.json").read_text())
    assert cost["parameters"] == 2 * json.loads((tiny_model_dir / "config.json").read_text())["hidden_size"]
