"""`asynchy sync` end to end: the real rsync over the real sshd, real SQLite, real signals."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXED_MTIME, rows, stderr_on_a_terminal, write_file
from sshd import Sshd
from trees import HOSTILE_NAMES, build_epns


def tree_digest(root: Path) -> dict[bytes, str]:
    """sha256 of every file (and target of every symlink) under root, by path relative to root."""
    out: dict[bytes, str] = {}
    base = bytes(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, base)
            if os.path.islink(path):
                out[rel] = "link:" + os.readlink(path).hex()
            else:
                with open(path, "rb") as fh:
                    out[rel] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ASYNCHY_")}


@pytest.fixture
def env(sshd: Sshd, served: Path, tmp_path: Path, write_config: Any) -> dict[str, Path]:
    """A config for the sshd fixture serving ``served``; dest and db in tmp_path."""
    dest = tmp_path / "vault"
    dest.mkdir()
    db = tmp_path / "files.db"
    conf = write_config(sshd.settings(src_prefix=str(served), db=str(db), dest=str(dest)))
    return {"conf": conf, "db": db, "dest": dest, "src": served, "tmp": tmp_path}


def walk(cli: Any, env: dict[str, Path], *args: str) -> None:
    result = cli("--config", str(env["conf"]), "walk", *args)
    assert result.exit_code == 0, result.stdout + result.stderr


def sync(cli: Any, env: dict[str, Path], *args: str) -> Any:
    return cli("--config", str(env["conf"]), "sync", *args)


def statuses(env: dict[str, Path]) -> dict[str, str]:
    return dict(rows(env["db"], "SELECT epn, status FROM epns"))


def spawn_sync(env: dict[str, Path], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "asynchy", "--config", str(env["conf"]), "sync", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def wait_until(predicate: Any, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_copies_are_byte_identical_and_recorded(cli: Any, env: dict[str, Path]) -> None:
    build_epns(env["src"], 4, 25, subdirs=3, size=3000)
    os.symlink("d0/f000000.dat", env["src"] / "20000a" / "link")
    os.utime(env["src"] / "20000a" / "link", (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    walk(cli, env)
    result = sync(cli, env)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout.startswith(
        "sync finished: 4 EPNs complete, 0 failed, 0 skipped, 0 cancelled, "
    )
    for epn in ("20000a", "20001b", "20002c", "20003d"):
        assert tree_digest(env["dest"] / epn) == tree_digest(env["src"] / epn)
    assert set(statuses(env).values()) == {"complete"}
    got = rows(
        env["db"],
        "SELECT epn, attempts, failures, bytes_transferred, dest_path, claim_owner, lease_until "
        "FROM epns ORDER BY epn",
    )
    assert got[0] == ("20000a", 1, 0, 75000, str(env["dest"] / "20000a"), None, None)
    transfers = rows(
        env["db"],
        "SELECT epn, attempt, exit_code, classification, outcome, files_transferred, "
        "bytes_transferred, worker_id IS NOT NULL, host, pid > 0, argv FROM transfers "
        "ORDER BY epn",
    )
    assert [t[:7] for t in transfers] == [
        (epn, 1, 0, "ok", "complete", 25, 75000) for epn in ("20000a", "20001b", "20002c", "20003d")
    ]
    argv = json.loads(transfers[0][10])
    assert argv[0] == "rsync" and "-e" in argv and "20000a" not in " ".join(argv)
    assert rows(env["db"], "SELECT status FROM workers") == [("finished",)]
    # The shared ssh connections are closed and their private folder is gone.
    from helpers import processes_matching

    assert not list(Path(tempfile.gettempdir()).glob(f"asynchy-ssh-{os.getpid()}-*"))
    assert not processes_matching(f"asynchy-ssh-{os.getpid()}-")
    # Nothing left to do: a second run selects nothing and succeeds.
    again = sync(cli, env, "--json")
    assert again.exit_code == 0
    assert json.loads(again.stdout)["selected"] == 0


def test_order_and_limit(cli: Any, env: dict[str, Path]) -> None:
    for n, epn in enumerate(["30000a", "30001a", "30002a", "30003a", "30004a"]):
        write_file(env["src"] / epn / "x", b"x", FIXED_MTIME + [3, 1, 4, 0, 2][n] * 100)
    walk(cli, env)
    result = sync(cli, env, "--limit", "2", "--order", "desc", "--json")
    assert result.exit_code == 0
    assert sorted(json.loads(result.stdout)["complete"]) == ["30000a", "30002a"]  # the two newest
    result = sync(cli, env, "--limit", "2", "--order", "ASC", "--json")
    assert sorted(json.loads(result.stdout)["complete"]) == [
        "30001a",
        "30003a",
    ]  # the two oldest left
    result = sync(cli, env, "--limit", "1", "--threads", "1", "--order", "Desc", "--json")
    assert json.loads(result.stdout)["complete"] == ["30004a"]
    assert sorted(p.name for p in env["dest"].iterdir()) == [
        "30000a",
        "30001a",
        "30002a",
        "30003a",
        "30004a",
    ]


def test_threads_and_processes_give_the_same_database(
    cli: Any, env: dict[str, Path], tmp_path: Path, write_config: Any, sshd: Sshd
) -> None:
    build_epns(env["src"], 5, 10, subdirs=2)

    def run(mode: list[str]) -> list[tuple[Any, ...]]:
        name = "processes" if mode else "threads"
        dest = tmp_path / name
        dest.mkdir()
        conf = write_config(
            sshd.settings(
                src_prefix=str(env["src"]), db=str(tmp_path / f"{name}.db"), dest=str(dest)
            ),
            name=f"{name}.yaml",
        )
        assert cli("--config", str(conf), "walk").exit_code == 0
        result = cli("--config", str(conf), "sync", "--threads", "3", *mode)
        assert result.exit_code == 0, result.stdout + result.stderr
        assert tree_digest(dest) == tree_digest(env["src"])
        return rows(
            tmp_path / f"{name}.db",
            "SELECT e.epn, e.status, e.attempts, e.failures, e.bytes_transferred, "
            "t.attempt, t.exit_code, t.classification, t.outcome, t.files_transferred, t.bytes_transferred "
            "FROM epns e JOIN transfers t ON t.epn = e.epn ORDER BY e.epn",
        )

    assert run([]) == run(["--parallel"])


def test_dry_run_changes_nothing(cli: Any, env: dict[str, Path]) -> None:
    build_epns(env["src"], 2, 3)
    walk(cli, env)
    before = (
        rows(env["db"], "SELECT * FROM epns ORDER BY epn"),
        rows(env["db"], "SELECT count(*) FROM workers"),
    )
    result = sync(cli, env, "--dry-run")
    assert result.exit_code == 0, result.stderr
    # 3 files each (the EPN folder itself is the destination folder: not an item)
    assert result.stdout.startswith("sync dry run: 2 EPNs checked, 6 items would be transferred")
    assert list(env["dest"].iterdir()) == []
    after = (
        rows(env["db"], "SELECT * FROM epns ORDER BY epn"),
        rows(env["db"], "SELECT count(*) FROM workers"),
    )
    assert after == before
    assert rows(env["db"], "SELECT count(*) FROM transfers") == [(0,)]


def test_destination_map_and_mapped_only(
    cli: Any, env: dict[str, Path], write_config: Any, sshd: Sshd
) -> None:
    """destinations: 12282 -> ny79 puts 12282a at dest/ny79/12282a (HPC ASSyncy's epn_cap_map)."""
    for epn in ("12282a", "12282b", "99999z"):
        write_file(env["src"] / epn / "f", b"f")
    elsewhere = env["tmp"] / "elsewhere"
    conf = write_config(
        sshd.settings(
            src_prefix=str(env["src"]),
            db=str(env["db"]),
            dest=str(env["dest"]),
            destinations={"12282": "ny79", "99999": str(elsewhere)},
        ),
        name="map.yaml",
    )
    env = {**env, "conf": conf}
    walk(cli, env)
    result = sync(cli, env, "--epn", "12282a", "--epn", "12282b")
    assert result.exit_code == 0, result.stderr
    assert (env["dest"] / "ny79" / "12282a" / "f").read_bytes() == b"f"
    assert (env["dest"] / "ny79" / "12282b" / "f").exists()
    assert rows(env["db"], "SELECT dest_path FROM epns WHERE epn = '12282a'") == [
        (str(env["dest"] / "ny79" / "12282a"),)
    ]
    result = sync(cli, env)
    assert (elsewhere / "99999z" / "f").exists()  # an absolute mapping


@pytest.mark.parametrize("args", [["--mapped-only"], []])
def test_with_a_map_unmapped_epns_are_not_copied(
    cli: Any, env: dict[str, Path], args: list[str]
) -> None:
    """As mxsync: a destination map means only mapped EPNs are copied (the alert names the rest)."""
    for epn in ("12282a", "55555a"):
        write_file(env["src"] / epn / "f", b"f")
    walk(cli, env)
    result = sync(cli, env, *args, "--destinations", "12282=ny79")
    assert result.exit_code == 0, result.stderr
    assert (
        "not taken: 1 EPN unmapped (add destinations, or copy_unmapped / --include-unmapped)"
        in result.stdout
    )
    assert statuses(env) == {"12282a": "complete", "55555a": "pending"}
    assert (env["dest"] / "ny79" / "12282a").is_dir()
    assert not (env["dest"] / "55555a").exists()
    more = sync(cli, env, "--destinations", "12282=ny79", "--include-unmapped")
    assert more.exit_code == 0
    assert (env["dest"] / "55555a" / "f").exists()  # unmapped: dest/EPN


def test_status_counts_unmapped_epns(
    cli: Any, env: dict[str, Path], write_config: Any, sshd: Sshd
) -> None:
    for epn in ("12282a", "55555a", "55556a"):
        write_file(env["src"] / epn / "f", b"ff")
    conf = write_config(
        sshd.settings(
            src_prefix=str(env["src"]),
            db=str(env["db"]),
            dest=str(env["dest"]),
            destinations={"12282": "ny79"},
        ),
        name="map.yaml",
    )
    assert cli("--config", str(conf), "walk").exit_code == 0
    data = json.loads(cli("--config", str(conf), "status", "--json").stdout)
    assert data["unmapped"] == {"epns": 2, "bytes": 4}
    text = cli("--config", str(conf), "status").stdout
    assert "unmapped:   2 EPNs (4 B) not copied: no destinations entry" in text


def test_hostile_names_copied_exactly_and_nothing_runs(cli: Any, env: dict[str, Path]) -> None:
    """EPN and file names with shell and glob characters, newlines, non-UTF-8: exact copies inside dest."""
    epns = [b"$(touch PWNED-epn) x", b"-rf", b"*", b"[ab]\n\xff"]
    for epn in epns:
        for i, name in enumerate(HOSTILE_NAMES):
            write_file(Path(os.fsdecode(bytes(env["src"]) + b"/" + epn + b"/" + name)), b"h" * i)
    # A decoy that a glob or a shell would pick up: it must not be copied.
    write_file(env["src"] / "ab" / "decoy", b"no")
    walk(cli, env)
    result = sync(
        cli,
        env,
        "--epn",
        "$(touch PWNED-epn) x",
        "--epn",
        "-rf",
        "--epn",
        "*",
        "--epn",
        "[ab]\n\\xff",
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    for epn in epns:
        src = Path(os.fsdecode(bytes(env["src"]) + b"/" + epn))
        dst = Path(os.fsdecode(bytes(env["dest"]) + b"/" + epn))
        assert tree_digest(dst) == tree_digest(src)
    assert sorted(os.listdir(bytes(env["dest"]))) == sorted(epns)
    assert not list(Path("/").glob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))
    assert not list(env["tmp"].glob("PWNED*")) and not list(env["src"].glob("PWNED*"))


# ------------------------------------------------------------------ failures and their classes
def untouched(env: dict[str, Path]) -> bool:
    """No EPN charged or claimed, no attempt recorded, no worker signed in (docs/failures.md: setup)."""
    return (
        rows(env["db"], "SELECT count(*) FROM transfers") == [(0,)]
        and rows(env["db"], "SELECT count(*) FROM workers") == [(0,)]
        and set(statuses(env).values()) <= {"pending"}
        and rows(env["db"], "SELECT max(failures), max(attempts) FROM epns") == [(0, 0)]
    )


def test_unknown_host_key_is_a_setup_error_before_any_claim(
    cli: Any, env: dict[str, Path], write_config: Any, sshd: Sshd
) -> None:
    """failures.md, setup: the walk's own one line, exit 2, nothing charged, nothing written."""
    build_epns(env["src"], 1, 2)
    walk(cli, env)  # the walk used the right known_hosts
    kh = env["tmp"] / "empty_known_hosts"
    kh.write_text("")
    conf = write_config(
        sshd.settings(
            src_prefix=str(env["src"]),
            db=str(env["db"]),
            dest=str(env["dest"]),
            known_hosts=str(kh),
        ),
        name="nokey.yaml",
    )
    started = time.monotonic()
    result = cli("--config", str(conf), "sync")
    assert time.monotonic() - started < 30
    assert result.exit_code == 2
    walked = cli("--config", str(conf), "walk", "--refresh")
    assert walked.exit_code == 2
    assert result.stderr == walked.stderr  # the same line as walk's
    assert result.stderr.startswith(f"Error: host key of {sshd.known_hosts_name} is not in {kh}")
    assert len(result.stderr.splitlines()) == 1
    assert kh.read_text() == ""
    assert untouched(env)
    assert list(env["dest"].iterdir()) == []


@pytest.mark.parametrize("rsync_says", ["255", "12"])
def test_changed_host_key_exits_1_with_the_walks_line(
    cli: Any, env: dict[str, Path], write_config: Any, sshd: Sshd, rsync_says: str
) -> None:
    """rsync passes on ssh's 255, or says 12 when it reads the closed pipe before it reaps ssh
    (about one run in fifteen here): a wrapper makes that second case certain."""
    from sshd import keygen

    build_epns(env["src"], 1, 2)
    walk(cli, env)
    other = env["tmp"] / "other_key"
    keygen(other)
    kind, b64 = other.with_suffix(".pub").read_text().split()[:2]
    kh = env["tmp"] / "wrong_known_hosts"
    kh.write_text(f"{sshd.known_hosts_name} {kind} {b64}\n")
    rsync = "rsync"
    if rsync_says == "12":
        rsync = str(env["tmp"] / "rsync-says-12")
        Path(rsync).write_text(
            '#!/bin/sh\nrsync "$@"\nrc=$?\n[ $rc -eq 255 ] && exit 12\nexit $rc\n'
        )
        Path(rsync).chmod(0o755)
    conf = write_config(
        sshd.settings(
            src_prefix=str(env["src"]),
            db=str(env["db"]),
            dest=str(env["dest"]),
            known_hosts=str(kh),
            rsync=rsync,
        ),
        name="changed.yaml",
    )
    result = cli("--config", str(conf), "sync")
    assert result.exit_code == 1
    assert f"Error: host key of {sshd.known_hosts_name} has CHANGED" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert untouched(env)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bwlimit", "fast"], "Error: --bwlimit 'fast' is not a rate"),
        (["--bwlimit", "5b"], "Error: --bwlimit '5b' is below rsync's smallest rate"),
    ],
)
def test_bad_option_values_are_setup_errors(
    cli: Any, env: dict[str, Path], args: list[str], message: str
) -> None:
    build_epns(env["src"], 2, 1)
    walk(cli, env)
    result = sync(cli, env, *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1
    assert untouched(env)


def test_user_that_would_be_an_ssh_option_is_refused(
    cli: Any, env: dict[str, Path], write_config: Any, sshd: Sshd
) -> None:
    build_epns(env["src"], 1, 1)
    walk(cli, env)
    conf = write_config(
        sshd.settings(
            src_prefix=str(env["src"]),
            db=str(env["db"]),
            dest=str(env["dest"]),
            user="-oProxyCommand=touch /tmp/asynchy-pwned",
        ),
        name="user.yaml",
    )
    result = cli("--config", str(conf), "sync")
    assert result.exit_code == 2
    assert (
        "Error: user '-oProxyCommand=touch /tmp/asynchy-pwned' cannot be given to ssh"
        in result.stderr
    )
    assert not Path("/tmp/asynchy-pwned").exists()
    assert untouched(env)


def test_server_refusing_connections_exits_1_and_charges_nothing(
    cli: Any, env: dict[str, Path], write_config: Any, sshd: Sshd
) -> None:
    """failures.md, link (port 1): one line naming the server, exit 1, no transfer rows."""
    build_epns(env["src"], 3, 1)
    walk(cli, env)
    conf = write_config(
        sshd.settings(src_prefix=str(env["src"]), db=str(env["db"]), dest=str(env["dest"]), port=1),
        name="port1.yaml",
    )
    result = cli("--config", str(conf), "sync", "--retry", "3")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: cannot reach [127.0.0.1]:1: Connection refused; nothing was charged to any EPN: "
        "run sync again once the server answers\n"
    )
    walked = cli("--config", str(conf), "walk")  # docs/failures.md: one wording for walk and sync
    assert walked.exit_code == 1
    assert walked.stderr == "Error: cannot reach [127.0.0.1]:1: Connection refused\n"
    assert untouched(env)
    assert sync(cli, env).exit_code == 0  # the next run simply continues
    assert set(statuses(env).values()) == {"complete"}


