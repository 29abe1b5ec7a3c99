"""The tiny workflow on the local SLURM test cluster, through the test profile tests/slurm/profile.

Start the cluster first (root): ``bash tests/slurm/start_cluster.sh``; stop it with
``bash tests/slurm/stop_cluster.sh``. Without a reachable slurmctld the cluster test is skipped.

The cluster test runs the tiny workflow on SLURM beside the session's local tiny run (``--cores 2``,
the ``tiny_run`` that test_workflow then reads), and checks that every non-local job became exactly
one SLURM job, that the GPU stages asked SLURM for a GPU, and that both runs wrote the same numbers.
The SLURM run spends much of its time waiting for status checks; the local run, at the lowest CPU
priority, uses that time instead of running after it.

The fault test trains one layer's predictor on SLURM, cancels the job with ``scancel`` once it has
written a checkpoint, and checks that the profile's ``retries`` resubmitted it, that the retry
resumed from the checkpoint, and that the weights and learning curve equal an uninterrupted local
run's.
"""
from __future__ import annotations

import collections
import importlib.util
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from snakemake_log import NICE, RUN_TIMEOUT_S, job_stats
from snakemake_log import SNAKEMAKE_CLI as SNAKEMAKE  # no --cores: each command gives its own
from tiny import TINY_RUN_TASKS, TINY_RUN_TEXTS, write_config

from pndecomp import registry

REPO = Path(__file__).resolve().parents[1]
TEST_PROFILE = REPO / "tests" / "slurm" / "profile"
CLUSTER_PROFILE = REPO / "profiles" / "slurm"

# The rules' facts, from the registry: run by Snakemake itself, only by a study, given a GPU by the profiles.
LOCAL_RULES = {name for name, rule in registry.RULES.items() if rule.local}
STUDY_RULES = {name for name, rule in registry.RULES.items() if rule.study}
GPU_RULES = {name for name, rule in registry.RULES.items() if rule.gpu}
# What both runs must agree on.
METRIC_FILES = ["metrics/attn1/layer_summary.tsv", "probes/attn1/*.tsv", "metrics/attn1/per_position/*.parquet",
                "predictors/attn1/layer-*/curve.parquet"]
# The fault test: one layer, trained long enough (a few seconds) that a job cancelled at its first
# checkpoint is cancelled mid-run.
FAULT_LAYER_DIR = Path("results/tiny/predictors/attn1/layer-2")
FAULT_WEIGHTS, FAULT_CURVE = FAULT_LAYER_DIR / "predictor.safetensors", FAULT_LAYER_DIR / "curve.parquet"
FAULT_CHECKPOINT = FAULT_LAYER_DIR / ".resume.pt"  # params.resume of train_predictor
FAULT_TRAIN_LOG = Path("results/tiny/logs/train_predictor/attn1/layer-2.log")
FAULT_UPSTREAM = ["results/tiny/activations/predictor_train/layer-2.safetensors",
                  "results/tiny/activations/predictor_val/layer-2.safetensors"]
FAULT_STEPS, FAULT_CHECKPOINT_EVERY, FAULT_EVAL_EVERY = 3000, 200, 100
CHECKPOINT_TIMEOUT_S = 600


# ------------------------------------------------------------------ helpers

