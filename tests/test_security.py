"""Nobody gets in through the copy (docs/security.md): a group member who can write into the
destination, a copy that would land in another EPN's folder, a hostile server's names, ssh
options the service account's own ssh config would add.  Real sshd, real rsync."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXED_MTIME, rows, write_file
from sshd import Sshd
from test_sync import env as env
from test_sync import sync, tree_digest, walk


def _conf(env: dict[str, Any], write_config: Any, sshd: Sshd, **values: Any) -> dict[str, Any]:
    conf = write_config(
        sshd.settings(
            src_prefix=str(env["src"]), db=str(env["db"]), dest=str(env["dest"]), **values
        ),
        name="security.yaml",
    )
    return {**env, "conf": conf}


# ------------------------------------------------------------------ planted symlinks (3)
@pytest.mark.parametrize("planted", ["epn", "project", "temp"])
def test_a_symlink_planted_under_dest_is_never_followed(
    cli: Any, env: dict[str, Any], write_config: Any, sshd: Sshd, tmp_path: Path, planted: str
) -> None:
    """The security review planted `dest/40001a -> /elsewhere/t1` and `dest/projC ->
    /elsewhere/t2`: sync marked both complete with the data in /elsewhere.  Now every folder
    asynchy creates or enters under dest is opened without following symlinks: a setup error
    naming the path, nothing charged, nothing written through it."""
    site = _conf(env, write_config, sshd, destinations={"40002": "projC"}, copy_unmapped=True)
    for epn in ("40001a", "40002b"):
        write_file(env["src"] / epn / "frames" / "f.cbf", b"data " + epn.encode())
    walk(cli, site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link, epn = {
        "epn": (env["dest"] / "40001a", "40001a"),
        "project": (env["dest"] / "projC", "40002b"),
        "temp": (env["dest"] / "projC" / ".asynchy-tmp", "40002b"),
    }[planted]
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(elsewhere, link)
    result = sync(cli, site, "--epn", epn)
    assert result.exit_code == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"Error: {link} is a symlink: ")
    assert result.stderr.count("\n") == 1
    assert list(elsewhere.iterdir()) == []  # nothing written through it
    assert rows(env["db"], "SELECT status, failures FROM epns WHERE epn = ?", epn) == [
        ("pending", 0)
    ]
    os.unlink(link)
    done = sync(cli, site, "--epn", epn)
    assert done.exit_code == 0, done.stdout + done.stderr
    copy = env["dest"] / ("40001a" if epn == "40001a" else "projC/40002b")
    assert tree_digest(copy) == tree_digest(env["src"] / epn)


def test_verify_does_not_follow_a_symlink_planted_over_a_complete_copy(
    cli: Any, env: dict[str, Any], tmp_path: Path
) -> None:
    write_file(env["src"] / "40005a" / "f.cbf", b"data", FIXED_MTIME)
    walk(cli, env)
    assert sync(cli, env).exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    (env["dest"] / "40005a").rename(elsewhere)  # the same files, now somewhere else
    os.symlink(elsewhere, env["dest"] / "40005a")
    result = cli("--config", str(env["conf"]), "verify", "--json")
    assert result.exit_code == 3
    differ = json.loads(result.stdout)["differ"]
    assert differ[0]["epn"] == "40005a" and "is a symlink" in differ[0]["reason"]


# ------------------------------------------------------------------ overlapping destinations (4)
def test_a_copy_that_would_land_in_another_epn_s_folder_is_refused(
    cli: Any, env: dict[str, Any], write_config: Any, sshd: Sshd
) -> None:
    """With copy_unmapped, a server folder `projD` (holding `12400a/good.txt`) was copied into
    dest/projD, over the complete EPN 12400a mapped there; only verify noticed.  Folders must be
    disjoint: both are refused at plan time with one line naming the other, until one is
    skipped."""
    site = _conf(env, write_config, sshd, destinations={"12400": "projD"}, copy_unmapped=True)
    write_file(env["src"] / "12400a" / "good.txt", b"the real data")
    write_file(env["src"] / "projD" / "12400a" / "good.txt", b"an impostor")
    result = cli("--config", str(site["conf"]), "walk")
    assert result.exit_code == 0
    first = sync(cli, site, "--json")
    assert first.exit_code == 3, first.stdout
    refused = {r["epn"]: r["reason"] for r in json.loads(first.stdout)["refused"]}
    assert set(refused) == {"12400a", "projD"}
    assert "holds EPN 12400a's folder" in refused["projD"] or "project projD" in refused["projD"]
    assert "lies inside EPN projD's folder" in refused["12400a"]
    assert not (env["dest"] / "projD").exists()  # nothing copied
    assert rows(env["db"], "SELECT max(failures) FROM epns") == [(0,)]
    text = sync(cli, site).stdout
    assert "  refused: projD: its folder " in text and "asynchy skip one of them" in text
    assert (
        cli("--config", str(site["conf"]), "skip", "projD", "--reason", "not an EPN").exit_code == 0
    )
    second = sync(cli, site)
    assert second.exit_code == 0, second.stdout
    assert (env["dest"] / "projD" / "12400a" / "good.txt").read_bytes() == b"the real data"
