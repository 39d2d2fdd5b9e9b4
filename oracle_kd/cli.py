"""The command line: Hydra composes, `main` dispatches on `task`, and every user error is one line.

Hydra is asked to let exceptions through (HYDRA_FULL_ERROR) so that its composition errors (an unknown
group option, an unknown key, a value of the wrong type) and ours (`OracleKDError`) reach
`one_line_error`, which prints a single line naming the key and the allowed values, and exits 2.
Set ORACLE_KD_TRACEBACK=1 to see the traceback instead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from oracle_kd.config import AUTO_RECIPE_PREFIX, CONF_DIR, RunConfig, group_options, validate
from oracle_kd.errors import OracleKDError, StoreError, from_scheduler, mask_credentials, os_error_line, reason, setting_for
from oracle_kd.paths import SWEEPS_DIR
from oracle_kd.store.study_storage import password_out_of_overrides
from oracle_kd.tasks import task_entry

log = logging.getLogger("oracle_kd")
GROUPS = ("dataset", "teacher", "student", "method", "train", "hardware", "pair")


def task_main(cfg: DictConfig) -> Any:
    """Run one composed config (one job of a multirun) through the task registry."""
    rc = validate(cfg)
    _say_recipe(rc)
    return task_entry(rc.task).fn(rc)


def _say_recipe(rc: RunConfig) -> None:
    """One line when the recipe was picked by the dataset (no `train=` given), saying which and why."""
    from hydra.core.hydra_config import HydraConfig

    choice = HydraConfig.get().runtime.choices.get("train", "") if HydraConfig.initialized() else ""
    if choice.startswith(AUTO_RECIPE_PREFIX) and rc.task in ("train", "analyze", "tune"):
        preset = OmegaConf.load(CONF_DIR / "train" / f"{choice}.yaml").defaults[0]  # the preset it extends
        log.info("recipe: train=%s (%d epochs), the default for %s; choose another with train=%s", preset,
                 rc.train.epochs, rc.dataset.name, "|".join(group_options("train")))


def compose(overrides: list[str] | None = None) -> RunConfig:
    """The validated RunConfig that `python run.py <overrides>` would run (for scripts and tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return validate(hydra_compose(config_name="config", overrides=list(overrides or [])))


def _flat(text: str) -> str:
    return " ".join(str(text).split())


def one_line_error(exc: BaseException) -> str:
    """Turn a Hydra/OmegaConf/oracle-kd error into one line that says what to change."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, OracleKDError):
        return _flat(exc)
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        if group in GROUPS:
            return f"unknown {group} {option!r}; choose one of: {', '.join(group_options(group))}"
        return f"config {exc.missing_cfg_file!r} not found under {CONF_DIR}"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override {exc.override!r}: {_flat(exc.message)}"
    cause = exc if isinstance(exc, OmegaConfBaseException) else exc.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        parent = cause.parent_node
        allowed = sorted(k for k in parent.keys() if k != "defaults") if isinstance(parent, DictConfig) else []
        where = cause.full_key.rpartition(".")[0] or "the top level"
        if "_by_" in where.rpartition(".")[2]:  # a per-teacher / per-pair table: new entries need Hydra's `+`
            return (f"{where} is a table: add its entries with a leading +, e.g. "
                    f"'+{cause.full_key}=<value>' or '++{where}={{<key>: <value>}}'")
        return (f"unknown key {cause.full_key!r}; {where} accepts: {', '.join(map(str, allowed))}" if allowed
                else f"unknown key {cause.full_key!r}")
    if isinstance(cause, ValidationError) and cause.full_key:
        node = type(cause.child_node).__name__ if cause.child_node is not None else ""
        expected = node.removesuffix("Node").lower() if node.endswith("Node") and node != "AnyNode" else None
        return f"{cause.full_key}={cause.value!r}: wrong type" + (f", expected {expected}" if expected
                                                                 else f" ({_flat(cause.msg)})")
    first = _flat(exc).split(" Set the environment")[0]
    return f"{first} (set ORACLE_KD_TRACEBACK=1 for the traceback)"


def help_text() -> str:
    """`python run.py --help`: the user's options (groups, tasks, sections), not Hydra's internals."""
    from oracle_kd.config import sections
    from oracle_kd.tasks.registry import available_tasks

    lines = ["usage: python run.py [-m] [group=option ...] [key=value ...]", "",
             "  python run.py dataset=cifar100 teacher=resnet56 student=resnet20 method=oracle method.gamma=0.5",
             "  python run.py -m method=ce,kd,oracle seed=0,1,2 train=quick      # a multirun grid",
             "  python run.py -m --config-dir sweeps --config-name fig5_pairs     # a paper preset",
             "", "config groups (group=option):"]
    lines += [f"  {g:<9} {', '.join(group_options(g))}" for g in GROUPS]
    lines += ["", "tasks (task=name):"]
    lines += [f"  {name:<9} {task_entry(name).summary}" for name in available_tasks()]
    lines += ["", "task sections (conf/<section>/default.yaml; set keys as section.key=value):"]
    lines += [f"  {name:<9} {', '.join(f.name for f in dataclasses.fields(cls))}" for name, cls in sections().items()]
    lines += ["", "top level: task, seed, store, results_dir, progress, stop_after_epoch",
              "show the composed config: python run.py --cfg job [overrides]; Hydra's own flags: --hydra-help"]
    return "\n".join(lines)


def _register_plugins() -> None:
    """Register our launchers and sweeper with Hydra by importing them. Hydra finds plugins by listing the
    `hydra_plugins` namespace on sys.path, and an editable install's import hook cannot be listed: `oracle-kd` run
    outside the checkout would not find `hydra/launcher=cohort` nor the default sweeper."""
    import importlib
    import pkgutil

    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher
    from hydra.plugins.sweeper import Sweeper

    import hydra_plugins.oracle_kd_cohort as package

    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, (Launcher, Sweeper)) and obj.__module__ == module.__name__:
                Plugins.instance().register(obj)


def main(argv: list[str] | None = None) -> int:
    """Entry point of run.py; `argv` defaults to sys.argv[1:]. Returns the exit code."""
    import hydra

    args = sys.argv[1:] if argv is None else argv
    if "--help" in args or "-h" in args:
        print(help_text())
        return 0
    os.environ["HYDRA_FULL_ERROR"] = "1"
    _register_plugins()
    _FOLDERS.clear()
    if not OmegaConf.has_resolver("rank_suffix"):  # DDP ranks > 0 log to their own Hydra folder
        OmegaConf.register_new_resolver("rank_suffix", _rank_suffix)
    args = password_out_of_overrides(args)  # before Hydra records the command line in .hydra/ and its logs
    sys.argv = [sys.argv[0], *args]

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def _app(cfg: DictConfig) -> Any:
        try:
            return task_main(cfg)
        except OracleKDError as exc:  # report here: Hydra would add its own "Error executing job" line
            raise SystemExit(_report(exc)) from None
        except OSError as exc:  # disk full, read-only or unwritable store: the path and what to do
            raise SystemExit(_report(_os_error(exc, {**_FOLDERS, **_folders(cfg)}), exc)) from None

    try:
        _app()
    except SystemExit as exc:
        return int(exc.code or 0)
    except (OracleKDError, OmegaConfBaseException) as exc:
        return _report(exc)
    except OSError as exc:  # e.g. Hydra cannot create its output folder, a cohort its runs' folders
        from hydra.errors import HydraException

        if isinstance(exc, HydraException):  # MissingConfigException is an IOError too
            return _report(exc)
        return _report(_os_error(exc, _FOLDERS), exc)
    except Exception as exc:
        from hydra.errors import HydraException

        if isinstance(exc, ValueError) and str(exc).startswith("Only one of --run, --multirun"):
            return _report(exc)  # Hydra's own flag check (e.g. -m with --cfg): say it in one line
        if from_scheduler(exc):
            return _report(OracleKDError(f"a SLURM job ended without its result ({_job_state(exc)}); relaunch the "
                                         "same command: finished runs are skipped and the others resume from last.pt"),
                           exc)
        if not isinstance(exc, HydraException):
            raise
        return _report(exc)
    finally:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
    return 0


FOLDER_SETTINGS = ("store", "results_dir", "dataset.root", "tune.journal")  # the folders a task writes
_FOLDERS: dict[str, str] = {}  # this launch's folders by the setting that places them (`FolderCallback`)


def _folders(cfg: DictConfig) -> dict[str, str]:
    """The folders a (job's) config places, keyed `<setting>=` as the advice names them."""
    return {f"{key}=": str(value) for key in FOLDER_SETTINGS if (value := OmegaConf.select(cfg, key, default=None))}


class FolderCallback(Callback):
    """Notes the launch's folders (store, results, Hydra's own) before Hydra creates any, so that an OSError,
    even one raised before a job starts (Hydra's output folder, a cohort's run folders), names the setting that
    placed its path: `hydra.run.dir=` for Hydra's folder, not `store=`. Registered in conf/config.yaml."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _FOLDERS.update({**_folders(config), "hydra.run.dir=": str(config.hydra.run.dir)})

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _FOLDERS.update({**_folders(config), "hydra.sweep.dir=": str(config.hydra.sweep.dir)})


def _os_error(exc: OSError, folders: dict[str, str]) -> StoreError:
    """The one-line error for a failed file operation, advising the setting that placed its path."""
    return StoreError(os_error_line(exc, setting_for(exc.filename, folders)))


def _job_state(exc: BaseException) -> str:
    """`job 12_3, state FAILED` from submitit's several-line message, else the message's gist."""
    import re

    m = re.search(r"Job (\S+) .*?\(state: (\w+)\)", str(exc), re.S)
    return f"job {m.group(1)}, state {m.group(2)}" if m else reason(exc)


def _rank_suffix() -> str:
    """`-rank<r>` for DDP ranks > 0: torchrun's RANK, or under SLURM (submitit's tasks_per_node, before the
    engine derives RANK) the task's SLURM_PROCID."""
    rank = os.environ.get("RANK") or (os.environ.get("SLURM_PROCID", "0") if os.environ.get("SLURM_NTASKS", "1") != "1"
                                      else "0")
    return "" if rank == "0" else f"-rank{rank}"


def entry() -> None:
    """The `oracle-kd` console script: `python run.py` from any directory. A sweep preset named as in the README
    (`--config-dir sweeps --config-name quick`, or `--config-name quick` alone) is found among the shipped ones
    when there is no such folder or config here."""
    sys.exit(main(_with_presets(sys.argv[1:])))


def _with_presets(args: list[str]) -> list[str]:
    args = list(args)
    if "--config-dir" in args:
        i = args.index("--config-dir") + 1
        if i < len(args) and args[i] == "sweeps" and not Path("sweeps").is_dir():
            args[i] = str(SWEEPS_DIR)
    elif "--config-name" in args:
        i = args.index("--config-name") + 1
        if i < len(args) and not (CONF_DIR / f"{args[i]}.yaml").exists() and (SWEEPS_DIR / f"{args[i]}.yaml").exists():
            args += ["--config-dir", str(SWEEPS_DIR)]
    return args


def _report(exc: BaseException, cause: BaseException | None = None) -> int:
    if os.environ.get("ORACLE_KD_TRACEBACK"):
        raise cause or exc
    print(f"error: {mask_credentials(one_line_error(exc))}", file=sys.stderr, flush=True)
    return 2
