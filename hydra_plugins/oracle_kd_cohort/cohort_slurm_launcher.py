"""`hydra/launcher=cohort_slurm`: the cohort launcher on a SLURM cluster, one SLURM job per cohort.

It takes every option of Hydra's submitit SLURM launcher (partition, timeout_min, gpus_per_node, signal_delay_s,
max_num_timeout, ...) plus `max_members`. The sweep is composed and grouped where it is launched; each cohort
(and each job that is not training, alone) is submitted through submitit as its own SLURM job, named after what it
trains, which trains its members together exactly as `hydra/launcher=cohort` would on one machine and hands each
job its result. task=plan and invalid configs run where the sweep was launched. A job that reaches its time limit
is requeued by submitit (`max_num_timeout`) and resumes its members from their last.pt. Registered only where
hydra-submitit-launcher is installed (`pip install -e ".[slurm]"`).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, setup_globals
from omegaconf import OmegaConf

from hydra_plugins.oracle_kd_cohort.cohort_launcher import run_as_cohorts, sweep_configs

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # the slurm extra is not installed: no cohort_slurm launcher
    SlurmQueueConf = None

if SlurmQueueConf is not None:

    @dataclass
    class CohortSlurmLauncherConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.oracle_kd_cohort.cohort_slurm_launcher.CohortSlurmLauncher"
        max_members: Optional[int] = None  # cap a cohort's size (memory); larger cohorts are split

    ConfigStore.instance().store(group="hydra/launcher", name="cohort_slurm", node=CohortSlurmLauncherConf,
                                 provider="oracle-kd")

    class CohortSlurmLauncher(SlurmLauncher):
        """submitit's SLURM launcher with one job per cohort instead of one per multirun job."""

        def __init__(self, max_members: Optional[int] = None, **params: Any) -> None:
            super().__init__(**params)
            self.max_members = max_members

        def __call__(self, group: List[Tuple[List[str], int]], singleton_state: Any) -> List[JobReturn]:
            """In the SLURM job: compose the group's jobs and train them as cohorts (a requeued job resumes)."""
            import submitit

            assert self.hydra_context is not None and self.config is not None and self.task_function is not None
            Singleton.set_state(singleton_state)
            setup_globals()
            overrides = [o for o, _ in group]
            configs = sweep_configs(self.hydra_context, self.config, overrides, [n for _, n in group],
                                    submitit.JobEnvironment().job_id)
            return run_as_cohorts(self.hydra_context, self.config, self.task_function, configs, overrides, None)

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            import logging

            from oracle_kd.launch import cluster_groups, cluster_job_name

            assert self.config is not None and self.hydra_context is not None and self.task_function is not None
            setup_globals()
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
            numbers = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
            configs = sweep_configs(self.hydra_context, self.config, job_overrides, numbers)
            groups, here = cluster_groups(configs, self.max_members)
            executor = self._executor()
            jobs = []
            for group in groups:
                executor.update_parameters(name=cluster_job_name([configs[i] for i in group]))
                jobs.append(executor.submit(self, [(list(job_overrides[i]), numbers[i]) for i in group],
                                            Singleton.get_state()))
                logging.getLogger(__name__).info("SLURM job %s: jobs %s", jobs[-1].job_id,
                                                 ", ".join(f"#{numbers[i]}" for i in group))
            returns: dict[int, JobReturn] = {}
            if here:
                done = run_as_cohorts(self.hydra_context, self.config, self.task_function, [configs[i] for i in here],
                                      [job_overrides[i] for i in here], self.max_members)
                returns.update(zip(here, done))
            for group, job in zip(groups, jobs):
                returns.update(zip(group, job.results()[0]))
            return [returns[i] for i in range(len(job_overrides))]

        def _executor(self) -> Any:
            """A submitit SLURM executor from the launcher's options, as Hydra's submitit launcher builds it."""
            import submitit

            params = dict(self.params)
            executor = submitit.AutoExecutor(folder=params.pop("submitit_folder"), cluster="slurm",
                                             slurm_max_num_timeout=params.pop("max_num_timeout"))
            shared = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
            return executor
