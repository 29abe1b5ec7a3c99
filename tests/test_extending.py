"""The worked example of README "Extending": a third probe task, ``in_code_comment``, added by one
entry in ``pndecomp.tasks.TASKS``; a config that lists it gets its windows, probes, table and heatmap
from the same rules as the paper's two tasks."""
import json
import random
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
