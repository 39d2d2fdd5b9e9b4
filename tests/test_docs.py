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


def architecture_names() -> set[str]:
    """Every module path ARCHITECTURE.md names: `a/b.py` and `a/{b,c}.py` spans, and the basenames a package's
    bullet (``- `pkg/`: ... `b.py` ...``) lists, as `pkg/b.py`."""
    text = re.sub(r"```.*?```", "", (ROOT / "ARCHITECTURE.md").read_text(), flags=re.S)

    def expand(span: str) -> list[str]:
        brace = re.search(r"\{([^{}]*)\}", span)
        if not brace:
            return [span]
        return [x for alt in brace.group(1).split(",") for x in expand(span[:brace.start()] + alt + span[brace.end():])]

    names = {name for span in re.findall(r"`([^`\n]+)`", text) for name in expand(span.strip())}
    for package, bullet in re.findall(r"^- `([\w/]+/)`:(.*?)(?=^- |^#|\Z)", text, re.M | re.S):
        names |= {package + name for span in re.findall(r"`([^`\n]+)`", bullet) for name in expand(span.strip())}
    return names


def test_architecture_names_every_module_of_the_package():
    modules = sorted(str(p.relative_to(ROOT / "oracle_kd")) for p in (ROOT / "oracle_kd").rglob("*.py")
                     if p.name != "__init__.py")
    assert len(modules) > 50
    named = architecture_names()
    assert [m for m in modules if m not in named] == []
