"""The README's commands are the contract: `.ci/run` runs exactly its test command, in a fresh virtualenv. The README
stays a short guide; the rest lives in docs/, and every relative link between these pages resolves."""

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


README_MAX_LINES = 300  # a guide someone reads after cloning; measurements and reference tables live in docs/
LINKED_PAGES = ["README.md", "ARCHITECTURE.md", "results/README.md", "sweeps/README.md"]


def doc_pages() -> list[Path]:
    """The pages whose relative links must resolve: the README, ARCHITECTURE.md, the results and sweeps READMEs,
    and every page of docs/."""
    return [ROOT / name for name in LINKED_PAGES] + sorted((ROOT / "docs").glob("*.md"))


def without_code(text: str) -> str:
    """Markdown text with fenced code blocks and inline code spans blanked out (a `[x](y)` there is not a link,
    a `# comment` there is not a heading)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "``", text)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text without Markdown (link targets, code and emphasis marks),
    lowercased, every character that is not a letter, digit, space, '-' or '_' dropped, spaces turned to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page; a repeated heading gets GitHub's -1, -2, ... suffixes."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#* *$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M),
                              re.M):
        slug = github_slug(heading)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def relative_links(page: Path) -> list[str]:
    """The targets of a page's Markdown links that point into the repository (no scheme, no mailto)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", without_code(page.read_text()))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_github_slug_follows_githubs_rules():
    assert github_slug("Sweeps as cohorts (`hydra/launcher=cohort`)") == "sweeps-as-cohorts-hydralaunchercohort"
    assert github_slug("Why AT's, SAD's and OFD's weights are rescaled") == "why-ats-sads-and-ofds-weights-are-rescaled"
    assert github_slug("One SLURM job per cohort (`cohort_slurm`)") == "one-slurm-job-per-cohort-cohort_slurm"
    assert github_slug("γ tuning (`task=tune`)") == "γ-tuning-tasktune"
    assert github_slug("See [the index](docs/README.md)") == "see-the-index"


def test_the_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines; move reference material to docs/"


def test_every_relative_link_resolves_to_a_file_and_heading():
    broken = []
    for page in doc_pages():
        for target in relative_links(page):
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.is_file():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading in {file.relative_to(ROOT)})")
    assert broken == []


def test_the_link_checker_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A title\n## Twice\n## Twice\n[a](b.md#c) `[not](x.md)` [web](https://x.org)\n"
                    "```bash\n# not a heading\n[no](y.md)\n```\n")
    assert relative_links(page) == ["b.md#c"]
    assert anchors(page) == {"a-title", "twice", "twice-1"}


def test_every_docs_page_is_linked_from_the_readme_or_the_docs_index():
    linked = set()
    for page in (ROOT / "README.md", ROOT / "docs" / "README.md"):
        linked |= {(page.parent / t.partition("#")[0]).resolve() for t in relative_links(page) if t.partition("#")[0]}
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert len(pages) > 5
    assert [str(p.relative_to(ROOT)) for p in pages if p.resolve() not in linked] == []


def test_the_readme_methods_table_is_the_registry():
    """One row per registered method, in the registry's table order, each naming the paper year and the reference
    repository its registration gives (the registry is the one home of those facts; the README shows them)."""
    from oracle_kd.methods import method_info, methods_in_table_order

    section = (ROOT / "README.md").read_text().split("\n## Methods\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([^`]+)` \|(.*)$", section, re.M))
    assert list(rows) == methods_in_table_order()
    for name, row in rows.items():
        info = method_info(name)
        repo = info.code.split(":")[0].split("/")[-1]
        assert str(info.year or "—") in row and repo in row, f"README row of {name} disagrees with its registration"
