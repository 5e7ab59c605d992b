"""Fixity recorded at copy (docs/fixity.md): every regular file of a complete EPN has the source's
checksum on record, taken from rsync's own transfer checksum or from one source pass; real sshd,
real rsync, and the values checked against xxh128sum and md5sum of the source."""

from __future__ import annotations

import json
import os
import re
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


@pytest.mark.parametrize("partial", [(), ("--partial",)], ids=["", "partial"])
def test_kill_9_mid_copy_then_rerun_every_file_has_the_right_value(
    cli: Any, env: dict[str, Any], partial: tuple[str, ...]
) -> None:
    big_epns(env["src"], ["71000a", "71001a"])
    for n in range(20):
        write_file(env["src"] / "71000a" / f"s{n:02d}", os.urandom(2000 + n))
    walk(cli, env)
    proc = spawn_sync(env, "--bwlimit", "2000", "--threads", "2", *partial)
    wait_until(lambda: landed(env["dest"]) > 3 * 2**20, what="the copies to be under way")
    proc.kill()
    proc.wait()
    wait_until(lambda: not rsyncs_into(env["dest"]), timeout=10, what="orphan rsyncs to die")
    assert rows(env["db"], "SELECT count(*) FROM checksums") == [(0,)]  # nothing half-true
    result = sync(cli, env, *partial)  # with --partial: the big files resume from what is there
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


# ------------------------------------------------------------------ audit, repair, manifest
def audit(cli: Any, env: dict[str, Any], *args: str) -> Any:
    return cli("--config", str(env["conf"]), "audit", *args)


def copied(cli: Any, env: dict[str, Any], epn: str, files: int = 8) -> Path:
    for n in range(files):
        write_file(env["src"] / epn / "d" / f"f{n:02d}.raw", os.urandom(3000 + n))
    walk(cli, env)
    result = sync(cli, env)
    assert result.exit_code == 0, result.stdout + result.stderr
    return env["dest"] / epn


