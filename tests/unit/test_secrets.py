"""Database passwords never reach what the tool writes: URLs are masked, and a password typed on the command line
moves into an environment variable before Hydra records the overrides."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from oracle_kd.config import RunConfig
from oracle_kd.errors import mask_credentials
from oracle_kd.store.study_storage import PASSWORD_ENV, password_out_of_overrides


@pytest.mark.parametrize("text, masked", [
    ("postgresql+psycopg://kd:s3cr%40t@db:5432/optuna", "postgresql+psycopg://kd:***@db:5432/optuna"),
    ("mysql+pymysql://root:pw@127.0.0.1/x?charset=utf8", "mysql+pymysql://root:***@127.0.0.1/x?charset=utf8"),
    ("error at postgresql://a:b@h/d, retry", "error at postgresql://a:***@h/d, retry"),
    ("postgresql://kd@db/optuna", "postgresql://kd@db/optuna"),  # no password: nothing to hide
    ("sqlite:////tmp/store/optuna.db", "sqlite:////tmp/store/optuna.db"),
    ("journal:/shared/study.log", "journal:/shared/study.log"),
    ("lr 0.1: not a url", "lr 0.1: not a url"),
])
def test_mask_credentials(text, masked):
    assert mask_credentials(text) == masked


def test_a_typed_password_moves_into_the_environment(monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    args = ["task=tune", "tune.storage=postgresql+psycopg://kd:s3cr%40t@db:5432/optuna", "seed=1"]
    out = password_out_of_overrides(args)
    assert out[0] == "task=tune" and out[2] == "seed=1"
    assert out[1] == "tune.storage=postgresql+psycopg://kd:${oc.env:" + PASSWORD_ENV + "}@db:5432/optuna"
    import os

    assert os.environ[PASSWORD_ENV] == "s3cr%40t"  # as typed (URL-encoded): the URL resolves to the same text
    value = OmegaConf.create({"url": out[1].split("=", 1)[1]}).url
    assert value == args[1].split("=", 1)[1]


@pytest.mark.parametrize("arg", ["tune.storage=postgresql://kd@db/optuna", "tune.storage=sqlite:////tmp/o.db",
                                 "tune.journal=/shared/j.log", "store=/data/runs",
                                 "tune.storage=postgresql://kd:${oc.env:MY_PW}@db/optuna"])
def test_arguments_without_a_typed_password_are_kept(arg, monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    assert password_out_of_overrides([arg]) == [arg]
    import os

    assert PASSWORD_ENV not in os.environ


def test_a_run_config_records_no_password():
    from oracle_kd.cli import compose

    # not task=tune: that opens the storage when the config is checked, and there is no server `db` here
    rc: RunConfig = compose(["task=tables", "tune.storage=postgresql://kd:hunter2@db/optuna"])
    assert rc.tune.storage.endswith("kd:hunter2@db/optuna")  # what the storage connects with
    assert rc.as_dict()["tune"]["storage"] == "postgresql://kd:***@db/optuna"  # what config.json records
