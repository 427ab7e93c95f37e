"""`normexp-train`: the Hydra app that trains one configuration (or a sweep with -m)."""

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
from normexp.data.sources import DataError
from normexp.trainer import train_run

log = logging.getLogger("normexp")

register_configs()

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def default_threads(parallel_jobs: int | None) -> int | None:
    """Torch threads per job so that jobs x threads <= cores under a parallel launcher."""
    if parallel_jobs is None:
        return None
    cores = os.cpu_count() or 1
    jobs = cores if parallel_jobs < 0 else parallel_jobs
    return max(1, cores // max(1, jobs))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if cfg.trainer.threads is None:
        cfg.trainer.threads = default_threads(hydra_cfg.launcher.get("n_jobs"))
    try:
        train_run(cfg)
    except (ConfigError, DataError) as error:
        log.error("%s", error)
        if not multirun:
            sys.exit(2)
    except KeyboardInterrupt:
        log.warning("interrupted; finished epochs are kept: rerun the same command to resume")
        sys.exit(130)
    except Exception:
        if not multirun:
            raise
        log.exception("this job failed; the sweep goes on with the next one")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