def slurm_unavailable() -> str | None:
    """Why the cluster test cannot run here, or None."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "the SLURM executor plugin is not installed: run `make install-slurm`"
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return "no SLURM client (sbatch/scontrol not on PATH); start the test cluster with tests/slurm/start_cluster.sh"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`scontrol ping` timed out: no slurmctld reachable"
    if "is UP" not in ping.stdout:
        said = ((ping.stdout + ping.stderr).strip().splitlines() or ["no answer"])[0]
        return f"no slurmctld reachable (scontrol ping: {said}); start it with tests/slurm/start_cluster.sh"
    sinfo = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%G"], capture_output=True, text=True, timeout=30)
    if "gpu" not in sinfo.stdout:
        return "SLURM is up but has no partition 'debug' with gres gpu: not the cluster of tests/slurm/start_cluster.sh"
    return None


def run_logged(args: list[str], log: Path, timings: dict, key: str) -> int:
    """Run a command with stdout+stderr to ``log``; record its wall time in ``timings[key]``.

    On timeout Snakemake gets SIGINT (it then cancels its SLURM jobs) and, if that does not end it,
    SIGKILL."""
    start = time.monotonic()
    with open(log, "w") as handle:
        process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, text=True)
        try:
            rc = process.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            rc = -1
    timings[key] = time.monotonic() - start
    return rc


def start_logged(commands: dict[str, list[str]], logs: Path, timings: dict, rcs: dict) -> list[threading.Thread]:
    """Start every command at once, each in a thread of its own: ``run_logged`` to ``logs/<name>.log``, its
    exit status in ``rcs[name]``. Join the threads returned."""
    threads = [threading.Thread(target=lambda name=name, args=args: rcs.update(
        {name: run_logged(args, logs / f"{name}.log", timings, name)})) for name, args in commands.items()]
    for thread in threads:
        thread.start()
    return threads


def cancel_at_first_checkpoint(checkpoint: Path, log: Path, run: threading.Thread) -> tuple[str, int]:
    """Wait until the training job of the Snakemake run logging to ``log`` has written ``checkpoint``, then
    ``scancel`` its SLURM job; return (that SLURM job id, the step of the checkpoint it left)."""
    deadline = time.monotonic() + CHECKPOINT_TIMEOUT_S
    while not checkpoint.exists():
        assert run.is_alive(), f"the SLURM run ended before the checkpoint existed:\n{log.read_text()[-6000:]}"
        assert time.monotonic() < deadline, f"no {checkpoint} within {CHECKPOINT_TIMEOUT_S} s"
        time.sleep(0.02)
    # The job writes its checkpoint seconds after Snakemake printed its submission.
    submitted = slurm_submissions(log.read_text())
    assert [len(ids) for ids in submitted.values()] == [1], submitted
    (slurm_id,), = submitted.values()
    subprocess.run(["scancel", slurm_id], check=True, timeout=30)
    return slurm_id, torch.load(checkpoint, weights_only=True)["step"]


def executed_jobs(log: str) -> dict[int, tuple[str, bool]]:
    """Snakemake job id -> (rule, local?), from the 'rule X:' / 'localrule X:' blocks of a log."""
    jobs = {}
    for match in re.finditer(r"^(local)?rule (\w+):\n((?:[ \t]+.*\n)*)", log, re.MULTILINE):
        jobid = re.search(r"^\s+jobid: (\d+)$", match.group(3), re.MULTILINE)
        assert jobid, match.group(0)
        jobs[int(jobid.group(1))] = (match.group(2), match.group(1) == "local")
    return jobs


def slurm_submissions(log: str) -> dict[int, list[str]]:
    """Snakemake job id -> the SLURM job ids it was submitted as."""
    submitted = collections.defaultdict(list)
    for jobid, slurm_id in re.findall(r"^Job (\d+) has been submitted with SLURM jobid (\d+)", log, re.MULTILINE):
        submitted[int(jobid)].append(slurm_id)
    return dict(submitted)


def scontrol_job(slurm_id: str) -> dict[str, str]:
    """SLURM's own record of a job: state, comment (rule_<rule>[_wildcards_...]), TresPerJob."""
    out = subprocess.run(["scontrol", "show", "job", "-o", slurm_id], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, (f"scontrol does not know job {slurm_id} any more ({out.stderr.strip()}); "
                                 "MinJobAge of the test cluster is too low")
    return dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, sep="\t")


def metric_files(out: Path) -> list[str]:
    return sorted(str(path.relative_to(out)) for pattern in METRIC_FILES for path in out.glob(pattern))


def workflow_texts() -> list[str]:
    return [(REPO / "Snakefile").read_text(), *(path.read_text() for path in (REPO / "workflow").rglob("*.smk"))]


def workflow_rules() -> set[str]:
    return {name for text in workflow_texts()
            for name in re.findall(r"^\s*(?:rule|checkpoint) (\w+):", text, re.MULTILINE)}


