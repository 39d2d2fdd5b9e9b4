"""Installed without the repository: a wheel built from this tree, installed into a fresh venv, runs `oracle-kd`
from an empty directory with its shipped configs, every sweep preset and the paper's numbers.

The fresh venv reaches torch & co. through a `.pth` file naming the site-packages of the interpreter that runs the
suite (a virtualenv's or the system's: a fresh torch download is minutes and needs the network). A `.pth` line
only puts that folder on sys.path; the `.pth` files inside it (this checkout's editable install among them) are
not run, so `oracle_kd` can only come from the wheel, which the test checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Every preset in sweeps/, planned with overrides that keep it small while every file it reads (each arm, pair,
# method and dataset of its grid) still composes in one of its jobs, and the number of jobs it plans.
PRESETS = {"quick": ([], 7), "demo": (["seed=0"], 10), "teachers": (["dataset=cifar10"], 4),
           "table4": (["dataset=cifar100", "teacher=resnet20"], 6), "fig5_pairs": (["method=oracle_paper"], 16),
           "gamma_grid": (["teacher=resnet56"], 6), "table5": (["method=kd"], 4),
           "crd_benchmark": (["pair=res32x4_shuv2"], 20), "lskd": (["pair=res32x4_shuv2"], 8), "ked": (["seed=0"], 32),
           "ked_digits": (["seed=0"], 20)}

PLAN_ALL = """
import contextlib, io, json, sys
import oracle_kd.paths as p
from oracle_kd.cli import _with_presets, help_text, main
counts = {}
for preset, extra in json.loads(sys.argv[1]).items():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(_with_presets(["-m", "--config-dir", "sweeps", "--config-name", preset, "task=plan",
                                   "store=runs", *extra]))
    lines = [line for line in out.getvalue().splitlines() if line.startswith("plan: ")]
    counts[preset] = [code, len(lines), sum(" new " in line for line in lines)]
where = [p.CHECKOUT, str(p.CONF_DIR), (p.PAPER_DIR / "table4.csv").is_file()]
print(json.dumps({"counts": counts, "where": where, "help": help_text()}))
"""


def test_every_preset_is_listed_here():
    assert set(PRESETS) == {p.stem for p in (REPO / "sweeps").glob("*.yaml")}


def test_the_wheel_lists_every_package_of_the_source():
    text = (REPO / "pyproject.toml").read_text()
    packages = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "oracle_kd").rglob("__init__.py")}
    assert all(f'"{name}"' in text for name in packages), sorted(n for n in packages if f'"{n}"' not in text)


def test_a_wheel_in_a_fresh_venv_runs_oracle_kd_from_any_directory(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True)
    (wheel,) = wheels.glob("oracle_kd-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "suite_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)

    # the console script, from an empty directory: a shipped preset (its arms, sweeps/arm/, ship too)
    preset = run(str(env_dir / "bin" / "oracle-kd"), "-m", "--config-dir", "sweeps", "--config-name", "demo",
                 "task=plan", "store=runs", "seed=0")
    assert preset.returncode == 0, preset.stderr
    assert preset.stdout.count("plan: new") == 10 and "digits oracle resnet20->resnet8" in preset.stdout

    # every shipped preset composes and validates each of its jobs, as `oracle-kd -m --config-dir sweeps ...` reads
    # it from the wheel (one process for all of them: the plans, not the interpreter's start-up, are under test)
    planned = run(str(py), "-c", PLAN_ALL, json.dumps({name: extra for name, (extra, _) in PRESETS.items()}))
    assert planned.returncode == 0, planned.stderr[-3000:]
    report = json.loads(planned.stdout.splitlines()[-1])
    checkout, conf_dir, paper = report["where"]
    assert not checkout and conf_dir.startswith(str(env_dir)) and paper  # the wheel's copies, the paper's numbers too
    assert report["counts"] == {name: [0, jobs, jobs] for name, (_, jobs) in PRESETS.items()}  # exit 0, all new
    assert "train     crd, ked_paper, mlp_digits, paper, paper_teacher, quick" in report["help"]
    assert not (elsewhere / "runs" / "digits").exists()  # plans train nothing
