"""`hydra/launcher=threads`: every job of a sweep in this one process (normexp.sweep.launcher).

Hydra finds launchers in the `hydra_plugins` package only; the work is in normexp.sweep.launcher.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from normexp.sweep import launcher


@dataclass
class ThreadsLauncherConf:
    _target_: str = launcher.THREADS_LAUNCHER
    # jobs training at once, each in a thread with its own CUDA stream; null = every job of the
    # sweep on a GPU, one after another on CPU (where parallel jobs belong in processes: joblib)
    n_jobs: Optional[int] = None


ConfigStore.instance().store(group="hydra/launcher", name="threads", node=ThreadsLauncherConf, provider="normexp")


class ThreadsLauncher(Launcher):
    def __init__(self, n_jobs: Optional[int] = None) -> None:
        self.n_jobs = n_jobs
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        return launcher.launch(self.config, self.hydra_context, self.task_function, job_overrides, initial_job_idx,
                               self.n_jobs)