def declared_local_rules() -> set[str]:
    """The rules the .smk files make local: in a ``localrules:`` directive, or with ``localrule: True``."""
    texts = "\n".join(workflow_texts())
    listed = {name for block in re.findall(r"^localrules:\n((?:    \w+,\n)+)", texts, re.MULTILINE)
              for name in re.findall(r"\w+", block)}
    flagged = set(re.findall(r"^rule (\w+):\n(?:    .*\n)*?    localrule: True", texts, re.MULTILINE))
    return listed | flagged


# ------------------------------------------------------------------ tests

@pytest.fixture(scope="session")
def slurm_cluster():
    """Skip (before the tiny model is built) unless the test cluster answers."""
    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)


def test_slurm_profiles_cover_every_submitted_rule_alike():
    """No cluster needed: every non-local rule computes its mem_mb and runtime from the config
    (pndecomp.resources, one estimate per rule), no profile overrides them per rule, and both profiles
    give GPUs to exactly the same stages."""
    from pndecomp import resources

    rules = workflow_rules()
    assert set(registry.RULES) == rules
    assert declared_local_rules() == LOCAL_RULES
    assert set(resources.STAGES) == rules - LOCAL_RULES
    texts = "\n".join(path.read_text() for path in (REPO / "workflow" / "rules").glob("*.smk"))
    for rule in rules - LOCAL_RULES:
        body = re.search(rf"^\s*rule {rule}:\n(.*?)(?=^\s*rule |\Z)", texts, re.MULTILINE | re.DOTALL).group(1)
        assert f'mem_mb=stage_mem_mb("{rule}")' in body and f'runtime=stage_runtime("{rule}")' in body, rule
        assert (f'gpu=stage_gpu("{rule}")' in body) == (rule in GPU_RULES), rule  # `--resources gpu=1` on one GPU
    for profile in (CLUSTER_PROFILE, TEST_PROFILE):
        settings = yaml.safe_load((profile / "config.yaml").read_text())
        assert settings["executor"] == "slurm"
        assert "slurm-array-jobs" not in settings, "array jobs are unsafe with plugin 2.8.0 (docs/slurm.md)"
        per_rule = settings["set-resources"]
        assert set(per_rule) <= rules - LOCAL_RULES, profile
        assert {rule for rule, values in per_rule.items() if values.get("gpu")} == GPU_RULES, profile
        overridden = {rule: sorted({"mem_mb", "runtime"} & set(values)) for rule, values in per_rule.items()}
        assert not any(overridden.values()), (profile, overridden)


