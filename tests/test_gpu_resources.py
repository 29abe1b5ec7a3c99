"""One GPU, shared safely: every stage that runs the LM or a predictor asks the scheduler for `gpu=1`, the
others for none, so under `--resources gpu=1` no two GPU jobs run at once while the CPU jobs (one thread each)
still fill `--cores 16`. Read off a dry run's job list (each job's resources as the scheduler sees them)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tiny import write_config

from pndecomp.registry import RULES

REPO = Path(__file__).resolve().parents[1]


def planned_jobs(workdir: Path) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job a dry run with one GPU and 16 cores plans."""
    result = subprocess.run([sys.executable, "-m", "snakemake", "all", "-n", "--cores", "16", "--resources", "gpu=1",
                             "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", result.stdout):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule is None:
            continue
        found = re.search(r"^\s*resources: (.*)$", block, re.MULTILINE)
        resources = dict(item.split("=", 1) for item in found.group(1).split(", ")) if found else {}
        threads = re.search(r"^\s*threads: (\d+)$", block, re.MULTILINE)
        jobs.append((rule.group(1), {**resources, "threads": threads.group(1) if threads else "1"}))
    return jobs


def test_gpu_jobs_take_the_one_gpu_and_cpu_jobs_share_the_cores(tmp_path, tiny_model_dir, tiny_corpus):
    write_config(tmp_path / "config.yaml", tiny_model_dir, tiny_corpus)
    jobs = planned_jobs(tmp_path)
    gpu_jobs = [rule for rule, resources in jobs if resources.get("gpu") == "1"]
    assert set(gpu_jobs) == {rule for rule, _ in jobs if RULES[rule].gpu} != set(), jobs
    # the limit is one GPU, each GPU job takes it whole: they run one after the other
    assert all(int(resources.get("gpu", 0)) in (0, 1) for _, resources in jobs)
    cpu_jobs = [(rule, resources) for rule, resources in jobs if not RULES[rule].gpu and not RULES[rule].local]
    assert cpu_jobs and all(resources.get("gpu", "0") == "0" and resources["threads"] == "1"
                            for _, resources in cpu_jobs), cpu_jobs
    assert sum(rule == "fit_probe" for rule, _ in cpu_jobs) > 1  # several CPU jobs to run side by side
