"""`hydra/launcher=cohort`: a multirun's training jobs grouped into cohorts, each trained in one process.

Only the Hydra glue is here (kept light: Hydra imports every launcher plugin at start-up); what a cohort
is and how it trains is `oracle_kd.launch` and the engine. (No `from __future__ import annotations`: Hydra executes plugin
modules outside sys.modules, where dataclasses cannot resolve string annotations.)"""


from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

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
        from oracle_kd.launch import cohort_task_functions

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = cfg.hydra.job.num = idx
            configs.append(cfg)
        functions = cohort_task_functions(configs, self.task_function, self.max_members)
        returns = []
        for cfg, fn, overrides in zip(configs, functions, job_overrides):
            self._log_job(cfg, overrides)
            returns.append(run_job(hydra_context=self.hydra_context, task_function=fn, config=cfg,
                                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    @staticmethod
    def _log_job(cfg: Any, overrides: Sequence[str]) -> None:
        import logging

        logging.getLogger(__name__).info(f"\t#{cfg.hydra.job.num} : {' '.join(filter_overrides(overrides))}")
