"""The SFTP lister against a real OpenSSH sshd: host keys, authentication, faults, hostile servers."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sshd import Sshd, keygen
from tcpproxy import Proxy
from test_tree_contract import sftp_target
from trees import build_epns

from asynchy.errors import (
    AuthenticationError,
    ConnectionLost,
    HostKeyChanged,
    HostKeyUnknown,
    SourceNotFound,
)
from asynchy.remote.base import EpnDone, Files
from asynchy.remote.sftp import SftpTree


def fingerprint_of(pub: Path) -> str:
    import subprocess

    out = subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[1]


def test_unknown_host_key_is_refused_naming_host_fingerprint_and_file(
    sshd: Sshd, served: Path, tmp_path: Path
) -> None:
    """A known_hosts file without the server: refused, with what the user needs to decide."""
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    tree = SftpTree(sftp_target(sshd, known_hosts=kh), str(served))
    with pytest.raises(HostKeyUnknown) as info:
        tree.list_epns()
    message = str(info.value)
    assert sshd.known_hosts_name in message
    assert fingerprint_of(sshd.host_key.with_suffix(".pub")) in message
    assert str(kh) in message
    assert kh.read_text() == ""  # nothing recorded


def test_missing_known_hosts_file_is_refused(sshd: Sshd, served: Path, tmp_path: Path) -> None:
    """No known_hosts file at all: refused with how to create it; nothing is written."""
    kh = tmp_path / "nope" / "known_hosts"
    tree = SftpTree(sftp_target(sshd, known_hosts=kh), str(served))
    with pytest.raises(HostKeyUnknown, match="does not exist"):
        tree.list_epns()
    assert not kh.exists()


def test_changed_host_key_is_refused_as_possible_attack(
    sshd: Sshd, served: Path, tmp_path: Path
) -> None:
    """known_hosts holds another key for this host: refused, both fingerprints shown."""
    other = tmp_path / "other_key"
    keygen(other)
    kind, b64 = other.with_suffix(".pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{sshd.known_hosts_name} {kind} {b64}\n")
    tree = SftpTree(sftp_target(sshd, known_hosts=kh), str(served))
    with pytest.raises(HostKeyChanged) as info:
        tree.list_epns()
    message = str(info.value)
    assert "CHANGED" in message
    assert fingerprint_of(sshd.host_key.with_suffix(".pub")) in message
    assert fingerprint_of(other.with_suffix(".pub")) in message


def test_accept_new_records_a_new_key_but_never_a_changed_one(
    sshd: Sshd, served: Path, tmp_path: Path
) -> None:
    """--accept-new-host-key: like OpenSSH accept-new; a later different key is still refused."""
    kh = tmp_path / "ssh" / "known_hosts"
    tree = SftpTree(sftp_target(sshd, known_hosts=kh), str(served), accept_new_host_key=True)
    tree.list_epns()
    tree.close()
    assert kh.read_text() == sshd.host_key_line()
    # The recorded key now verifies the server without the opt-in.
    SftpTree(sftp_target(sshd, known_hosts=kh), str(served)).list_epns()
    # A different key for the same host is refused even with the opt-in.
    other = tmp_path / "other_key"
    keygen(other)
    kind, b64 = other.with_suffix(".pub").read_text().split()[:2]
    kh.write_text(f"{sshd.known_hosts_name} {kind} {b64}\n")
    with pytest.raises(HostKeyChanged):
        SftpTree(
            sftp_target(sshd, known_hosts=kh), str(served), accept_new_host_key=True
        ).list_epns()
    assert kh.read_text() == f"{sshd.known_hosts_name} {kind} {b64}\n"


def test_key_the_server_does_not_accept(sshd: Sshd, served: Path, tmp_path: Path) -> None:
    """A valid key that is not authorized: an authentication error naming user and key."""
    stranger = tmp_path / "stranger"
    keygen(stranger)
    tree = SftpTree(sftp_target(sshd, keypath=stranger), str(served))
    with pytest.raises(AuthenticationError, match=str(stranger)):
        tree.list_epns()


def test_src_prefix_that_does_not_exist(sshd: Sshd, served: Path) -> None:
    tree = SftpTree(sftp_target(sshd), str(served / "nothing-here"))
    with pytest.raises(SourceNotFound, match="nothing-here"):
        tree.list_epns()


def test_refused_connection_is_connection_lost(sshd: Sshd, served: Path) -> None:
    """Nobody listening: a ConnectionLost the walk can retry, not a traceback."""
    from sshd import free_port

    tree = SftpTree(sftp_target(sshd, port=free_port()), str(served))
    with pytest.raises(
        ConnectionLost, match=r"cannot reach \[127\.0\.0\.1\]:\d+: Connection refused"
    ):
        tree.list_epns()


def _walk_all(tree: SftpTree, epns: list[bytes]) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for ev in tree.walk(epns):
        if isinstance(ev, Files):
            counts[ev.epn] = counts.get(ev.epn, 0) + len(ev.entries)
        elif isinstance(ev, EpnDone):
            counts.setdefault(ev.epn, 0)
    return counts


def test_silent_link_hits_the_deadline(sshd: Sshd, served: Path) -> None:
    """A link that stops answering (no RST, no FIN) raises ConnectionLost within the deadline."""
    build_epns(served, 3, 50)
    with Proxy(sshd.port) as proxy:
        tree = SftpTree(
            sftp_target(
                sshd, port=proxy.port, known_hosts=sshd.known_hosts_via(proxy.port), timeout=1.5
            ),
            str(served),
        )
        top, _ = tree.list_epns()
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match="no answer"):
            _walk_all(tree, [t.name for t in top])
        assert time.monotonic() - started < 6
        tree.close()


def test_after_connection_lost_walk_reconnects(sshd: Sshd, served: Path) -> None:
    """Calling walk again after ConnectionLost opens a new connection and lists everything."""
    expected = build_epns(served, 4, 300)
    with Proxy(sshd.port) as proxy:
        tree = SftpTree(
            sftp_target(
                sshd, port=proxy.port, known_hosts=sshd.known_hosts_via(proxy.port), timeout=5
            ),
            str(served),
        )
        tree.list_epns()
        proxy.cut_all()
        with pytest.raises(ConnectionLost):
            _walk_all(tree, sorted(expected))
        counts = _walk_all(tree, sorted(expected))
        assert counts == {epn: len(files) for epn, files in expected.items()}
        assert proxy.connections == 2
        tree.close()


@pytest.fixture
def hostile_sshd(served_base: Path, tmp_path: Path) -> Sshd:
    script_dir = served_base / f"hostile-{os.getpid()}-{threading.get_ident()}"
    script_dir.mkdir(exist_ok=True)
    os.chmod(script_dir, 0o777)
    script = script_dir / "hostile-sftp-server"
    shutil.copy(Path(__file__).parent / "bin" / "hostile-sftp-server", script)
    os.chmod(script, 0o755)
    log = script_dir / "requests.log"
    wrapper = script_dir / "run"
    wrapper.write_text(f"#!/bin/sh\nHOSTILE_LOG={log} exec {script}\n")
    os.chmod(wrapper, 0o755)
    server = Sshd(served_base / "hostile-sshd", subsystem=str(wrapper)).start()
    server.request_log = log  # type: ignore[attr-defined]
    yield server  # type: ignore[misc]
    server.stop()


def test_hostile_server_names_are_rejected_never_followed(hostile_sshd: Sshd) -> None:
    """'/', NUL, '..' and empty names from a server are walk errors; nothing outside the EPN is asked for."""
    tree = SftpTree(sftp_target(hostile_sshd), "/srv/facility")
    files: list[bytes] = []
    issues: list[tuple[bytes, str]] = []
    for ev in tree.walk([b"12345a"]):
        if isinstance(ev, Files):
            files += [e.path for e in ev.entries]
        else:
            issues += [(i.path, i.kind) for i in ev.issues]
    tree.close()
    assert sorted(files) == [b"good.cbf", b"sub/good.cbf"]
    bad = sorted(p for p, kind in issues if kind == "bad-name")
    assert bad == sorted(
        [
            b"../escape",
            b"etc/passwd",
            b"nul\x00byte",
            b"",
            b"sub/../escape",
            b"sub/etc/passwd",
            b"sub/nul\x00byte",
            b"sub/",
        ]
    )
    requested = hostile_sshd.request_log.read_bytes().splitlines()  # type: ignore[attr-defined]
    assert sorted(requested) == sorted(
        b"OPENDIR /srv/facility/12345a" + tail for tail in (b"", b"/sub", b"/gone", b"/locked")
    )


def test_folder_that_vanishes_or_is_locked_is_an_issue_of_its_epn(hostile_sshd: Sshd) -> None:
    """A folder listed by its parent but gone (or forbidden) when opened: recorded, the walk goes on."""
    tree = SftpTree(sftp_target(hostile_sshd), "/srv/facility")
    issues = [
        (i.path, i.kind)
        for ev in tree.walk([b"12345a"])
        if isinstance(ev, EpnDone)
        for i in ev.issues
    ]
    tree.close()
    assert (b"gone", "vanished") in issues
    assert (b"locked", "permission") in issues


def test_agent_is_used_when_no_key_file_is_set(
    sshd: Sshd, served: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keypath unset: the keys of a running ssh-agent are offered (a real ssh-agent)."""
    import subprocess

    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(
            ["ssh-add", "-q", str(sshd.client_key)], env=env, check=True, capture_output=True
        )
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        target = sftp_target(sshd, keypath=None, agent=str(sock))  # as ssh_agent: auto gives it
        top, _ = SftpTree(target, str(served)).list_epns()
        assert top == []
        with pytest.raises(AuthenticationError):  # without it the agent is never asked
            SftpTree(sftp_target(sshd, keypath=None), str(served)).list_epns()
    finally:
        agent.terminate()
        agent.wait()


