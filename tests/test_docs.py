"""The README's commands are the contract: `.ci/run` runs exactly its test command, in a fresh virtualenv."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The shell commands of the README's "The two commands" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_the_readme_has_two_commands_install_and_main_job_then_install_and_tests():
    main_job, tests = readme_commands()
    assert main_job.startswith("pip install -e . && python run.py -m")
    assert tests.startswith('pip install -e ".[test]" && ruff check && python -m pytest')


def test_ci_runs_the_readmes_test_command_verbatim_in_a_fresh_virtualenv():
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    _, tests = readme_commands()
    assert tests in script
    at = script.index(tests)
    before = "\n".join(script[:at])
    assert "python3 -m venv" in before and "/bin/activate" in before  # the command runs inside the new venv
