"""Fixity recorded at copy (docs/fixity.md): every regular file of a complete EPN has the source's
checksum on record, taken from rsync's own transfer checksum or from one source pass; real sshd,
real rsync, and the values checked against xxh128sum and md5sum of the source."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXED_MTIME, rows, write_file
from sshd import Sshd
from test_sync import big_epns, landed, rsyncs_into, spawn_sync, statuses, sync, wait_until, walk

ODD_NAMES = [b"plain.cbf", b"with space", b"new\nline", b"back\\slash", b"hash\\#012x", b"\xff\xfe"]


@pytest.fixture
def env(sshd: Sshd, served: Path, tmp_path: Path, write_config: Any) -> dict[str, Any]:
    dest = tmp_path / "vault"
    dest.mkdir()
    db = tmp_path / "files.db"
    values = sshd.settings(src_prefix=str(served), db=str(db), dest=str(dest))
    conf = write_config(values)
    return {
        "conf": conf,
        "db": db,
        "dest": dest,
        "src": served,
        "tmp": tmp_path,
        "values": values,
        "write_config": write_config,
    }


def reconfigure(env: dict[str, Any], **more: Any) -> None:
    env["conf"] = env["write_config"]({**env["values"], **more})


def source_sums(src: Path, epn: str, tool: str) -> dict[bytes, str]:
    """What xxh128sum or md5sum says of every regular file of the EPN on the source."""
    out: dict[bytes, str] = {}
    base = os.fsencode(src / epn)
    for folder, _dirs, names in os.walk(base):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            line = subprocess.run([tool, path], capture_output=True, check=True).stdout
            out[os.path.relpath(path, base)] = line.split(b" ", 1)[0].lstrip(b"\\").decode()
    return out


def recorded(env: dict[str, Any], epn: str) -> dict[bytes, tuple[str, str, str]]:
    from asynchy.names import decode_name

    got = rows(
        env["db"],
        "SELECT c.path, c.algo, c.value, c.obtained FROM checksums c JOIN files f "
        "ON f.epn = c.epn AND f.path = c.path AND f.size = c.size AND f.modified = c.modified "
        "WHERE c.epn = ?",
        epn,
    )
    return {decode_name(p): (algo, value, how) for p, algo, value, how in got}


def odd_epn(src: Path, epn: str) -> None:
    for n, name in enumerate(ODD_NAMES):
        write_file(os.fsdecode(src / epn / "d") / Path(os.fsdecode(name)), bytes([n]) * (n * 700))
    os.symlink("plain.cbf", src / epn / "d" / "link")


def test_every_file_has_the_sources_xxh128_recorded_at_copy(cli: Any, env: dict[str, Any]) -> None:
    odd_epn(env["src"], "70000a")
    write_file(env["src"] / "70001a" / "empty", b"")
    walk(cli, env)
    result = sync(cli, env)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert set(statuses(env).values()) == {"complete"}
    for epn in ("70000a", "70001a"):
        want = source_sums(env["src"], epn, "xxh128sum")
        got = recorded(env, epn)
        assert {p: v for p, (_a, v, _h) in got.items()} == want
        assert {a for a, _v, _h in got.values()} == {"xxh128"}
        assert {h for _a, _v, h in got.values()} == {"transfer"}  # no extra read: the copy's own
    assert b"d/link" not in recorded(env, "70000a")  # a symlink has no content to check
    argv = json.loads(rows(env["db"], "SELECT argv FROM transfers LIMIT 1")[0][0])
    assert "--checksum-choice=xxh128" in argv and "--out-format=%C %n" in argv
    assert rows(env["db"], "SELECT count(*) FROM v_fixity_gaps") == [(0,)]
    assert not list(Path("/tmp").glob(f"asynchy-sums-{os.getpid()}-*"))  # the spools are gone


def test_md5_when_asked_and_files_already_in_place_are_read_at_the_source(
    cli: Any, env: dict[str, Any]
) -> None:
    odd_epn(env["src"], "70100a")
    walk(cli, env)
    reconfigure(env, checksum_algo="md5")
    # Half the EPN is in place already (as a killed attempt leaves it): not sent again, yet
    # every file gets its value, from a source pass over just those files.
    src, dest = env["src"] / "70100a" / "d", env["dest"] / "70100a" / "d"
    dest.mkdir(parents=True)
    for name in ODD_NAMES[:3]:
        data = (src / os.fsdecode(name)).read_bytes()
        write_file(dest / os.fsdecode(name), data)
        st = (src / os.fsdecode(name)).stat()
        os.utime(dest / os.fsdecode(name), (st.st_atime, st.st_mtime))
    result = sync(cli, env)
    assert result.exit_code == 0, result.stdout + result.stderr
    got = recorded(env, "70100a")
    assert {p: v for p, (_a, v, _h) in got.items()} == source_sums(env["src"], "70100a", "md5sum")
    assert {p for p, (_a, _v, h) in got.items() if h == "source"} == {
        b"d/" + n for n in ODD_NAMES[:3]
    }
    assert {a for a, _v, _h in got.values()} == {"md5"}


def test_kill_9_mid_copy_then_rerun_every_file_has_the_right_value(
    cli: Any, env: dict[str, Any]
) -> None:
    big_epns(env["src"], ["71000a", "71001a"])
    for n in range(20):
        write_file(env["src"] / "71000a" / f"s{n:02d}", os.urandom(2000 + n))
    walk(cli, env)
    proc = spawn_sync(env, "--bwlimit", "2000", "--threads", "2")
    wait_until(lambda: landed(env["dest"]) > 3 * 2**20, what="the copies to be under way")
    proc.kill()
    proc.wait()
    wait_until(lambda: not rsyncs_into(env["dest"]), timeout=10, what="orphan rsyncs to die")
    assert rows(env["db"], "SELECT count(*) FROM checksums") == [(0,)]  # nothing half-true
    result = sync(cli, env)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert set(statuses(env).values()) == {"complete"}
    for epn in ("71000a", "71001a"):
        got = recorded(env, epn)
        assert {p: v for p, (_a, v, _h) in got.items()} == source_sums(env["src"], epn, "xxh128sum")


def test_a_split_epns_files_all_have_values(cli: Any, env: dict[str, Any]) -> None:
    for n in range(12):
        write_file(env["src"] / "72000a" / f"f{n:02d}.raw", os.urandom(40_000 + n))
    walk(cli, env)
    result = sync(cli, env, "--split-min", "1", "--streams-per-epn", "3", "--threads", "3")
    assert result.exit_code == 0, result.stdout + result.stderr
    parts = json.loads(rows(env["db"], "SELECT parts FROM transfers")[0][0])
    assert len(parts) == 3  # it was split
    got = recorded(env, "72000a")
    assert {p: v for p, (_a, v, _h) in got.items()} == source_sums(
        env["src"], "72000a", "xxh128sum"
    )
    assert {h for _a, _v, h in got.values()} == {"transfer"}  # the parts' own values


def test_parallel_processes_record_too(cli: Any, env: dict[str, Any]) -> None:
    for epn in ("73000a", "73001a", "73002a"):
        write_file(env["src"] / epn / "x.dat", os.urandom(5000))
    walk(cli, env)
    result = sync(cli, env, "--parallel")
    assert result.exit_code == 0, result.stdout + result.stderr
    for epn in ("73000a", "73001a", "73002a"):
        assert {p: v for p, (_a, v, _h) in recorded(env, epn).items()} == source_sums(
            env["src"], epn, "xxh128sum"
        )


def test_a_file_changed_after_the_walk_is_recorded_with_the_new_content(
    cli: Any, env: dict[str, Any]
) -> None:
    write_file(env["src"] / "74000a" / "x", b"old")
    walk(cli, env)
    write_file(env["src"] / "74000a" / "x", b"newer", FIXED_MTIME + 50)
    result = sync(cli, env, "--retry", "1")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert statuses(env) == {"74000a": "complete"}
    assert {p: v for p, (_a, v, _h) in recorded(env, "74000a").items()} == source_sums(
        env["src"], "74000a", "xxh128sum"
    )


def test_fixity_off_copies_as_before(cli: Any, env: dict[str, Any]) -> None:
    odd_epn(env["src"], "75000a")
    walk(cli, env)
    reconfigure(env, fixity=False)
    result = sync(cli, env)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert statuses(env) == {"75000a": "complete"}
    assert rows(env["db"], "SELECT count(*) FROM checksums") == [(0,)]
    argv = json.loads(rows(env["db"], "SELECT argv FROM transfers")[0][0])
    assert not any(a.startswith(("--checksum-choice", "--out-format")) for a in argv)
    gaps = rows(env["db"], "SELECT epn, files_without_checksum FROM v_fixity_gaps")
    assert gaps == [("75000a", len(ODD_NAMES))]


def test_a_bad_checksum_algo_is_one_line_and_exit_2(cli: Any, env: dict[str, Any]) -> None:
    reconfigure(env, checksum_algo="sha1")
    result = sync(cli, env)
    assert result.exit_code == 2
    assert "checksum_algo" in result.stderr and "must be auto, xxh128 or md5" in result.stderr
    assert len(result.stderr.splitlines()) == 1