def test_no_key_and_no_agent(sshd: Sshd, served: Path) -> None:
    with pytest.raises(AuthenticationError, match="no ssh key to offer"):
        SftpTree(sftp_target(sshd, keypath=None), str(served)).list_epns()


def test_key_with_passphrase_says_use_the_agent(sshd: Sshd, served: Path, tmp_path: Path) -> None:
    import subprocess

    key = tmp_path / "locked_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret words", "-f", str(key)], check=True
    )
    with pytest.raises(AuthenticationError, match="protected by a passphrase"):
        SftpTree(sftp_target(sshd, keypath=key), str(served)).list_epns()


def test_hostile_names_recorded_in_postgresql(
    hostile_sshd: Sshd, tmp_path: Path, cli: Any, pg_url: str
) -> None:
    """Bad names end up in walk_errors, escaped so that even NUL fits a PostgreSQL text column."""
    import yaml
    from sqlalchemy import create_engine, text

    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(hostile_sshd.settings(src_prefix="/srv/facility", db=pg_url)))
    result = cli("--config", str(conf), "walk", "--epn", "12345a")
    assert result.exit_code == 3
    assert "sub/nul\\x00byte: name contains NUL (bad-name)" in result.stdout
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        bad = {
            r[0] for r in conn.execute(text("SELECT path FROM walk_errors WHERE kind = 'bad-name'"))
        }
        files = {r[0] for r in conn.execute(text("SELECT path FROM files"))}
    engine.dispose()
    assert "nul\\x00byte" in bad and "../escape" in bad
    assert files == {"good.cbf", "sub/good.cbf"}


