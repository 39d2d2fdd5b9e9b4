"""task=tune: an Optuna study of Oracle KD's γ.

The default objective needs no student: it scores the oracle teacher teacher(x*(γ)) by the silhouette
of its outputs on the analysis split (the paper's Figure 4 argument: a γ whose outputs cluster by class
better gives a more useful teacher), with exactly the functions task=analyze uses (`oracle_kd.core.metrics`). One trial costs
one pass of Step A over the split. `tune.objective=student_acc` instead trains a short Oracle-KD student
per trial through the normal runner (expensive: `tune.student_epochs` epochs per trial) and reports
each epoch's running best top-1 so a median pruner can stop hopeless γs early.

The study lives in an Optuna storage (SQLite under the store, any Optuna URL, or a JournalFileStorage
for shared filesystems) and is opened with load_if_exists, so relaunching continues it and several
workers (`tune.worker=0,1,...` in a Hydra multirun, or separate jobs) fill the same study.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from oracle_kd.config import RunConfig
from oracle_kd.core.metrics import REPRESENTATIONS, teacher_metrics
from oracle_kd.engine.oracle_teacher import OracleSetup, setup_oracle, short_identity
from oracle_kd.engine.teacher import identify, teacher_run_config
from oracle_kd.engine.trainer import run
from oracle_kd.errors import ConfigError, choice, mask_credentials, require
from oracle_kd.methods.oracle import OracleConfig
from oracle_kd.store import record, study_storage
from oracle_kd.store.identity import content_hash, train_identity
from oracle_kd.store.io import atomic_write_bytes, atomic_write_json, figure_png, read_metrics
from oracle_kd.tasks.registry import register_task

log = logging.getLogger("oracle_kd")

OBJECTIVES = ("silhouette", "student_acc")
LABELS = ("fine", "coarse")
SAMPLERS = ("tpe", "random")


@dataclass
class TuneConfig:
    """An Optuna study of γ maximising the oracle teacher's silhouette score (or, expensive, a short
    distillation's student accuracy); the silhouette objective takes its split, batch size, reduction and
    sample size from `analyze.*`. storage: an Optuna URL (default: SQLite under the store); journal: a
    JournalFileStorage path for shared filesystems (wins over storage when set). heartbeat_interval /
    grace_period (seconds, URL storages): a running trial beats every interval; one silent for longer than the
    grace period (its worker was killed) is marked FAIL when a worker next starts a trial, and retried (up to
    `retries` times) with the same γ."""

    n_trials: int = 20
    gamma_low: float = 0.01
    gamma_high: float = 4.0
    log_scale: bool = True
    objective: str = "silhouette"
    labels: str = "fine"
    representation: str = "logits"
    sampler: str = "tpe"
    storage: Optional[str] = None
    journal: Optional[str] = None
    study_name: Optional[str] = None
    worker: int = 0
    student_epochs: int = 5
    heartbeat_interval: int = 60
    grace_period: Optional[int] = None  # default: twice the interval
    retries: int = 2

    def validate(self) -> None:
        require(self.n_trials >= 1, "tune.n_trials", self.n_trials, "must be >= 1")
        if self.log_scale:
            require(self.gamma_low > 0, "tune.gamma_low", self.gamma_low, "must be > 0 with tune.log_scale=true")
        else:
            require(self.gamma_low >= 0, "tune.gamma_low", self.gamma_low, "must be >= 0")
        require(self.gamma_high > self.gamma_low, "tune.gamma_high", self.gamma_high,
                f"must be > tune.gamma_low={self.gamma_low}")
        choice("tune.objective", self.objective, OBJECTIVES)
        choice("tune.labels", self.labels, LABELS)
        choice("tune.representation", self.representation, REPRESENTATIONS)
        choice("tune.sampler", self.sampler, SAMPLERS)
        require(self.worker >= 0, "tune.worker", self.worker, "must be >= 0")
        require(self.student_epochs >= 1, "tune.student_epochs", self.student_epochs, "must be >= 1")
        require(self.heartbeat_interval >= 1, "tune.heartbeat_interval", self.heartbeat_interval, "must be >= 1 (seconds)")
        require(self.grace_period is None or self.grace_period > self.heartbeat_interval, "tune.grace_period",
                self.grace_period, f"must exceed tune.heartbeat_interval={self.heartbeat_interval} (or be null)")
        require(self.retries >= 0, "tune.retries", self.retries, "must be >= 0")

    def check(self, rc: RunConfig) -> None:
        """For task=tune, when the config is checked: the study's storage opens (its driver and dialect, the
        server and the credentials, or a SQLite file that can be written), so a bad one is one line before an
        auto teacher trains for hours, not after."""
        study_storage.check_storage(storage_url(rc), *storage_options(rc))


# ----------------------------------------------------------------------------- study identity and storage
def study_settings(rc: RunConfig, identity: dict[str, Any]) -> dict[str, Any]:
    """What makes two launches the same optimisation problem (not the sampler, worker or trial count)."""
    t, a = rc.tune, rc.analyze
    s: dict[str, Any] = {"dataset": rc.dataset.name, "teacher": identity, "objective": t.objective,
                         "gamma_reduction": a.gamma_reduction, "seed": rc.seed}
    if rc.dataset.name == "digits":
        s["test_fraction"] = rc.dataset.test_fraction
    if t.objective == "silhouette":
        s.update(labels=t.labels, representation=t.representation, split=a.split, batch_size=a.batch_size,
                 silhouette_samples=a.silhouette_samples,
                 temperature=a.temperature if t.representation == "softmax" else None)
    else:
        s.update(student=rc.student.arch, method=dataclasses.asdict(_student_method(rc, 0.0)) | {"gamma": None},
                 train=train_identity(rc.train) | {"epochs": t.student_epochs})
    return s


def study_name(rc: RunConfig, settings: dict[str, Any]) -> str:
    """`tune.study_name`, else readable parts plus a short hash of the remaining settings, so a different
    teacher run or batch size never lands in (and corrupts) another problem's study."""
    if rc.tune.study_name:
        return rc.tune.study_name
    t = rc.tune
    what = f"{t.labels}-{t.representation}" if t.objective == "silhouette" else rc.student.arch
    digest = content_hash(settings, 8, separators=None)
    return f"{rc.dataset.name}-{rc.teacher.arch}-{t.objective}-{what}-{digest}"


