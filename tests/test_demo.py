"""`asynchy demo`: the first contact works end to end on a fresh folder and can be run again."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from test_sync import tree_digest


def test_demo_walks_and_syncs_a_made_up_facility(cli: Any, tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    result = cli("demo", "--dir", str(folder))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "walk complete: 6 EPNs walked, 66 files" in result.stdout
    assert "sync finished: 6 EPNs complete, 0 failed" in result.stdout
    assert tree_digest(folder / "vault") == tree_digest(folder / "facility")
    con = sqlite3.connect(folder / "demo.db")
    assert con.execute("SELECT count(*), min(status), max(status) FROM epns").fetchone() == (
        6,
        "complete",
        "complete",
    )
    # The config it writes works for the other commands.
    again = cli("--config", str(folder / "as.yaml"), "sync", "--json")
    assert again.exit_code == 0 and '"selected": 0' in again.stdout
    # Running it again is harmless.
    assert cli("demo", "--dir", str(folder)).exit_code == 0


def test_demo_refuses_a_folder_with_other_files(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    result = cli("demo", "--dir", str(tmp_path))
    assert result.exit_code == 2
    assert "already holds other files (thesis.tex)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
