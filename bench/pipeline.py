"""Wall time of the Snakemake pipeline: the embedded default cold, a no-op rerun, and one figure.

    .venv/bin/python bench/pipeline.py              # cold run into results/bench-cold (~15 min), then the two below
    .venv/bin/python bench/pipeline.py --skip-cold  # no-op rerun + one figure on results/embedded-smollm2
    .venv/bin/python bench/pipeline.py --quick      # --skip-cold, one round
    .venv/bin/python bench/pipeline.py --copy-of embedded-smollm2  # on a copy, if that dir has pending jobs
    .venv/bin/python bench/pipeline.py --configfile configs/predictor-study.yaml --rounds 1  # a study, cold

* ``cold``   -- ``snakemake --cores 2 all --config experiment=bench-cold`` into a fresh
  results/bench-cold (deleted first; results/embedded-smollm2 is never touched by this step).
  Every stage runs, the GGUF dequantization included.
* ``no-op``  -- ``snakemake --cores 2 all`` once everything is up to date: Snakemake start-up,
  config validation, the DAG-time model-shape checks, and the up-to-date checks of every output.
* ``dry`` vs ``bare`` -- ``snakemake -n all`` once everything is up to date against a bare
  ``snakemake --version`` in the same round: what building the DAG costs beyond Snakemake itself
  (parsing the workflow, importing pndecomp, the up-to-date checks). Target: within 1 s.
* ``figure`` -- delete ``results/<exp>/figures/fig3.png``, then ``snakemake --cores 2 <that file>``:
  start-up plus the one plotting job (fig3.png and fig3.pdf are rewritten).

Each is reported as wall time and as the CPU seconds Snakemake and its jobs used (user + sys of
the waited-for children: unlike wall time, this hardly moves when other work loads the machine).
If SLURM's client tools are installed, the script also times ``scontrol show config``: the SLURM
executor plugin runs it at every Snakemake start-up (see scontrol_seconds), so an unreachable
controller adds its timeout to every wall time here.
The no-op and figure runs alternate (no-op, figure, no-op, figure, ...; 3 rounds by default) and
medians are reported. Before them a dry run (``snakemake -n all``) must report nothing to do: if
jobs are pending (someone changed code, params or inputs), the script stops rather than rerun them
in a results directory it does not own, unless --force.

``--copy-of EXP`` measures on a copy instead: results/EXP is copied (file times kept) to
results/bench-copy, pending jobs there are marked done with ``snakemake --touch all`` (nothing is
recomputed; the figure job later runs for real on the copied inputs), the no-op and figure runs are
measured on the copy, and the copy is deleted afterwards (--keep-copy keeps it). The copy has no
Snakemake provenance records for the copied outputs, so its no-op skips their params/code checks:
a few JSON reads per job, small next to Snakemake's start-up.

Targets: no-op <= 10 s, one figure <= 30 s, the cold default <= 15 min. The machine's speed varies from
day to day (up to 2-3x here), so the cold run is bracketed by a speed probe (a two-thread matmul,
_common.matmul_gflops) and also reported scaled to the reference speed of 2026-11-29, the day the
15-min budget was last met on an idle machine; the probe needs an idle machine, as the cold run does.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C  # noqa: I001

DEFAULT_EXPERIMENT = "embedded-smollm2"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


CPU: dict[str, list[float]] = {}
HIDE_SCONTROL: str | None = None  # a directory holding a failing `scontrol`, put first on PATH


def snakemake(args, targets: list[str], *extra: str, timeout: float, label: str = "") -> tuple[float, str, int]:
    """(wall seconds, output, rc); the CPU seconds of Snakemake and its jobs go to CPU[label]."""
    command = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), *extra, *targets]
    if args.configfile:
        command += ["--configfile", args.configfile]
    if args.experiment != DEFAULT_EXPERIMENT:
        command += ["--config", f"experiment={args.experiment}"]
    env = {key: value for key, value in os.environ.items() if key not in C.ENV_SET}
    if HIDE_SCONTROL:
        env["PATH"] = f"{HIDE_SCONTROL}{os.pathsep}{env.get('PATH', '')}"
    cpu, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(command, cwd=C.REPO, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - start
    CPU.setdefault(label, []).append(_children_cpu() - cpu)
    return wall, proc.stdout + proc.stderr, proc.returncode


def scontrol_seconds() -> float | None:
    """How long ``scontrol show config`` takes, or None without SLURM's client tools or without the
    SLURM executor plugin (``make install-slurm``), which is what runs it.

    snakemake-executor-plugin-slurm (2.8.0) runs it, with a 10 s timeout, while Snakemake collects
    its executor plugins, i.e. at every start-up even for local runs. Where the client tools are
    installed but no controller answers, each Snakemake start waits for it.
    """
    scontrol = shutil.which("scontrol")
    if scontrol is None or importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return None
    start = time.perf_counter()
    try:
        subprocess.run([scontrol, "show", "config"], capture_output=True, timeout=15)
    except subprocess.TimeoutExpired:
        pass
    return time.perf_counter() - start


def fail(what: str, output: str, rc: int) -> None:
    C.say(f"{what} failed (rc {rc}); last lines of its output:\n" + "\n".join(output.splitlines()[-25:]))
    sys.exit(1)


# Groups of rules whose share of the cold run's job seconds is reported: scoring with context (baselines,
# intervals, robust views) and the interventions (patching, steering).
SHARES = {"scoring with context": ("score_baselines", "layer_scores", "per_position_metrics", "layer_summary"),
          "interventions": ("patch_layer", "steer_layer", "intervention_table", "draw_interventions")}


def rule_seconds(experiment: str, since: float) -> dict[str, float]:
    """Job wall seconds summed per rule, from Snakemake's own records (.snakemake/metadata: one JSON per
    output file with its job's rule, hash, start and end time) of the jobs started after ``since`` (epoch
    seconds); a job with several outputs counted once (its outputs' start times differ by microseconds)."""
    import base64
    import json

    jobs = {}
    records = C.REPO / ".snakemake" / "metadata"
    for record in (path for path in records.rglob("*") if path.is_file()):
        # The record's name is the output path, urlsafe-base64, split into "@"-prefixed folders when long.
        encoded = "".join(part.removeprefix("@") for part in record.relative_to(records).parts)
        output = base64.urlsafe_b64decode(encoded).decode(errors="replace")
        if not output.startswith(f"results/{experiment}/"):
            continue
        meta = json.loads(record.read_text())
        if meta.get("starttime") and meta.get("endtime") and meta["starttime"] >= since:
            jobs[(meta["rule"], meta.get("job_hash"), meta["endtime"])] = meta["endtime"] - meta["starttime"]
    totals: dict[str, float] = {}
    for (rule, _, _), seconds in jobs.items():
        totals[rule] = totals.get(rule, 0.0) + seconds
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-cold", action="store_true", help="measure no-op and figure on an existing results dir")
    parser.add_argument("--experiment", default=None,
                        help=f"results/<experiment> (default: bench-cold, or {DEFAULT_EXPERIMENT} with --skip-cold)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="no-op/figure rounds (default 3; 1 with --quick)")
    parser.add_argument("--figure", default="fig3")
    parser.add_argument("--wait-for-results", type=float, default=0, metavar="SECONDS",
                        help="with --skip-cold, wait up to this long for figures/fig6.png to appear")
    parser.add_argument("--force", action="store_true", help="measure even if the dry run shows pending jobs")
    parser.add_argument("--copy-of", metavar="EXP", default=None,
                        help="measure on a copy of results/EXP (results/bench-copy, brought up to date with --touch)")
    parser.add_argument("--keep-copy", action="store_true", help="with --copy-of, keep results/bench-copy")
    parser.add_argument("--hide-scontrol", action="store_true",
                        help="diagnosis: run Snakemake with a PATH whose `scontrol` fails at once, to show the "
                             "start-up cost without the SLURM plugin's probe")
    parser.add_argument("--quick", action="store_true", help="--skip-cold and one round")
    parser.add_argument("--configfile", default=None,
                        help="a config file, e.g. configs/predictor-study.yaml, which extends config.yaml (its "
                             "experiment is replaced by --experiment, bench-cold by default)")
    args = parser.parse_args()
    args.skip_cold = args.skip_cold or args.quick or bool(args.copy_of)
    if args.copy_of:
        args.experiment = args.experiment or "bench-copy"
        if not args.experiment.startswith("bench-"):
            sys.exit("--copy-of writes results/<experiment>: pick an experiment named bench-*")
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.experiment = args.experiment or (DEFAULT_EXPERIMENT if args.skip_cold else "bench-cold")
    out = C.REPO / "results" / args.experiment
    figure = out / "figures" / f"{args.figure}.png"
    target = str(figure.relative_to(C.REPO))
    C.say(f"machine: {C.machine()}")
    C.say(f"experiment {args.experiment} ({out.relative_to(C.REPO)}), --cores {args.cores}")
    if args.hide_scontrol:
        global HIDE_SCONTROL
        HIDE_SCONTROL = tempfile.mkdtemp(prefix="pndecomp-bench-noslurm-")
        shim = Path(HIDE_SCONTROL) / "scontrol"
        shim.write_text("#!/bin/sh\nexit 1\n")
        shim.chmod(0o755)
        os.environ["PATH"] = f"{HIDE_SCONTROL}{os.pathsep}{os.environ.get('PATH', '')}"
        C.say("  --hide-scontrol: Snakemake runs with a failing `scontrol` first on PATH (diagnosis only)")
    slurm_wait = scontrol_seconds()
    if slurm_wait is not None:
        C.say(f"  `scontrol show config` takes {slurm_wait:.1f} s here; the SLURM executor plugin runs it at every "
              "Snakemake start-up, so every wall time below includes it")

    cold = cold_at_reference = None
    if args.copy_of:
        source = C.REPO / "results" / args.copy_of
        if not (source / "figures" / "fig6.png").exists():
            sys.exit(f"{source.relative_to(C.REPO)} is not complete (no figures/fig6.png)")
        if out.exists():
            shutil.rmtree(out)
        start = time.perf_counter()
        shutil.copytree(source, out, copy_function=shutil.copy2, symlinks=True)  # copy2 keeps file times
        C.say(f"  copied {source.relative_to(C.REPO)} to {out.relative_to(C.REPO)} "
              f"in {time.perf_counter() - start:.1f} s")
        seconds, output, rc = snakemake(args, ["all"], "--touch", timeout=600, label="touch")
        if rc:
            fail("snakemake --touch all on the copy", output, rc)
        C.say(f"  snakemake --touch all on the copy: {seconds:.1f} s")
    elif not args.skip_cold:
        # An experiment of one's own may be run cold only when there is nothing of it to delete.
        if not args.experiment.startswith("bench-") and (Path("results") / args.experiment).exists():
            sys.exit(f"the cold run deletes results/{args.experiment} first: pick an experiment named bench-*, "
                     "or one with no results directory yet")
        if out.exists():
            shutil.rmtree(out)
        C.say("cold run: snakemake all into a fresh results dir (~15 min on 2 cores) ...")
        speed_before = C.matmul_gflops()
        started = time.time()
        cold, output, rc = snakemake(args, ["all"], timeout=3 * 3600, label="cold")
        if rc:
            fail("cold run", output, rc)
        speed_after = C.matmul_gflops()
        cold_at_reference = cold * (speed_before + speed_after) / 2 / C.REFERENCE_GFLOPS
        C.say(f"  cold: {cold:.1f} s ({cold / 60:.1f} min), {CPU['cold'][0]:.0f} CPU s")
        C.say(f"  machine speed: two-thread matmul {speed_before:.0f} GFLOP/s before, {speed_after:.0f} after "
              f"(reference {C.REFERENCE_GFLOPS:.0f}, 2026-11-29); cold scaled to the reference speed: "
              f"{cold_at_reference:.0f} s ({cold_at_reference / 60:.1f} min)")
        per_rule = rule_seconds(args.experiment, started)
        job_seconds = sum(per_rule.values())
        C.say("  job seconds per rule (2 jobs may run at once): " + ", ".join(
            f"{rule} {seconds:.0f}" for rule, seconds in per_rule.items()))
        for group, rules in SHARES.items():
            share = sum(per_rule.get(rule, 0.0) for rule in rules)
            C.say(f"  {group} ({', '.join(rules)}): {share:.0f} job s, "
                  f"{100 * share / job_seconds:.1f} % of all job seconds")
    else:
        last = out / "figures" / "fig6.png"
        deadline = time.monotonic() + args.wait_for_results
        while not last.exists() and time.monotonic() < deadline:
            time.sleep(15)
        if not last.exists():
            sys.exit(f"{last.relative_to(C.REPO)} does not exist: run the pipeline first (or pass --wait-for-results)")

    dry, output, rc = snakemake(args, ["all"], "-n", timeout=600, label="dry")
    if rc:
        fail("dry run", output, rc)
    up_to_date = "Nothing to be done" in output
    C.say(f"  dry run (snakemake -n all): {dry:.1f} s ({CPU['dry'][0]:.1f} CPU s), "
          f"{'nothing to do' if up_to_date else 'JOBS PENDING'}")
    if not up_to_date:
        C.say("\n".join(line for line in output.splitlines() if line.strip())[-2500:])
        if not args.force:
            sys.exit("jobs are pending, so a rerun would not be a no-op; not measuring (pass --force to run them, "
                     f"or --copy-of {args.experiment} to measure on a copy)")

    times: dict[str, list[float]] = {"no-op": [], "figure": [], "dry": [], "bare": []}
    for round_ in range(args.rounds):
        seconds, output, rc = snakemake(args, [], "--version", timeout=120, label="bare")
        if rc:
            fail("snakemake --version", output, rc)
        times["bare"].append(seconds)
        seconds, output, rc = snakemake(args, ["all"], "-n", timeout=600, label="dry")
        if rc:
            fail("dry run", output, rc)
        times["dry"].append(seconds)
        seconds, output, rc = snakemake(args, ["all"], timeout=600, label="no-op")
        if rc:
            fail("no-op rerun", output, rc)
        if "Nothing to be done" not in output:
            C.say(f"  warning: round {round_ + 1}'s rerun ran jobs; it is not a no-op")
        times["no-op"].append(seconds)
        figure.unlink(missing_ok=True)
        seconds, output, rc = snakemake(args, [target], timeout=600, label="figure")
        if rc or not figure.exists():
            fail(f"regenerating {target}", output, rc)
        times["figure"].append(seconds)
        C.say(f"  round {round_ + 1}/{args.rounds}: bare snakemake {times['bare'][-1]:.1f} s, "
              f"dry run {times['dry'][-1]:.1f} s, no-op {times['no-op'][-1]:.1f} s "
              f"({CPU['no-op'][-1]:.1f} CPU s), {args.figure} {times['figure'][-1]:.1f} s "
              f"({CPU['figure'][-1]:.1f} CPU s)")
    noop, fig = C.median(times["no-op"]), C.median(times["figure"])
    # CPU['dry'][0] is the up-to-date check before the rounds, on colder caches: not a measurement.
    dry_median, bare = C.median(times["dry"]), C.median(times["bare"])
    C.say(f"  dry run median {dry_median:.1f} s ({C.median(CPU['dry'][1:]):.1f} CPU s) against bare Snakemake "
          f"{bare:.1f} s ({C.median(CPU['bare']):.1f} CPU s): {dry_median - bare:+.1f} s -> target <= 1 s over "
          f"{'met' if dry_median - bare <= 1 else 'MISSED'}")
    C.say(f"  no-op rerun median {noop:.1f} s ({C.spread(times['no-op'])}; {C.median(CPU['no-op']):.1f} CPU s) "
          "-> target <= 10 s "
          f"{'met' if noop <= 10 else 'MISSED'}")
    C.say(f"  one figure  median {fig:.1f} s ({C.spread(times['figure'])}; {C.median(CPU['figure']):.1f} CPU s) "
          "-> target <= 30 s "
          f"{'met' if fig <= 30 else 'MISSED'}")
    if args.copy_of and not args.keep_copy:
        shutil.rmtree(out)
    cold_text = (f"cold {cold / 60:.1f} min (at the reference speed {cold_at_reference / 60:.1f} min)"
                 if cold is not None else "cold skipped")
    slurm_text = f"; scontrol at start-up {slurm_wait:.1f} s" if slurm_wait is not None else ""
    where = f"{args.experiment} (copy of {args.copy_of})" if args.copy_of else args.experiment
    where += ", scontrol hidden" if args.hide_scontrol else ""
    where += f", {args.configfile}" if args.configfile else ""
    target_minutes = 30 if args.configfile else 15  # a study config: <= 30 min; the embedded default: <= 15
    if cold is not None:
        cold_text += f" [<={target_minutes} min]"
    if HIDE_SCONTROL:
        shutil.rmtree(HIDE_SCONTROL)
    C.say(f"SUMMARY pipeline {where}: {cold_text}, dry run {dry_median:.1f} s = bare Snakemake {bare:.1f} s "
          f"{dry_median - bare:+.1f} s [<=+1 s], no-op rerun {noop:.1f} s [<=10 s] "
          f"({noop / 10:.2f} of target; {C.median(CPU['no-op']):.1f} CPU s), one figure ({args.figure}) {fig:.1f} s "
          f"[<=30 s] ({fig / 30:.2f} of target; {C.median(CPU['figure']):.1f} CPU s){slurm_text}"
          + (" (quick)" if args.quick else ""))


if __name__ == "__main__":
    main()
