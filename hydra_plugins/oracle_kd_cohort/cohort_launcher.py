"""`hydra/launcher=cohort`: a multirun's training jobs grouped into cohorts, each trained in one process.

Only the Hydra glue is here (kept light: Hydra imports every launcher plugin at start-up); what a cohort
is and how it trains is `oracle_kd.launch` and the engine. (No `from __future__ import annotations`: Hydra executes plugin
modules outside sys.modules, where dataclasses cannot resolve string annotations.)"""


import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict


@dataclass
class CohortLauncherConf:
    _target_: str = "hydra_plugins.oracle_kd_cohort.cohort_launcher.CohortLauncher"
    max_members: Optional[int] = None  # cap a cohort's size (memory); larger cohorts are split


ConfigStore.instance().store(group="hydra/launcher", name="cohort", node=CohortLauncherConf, provider="oracle-kd")


class CohortLauncher(Launcher):
    def __init__(self, max_members: Optional[int] = None) -> None:
        self.max_members = max_members
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
        configs = sweep_configs(self.hydra_context, self.config, job_overrides, numbers)
        return run_as_cohorts(self.hydra_context, self.config, self.task_function, configs, job_overrides,
                              self.max_members)


def sweep_configs(hydra_context: HydraContext, config: DictConfig, job_overrides: Sequence[Sequence[str]],
                  numbers: Iterable[int], job_id: Optional[str] = None) -> List[DictConfig]:
    """Each job's composed config, numbered as Hydra numbers a multirun's jobs."""
    configs = []
    for num, overrides in zip(numbers, job_overrides):
        cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.num = num
            cfg.hydra.job.id = job_id if job_id is not None else num
        configs.append(cfg)
    return configs


def run_as_cohorts(hydra_context: HydraContext, config: DictConfig, task_function: TaskFunction,
                   configs: List[DictConfig], job_overrides: Sequence[Sequence[str]],
                   max_members: Optional[int]) -> List[JobReturn]:
    """Train the jobs' cohorts in this process, then hand each job its result through Hydra's run_job (its
    output folder and log, as any launcher gives it)."""
    from oracle_kd.launch import cohort_task_functions

    functions = cohort_task_functions(configs, task_function, max_members)
    returns = []
    for cfg, fn, overrides in zip(configs, functions, job_overrides):
        logging.getLogger(__name__).info(f"\t#{cfg.hydra.job.num} : {' '.join(filter_overrides(overrides))}")
        returns.append(run_job(hydra_context=hydra_context, task_function=fn, config=cfg,
                               job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return returns
