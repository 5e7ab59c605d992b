"""The documentation stays true: CLI reference, config keys, schema columns, the README's test command.

Regenerate docs/cli.md with:  python tests/test_docs.py
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


def test_every_config_key_is_documented() -> None:
    from asynchy.config import KEYS

    text = (ROOT / "docs" / "configuration.md").read_text()
    for name, spec in KEYS.items():
        assert f"| `{name}` | `{spec.env}` |" in text, (
            f"config key {name} missing from docs/configuration.md"
        )


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


if __name__ == "__main__":
    CLI_MD.write_text(render_cli_reference())
    print(f"wrote {CLI_MD}", file=sys.stderr)


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
