"""`hydra/sweeper=oracle_kd` (the default in conf/config.yaml): Hydra's basic sweeper, composing each job once.

The basic sweeper composes every job of a batch to check it before launching any (so a config error stops the
sweep before anything trains), and then every launcher composes each job again: two compositions per job, the
bulk of a `task=plan` of a large grid. This one keeps the checked configs and hands the launcher a copy of each,
so the check stays and the second composition goes. A job that failed with an error the command line tells in one
line ends the sweep with that line alone, without Hydra's "Error executing job with overrides" before it. (No
`from __future__ import annotations`: Hydra executes plugin modules outside sys.modules, where dataclasses cannot
resolve string annotations.)"""

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from oracle_kd.errors import OracleKDError, from_scheduler


@dataclass
class MemoSweeperConf:
    _target_: str = "hydra_plugins.oracle_kd_cohort.memo_sweeper.MemoSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="oracle_kd", node=MemoSweeperConf, provider="oracle-kd")


class MemoSweeper(BasicSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        loader = hydra_context.config_loader
        compose = loader.load_sweep_config
        composed: Dict[Tuple[int, Tuple[str, ...]], DictConfig] = {}

        def load_sweep_config(master_config: DictConfig, sweep_overrides: List[str]) -> Any:
            key = (id(master_config), tuple(sweep_overrides))
            if key not in composed:
                composed[key] = compose(master_config, list(sweep_overrides))
            return copy.deepcopy(composed[key])  # launchers write into it (hydra.job.num, ...)

        loader.load_sweep_config = load_sweep_config  # the sweeper's and the launcher's loader: one object

        launch = self.launcher.launch

        def launch_reporting_failures(job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
            returns = launch(job_overrides, initial_job_idx=initial_job_idx)
            raise_one_line_failure(returns)
            return returns

        self.launcher.launch = launch_reporting_failures  # type: ignore[method-assign]


def raise_one_line_failure(returns: Sequence[JobReturn]) -> None:
    """Raise the first failed job's error, as the basic sweeper does, when the command line tells it in one line
    (ours, an OS error, a SLURM job that ended without its result): the sweeper reads it through
    `JobReturn.return_value`, which first writes "Error executing job with overrides: [...]" to stderr. Any other
    failure is left to Hydra, overrides and traceback: that is a bug to report."""
    failed = next((r for r in returns if r.status == JobStatus.FAILED), None)
    error = failed._return_value if failed is not None else None  # the exception, read without the stderr line
    if isinstance(error, (OracleKDError, OSError)) or (error is not None and from_scheduler(error)):
        raise error