@pytest.mark.slow
@pytest.mark.slurm
def test_tiny_workflow_on_slurm_equals_local_run(slurm_cluster, tiny_run_started, tiny_model_dir, tiny_corpus,
                                                 tmp_path, capsys):
    """The documented SLURM command runs the tiny workflow with every non-local job as one SLURM job, and
    its tables equal those of the same config run locally (the session's tiny run, ``--cores 2``, started
    before and running beside it at the lowest CPU priority)."""
    run = tmp_path / "slurm"
    run.mkdir()
    write_config(run / "config.yaml", tiny_model_dir, tiny_corpus,
                 **{"probes.tasks": TINY_RUN_TASKS, "inspect.texts": TINY_RUN_TEXTS})  # the local run's config
    # --retries 0: a failing job should fail the test at once, not thrice.
    commands = {"slurm": [*SNAKEMAKE, "--directory", str(run), "--profile", str(TEST_PROFILE), "--retries", "0"]}
    timings, rcs = {}, {}
    for thread in start_logged(commands, tmp_path, timings, rcs):
        thread.join()
    local_run, _ = tiny_run_started.wait()
    log = (tmp_path / "slurm.log").read_text()
    submitted = slurm_submissions(log)
    n_slurm_jobs = sum(len(ids) for ids in submitted.values())
    with capsys.disabled():
        print(f"\n[test_slurm] SLURM run: {n_slurm_jobs} SLURM jobs, {timings['slurm']:.0f} s wall "
              "(the session's local tiny run beside it)")

    # 1. the run succeeds
    assert rcs["slurm"] == 0, f"SLURM run failed (rc {rcs['slurm']}):\n{log[-6000:]}"

    # 2. every non-local job ran as exactly one SLURM job, no local job did
    stats = job_stats(log)
    jobs = executed_jobs(log)
    assert collections.Counter(rule for rule, _ in jobs.values()) == stats
    # one predictor, one model; `pipeline` is a model study's per-model target (`all` takes its inputs)
    assert {rule for rule, local in jobs.values() if local} == LOCAL_RULES - STUDY_RULES - {"pipeline"}
    assert not {rule for rule, local in jobs.values() if not local} & LOCAL_RULES
    for jobid, (rule, local) in jobs.items():
        if local:
            assert jobid not in submitted, f"local rule {rule} (job {jobid}) was submitted to SLURM"
        else:
            assert len(submitted.get(jobid, [])) == 1, f"{rule} (job {jobid}): SLURM job ids {submitted.get(jobid)}"
    assert set(submitted) <= set(jobs)
    assert n_slurm_jobs == sum(count for rule, count in stats.items() if rule not in LOCAL_RULES)

    # ... and SLURM agrees: the run's jobs (all named by its run id) are exactly those, all completed.
    run_id = re.search(r"^SLURM run ID: (\S+)", log, re.MULTILINE).group(1)
    listed = subprocess.run(["squeue", "-h", "-t", "all", "-n", run_id, "-o", "%i"],
                            capture_output=True, text=True, timeout=30).stdout.split()
    slurm_ids = {slurm_id for ids in submitted.values() for slurm_id in ids}
    assert set(listed) == slurm_ids

    # 3. the GPU stages asked SLURM for a GPU, the others did not
    for jobid, ids in submitted.items():
        rule = jobs[jobid][0]
        record = scontrol_job(ids[0])
        assert record["JobState"] == "COMPLETED" and record["ExitCode"] == "0:0", record
        assert record["Partition"] == "debug"
        comment = record.get("Comment", "")
        assert comment == f"rule_{rule}" or comment.startswith(f"rule_{rule}_wildcards_"), (rule, comment)
        tres = record.get("TresPerJob", "")
        if rule in GPU_RULES:
            assert re.fullmatch(r"gres[:/]gpu(:\w+)?:1", tres), (rule, ids[0], tres)
        else:
            assert "gpu" not in tres, (rule, ids[0], tres)
    # tiny: per-layer training, and probe features from their own LM pass (no probes.shared_states)
    submitted_rules = {jobs[jobid][0] for jobid in submitted}
    assert submitted_rules >= GPU_RULES - {"train_predictors_joint", "extract_probe_activations"}

    # 4. the same numbers as the local run
    outs = {"slurm": run / "results" / "tiny", "local": local_run / "results" / "tiny"}
    files = metric_files(outs["local"])
    # summary, 4 tasks x (probe table, differences), 3 layers x (per-position, curve)
    assert len(files) == 1 + len(TINY_RUN_TASKS) * 2 + 3 + 3, files
    assert metric_files(outs["slurm"]) == files
    for name in files:
        pd.testing.assert_frame_equal(read_table(outs["slurm"] / name), read_table(outs["local"] / name),
                                      check_exact=True, obj=name)


