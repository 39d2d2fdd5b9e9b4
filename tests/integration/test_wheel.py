"""Installed without the repository: a wheel built from this tree, installed into a fresh venv, runs `oracle-kd`
from an empty directory with its shipped configs, sweep presets and the paper's numbers."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_wheel_in_a_fresh_venv_runs_oracle_kd_from_any_directory(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True)
    (wheel,) = wheels.glob("oracle_kd-*.whl")
    # the venv sees this interpreter's site-packages for torch & co. (a fresh torch download is minutes and
    # needs the network), but oracle_kd itself comes from the wheel: checked below
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def oracle_kd(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(env_dir / "bin" / "oracle-kd"), *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=300)

    probe = "import oracle_kd.paths as p; print(p.CHECKOUT, p.CONF_DIR, (p.PAPER_DIR / 'table4.csv').is_file())"
    where = subprocess.run([str(py), "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                           check=True).stdout
    assert where.startswith("False ") and str(env_dir) in where  # the wheel's copy, not this checkout
    assert where.split()[-1] == "True"  # the paper's numbers travel too
    plan = oracle_kd("task=plan", "store=runs")
    assert plan.returncode == 0, plan.stderr
    assert "plan: new" in plan.stdout and "digits oracle resnet56->resnet20" in plan.stdout
    preset = oracle_kd("-m", "--config-dir", "sweeps", "--config-name", "demo", "task=plan", "store=runs", "seed=0")
    assert preset.returncode == 0, preset.stderr
    assert preset.stdout.count("plan: ") == 10  # the main job's arms (sweeps/arm/) ship too
    help_text = oracle_kd("--help")
    assert "train     crd, ked_paper, mlp_digits, paper, paper_teacher, quick" in help_text.stdout
    assert not (elsewhere / "runs" / "digits").exists()  # plans train nothing