def storage_url(rc: RunConfig) -> str:
    """The study's storage as a string: `journal:<path>`, or an Optuna URL (default: SQLite at <store>/optuna.db)."""
    return study_storage.storage_url(rc.store, rc.tune.storage, rc.tune.journal)


def storage_options(rc: RunConfig) -> tuple[int, int, int]:
    """(heartbeat interval, grace period, retries) of a URL storage."""
    t = rc.tune
    return t.heartbeat_interval, t.grace_period or 2 * t.heartbeat_interval, t.retries


def make_storage(rc: RunConfig) -> Any:
    return study_storage.make_storage(storage_url(rc), *storage_options(rc))


def sampler_seed(seed: int, worker: int, n_existing: int) -> int:
    """Distinct per worker AND per launch: seeding from (seed, worker) alone would make a relaunch
    replay the first γs it already tried (TPE's start-up trials are random draws)."""
    return int(np.random.SeedSequence([seed, worker, n_existing]).generate_state(1)[0])


def make_sampler(kind: str, seed: int) -> Any:
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)


# ----------------------------------------------------------------------------- objectives
def suggest_gamma(trial: Any, rc: RunConfig) -> float:
    return trial.suggest_float("gamma", rc.tune.gamma_low, rc.tune.gamma_high, log=rc.tune.log_scale)


def silhouette_objective(rc: RunConfig, setup: OracleSetup) -> Callable[[Any], float]:
    """Silhouette of teacher(x*(γ)) on the analysis split, one fixed seeded subsample for every trial (so
    trials differ only by γ). The other analysis metrics are kept as the trial's user attributes."""
    a, t = rc.analyze, rc.tune
    labels = setup.labels.numpy()
    coarse = setup.coarse.numpy() if setup.coarse is not None else None

    def objective(trial: Any) -> float:
        gamma = suggest_gamma(trial, rc)
        m = teacher_metrics(setup.logits(gamma, a.gamma_reduction), labels, coarse, tau=a.temperature, bins=a.ece_bins,
                    representation=t.representation, silhouette_n=a.silhouette_samples, seed=rc.seed)
        for k, v in m.items():
            trial.set_user_attr(k, None if isinstance(v, float) and math.isnan(v) else v)
        return m[f"silhouette_{t.labels}"]

    return objective


def _student_method(rc: RunConfig, gamma: float) -> Any:
    """The run's oracle options with the trial's γ (the defaults of `method=oracle` if another method is set)."""
    if isinstance(rc.method, OracleConfig):
        return dataclasses.replace(rc.method, gamma=gamma)
    return OracleConfig(gamma=gamma, gamma_reduction=rc.analyze.gamma_reduction).for_teacher(rc.teacher.arch)