def test_connect_ahead_lists_and_hands_over_its_error(
    sshd: Sshd, served: Path, tmp_path: Path
) -> None:
    """connect_ahead opens the connection in the background: the first request uses it; an error
    of the background connect (here an unknown host key) is raised by that first request."""
    tree = SftpTree(sftp_target(sshd), str(served))
    tree.connect_ahead()
    ahead = tree._ahead
    assert ahead is not None
    top, issues = tree.list_epns()
    assert tree._ahead is None and tree._proto is not None
    assert sorted(e.name for e in top) == sorted(p.name.encode() for p in served.iterdir())
    assert not issues
    tree.close()

    kh = tmp_path / "known_hosts"
    kh.write_text("")
    refused = SftpTree(sftp_target(sshd, known_hosts=kh), str(served))
    refused.connect_ahead()
    with pytest.raises(HostKeyUnknown, match="is not in"):
        refused.list_epns()
    refused.close()


def test_connect_ahead_closed_unused_closes_its_connection(sshd: Sshd, served: Path) -> None:
    """A tree closed before its first request (the database could not be opened, say) never waits
    for the background connect, and that connection is closed when it is ready."""
    tree = SftpTree(sftp_target(sshd), str(served))
    tree.connect_ahead()
    ahead = tree._ahead
    assert ahead is not None
    started = time.monotonic()
    tree.close()
    assert time.monotonic() - started < 0.5
    assert ahead._done.wait(30)
    assert ahead._value is None  # handed to nobody
    client = ahead._closed_client
    assert client is not None
    transport = client.get_transport()
    assert transport is None or not transport.is_active()


def test_walk_loads_neither_invoke_nor_the_postgresql_dialect(
    sshd: Sshd, served: Path, tmp_path: Path
) -> None:
    """Start-up (docs/benchmarks.md): a walk into SQLite imports neither paramiko's optional
    `invoke` nor SQLAlchemy's PostgreSQL dialect (with asyncio)."""
    import subprocess
    import sys

    probe = (
        "import sys, runpy\n"
        "sys.argv = ['asynchy', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('asynchy', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "loaded = {m for m in ('invoke', 'sqlalchemy.dialects.postgresql', 'paramiko') if m in sys.modules}\n"
        "print(sorted(loaded))\n"
    )
    opts = sshd.settings(db=str(tmp_path / "w.db"), known_hosts=sshd.known_hosts)
    args = [a for k, v in opts.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    args += ["-q", "walk", "--src-prefix", str(served)]
    out = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "['paramiko']"
