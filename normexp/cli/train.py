"""`normexp-train`: the Hydra app that trains one configuration (or a sweep with -m).

Torch is imported only when a job trains, so --help, --cfg and bad input answer quickly.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from normexp.config import ConfigError, register_configs

log = logging.getLogger("normexp")

register_configs()

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    from normexp.conductor import train_run  # torch: only when a job really runs
    from normexp.data.sources import DataError
    from normexp.runtime import default_threads, registered_job

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        with registered_job(Path(cfg.paths.cache_dir).expanduser() / "jobs") as running:
            # under SLURM the CPU affinity is this job's allocation: other jobs on the node don't share it
            others = running if "SLURM_JOB_ID" not in os.environ else 1
            train_run(cfg, auto_threads=default_threads(HydraConfig.get().launcher.get("n_jobs"), others))
    except (ConfigError, DataError) as error:
        log.error("%s", error)
        if not multirun:
            sys.exit(2)
        _note_job_problem("rejected", str(error))
    except KeyboardInterrupt:
        log.warning("interrupted; finished epochs are kept: rerun the same command to resume")
        sys.exit(130)
    except Exception as error:
        if not multirun:
            raise
        log.exception("this job failed; the sweep goes on with the next one")
        _note_job_problem("failed", f"{type(error).__name__}: {error}")


def _note_job_problem(kind: str, message: str) -> None:
    """Leave a note in the job's sweep folder for the end-of-sweep report (normexp.cli.sweep_report)."""
    from normexp import atomic
    from normexp.cli.sweep_report import JOB_PROBLEM

    output = Path(HydraConfig.get().runtime.output_dir)
    atomic.write_json(output / JOB_PROBLEM, {"kind": kind, "message": message,
                                              "overrides": list(HydraConfig.get().overrides.task)})


def main() -> None:
    app()


if __name__ == "__main__":
    main()
