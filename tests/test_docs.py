"""The README and docs/ a user acts on: links that resolve, defaults that are MLproject's, a short README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
ENTRY_POINTS = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]

README_MAX_LINES = 260
FIRST_SCREEN = 40
PARAMETERS_HEADING = "## Parameters of each entry point"
BUDGETED_MAIN = re.compile(r"mlflow run \. --env-manager local -e main -P dataset=(<[^>]+>|\S+) -P budget=\S+")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
OPTIONAL_PARAMETER = re.compile(r"\[-P (\w+)=([^\]]*)\]")
ANY_PARAMETER = re.compile(r"-P (\w+)=")


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks (a link inside one is code, not a link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings in ``markdown`` (lower case, punctuation dropped, spaces to -)."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(markdown), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file (or heading, for a link into Markdown) does not exist."""
    broken = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z][a-z+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path) if path else page
        if not file.is_file():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
            broken.append(target)
    return broken


def entry_point_of(line: str) -> str:
    """The entry point an `mlflow run` line runs: its ``-e``, else MLproject's default, ``main``."""
    found = re.search(r"-e (\w+)", line)
    return found.group(1) if found else "main"


def shown_defaults(text: str) -> list[tuple[str, str, str]]:
    """(entry point, parameter, default) for every ``[-P name=default|other...]`` of an `mlflow run` line."""
    shown = []
    for line in text.splitlines():
        if "mlflow run" in line:
            entry = entry_point_of(line)
            shown += [(entry, name, value.split("|")[0]) for name, value in OPTIONAL_PARAMETER.findall(line)]
    return shown


def parameter_lines(text: str) -> list[str]:
    """The `mlflow run` lines of the README's parameter list (the code block under its heading)."""
    section = text.split(PARAMETERS_HEADING, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```\n(.*?)^```", section, flags=re.M | re.S)
    assert block, f"no code block under {PARAMETERS_HEADING!r}"
    return [line for line in block.group(1).splitlines() if line.startswith("mlflow run")]


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    assert broken_links(page) == []


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## The `main` step — in short\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#the-main-step--in-short) [web](https://example.org/x.md)\n"
        "[gone](missing.md) [no heading](other.md#nowhere)\n```\n[code](not-a-link.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md", "other.md#nowhere"]


def test_every_default_the_readme_shows_is_mlprojects():
    shown = shown_defaults(README.read_text())
    assert len(shown) > 50, "the README's parameter list was not found"
    wrong = [
        f"-e {entry} [-P {name}={value}]: MLproject's default is {_mlproject_default(entry, name)!r}"
        for entry, name, value in shown
        if _mlproject_default(entry, name) != value
    ]
    assert wrong == []


def test_the_readme_lists_every_entry_point_with_all_its_parameters():
    lines = parameter_lines(README.read_text())
    listed = {entry_point_of(line): set(ANY_PARAMETER.findall(line)) for line in lines}
    assert listed == {entry: set(_params(entry)) for entry in ENTRY_POINTS}


def test_a_default_that_differs_from_mlproject_is_found():
    line = "mlflow run . --env-manager local -e search -P dataset=x [-P space=auto] [-P seed=42] [-P trials=auto|10]"
    shown = shown_defaults(line)
    assert shown == [("search", "space", "auto"), ("search", "seed", "42"), ("search", "trials", "auto")]
    assert [name for entry, name, value in shown if _mlproject_default(entry, name) != value] == ["space"]


def test_the_readme_is_short_and_its_first_screen_has_the_budgeted_main():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    assert BUDGETED_MAIN.search("\n".join(lines[:FIRST_SCREEN]))


def test_the_readmes_first_screen_has_the_test_command_ci_runs():
    ci_command = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_command in README.read_text().splitlines()[:FIRST_SCREEN]


def _params(entry: str) -> dict:
    return ENTRY_POINTS.get(entry, {}).get("parameters", {})


def _mlproject_default(entry: str, name: str) -> str | None:
    """MLproject's default of ``name`` as the README writes it (None when it has none)."""
    spec = _params(entry).get(name)
    return None if spec is None or "default" not in spec else str(spec["default"])
