"""The documentation stays true: CLI reference, config keys, schema columns, the README's test command.

Regenerate docs/cli.md, the status sample in docs/reporting.md and the table of keys in
docs/configuration.md with:  python tests/test_docs.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
CLI_MD = ROOT / "docs" / "cli.md"


def all_commands() -> list[tuple[str, click.Command]]:
    from asynchy.cli import cli

    found: list[tuple[str, click.Command]] = [("", cli)]

    def visit(prefix: str, group: click.Group) -> None:
        for name in sorted(group.commands):
            command = group.commands[name]
            path = f"{prefix} {name}".strip()
            found.append((path, command))
            if isinstance(command, click.Group):
                visit(path, command)

    visit("", cli)
    return found


def render_cli_reference() -> str:
    from asynchy.cli import cli

    parts = [
        "# Command-line reference\n",
        "Generated from the commands' `--help` by `python tests/test_docs.py`; a test keeps it current.\n",
    ]
    for path, _command in all_commands():
        args = [*path.split(), "--help"] if path else ["--help"]
        result = CliRunner().invoke(cli, args, env={"COLUMNS": "100"}, prog_name="asynchy")
        assert result.exit_code == 0, result.output
        parts.append(f"## `asynchy {path}`\n" if path else "## `asynchy`\n")
        parts.append("```\n" + result.output.rstrip() + "\n```\n")
    return "\n".join(parts)


def test_cli_reference_is_current() -> None:
    assert CLI_MD.read_text() == render_cli_reference(), (
        "docs/cli.md is stale: run `python tests/test_docs.py`"
    )


@pytest.mark.parametrize(
    ("path", "command"), all_commands(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_command_has_help_and_an_example(path: str, command: click.Command) -> None:
    assert command.help, f"`asynchy {path}` has no help"
    if not isinstance(command, click.Group) or not path:
        assert "Example:" in command.help, f"`asynchy {path}` help has no Example: block"


CONFIGURATION_MD = ROOT / "docs" / "configuration.md"


def render_config_table() -> str:
    """docs/configuration.md's table of keys, from config.KEYS (their one declaration)."""
    from asynchy.config import KEYS

    lines = ["| key | environment | option | default | meaning |", "|---|---|---|---|---|"]
    for name, spec in KEYS.items():
        cells = (f"`{name}`", f"`{spec.env}`", spec.option_doc, spec.default_doc, spec.doc)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _table_block(text: str) -> tuple[int, int]:
    start = text.index("<!-- keys:start -->\n") + len("<!-- keys:start -->\n")
    return start, text.index("<!-- keys:end -->", start)


def test_config_table_is_made_from_the_keys() -> None:
    text = CONFIGURATION_MD.read_text()
    start, end = _table_block(text)
    assert text[start:end] == render_config_table(), (
        "docs/configuration.md's table of keys is stale: run `python tests/test_docs.py`"
    )


def test_every_key_has_its_documentation_and_a_settings_field() -> None:
    """Each key is declared once (config.KEYS): its doc line, its default's words, and the
    Settings field that holds it, with nothing in Settings that is not a key or known metadata."""
    import dataclasses

    from asynchy.config import KEYS, Settings

    for name, spec in KEYS.items():
        assert spec.doc and spec.default_doc and spec.help, f"key {name} lacks documentation"
    meta = {"notes", "merc_missing", "config_path", "config_exists", "origin"}
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert fields - meta == set(KEYS)


def test_every_column_is_documented() -> None:
    from asynchy.models import SCHEMA_HEAD, metadata

    text = (ROOT / "docs" / "schema.md").read_text()
    assert f"Schema revision: **{SCHEMA_HEAD}**" in text
    for table in metadata.sorted_tables:
        section = text.split(f"## `{table.name}`", 1)
        assert len(section) == 2, f"table {table.name} missing from docs/schema.md"
        body = section[1].split("\n## ", 1)[0]
        for column in table.columns:
            assert re.search(rf"`{column.name}`", body), (
                f"{table.name}.{column.name} missing from docs/schema.md"
            )


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"(python -m pytest\b[^#\n]*)", readme)
    assert match, "README must give the test command"
    command = match.group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(command)}\s*$", ci, re.M), (
        "the CI must run exactly the README's test command"
    )


