"""Grouping a sweep's runs into cohorts: one per (batch stream, teacher); teacher-less runs ride along."""

from __future__ import annotations

from oracle_kd.cli import compose
from oracle_kd.engine.cohort import group_cohorts

BASE = ["dataset=digits", "train=quick"]


def _rcs(*variants: list[str]) -> list:
    return [compose([*BASE, *v]) for v in variants]


def test_members_may_differ_in_method_student_and_recipe():
    """With a teacher trained by its own recipe (teacher.train=<preset>), student recipes may differ."""
    rcs = [compose([*BASE, "teacher.train=paper_teacher", *v]) for v in (
        ["method=kd"], ["method=oracle", "method.gamma=0.2"], ["method=dkd", "student=resnet32"],
        ["method=at", "train.lr=0.01", "train.epochs=3"], ["method=ce", "student=resnet8", "train.lr=0.02"])]
    assert group_cohorts(rcs) == [[0, 1, 2, 3, 4]]


def test_seed_batch_size_data_and_teacher_split_cohorts():
    rcs = _rcs(["method=kd"], ["method=kd", "seed=1"], ["method=kd", "train.batch_size=32"],
               ["method=kd", "dataset.crop_pad=0"], ["method=kd", "teacher=resnet110"], ["method=oracle"],
               ["method=ce", "seed=1"], ["method=ce", "seed=2"])
    assert group_cohorts(rcs) == [[0, 5], [1, 6], [2], [3], [4], [7]]


def test_an_auto_teacher_trained_with_the_students_recipe_is_another_teacher():
    """teacher.train=same: a student recipe change changes its auto teacher, hence the cohort."""
    rcs = _rcs(["method=kd"], ["method=kd", "train.lr=0.01"], ["method=kd", "teacher.train=paper_teacher"],
               ["method=kd", "teacher.train=paper_teacher", "train.lr=0.01"])
    assert group_cohorts(rcs) == [[0], [1], [2, 3]]


def test_max_members_splits_a_cohort():
    rcs = _rcs(*[["method=oracle", f"method.gamma={g}"] for g in (0, 0.1, 0.2, 0.5, 1, 2)])
    assert group_cohorts(rcs, max_members=4) == [[0, 1, 2, 3], [4, 5]]


def _cfgs(*variants: list[str]) -> list:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from oracle_kd.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return [hydra_compose(config_name="config", overrides=[*BASE, *v]) for v in variants]


def test_on_slurm_each_cohort_is_one_job_and_plans_run_here():
    from oracle_kd.launch import cluster_groups, cluster_job_name

    cfgs = _cfgs(["method=kd"], ["method=oracle"], ["method=ce", "seed=1"], ["task=tables"], ["task=plan"],
                 ["method=kd", "seed=1"], ["method=oracle", "method.gamma=-1"], ["method=ce"])
    groups, here = cluster_groups(cfgs, None)
    assert groups == [[0, 1, 7], [2, 5], [3]] and here == [4, 6]  # γ = -1 is invalid: it fails where launched
    names = [cluster_job_name([cfgs[i] for i in g]) for g in groups]
    assert names == ["oracle-kd-resnet56-s0-3runs", "oracle-kd-resnet56-s1-2runs", "oracle-kd-tables"]
    assert cluster_job_name([cfgs[2]]) == "oracle-kd-ce-none-resnet20-s1"
    assert cluster_groups(cfgs, 2)[0] == [[0, 1], [2, 5], [3], [7]]


def test_train_size_and_the_chimeric_samples_split_cohorts():
    """A scarce-data run sees other batches; a chimeric phase needs its own chimeric set (and the partition)."""
    mlp = ["teacher=sfx4_mlp256", "student=sfx4_mlp16", "method=ked", "teacher.train=mlp_digits"]
    chim = ["train.chimeric_epochs=2", "train.chimeric_size=100"]
    rcs = _rcs(mlp, [*mlp, "method.mu=0.5"], [*mlp, "dataset.train_size=100"], [*mlp, "dataset.train_size=100", *chim],
               [*mlp, "dataset.train_size=100", *chim, "train.chimeric_epochs=3"],
               [*mlp, "dataset.train_size=100", "train.chimeric_epochs=2", "train.chimeric_size=200"])
    assert group_cohorts(rcs) == [[0, 1], [2], [3, 4], [5]]