def test_destination_not_writable(cli: Any, env: dict[str, Path]) -> None:
    """failures.md, setup: a read-only (immutable) dest is found before any claim."""
    from helpers import read_only_dir

    build_epns(env["src"], 2, 2)
    walk(cli, env)
    with read_only_dir(env["dest"]):
        result = sync(cli, env)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: dest {env['dest']} is not writable (")
    assert len(result.stderr.splitlines()) == 1
    assert untouched(env)


def test_destination_becoming_unwritable_mid_run_stops_the_run_uncharged(
    cli: Any, env: dict[str, Path]
) -> None:
    """A project folder that cannot be created: setup, mid-run: the claim is given back, exit 2."""
    from helpers import read_only_dir

    build_epns(env["src"], 2, 2)
    walk(cli, env)
    project = env["dest"] / "ny79"
    project.mkdir()
    with read_only_dir(project):
        result = sync(cli, env, "--destinations", "20000=ny79,20001=ny79", "--threads", "1")
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "given back: 20000a" in result.stdout
    assert rows(env["db"], "SELECT max(failures) FROM epns") == [(0,)]
    assert set(statuses(env).values()) == {"pending"}
    assert rows(env["db"], "SELECT classification, outcome FROM transfers") == [
        ("setup", "released")
    ]


def backed_off(env: dict[str, Path]) -> float:
    """Seconds until the EPN's not_before (by SQLite's clock), then let that time pass."""
    (left,) = rows(
        env["db"], "SELECT strftime('%s', not_before) - strftime('%s', 'now') FROM epns"
    )[0]
    with sqlite3.connect(env["db"]) as conn:
        conn.execute("UPDATE epns SET not_before = datetime('now', '-1 seconds')")
    return float(left)


def test_unreadable_source_file_is_partial_then_quarantined(cli: Any, env: dict[str, Path]) -> None:
    """failures.md, partial: charged, spaced over runs by not_before, quarantined at --max-attempts."""
    build_epns(env["src"], 1, 3)
    walk(cli, env)
    os.chmod(env["src"] / "20000a" / "f000001.dat", 0o000)
    waits = []
    for n in (1, 2):
        result = sync(cli, env, "--max-attempts", "3")
        assert result.exit_code == 3
        assert rows(
            env["db"], "SELECT status, failures, last_exit_code, last_error_class FROM epns"
        ) == [("failed", n, 23, "partial")]
        # backing off: a run right now does not take it, and says why when asked for it
        assert json.loads(sync(cli, env, "--json", "--max-attempts", "3").stdout)["selected"] == 0
        asked = json.loads(
            sync(cli, env, "--json", "--max-attempts", "3", "--epn", "20000a").stdout
        )
        assert asked["skipped"]["20000a"].startswith(f"failed {n} times; backing off until ")
        waits.append(backed_off(env))
    assert 300 - 2 <= waits[0] <= 600 and 600 - 2 <= waits[1] <= 1200  # 10 min, doubling, jittered
    result = sync(cli, env, "--max-attempts", "3")
    assert "quarantined: 20000a: rsync exit 23" in result.stdout
    assert rows(env["db"], "SELECT status, failures, attempts FROM epns") == [("quarantined", 3, 3)]
    assert json.loads(sync(cli, env, "--json", "--max-attempts", "3").stdout)["selected"] == 0
    assert rows(env["db"], "SELECT attempt, outcome FROM transfers ORDER BY id") == [
        (1, "failed"),
        (2, "failed"),
        (3, "quarantined"),
    ]


def test_retry_within_a_run(cli: Any, env: dict[str, Path]) -> None:
    """--retry N: at most N+1 attempts of one EPN in one run, spaced; the summary counts it once."""
    build_epns(env["src"], 1, 2)
    walk(cli, env)
    os.chmod(env["src"] / "20000a" / "f000000.dat", 0o000)
    started = time.monotonic()
    result = sync(cli, env, "--retry", "2")
    assert time.monotonic() - started >= 0.5 + 1.0  # back-off 1 s, 2 s, each at least half
    assert result.exit_code == 3
    assert result.stdout.startswith("sync finished: 0 EPNs complete, 1 failed, ")
    assert rows(env["db"], "SELECT attempt, exit_code, outcome FROM transfers ORDER BY id") == [
        (1, 23, "retry"),
        (2, 23, "retry"),
        (3, 23, "failed"),
    ]
    assert rows(env["db"], "SELECT status, failures, claim_owner FROM epns") == [
        ("failed", 3, None)
    ]


def test_checksum_repair_rewrites_a_bad_copy(cli: Any, env: dict[str, Path]) -> None:
    """Same size, same mtime, other bytes: verify --checksum finds it, the next sync repairs it."""
    write_file(env["src"] / "40000a" / "data.bin", b"good data", FIXED_MTIME)
    write_file(env["src"] / "40000a" / "other.bin", b"fine", FIXED_MTIME)
    walk(cli, env)
    assert sync(cli, env).exit_code == 0
    write_file(env["dest"] / "40000a" / "data.bin", b"BAD! data", FIXED_MTIME)  # bit rot
    found = cli("--config", str(env["conf"]), "verify", "--checksum")
    assert found.exit_code == 3, found.stdout + found.stderr
    assert rows(env["db"], "SELECT status, last_error_class FROM epns") == [("changed", "checksum")]
    result = sync(cli, env)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert (env["dest"] / "40000a" / "data.bin").read_bytes() == b"good data"
    (argv,) = rows(env["db"], "SELECT argv FROM transfers ORDER BY id DESC LIMIT 1")[0]
    assert "--checksum" in json.loads(argv)  # the repair compared content
    again = cli("--config", str(env["conf"]), "verify", "--checksum")
    assert again.exit_code == 0, again.stdout
    assert rows(env["db"], "SELECT status, failures FROM epns") == [("complete", 0)]


def test_verify_checksum_repairs_in_the_same_attempt(cli: Any, env: dict[str, Path]) -> None:
    """A stale local file rsync's quick check skips: --verify checksum finds it and copies it again."""
    write_file(env["src"] / "40000a" / "data.bin", b"good data", FIXED_MTIME)
    walk(cli, env)
    write_file(env["dest"] / "40000a" / "data.bin", b"BAD! data", FIXED_MTIME)
    result = sync(cli, env, "--checksum")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert (env["dest"] / "40000a" / "data.bin").read_bytes() == b"good data"
    assert rows(env["db"], "SELECT status, failures FROM epns") == [("complete", 0)]


def test_without_checksum_the_quick_check_misses_a_stale_copy(
    cli: Any, env: dict[str, Path]
) -> None:
    """Why --verify checksum exists: the default check compares size and mtime only."""
    write_file(env["src"] / "40000a" / "data.bin", b"good data", FIXED_MTIME)
    walk(cli, env)
    write_file(env["dest"] / "40000a" / "data.bin", b"BAD! data", FIXED_MTIME)
    assert sync(cli, env).exit_code == 0
    assert (env["dest"] / "40000a" / "data.bin").read_bytes() == b"BAD! data"


def test_missing_source_files_are_not_a_success(cli: Any, env: dict[str, Path]) -> None:
    """The inventory says the EPN has data, the source has none (unmounted): failed, never complete."""
    build_epns(env["src"], 1, 3)
    walk(cli, env)
    for f in (env["src"] / "20000a").iterdir():
        f.unlink()
    result = sync(cli, env)
    assert result.exit_code == 3
    assert "the source listed no files but the inventory has 3" in result.stdout
    assert rows(env["db"], "SELECT status FROM epns") == [("failed",)]


def test_file_grown_since_the_walk_is_listed_again_and_completes(
    cli: Any, env: dict[str, Path]
) -> None:
    """failures.md, changed: not charged; sync lists the EPN again; at most two plain runs."""
    build_epns(env["src"], 1, 3)
    walk(cli, env)
    with open(env["src"] / "20000a" / "f000001.dat", "ab") as fh:
        fh.write(b"appended after the walk")
    first = sync(cli, env)
    assert first.exit_code == 3
    assert "changed: 20000a: the source changed since it was listed" in first.stdout
    assert rows(env["db"], "SELECT status, failures, last_error_class FROM epns") == [
        ("changed", 0, "changed")
    ]
    # sync listed it again itself: the inventory has the new size
    assert rows(env["db"], "SELECT size FROM files WHERE path = 'f000001.dat'") == [
        ((env["src"] / "20000a" / "f000001.dat").stat().st_size,)
    ]
    second = sync(cli, env)
    assert second.exit_code == 0, second.stdout
    assert rows(env["db"], "SELECT status, failures FROM epns") == [("complete", 0)]
    assert tree_digest(env["dest"]) == tree_digest(env["src"])


def test_file_grown_since_the_walk_completes_in_one_run_with_retry(
    cli: Any, env: dict[str, Path]
) -> None:
    build_epns(env["src"], 1, 3)
    walk(cli, env)
    with open(env["src"] / "20000a" / "f000002.dat", "ab") as fh:
        fh.write(b"appended after the walk")
    result = sync(cli, env, "--retry", "1")
    assert result.exit_code == 0, result.stdout
    assert rows(env["db"], "SELECT status, failures FROM epns") == [("complete", 0)]
    assert rows(env["db"], "SELECT classification, outcome FROM transfers ORDER BY id") == [
        ("changed", "retry"),
        ("ok", "complete"),
    ]
    assert tree_digest(env["dest"]) == tree_digest(env["src"])


def test_rsync_too_old_is_refused(
    cli: Any, env: dict[str, Path], write_config: Any, sshd: Sshd
) -> None:
    fake = env["tmp"] / "old-rsync"
    fake.write_text("#!/bin/sh\necho 'rsync  version 3.2.7  protocol version 31'\n")
    fake.chmod(0o755)
    build_epns(env["src"], 1, 1)
    walk(cli, env)
    conf = write_config(
        sshd.settings(
            src_prefix=str(env["src"]), db=str(env["db"]), dest=str(env["dest"]), rsync=str(fake)
        ),
        name="old.yaml",
    )
    result = cli("--config", str(conf), "sync")
    assert result.exit_code == 2
    assert "is rsync 3.2.7; asynchy needs >= 3.4.1" in result.stderr
    assert rows(env["db"], "SELECT status FROM epns") == [("pending",)]


def test_missing_dest_is_a_config_error(cli: Any, env: dict[str, Path]) -> None:
    build_epns(env["src"], 1, 1)
    walk(cli, env)
    result = sync(cli, env, "--dest", str(env["tmp"] / "nope"))
    assert result.exit_code == 2
    assert "is not an existing folder" in result.stderr


# ------------------------------------------------------------------ processes, signals, crashes
def big_epns(src: Path, names: list[str], mib: int = 8) -> None:
    """EPNs with one large file each (sparse on the source: cheap to make, real bytes on the wire)."""
    for name in names:
        path = src / name / "big.raw"
        path.parent.mkdir(parents=True)
        with open(path, "wb") as fh:
            fh.truncate(mib * 2**20)
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
        write_file(src / name / "small.txt", b"s")


def landed(dest: Path) -> int:
    """Bytes written under dest so far (rsync's temporary files included)."""
    return sum(
        os.lstat(os.path.join(d, name)).st_size for d, _, names in os.walk(dest) for name in names
    )


def rsyncs_into(dest: Path) -> list[int]:
    """The rsyncs copying into dest, one PID per rsync run (not its forked receiver)."""
    from helpers import rsync_processes

    return sorted(rsync_processes(dest))


def test_kill_9_mid_transfer_then_rerun(cli: Any, env: dict[str, Path]) -> None:
    """kill -9 of asynchy: nothing is marked complete that is not, rsync does not live on, the next run finishes."""
    big_epns(env["src"], ["50000a", "50001a"])
    walk(cli, env)
    proc = spawn_sync(env, "--bwlimit", "1000", "--threads", "2")
    wait_until(lambda: len(rsyncs_into(env["dest"])) >= 2, what="rsync to start")
    wait_until(lambda: any(env["dest"].rglob("*big.raw*")), what="bytes to arrive")
    proc.kill()
    proc.wait()
    wait_until(lambda: not rsyncs_into(env["dest"]), timeout=10, what="orphan rsyncs to die")
    assert set(statuses(env).values()) == {"running"}
    assert rows(env["db"], "SELECT count(*) FROM transfers") == [(0,)]
    assert not (env["dest"] / "50000a" / "big.raw").exists() or (
        (env["dest"] / "50000a" / "big.raw").stat().st_size < 8 * 2**20
    )
    result = sync(cli, env)  # same host, owner dead: its claims are taken back at once
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "took back 2 EPNs" in result.stderr
    assert set(statuses(env).values()) == {"complete"}
    assert tree_digest(env["dest"]) == tree_digest(env["src"])
    assert rows(env["db"], "SELECT status FROM workers ORDER BY started_at, status") == [
        ("dead",),
        ("finished",),
    ]


def test_killing_the_rsync_child_is_retried(cli: Any, env: dict[str, Path]) -> None:
    big_epns(env["src"], ["51000a"])
    walk(cli, env)
    killed: list[int] = []

    def killer() -> None:
        wait_until(lambda: landed(env["dest"]) > 2**20, what="the copy to be under way")
        pid = min(rsyncs_into(env["dest"]))
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    t = threading.Thread(target=killer)
    t.start()
    result = sync(cli, env, "--bwlimit", "4000", "--retry", "1")
    t.join()
    assert killed
    assert result.exit_code == 0, result.stdout
    got = rows(
        env["db"], "SELECT attempt, exit_code, classification, outcome FROM transfers ORDER BY id"
    )
    # failures.md, link: given back uncharged, the server answered the probe, tried again
    assert got[0][2:] == ("link", "released") and got[0][1] in (-9, 12, 20)
    assert got[1] == (2, 0, "ok", "complete")
    assert tree_digest(env["dest"]) == tree_digest(env["src"])
    assert rows(env["db"], "SELECT status, failures FROM epns") == [("complete", 0)]
    assert "1 EPN complete, 0 failed, 0 skipped" in result.stdout  # one EPN, not two attempts


@pytest.fixture
def own_server(served_base: Path, served: Path, tmp_path: Path, write_config: Any) -> Any:
    """An sshd of the test's own (to kill and restart) serving ``served``, and the env for it."""
    server = Sshd(served_base / f"own-sshd-{tmp_path.name}").start()
    dest = tmp_path / "vault"
    dest.mkdir()
    env = {
        "conf": write_config(
            server.settings(src_prefix=str(served), db=str(tmp_path / "f.db"), dest=str(dest))
        ),
        "db": tmp_path / "f.db",
        "dest": dest,
        "src": served,
        "tmp": tmp_path,
    }
    yield server, env
    server.stop()


def test_sshd_killed_mid_run_charges_nothing_and_the_next_run_completes(
    cli: Any, own_server: Any
) -> None:
    """failures.md, link: sshd dies 2 MiB into `sync --retry 0` over 6 EPNs: given back, exit 1."""
    server, env = own_server
    names = [f"5200{n}a" for n in range(6)]
    big_epns(env["src"], names)
    walk(cli, env)

    def outage() -> None:
        wait_until(lambda: landed(env["dest"]) > 2 * 2**20, what="the copies to be under way")
        server.kill_sessions()
        server.stop()

    t = threading.Thread(target=outage)
    t.start()
    started = time.monotonic()
    result = sync(cli, env, "--bwlimit", "2000", "--retry", "0")
    t.join()
    assert time.monotonic() - started < 30
    assert result.exit_code == 1, result.stdout + result.stderr
    assert result.stderr.startswith(f"Error: cannot reach {server.known_hosts_name}: ")
    assert len(result.stderr.splitlines()) == 1
    per_epn = dict(rows(env["db"], "SELECT epn, count(*) FROM transfers GROUP BY epn"))
    assert per_epn and max(per_epn.values()) == 1  # one attempt per EPN at most
    assert rows(env["db"], "SELECT count(*) FROM epns WHERE failures > 0") == [(0,)]
    assert set(statuses(env).values()) == {"pending"}  # none quarantined, none left claimed
    assert {c for (c,) in rows(env["db"], "SELECT classification FROM transfers")} <= {
        "link",
        "cancelled",
    }
    server.restart()
    result = sync(cli, env)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert set(statuses(env).values()) == {"complete"}
    assert tree_digest(env["dest"]) == tree_digest(env["src"])


def test_a_short_outage_within_retry_is_ridden_out(cli: Any, own_server: Any) -> None:
    """The breaker probes with back-off; the server is back before the probes run out: the run goes on."""
    server, env = own_server
    big_epns(env["src"], ["52100a", "52101a", "52102a"])
    walk(cli, env)
    proc = spawn_sync(env, "--bwlimit", "4000", "--retry", "4")
    wait_until(lambda: landed(env["dest"]) > 2**20, what="the copy to be under way")
    server.kill_sessions()
    server.stop()
    time.sleep(1.0)  # the outage itself, not a wait: the breaker's first probes find no server
    server.restart()  # from this thread: sshd dies with the thread that started it (pdeathsig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert out.startswith("sync finished: 3 EPNs complete, 0 failed, 0 skipped")
    assert "does not answer" in err  # the breaker's probes, spaced
    assert rows(env["db"], "SELECT count(*) FROM epns WHERE failures > 0") == [(0,)]
    assert tree_digest(env["dest"]) == tree_digest(env["src"])
    link = rows(env["db"], "SELECT count(*) FROM transfers WHERE classification = 'link'")[0][0]
    assert link >= 1  # the outage was seen, and cost nothing


def test_stall_watchdog_kills_a_silent_transfer(
    cli: Any, sshd: Sshd, served: Path, tmp_path: Path, write_config: Any
) -> None:
    """The link goes silent (no RST, no FIN): the watchdog kills rsync after --stall-timeout."""
    from tcpproxy import Proxy

    big_epns(served, ["53000a"])
    dest = tmp_path / "vault"
    dest.mkdir()
    with Proxy(sshd.port) as proxy:
        conf = write_config(
            sshd.settings(
                src_prefix=str(served),
                db=str(tmp_path / "f.db"),
                dest=str(dest),
                port=proxy.port,
                known_hosts=str(sshd.known_hosts_via(proxy.port)),
                timeout=3,
            )
        )
        env = {"conf": conf, "db": tmp_path / "f.db", "dest": dest, "src": served, "tmp": tmp_path}
        walk(cli, env)

        def freeze() -> None:
            wait_until(lambda: any(dest.rglob("*big.raw*")), what="bytes to arrive")
            proxy.freeze()

        t = threading.Thread(target=freeze)
        t.start()
        started = time.monotonic()
        result = sync(cli, env, "--bwlimit", "1000", "--stall-timeout", "3")
        t.join()
        assert time.monotonic() - started < 30
    # failures.md, link: a stall is the link's fault; the probe through the frozen link gets no
    # answer either, so the run ends with exit 1 and the EPN is given back uncharged.
    assert result.exit_code == 1
    assert (
        "given back: 53000a: no progress for 3 s: rsync killed by the stall watchdog"
        in result.stdout
    )
    assert result.stderr.startswith(f"Error: cannot reach [127.0.0.1]:{proxy.port}: ")
    assert rows(env["db"], "SELECT status, failures FROM epns") == [("pending", 0)]
    assert rows(env["db"], "SELECT classification, outcome FROM transfers") == [
        ("link", "released")
    ]
    assert not rsyncs_into(dest)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_cancels_releases_and_exits_130(
    env: dict[str, Path], cli: Any, sig: signal.Signals
) -> None:
    big_epns(env["src"], ["54000a", "54001a"])
    write_file(env["src"] / "54002a" / "x", b"x")
    walk(cli, env)
    proc = spawn_sync(env, "--bwlimit", "1000", "--threads", "2", "--order", "ASC")
    wait_until(lambda: len(rsyncs_into(env["dest"])) >= 2, what="rsync to start")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "sync interrupted: 0 EPNs complete" in out
    assert not rsyncs_into(env["dest"])
    got = rows(env["db"], "SELECT epn, status, attempts, claim_owner FROM epns ORDER BY epn")
    assert got == [
        ("54000a", "pending", 0, None),
        ("54001a", "pending", 0, None),
        ("54002a", "pending", 0, None),
    ]
    assert (
        rows(env["db"], "SELECT outcome, classification FROM transfers")
        == [("cancelled", "cancelled")] * 2
    )
    assert rows(env["db"], "SELECT status FROM workers") == [("interrupted",)]
    result = sync(cli, env)
    assert result.exit_code == 0
    assert tree_digest(env["dest"]) == tree_digest(env["src"])


def test_second_interrupt_exits_at_once(env: dict[str, Path], cli: Any) -> None:
    big_epns(env["src"], ["55000a"], mib=32)
    walk(cli, env)
    proc = spawn_sync(env, "--bwlimit", "500", "--parallel", "--threads", "1")
    wait_until(lambda: bool(rsyncs_into(env["dest"])), what="rsync to start")
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    seen = [proc.stderr.readline() for _ in range(1)]
    while "stopping: cancelling running transfers" not in seen[-1] and len(seen) < 50:
        seen.append(proc.stderr.readline())  # until the first signal was seen
    assert "stopping: cancelling running transfers" in seen[-1], seen
    asked = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    # at once: not after the cancelled transfer has been recorded (the bound is generous)
    assert time.monotonic() - asked < 5
    assert proc.returncode == 130
    assert "interrupted again: exiting now" in err
    wait_until(lambda: not rsyncs_into(env["dest"]), timeout=10, what="rsync to die with asynchy")
    # Nothing recorded after the second signal: the claim stays until its owner is seen dead...
    assert statuses(env) == {"55000a": "running"}
    # ...which the next run on this host sees at once: it takes the EPN back and completes it.
    result = sync(cli, env)
    assert result.exit_code == 0, result.stdout
    assert statuses(env) == {"55000a": "complete"}


def test_two_sync_processes_never_copy_the_same_epn(env: dict[str, Path], cli: Any) -> None:
    build_epns(env["src"], 12, 3, size=200_000)
    walk(cli, env)
    procs = [spawn_sync(env, "--threads", "2", "--bwlimit", "4000") for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert set(statuses(env).values()) == {"complete"}
    per_epn = rows(
        env["db"], "SELECT epn, count(*), count(DISTINCT worker_id) FROM transfers GROUP BY epn"
    )
    assert len(per_epn) == 12 and all(n == 1 for _, n, _ in per_epn)
    # each process reports what it copied; together exactly the 12 EPNs
    completed = [int(re.search(r"(\d+) EPNs? complete", out).group(1)) for out, _ in outs]  # type: ignore[union-attr]
    assert sum(completed) == 12, outs
    assert rows(env["db"], "SELECT count(*) FROM workers") == [(2,)]
    assert tree_digest(env["dest"]) == tree_digest(env["src"])


def test_source_file_growing_during_transfer_is_not_complete(
    cli: Any, env: dict[str, Path]
) -> None:
    big_epns(env["src"], ["56000a"])
    walk(cli, env)
    big = env["src"] / "56000a" / "big.raw"

    def grow() -> None:
        wait_until(lambda: any(env["dest"].rglob("*big.raw*")), what="bytes to arrive")
        with open(big, "ab") as fh:
            fh.write(b"more data written by the experiment\n" * 1000)

    t = threading.Thread(target=grow)
    t.start()
    result = sync(cli, env, "--bwlimit", "2000")
    t.join()
    assert result.exit_code == 3
    assert (
        "changed: 56000a: the source changed since it was listed (1 file differs from the copy now)"
        in result.stdout
    )
    assert rows(env["db"], "SELECT status, last_error_class, failures FROM epns") == [
        ("changed", "changed", 0)
    ]
    # sync listed it again itself: the next plain run copies it, no walk needed
    result = sync(cli, env)
    assert result.exit_code == 0, result.stdout
    assert tree_digest(env["dest"]) == tree_digest(env["src"])


def test_progress_bar_advances_within_a_large_file(env: dict[str, Path]) -> None:
    """On a terminal: a bytes bar whose total is known up front and that moves while one big file copies."""
    import re

    big_epns(env["src"], ["57000a"], mib=6)
    subprocess.run(
        [sys.executable, "-m", "asynchy", "--config", str(env["conf"]), "walk"],
        check=True,
        capture_output=True,
        env=_env(),
    )
    code, shown = stderr_on_a_terminal(
        [
            sys.executable,
            "-m",
            "asynchy",
            "--config",
            str(env["conf"]),
            "sync",
            "--bwlimit",
            "1500",
        ],
        _env(),
        columns=120,
    )
    assert code == 0
    assert "sync 1 EPN" in shown and "/6.00M" in shown and "iB/s" in shown  # IEC, as the summaries
    seen = {float(m) for m in re.findall(r"\b(\d+(?:\.\d+)?)M/6\.00M", shown)}
    assert len(seen) >= 3, shown  # several distinct positions while the one big file was copied
    assert "running 1" in shown


def test_killing_a_worker_process_loses_nothing(env: dict[str, Path], cli: Any) -> None:
    """--parallel: kill -9 of a pool process; its EPN is not complete, the run goes on, the next run finishes."""
    big_epns(env["src"], ["58000a", "58001a"])
    for n in range(3):
        write_file(env["src"] / f"5801{n}a" / "x", b"x")
    walk(cli, env)
    proc = spawn_sync(env, "--parallel", "--threads", "2", "--bwlimit", "1000")
    wait_until(lambda: len(rsyncs_into(env["dest"])) >= 2, what="rsync to start")
    rsync_pid = rsyncs_into(env["dest"])[0]
    worker = int(Path(f"/proc/{rsync_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert worker != proc.pid
    os.kill(worker, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, out + err
    assert "the worker process died (not charged)" in out  # failures.md: not the EPN's fault
    got = statuses(env)
    assert all(status in ("complete", "pending") for status in got.values())
    assert rows(env["db"], "SELECT count(*) FROM epns WHERE failures > 0") == [(0,)]
    for epn, status in got.items():
        if status == "complete":
            assert tree_digest(env["dest"] / epn) == tree_digest(env["src"] / epn)
    wait_until(lambda: not rsyncs_into(env["dest"]), timeout=10, what="orphan rsyncs to die")
    result = sync(cli, env)
    assert result.exit_code == 0, result.stdout
    assert set(statuses(env).values()) == {"complete"}
    assert tree_digest(env["dest"]) == tree_digest(env["src"])


def test_log_file_holds_rsync_stderr_in_full(cli: Any, env: dict[str, Path]) -> None:
    build_epns(env["src"], 1, 3)
    walk(cli, env)
    for name in ("f000000.dat", "f000001.dat", "f000002.dat"):
        os.chmod(env["src"] / "20000a" / name, 0o000)
    log = env["tmp"] / "sync.log"
    result = cli("--config", str(env["conf"]), "--log-file", str(log), "sync")
    assert result.exit_code == 3
    text = log.read_text()
    assert "rsync stderr for EPN 20000a (attempt 1)" in text
    for name in ("f000000.dat", "f000001.dat", "f000002.dat"):
        assert f'"{name}"' in text or name in text
    assert "EPN 20000a failed: rsync exit 23" in text


def test_claim_of_another_host_is_taken_back_only_after_its_lease(
    cli: Any, env: dict[str, Path]
) -> None:
    build_epns(env["src"], 2, 2)
    walk(cli, env)
    with sqlite3.connect(env["db"]) as con:
        con.execute(
            "INSERT INTO workers (worker_id, host, pid, command, started_at, heartbeat_at, status) "
            "VALUES ('ghost', 'another-host', 1, 'sync', datetime('now'), datetime('now'), 'running')"
        )
        con.execute(
            "UPDATE epns SET status = 'running', claim_owner = 'ghost', claim_token = 7, "
            "claimed_from = 'pending', lease_until = datetime('now', '+1 hour') WHERE epn = '20000a'"
        )
        con.execute(
            "UPDATE epns SET status = 'running', claim_owner = 'ghost', claim_token = 3, "
            "claimed_from = 'pending', lease_until = datetime('now', '-1 minute') WHERE epn = '20001b'"
        )
    result = sync(cli, env, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["complete"] == ["20001b"]  # the expired lease only
    assert rows(
        env["db"], "SELECT epn, status, claim_owner, claim_token FROM epns ORDER BY epn"
    ) == [
        ("20000a", "running", "ghost", 7),
        ("20001b", "complete", None, 4),
    ]
    assert rows(env["db"], "SELECT claim_token FROM transfers") == [(4,)]


def _rsync_runs_by_folder(dest: Path) -> dict[bytes, set[int]]:
    """The rsync runs (process groups) alive now, by the --temp-dir they write into (its name:
    asynchy names the folder through a descriptor, /proc/self/fd/N/<name>)."""
    from helpers import works_in
    from sshd import processes

    runs: dict[bytes, set[int]] = {}
    for pid, (_ppid, cmd) in processes().items():
        if not cmd.startswith(b"rsync") or not works_in(pid, cmd, dest):
            continue
        folder = next((a for a in cmd.split(b"\0") if a.startswith(b"--temp-dir=")), None)
        with contextlib.suppress(ProcessLookupError):
            if folder is not None:
                runs.setdefault(os.path.basename(folder), set()).add(os.getpgid(pid))
    return runs


def test_a_dead_worker_s_rsyncs_end_before_their_epns_are_copied_again(
    env: dict[str, Path], cli: Any
) -> None:
    """Found by the fault campaign (tests/chaos): after kill -9 of one --parallel worker, the
    pool's other workers and their rsyncs ran on for seconds while their EPNs, given back, were
    copied again in the same folders; the old run then removed the new one's temporary files
    (an EPN charged with exit 23 on a 'stat ... No such file'), and the sync hung at exit.
    Two rsyncs of one EPN must never run at once.  The EPNs given back were also claimed again
    all at once, so --bwlimit gave the first the whole budget and the others 512 B/s each: the
    run crawled for hours (each now gets its share)."""
    big_epns(env["src"], ["58100a", "58101b", "58102c"], mib=6)
    walk(cli, env)
    proc = spawn_sync(env, "--parallel", "--threads", "3", "--bwlimit", "3M", "--retry", "2")
    wait_until(lambda: len(rsyncs_into(env["dest"])) >= 3, what="three rsyncs")
    rsync_pid = rsyncs_into(env["dest"])[0]
    worker = int(Path(f"/proc/{rsync_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(worker, signal.SIGKILL)
    overlaps = []
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        for folder, groups in _rsync_runs_by_folder(env["dest"]).items():
            if len(groups) > 1:
                overlaps.append((folder, groups))
        time.sleep(0.02)
    out, err = proc.communicate(timeout=10)
    assert overlaps == []
    assert proc.returncode == 0, out + err  # given back, copied again within --retry
    assert rows(env["db"], "SELECT count(*) FROM epns WHERE failures > 0") == [(0,)]
    assert tree_digest(env["dest"]) == tree_digest(env["src"])
    own = env["dest"] / ".asynchy-tmp"
    assert not own.exists() or not any(own.iterdir())