def test_failure_table_is_the_code() -> None:
    """docs/failures.md's class table and asynchy.failures.POLICY name the same classes and charges."""
    from asynchy.failures import POLICY

    text = (ROOT / "docs" / "failures.md").read_text()
    section = text.split("## The classes", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| `")]
    documented = {cells[0].strip().strip("`"): cells[1].strip() for cells in rows}
    assert set(documented) == set(POLICY)
    for name, policy in POLICY.items():
        assert documented[name] == ("yes" if policy.charged else "no"), name


# ------------------------------------------------------------------ samples made by running the code
REPORTING_MD = ROOT / "docs" / "reporting.md"
SAMPLE_CLOCK_TEXT = "2026-11-25T18:06:00+00:00"
SAMPLE_DB = "/srv/asynchy/files.db"


def render_status_sample(folder: Path) -> str:
    """`asynchy status` of the reporting fixture at a fixed clock, in UTC, 100 columns wide."""
    import os
    import time
    from datetime import datetime

    from reporting_fixture import build

    from asynchy import reports, texts

    clock = datetime.fromisoformat(SAMPLE_CLOCK_TEXT)
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        path = folder / "files.db"
        db = build(path, now=clock)
        try:
            data = reports.status(db, now=clock)
        finally:
            db.close()
        return texts.status(data, 100).replace(str(path.resolve()), SAMPLE_DB)
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()


def _sample_block(text: str, name: str) -> tuple[int, int]:
    start = text.index(f"<!-- {name}:start -->\n```\n") + len(f"<!-- {name}:start -->\n```\n")
    return start, text.index(f"\n```\n<!-- {name}:end -->", start)


def test_reporting_status_sample_is_real_output(tmp_path: Path) -> None:
    """docs/reporting.md's `asynchy status` sample is what the command prints for the fixture."""
    text = REPORTING_MD.read_text()
    start, end = _sample_block(text, "status-sample")
    assert text[start:end] == render_status_sample(tmp_path), (
        "docs/reporting.md's status sample is stale: run `python tests/test_docs.py`"
    )


if __name__ == "__main__":
    import tempfile

    CLI_MD.write_text(render_cli_reference())
    print(f"wrote {CLI_MD}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch:
        sample = render_status_sample(Path(scratch))
    doc = REPORTING_MD.read_text()
    a, b = _sample_block(doc, "status-sample")
    REPORTING_MD.write_text(doc[:a] + sample + doc[b:])
    print(f"wrote the status sample in {REPORTING_MD}", file=sys.stderr)
    doc = CONFIGURATION_MD.read_text()
    a, b = _table_block(doc)
    CONFIGURATION_MD.write_text(doc[:a] + render_config_table() + doc[b:])
    print(f"wrote the table of keys in {CONFIGURATION_MD}", file=sys.stderr)


MARKDOWN = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.name)
def test_code_fences_are_balanced(path: Path) -> None:
    """Every code fence opens and closes on a line of its own (one that did not stopped
    docs/operations.md from rendering after its metrics section)."""
    text = path.read_text(encoding="utf-8")
    fences = [ln for ln in text.splitlines() if ln.lstrip().startswith("```")]
    assert len(fences) % 2 == 0, f"{path.name}: an unclosed code fence"
    for n, line in enumerate(text.splitlines(), 1):
        if "```" in line and not line.lstrip().startswith("```"):
            raise AssertionError(f"{path.name}:{n}: a code fence in the middle of a line: {line}")
        if line.lstrip().startswith("```") and line.strip("`").strip().count(" ") > 0:
            raise AssertionError(f"{path.name}:{n}: text after a code fence: {line}")


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.name)
def test_links_stay_inside_the_repository_and_resolve(path: Path) -> None:
    """A relative link names a file of this repository that exists (failures.md linked a file
    outside it)."""
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        where = (path.parent / target.split("#", 1)[0]).resolve()
        assert where.is_relative_to(ROOT), f"{path.name}: {target} is outside the repository"
        assert where.exists(), f"{path.name}: {target} does not exist"
    for mention in re.findall(r"`(\.\./[^`]+)`", text):
        where = (path.parent / mention.split(" ")[0]).resolve()
        assert where.is_relative_to(ROOT), f"{path.name}: {mention} is outside the repository"


def test_configuration_counts_its_sources() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert "three places" not in text