def flip_a_byte(path: Path) -> None:
    """One bit changed in the middle, size and modification time kept (rsync's quick check and
    `asynchy verify` see nothing)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def identities(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_flipped_byte_is_found_by_audit_and_only_that_file_is_copied_again(
    cli: Any, env: dict[str, Any]
) -> None:
    copy = copied(cli, env, "76000a")
    result = audit(cli, env, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["files"] == 8 and data["damaged"] == []
    assert rows(env["db"], "SELECT count(*) FROM checksums WHERE audited_at IS NULL") == [(0,)]
    flip_a_byte(copy / "d" / "f03.raw")
    assert cli("--config", str(env["conf"]), "verify").exit_code == 0  # size and time agree
    result = audit(cli, env)
    assert result.exit_code == 3, result.stdout + result.stderr
    assert "damaged: 76000a: 1 file differs, 0 missing: 'd/f03.raw'" in result.stdout
    assert statuses(env) == {"76000a": "damaged"}
    assert rows(env["db"], "SELECT path, damage FROM checksums WHERE damage IS NOT NULL") == [
        ("d/f03.raw", "mismatch")
    ]
    assert rows(env["db"], "SELECT result, files, mismatched FROM audits ORDER BY id") == [
        ("ok", 8, 0),
        ("damaged", 8, 1),
    ]
    shown = cli("--config", str(env["conf"]), "show", "76000a").stdout
    assert "  fixity:      8 of 8 copied files with a source checksum; 1 EPN damaged" in shown
    assert re.search(r"  last audit:  .*, 76000a damaged \(8 files, ", shown)
    status = cli("--config", str(env["conf"]), "status", "--json")
    fixity = json.loads(status.stdout)["fixity"]
    assert (fixity["damaged_epns"], fixity["last_audit"]["result"]) == (1, "damaged")
    before = identities(copy)
    result = sync(cli, env, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["repaired"] == ["76000a"]
    after = identities(copy)
    assert (copy / "d" / "f03.raw").read_bytes() == (
        env["src"] / "76000a" / "d" / "f03.raw"
    ).read_bytes()
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"d/f03.raw"}  # only that file was copied again
    assert statuses(env) == {"76000a": "complete"}
    assert audit(cli, env).exit_code == 0


def test_with_the_source_deleted_audit_finds_the_damage_and_sync_cannot_repair_it(
    cli: Any, env: dict[str, Any]
) -> None:
    import shutil

    from test_sync import tree_digest

    copy = copied(cli, env, "77000a")
    shutil.rmtree(env["src"] / "77000a")  # the facility's retention period is over
    flip_a_byte(copy / "d" / "f01.raw")
    (copy / "d" / "f05.raw").unlink()
    result = audit(cli, env, "--json")
    assert result.exit_code == 3
    got = json.loads(result.stdout)["audits"][0]
    assert (got["mismatched"], got["missing"]) == (1, 1)
    kept = tree_digest(copy)
    result = sync(cli, env)
    assert result.exit_code == 3, result.stdout + result.stderr
    assert (
        "damaged: 77000a: cannot repair: the source no longer has 2 damaged files "
        "(e.g. 'd/f01.raw'); the copy is left as it is"
    ) in result.stdout
    assert tree_digest(copy) == kept  # nothing else touched
    assert statuses(env) == {"77000a": "damaged"}


def test_a_budget_stops_an_audit_and_the_next_goes_on_from_there(
    cli: Any, env: dict[str, Any]
) -> None:
    copied(cli, env, "78000a", files=1200)
    result = audit(cli, env, "--max-bytes", "1", "--json")  # stops after the first step
    assert result.exit_code == 0, result.stdout + result.stderr
    first = json.loads(result.stdout)
    assert first["stopped"].startswith("--max-bytes reached") and first["files"] < 1200
    rest = json.loads(audit(cli, env, "--json").stdout)
    assert first["files"] + rest["files"] == 1200  # nothing read twice, nothing left out
    assert rows(env["db"], "SELECT count(*) FROM checksums WHERE audited_at IS NULL") == [(0,)]
    assert [r for (r,) in rows(env["db"], "SELECT result FROM audits ORDER BY id")] == [
        "stopped",
        "ok",
    ]


@pytest.mark.parametrize(("algo", "tool"), [("xxh128", "xxh128sum"), ("md5", "md5sum")])
def test_the_manifest_is_accepted_by_the_coreutils_style_tools(
    cli: Any, env: dict[str, Any], algo: str, tool: str
) -> None:
    reconfigure(env, checksum_algo=algo)
    odd_epn(env["src"], "79000a")
    walk(cli, env)
    assert sync(cli, env).exit_code == 0
    result = cli("--config", str(env["conf"]), "manifest", "79000a")
    assert result.exit_code == 0, result.stderr
    body = result.stdout_bytes
    assert body.count(b"\n") >= len(ODD_NAMES)  # one line per file (escaped names)
    # md5sum reads every escaped name; xxh128sum 0.8.1 (Debian 12) reads raw names only, so it
    # skips the one line a name with a newline needs (xxhsum >= 0.8.2 reads it: docs/fixity.md)
    strict = ["--strict"] if tool == "md5sum" else []
    check = subprocess.run(
        [tool, "-c", *strict, "-"],
        input=body,
        cwd=env["dest"] / "79000a",
        capture_output=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    oks = {line[: -len(b": OK")] for line in check.stdout.splitlines() if line.endswith(b": OK")}
    expected = {b"d/" + n for n in ODD_NAMES}
    if tool == "xxh128sum":
        expected.discard(b"d/new\nline")
    assert {n.replace(b"\\\\", b"\\") for n in oks} >= {n for n in expected if b"\n" not in n}
    assert len(oks) == len(expected)
    flip_a_byte(env["dest"] / "79000a" / "d" / "with space")
    check = subprocess.run(
        [tool, "-c", "-"], input=body, cwd=env["dest"] / "79000a", capture_output=True, check=False
    )
    assert check.returncode == 1 and b"d/with space: FAILED" in check.stdout


def test_a_manifest_with_files_missing_values_is_refused(cli: Any, env: dict[str, Any]) -> None:
    write_file(env["src"] / "79100a" / "x", b"x")
    walk(cli, env)
    result = cli("--config", str(env["conf"]), "manifest", "79100a")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: EPN 79100a has 1 regular files without a checksum")
    assert cli("--config", str(env["conf"]), "manifest", "79100b").exit_code == 2


# ------------------------------------------------------------------ BagIt
def test_a_bag_of_the_copy_is_valid_for_the_library_of_congress_validator(
    cli: Any, env: dict[str, Any]
) -> None:
    write_file(env["src"] / "79200a" / "deep" / "er" / "with space.txt", b"hello")
    copy = copied(cli, env, "79200a")
    bag_dir = env["tmp"] / "bags" / "79200a"
    result = cli("--config", str(env["conf"]), "bag", "79200a", str(bag_dir), "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert (data["files"], data["hard_linked"], data["copied"]) == (9, 9, 0)
    validate = subprocess.run(
        ["bagit.py", "--validate", str(bag_dir)], capture_output=True, text=True, check=False
    )
    assert validate.returncode == 0, validate.stderr
    assert "is valid" in validate.stderr
    same = (bag_dir / "data" / "d" / "f00.raw").stat().st_ino == (
        copy / "d" / "f00.raw"
    ).stat().st_ino
    assert same  # a hard link: no second copy of the data
    info = (bag_dir / "bag-info.txt").read_text()
    total = sum(p.stat().st_size for p in copy.rglob("*") if p.is_file())
    assert f"Payload-Oxum: {total}.9\n" in info and "External-Identifier: 79200a\n" in info
    assert "transfer checksum (xxh128)" in info
    for name in ("manifest-sha256.txt", "manifest-sha512.txt", "tagmanifest-sha512.txt"):
        assert (bag_dir / name).exists()


def test_no_bag_is_made_of_a_damaged_copy(cli: Any, env: dict[str, Any]) -> None:
    copy = copied(cli, env, "79300a")
    flip_a_byte(copy / "d" / "f02.raw")
    bag_dir = env["tmp"] / "bag"
    result = cli("--config", str(env["conf"]), "bag", "79300a", str(bag_dir), "--digest", "sha512")
    assert result.exit_code == 3
    assert "'d/f02.raw' differs from the checksum recorded when it was copied" in result.stderr
    assert not (bag_dir / "data").exists()
    assert cli("--config", str(env["conf"]), "bag", "79300a", str(copy)).exit_code == 2  # not empty


# ------------------------------------------------------------------ merge and PostgreSQL
def test_merge_keeps_checksums_and_audits_on_both_backends(
    cli: Any, env: dict[str, Any], pg_url: str
) -> None:
    from sqlalchemy import create_engine, text

    copied(cli, env, "79400a")
    assert audit(cli, env).exit_code == 0
    want = rows(
        env["db"],
        "SELECT epn, path, algo, value, size, obtained, audited_at IS NOT NULL FROM checksums "
        "ORDER BY path",
    )
    assert len(want) == 8
    new = env["tmp"] / "merged.db"
    for _ in range(2):  # twice: nothing doubles
        result = cli("--db", str(new), "merge", str(env["db"]))
        assert result.exit_code == 0, result.stderr
        assert (
            rows(
                new,
                "SELECT epn, path, algo, value, size, obtained, audited_at IS NOT NULL FROM checksums "
                "ORDER BY path",
            )
            == want
        )
        assert rows(new, "SELECT count(*), min(result) FROM audits") == [(1, "ok")]
    result = cli("--db", pg_url, "merge", str(env["db"]))
    assert result.exit_code == 0, result.stderr
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        got = conn.execute(
            text(
                "SELECT epn, path, algo, value, size, obtained, audited_at IS NOT NULL "
                "FROM checksums ORDER BY path"
            )
        ).all()
        assert [tuple(r) for r in got] == [(*w[:6], bool(w[6])) for w in want]
        assert conn.execute(text("SELECT count(*) FROM audits")).scalar() == 1
    engine.dispose()
    result = cli("--db", pg_url, "manifest", "79400a")  # and the manifest reads PostgreSQL
    assert result.exit_code == 0 and result.stdout_bytes.count(b"\n") == 8


def test_sync_into_postgresql_records_checksums(cli: Any, env: dict[str, Any], pg_url: str) -> None:
    from sqlalchemy import create_engine, text

    reconfigure(env, db=pg_url)
    odd_epn(env["src"], "79500a")
    walk(cli, env)
    result = sync(cli, env)
    assert result.exit_code == 0, result.stdout + result.stderr
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        got = conn.execute(text("SELECT path, value FROM checksums")).all()
    engine.dispose()
    from asynchy.names import decode_name

    assert {decode_name(p): v for p, v in got} == source_sums(env["src"], "79500a", "xxh128sum")
    assert audit(cli, env).exit_code == 0


def test_watch_audits_a_slice_each_cycle_and_the_next_cycle_repairs(
    cli: Any, env: dict[str, Any]
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    copy = copied(cli, env, "79600a")
    metrics = env["tmp"] / "asynchy.prom"
    # every == audit_every: each cycle's slice is everything recorded
    reconfigure(env, audit_every="1d", every="1d", metrics_file=str(metrics), alert_to=None)
    flip_a_byte(copy / "d" / "f04.raw")
    result = cli("--config", str(env["conf"]), "watch", "--once", "--no-alert")
    assert result.exit_code == 3, result.stdout + result.stderr
    assert "audited 23.5 KiB, damaged: 79600a" in result.stdout
    values = {
        s.name: s.value
        for family in text_string_to_metric_families(metrics.read_text())
        for s in family.samples
    }
    assert values["asynchy_damaged_epns"] == 1 and values["asynchy_audited_bytes_total"] > 0
    result = cli("--config", str(env["conf"]), "watch", "--once", "--no-alert", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    cycle = json.loads(result.stdout.splitlines()[-1])
    assert cycle["damaged"] == [] and cycle["audited_bytes"] > 0
    assert statuses(env) == {"79600a": "complete"}


def test_an_alert_names_a_damaged_copy_once(
    cli: Any, env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailserver import MailServer

    server = MailServer(tmp_path, user="mover", password="pw").start()
    monkeypatch.setenv("SSL_CERT_FILE", str(server.cert))
    try:
        copy = copied(cli, env, "79700a")
        flip_a_byte(copy / "d" / "f06.raw")
        assert audit(cli, env).exit_code == 3
        reconfigure(
            env,
            alert_to=["ops@site.example"],
            alert_from="asynchy@mover.site.example",
            smtp_host="127.0.0.1",
            smtp_port=server.port,
            smtp_starttls=True,
            smtp_user="mover",
        )
        secret = {"ASYNCHY_SMTP_PASSWORD": "pw"}
        result = cli("--config", str(env["conf"]), "alert", env=secret)
        assert result.exit_code == 0, result.stdout + result.stderr
        assert result.stdout.startswith("alert sent naming 1 damaged EPN: 79700a")
        ((_, _, msg),) = server.received
        text = msg.get_body(("plain",)).get_content()
        assert "1 EPN failed an audit: its copy no longer matches" in text
        assert "79700a: 1 file differs, 0 missing: 'd/f06.raw'" in text
        assert "no destination mapping" not in text  # nothing is unmapped: not a word of it
        again = cli("--config", str(env["conf"]), "alert", env=secret)
        assert again.stdout.startswith("no alert needed") and len(server.received) == 1
    finally:
        server.stop()


def test_files_left_out_by_the_filters_need_no_value(cli: Any, env: dict[str, Any]) -> None:
    write_file(env["src"] / "79800a" / "keep.cbf", b"k")
    write_file(env["src"] / "79800a" / "scratch.tmp", b"t")
    walk(cli, env)
    reconfigure(env, exclude=["*.tmp"])
    result = sync(cli, env)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert statuses(env) == {"79800a": "complete"}
    result = cli("--config", str(env["conf"]), "manifest", "79800a")
    assert result.exit_code == 0, result.stderr
    assert result.stdout_bytes.endswith(b"  keep.cbf\n") and b"scratch" not in result.stdout_bytes


def test_expected_files_are_held_compactly_and_read_back_exactly() -> None:
    import pickle

    from asynchy.jobs import Expected

    rows = [
        (b"a/new\nline", 0, 1, "file", True),
        (b"\xff\xfe", 7, 2, "symlink", False),
        (b"d/x", 2**40, -3, "unverified", True),
    ]
    got = Expected(rows)
    assert list(got) == [r[:4] for r in rows] and len(got) == 3
    assert list(got.has_value()) == [True, False, True]
    again = pickle.loads(pickle.dumps(got))  # as a --parallel worker gets it
    assert list(again) == list(got) and list(again.has_value()) == [True, False, True]
    kept = got.only(lambda path: path != b"\xff\xfe")
    assert [p for p, *_ in kept] == [b"a/new\nline", b"d/x"]
    assert list(kept.has_value()) == [True, True]
    assert list(Expected([r[:4] for r in rows]).has_value()) == [False, False, False]


def test_an_audit_never_reads_outside_the_copy(cli: Any, env: dict[str, Any]) -> None:
    """A path with '..' (never recorded by a walk; a database from elsewhere might hold one)
    counts as missing: the file beside the copy is not opened."""
    copy = copied(cli, env, "79900a", files=1)
    secret = copy.parent / "secret"
    secret.write_bytes(b"not the EPN's")
    value = subprocess.run(["xxh128sum", str(secret)], capture_output=True, check=True).stdout
    rows(
        env["db"],
        "INSERT INTO files (epn, path, size, modified, kind) "
        "SELECT epn, '../secret', 13, modified, 'file' FROM files WHERE epn = '79900a'",
    )
    rows(
        env["db"],
        "INSERT INTO checksums (epn, path, algo, value, size, modified, obtained, recorded_at) "
        "SELECT epn, path, 'xxh128', ?, size, modified, 'transfer', datetime('now') "
        "FROM files WHERE path = '../secret'",
        value.split()[0].decode(),
    )
    result = audit(cli, env, "--json")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["audits"][0]["missing"] == 1
