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
