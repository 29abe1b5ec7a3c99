"""Reading what a Snakemake run printed."""


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
