"""Running the workflow through the Snakemake CLI, and reading what a run printed."""
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The workflow's CLI, and as the tiny runs call it (two cores).
SNAKEMAKE_CLI = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
SNAKEMAKE = [*SNAKEMAKE_CLI, "--cores", "2"]
NICE = ["nice", "-n", "19"] if shutil.which("nice") else []
RUN_TIMEOUT_S = 1800


def snakemake(workdir: Path, *args: str, package_root: Path | None = None) -> str:
    """Snakemake in workdir; with package_root, pndecomp is imported from there (Snakemake and its jobs)."""
    env = dict(os.environ)
    if package_root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(package_root), *filter(None, [env.get("PYTHONPATH")])])
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@dataclass
class LocalRun:
    """A Snakemake run in the background (:func:`start_snakemake`)."""

    workdir: Path
    log: Path
    process: subprocess.Popen

    def wait(self) -> tuple[Path, str]:
        """Its working directory and log once it has finished; fails the test if it failed."""
        rc = self.process.wait(timeout=RUN_TIMEOUT_S)
        log = self.log.read_text()
        assert rc == 0, log[-6000:]
        return self.workdir, log


def start_snakemake(workdir: Path, log: Path, nice: bool = False) -> LocalRun:
    """Snakemake in workdir, started in the background, its output in ``log``; with ``nice``, at the
    lowest CPU priority."""
    with open(log, "w") as stream:  # the child keeps its own descriptor
        process = subprocess.Popen([*(NICE if nice else []), *SNAKEMAKE, "--directory", str(workdir)],
                                   stdout=stream, stderr=subprocess.STDOUT)
    return LocalRun(workdir, log, process)


def job_stats(log: str) -> dict[str, int]:
    """Rule -> job count, from the first 'Job stats' table of a Snakemake log (the whole DAG)."""
    counts, in_table = {}, False
    for line in log.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] != "total":
                    counts[parts[0]] = int(parts[1])
            elif parts and not set(line.strip()) <= {"-", " "}:
                break
    return counts


def planned_jobs(log: str) -> list[dict[str, str]]:
    """Each job of a dry run (``snakemake -n``) as {"rule", "output", "reason"}: the rule's name, its
    output line and Snakemake's own reason for running it."""
    jobs: list[dict[str, str]] = []
    for line in log.splitlines():
        stripped = line.strip()
        if line.startswith(("rule ", "localrule ")) and stripped.endswith(":"):
            jobs.append({"rule": stripped.split()[1].rstrip(":"), "output": "", "reason": ""})
        elif jobs and stripped.startswith(("output:", "reason:")):
            key, _, value = stripped.partition(":")
            jobs[-1][key] = value.strip()
    return jobs