def student_run_config(rc: RunConfig, gamma: float, teacher_path: Path | None) -> RunConfig:
    """A short Oracle-KD run: the trial's γ and tune.student_epochs epochs. An auto teacher trained with
    the student's recipe (teacher.train=same) is pinned to its model file, or shortening the recipe would
    also shorten (and retrain) the teacher."""
    teacher = rc.teacher
    if teacher_path is not None:
        teacher = dataclasses.replace(rc.teacher, checkpoint=str(teacher_path))
    return dataclasses.replace(rc, task="train", method=_student_method(rc, gamma), teacher=teacher,
                               train=dataclasses.replace(rc.train, epochs=rc.tune.student_epochs),
                               stop_after_epoch=None)


def student_objective(rc: RunConfig, teacher_path: Path | None) -> Callable[[Any], float]:
    """Best test top-1 of a short Oracle-KD student. The run advances one epoch per `train.run` call
    (stop_after_epoch; each call resumes from last.pt), so every epoch is reported and can be pruned.
    Trials are ordinary runs in the store: a repeated γ is not retrained, a pruned one stays unfinished."""
    import optuna

    def objective(trial: Any) -> float:
        src = student_run_config(rc, suggest_gamma(trial, rc), teacher_path)
        folder = identify(src)[2]
        trial.set_user_attr("run_folder", str(folder))
        epochs = src.train.epochs
        result: dict[str, Any] = {}
        for epoch in range(1, epochs + 1):
            result = run(dataclasses.replace(src, stop_after_epoch=epoch if epoch < epochs else None))
            done = [r["test_top1"] for r in read_metrics(folder / record.METRICS) if r["epoch"] <= epoch]
            trial.report(max(done), epoch)
            if result.get("status") == "finished":  # done (or trained before): nothing left to save
                break
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(result["best_top1"])

    return objective


# ----------------------------------------------------------------------------- reporting
def trials_table(study: Any) -> pd.DataFrame:
    """One row per trial: number, state, γ, value, the worker's extra metrics."""
    rows = []
    for tr in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        rows.append({"number": tr.number, "state": tr.state.name, "gamma": tr.params.get("gamma"), "value": tr.value,
                     "duration_s": tr.duration.total_seconds() if tr.duration else None,
                     **{k: v for k, v in sorted(tr.user_attrs.items())}})
    return pd.DataFrame(rows)


def plot_scores(df: pd.DataFrame, best: tuple[float, float] | None, title: str, ylabel: str, log_x: bool) -> bytes:
    """Score vs γ over the study's completed trials, the best one marked (no pyplot: no global state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    done = df[df["state"] == "COMPLETE"] if not df.empty else df
    if not done.empty:
        ax.scatter(done["gamma"], done["value"], c=done["number"], cmap="viridis", s=24,
                   label="trials (colour = order)")
    if best is not None:
        ax.scatter([best[0]], [best[1]], marker="*", s=200, c="red", label=f"best γ={best[0]:.4g}")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("γ")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


def _launch_overrides() -> list[str] | None:
    """The command-line overrides of this launch (None outside a Hydra app)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # not launched through Hydra (a direct call from Python)
        return None


def distill_command(rc: RunConfig, gamma: float) -> str:
    """The command that trains a student with the best γ: this launch's own overrides (dataset, teacher,
    recipe, hardware, ...) minus the tuning ones, plus method=oracle and the γ. The γ only transfers with
    the same x* batch size under gamma_reduction=mean, so train.batch_size is set to the tuned one."""
    overrides = _launch_overrides()
    if overrides is None:
        overrides = [f"dataset={rc.dataset.name}", f"teacher={rc.teacher.arch}", f"student={rc.student.arch}"]
        if rc.teacher.checkpoint != "auto":
            overrides.append(f"teacher.checkpoint={rc.teacher.checkpoint}")
        if rc.teacher.train != "same":
            overrides.append(f"teacher.train={rc.teacher.train}")
        if rc.seed:
            overrides.append(f"seed={rc.seed}")
    skip = ("task", "tune", "analyze", "method", "store", "progress")
    kept = [o for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0].split("@")[0] not in skip]
    parts = ["python run.py", *kept, "method=oracle", f"method.gamma={gamma:.4g}",
             f"method.gamma_reduction={rc.analyze.gamma_reduction}"]
    if rc.tune.objective == "silhouette" and rc.analyze.gamma_reduction == "mean" \
            and rc.analyze.batch_size != rc.train.batch_size:
        parts.append(f"train.batch_size={rc.analyze.batch_size}")
    return " ".join(parts)


