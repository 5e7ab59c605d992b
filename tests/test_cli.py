"""Small CLI behaviours: version, help, python -m."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from asynchy import __version__


def test_version(cli: Any) -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout == f"asynchy {__version__}\n"


def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "asynchy", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout == f"asynchy {__version__}\n"


def test_help_needs_no_config_and_no_database(cli: Any, tmp_path: Any) -> None:
    """--help works anywhere, even with a broken config file named in the environment."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("::: not yaml [")
    result = cli("walk", "--help", env={"ASYNCHY_CONFIG": str(bad)})
    assert result.exit_code == 0
    assert "--src-prefix" in result.stdout
    assert not list(tmp_path.glob("*.db"))


def test_unknown_command_is_a_usage_error(cli: Any) -> None:
    result = cli("wlak")
    assert result.exit_code == 2
    assert "No such command 'wlak'" in result.stderr