@pytest.mark.slow
@pytest.mark.slurm
def test_cancelled_training_job_is_retried_and_resumes_from_its_checkpoint(slurm_cluster, tiny_model_dir, tiny_corpus,
                                                                          tmp_path, capsys):
    """``scancel`` a running train_predictor job after its first checkpoint: the profile's ``retries``
    resubmit it, the retry resumes from the checkpoint, and the weights and the learning curve equal
    those of a local run that was never interrupted, exactly (CPU torch, one thread each)."""
    assert yaml.safe_load((TEST_PROFILE / "config.yaml").read_text())["retries"] >= 1
    runs = {"local": tmp_path / "local", "slurm": tmp_path / "slurm"}
    runs["local"].mkdir()
    write_config(runs["local"] / "config.yaml", tiny_model_dir, tiny_corpus, layers=[2],
                 **{"train.steps": FAULT_STEPS, "train.checkpoint_every": FAULT_CHECKPOINT_EVERY,
                    "train.eval_every": FAULT_EVAL_EVERY})
    # The training data once, locally: the SLURM run then has a single job, the one to cancel.
    start = time.monotonic()
    upstream = subprocess.run([*SNAKEMAKE, "--directory", str(runs["local"]), "--cores", "2", *FAULT_UPSTREAM],
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert upstream.returncode == 0, upstream.stdout[-3000:] + upstream.stderr[-3000:]
    upstream_s = time.monotonic() - start
    shutil.copytree(runs["local"], runs["slurm"], symlinks=True)  # keeps mtimes: nothing upstream reruns
    commands = {
        # The profile as it is: its `retries` are what is tested.
        "slurm": [*SNAKEMAKE, "--directory", str(runs["slurm"]), "--profile", str(TEST_PROFILE), str(FAULT_WEIGHTS)],
        "local": [*NICE, *SNAKEMAKE, "--directory", str(runs["local"]), "--cores", "1", str(FAULT_WEIGHTS)],
    }
    timings, rcs = {}, {}
    slurm_run, local_run = start_logged(commands, tmp_path, timings, rcs)
    try:
        cancelled_id, checkpoint_step = cancel_at_first_checkpoint(runs["slurm"] / FAULT_CHECKPOINT,
                                                                   tmp_path / "slurm.log", slurm_run)
    finally:
        slurm_run.join()
        local_run.join()
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in runs}
    with capsys.disabled():
        print(f"\n[test_slurm] scancel at step {checkpoint_step}: upstream (local) {upstream_s:.0f} s, "
              f"SLURM run with the retry {timings['slurm']:.0f} s, local training {timings['local']:.0f} s wall")

    # 1. the cancelled job was retried as a second SLURM job, and the run succeeded
    for name in runs:
        assert rcs[name] == 0, f"{name} run failed (rc {rcs[name]}):\n{logs[name][-6000:]}"
    assert job_stats(logs["slurm"]) == {"train_predictor": 1}
    submitted = slurm_submissions(logs["slurm"])
    assert len(submitted) == 1, submitted
    (first, retry), = submitted.values()
    assert first == cancelled_id
    for slurm_id, state in ((first, "CANCELLED"), (retry, "COMPLETED")):
        record = scontrol_job(slurm_id)
        assert record["JobState"] == state, record
        assert record.get("Comment", "").startswith("rule_train_predictor_wildcards_"), record
    assert scontrol_job(retry)["ExitCode"] == "0:0"

    # 2. the retry resumed from the checkpoint the cancelled job left (the rule's log is the retry's)
    train_log = (runs["slurm"] / FAULT_TRAIN_LOG).read_text()
    resumed = [int(step) for step in re.findall(r"resumed from \S+ at step (\d+)", train_log)]
    assert len(resumed) == 1, train_log[-3000:]
    # The job dies a moment after scancel returns: it may still have written a later checkpoint.
    assert FAULT_CHECKPOINT_EVERY <= checkpoint_step <= resumed[0] < FAULT_STEPS, (checkpoint_step, resumed)
    assert resumed[0] % FAULT_CHECKPOINT_EVERY == 0
    assert not (runs["slurm"] / FAULT_CHECKPOINT).exists()  # removed once the outputs are written

    # 3. the same weights and learning curve as the uninterrupted run
    expected, actual = load_file(runs["local"] / FAULT_WEIGHTS), load_file(runs["slurm"] / FAULT_WEIGHTS)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    curve = pd.read_parquet(runs["slurm"] / FAULT_CURVE)
    assert list(curve["step"]) == list(range(FAULT_EVAL_EVERY, FAULT_STEPS + 1, FAULT_EVAL_EVERY))
    pd.testing.assert_frame_equal(curve, pd.read_parquet(runs["local"] / FAULT_CURVE), check_exact=True)