# ----------------------------------------------------------------------------- the task
def make_objective(rc: RunConfig) -> tuple[Callable[[Any], float], Any, dict[str, Any]]:
    """(objective, pruner, teacher identity) for `tune.objective`."""
    import optuna

    if rc.tune.objective == "silhouette":
        setup = setup_oracle(rc, rc.analyze.split, rc.analyze.batch_size)
        if rc.tune.labels == "coarse" and setup.coarse is None:
            raise ConfigError(f"tune.labels=coarse but dataset {rc.dataset.name!r} has no coarse labels; "
                              "use tune.labels=fine")
        return silhouette_objective(rc, setup), optuna.pruners.NopPruner(), setup.identity  # one value: no pruning
    teacher_path = None
    if rc.teacher.checkpoint == "auto" and rc.teacher.train == "same":
        trc = teacher_run_config(rc)
        run(trc)  # make sure the teacher exists (trained with the full recipe), then pin its file
        teacher_path = identify(trc)[2] / record.MODEL
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return student_objective(rc, teacher_path), pruner, short_identity(rc)


def write_summary(rc: RunConfig, study: Any, name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """trials.csv, score_vs_gamma.png and best.json under <store>/<dataset>/tune/<study>; prints them."""
    import optuna

    t = rc.tune
    df = trials_table(study)
    completed = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE and tr.value is not None
                 and not math.isnan(tr.value)]
    best = max(completed, key=lambda tr: tr.value) if completed else None
    folder = Path(rc.store) / rc.dataset.name / "tune" / name
    ylabel = (f"silhouette ({t.labels} labels, {t.representation})" if t.objective == "silhouette"
              else f"student {rc.student.arch} best top-1 (%) after {t.student_epochs} epochs")
    best_pair = (best.params["gamma"], best.value) if best else None
    png = plot_scores(df, best_pair, f"{name}: {len(df)} trials", ylabel, t.log_scale)
    summary = {"study_name": name, "storage": mask_credentials(storage_url(rc)),
               "n_trials": len(df), "n_complete": int((df["state"] == "COMPLETE").sum()) if not df.empty else 0,
               "best_gamma": best_pair[0] if best_pair else None, "best_value": best_pair[1] if best_pair else None,
               "best_trial": best.number if best else None, "objective": t.objective, "settings": settings,
               "command": distill_command(rc, best_pair[0]) if best_pair else None}
    atomic_write_bytes(folder / "trials.csv", df.to_csv(index=False, lineterminator="\n").encode())
    atomic_write_bytes(folder / "score_vs_gamma.png", png)
    atomic_write_json(folder / "best.json", summary)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        cols = [c for c in ("number", "state", "gamma", "value", "top1", "entropy_bits") if c in df.columns]
        print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if best_pair:
        print(f"study {name}: {len(df)} trials; best γ = {best_pair[0]:.4g} ({ylabel} {best_pair[1]:.4f}, "
              f"trial {best.number}) -> {folder}")
        print(f"distill with it:\n  {summary['command']}", flush=True)
    else:
        print(f"study {name}: {len(df)} trials, none completed -> {folder}", flush=True)
    return summary


@register_task("tune", "an Optuna study of γ (oracle-teacher silhouette, or a short student's accuracy)",
               section="tune", config=TuneConfig)
def tune(rc: RunConfig) -> dict[str, Any]:
    """Run `tune.n_trials` more trials in the (shared, resumable) study, then write and print the best γ,
    the trial table, a score-vs-γ plot and the distillation command."""
    import optuna

    t = rc.tune
    objective, pruner, identity = make_objective(rc)
    settings = study_settings(rc, identity)
    name = study_name(rc, settings)
    storage = make_storage(rc)
    study = study_storage.open_study(storage, name, pruner, {"settings": json.loads(json.dumps(settings, default=str))})
    if isinstance(storage, optuna.storages.RDBStorage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # trials of killed workers: FAIL, and queued again
    n_before = len(study.get_trials(deepcopy=False))
    seed = sampler_seed(rc.seed, t.worker, n_before)
    study.sampler = make_sampler(t.sampler, seed)
    log.info("study %s (worker %d, sampler %s seed %d): %d trials so far, running %d more", name, t.worker,
             t.sampler, seed, n_before, t.n_trials)
    study.optimize(objective, n_trials=t.n_trials)
    return write_summary(rc, study, name, settings)
