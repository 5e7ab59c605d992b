"""A real OpenSSH sshd on 127.0.0.1 for tests and benchmarks.

Fresh host and client keys, its own known_hosts and authorized_keys, a random
port.  As root, sshd logs in an unprivileged account (``asynchy-test``,
created when missing) so that permission-denied folders are real; as any
other user it runs unprivileged and logs in that same user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

TEST_USER = "asynchy-test"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
# sshd dies with the test run even if pytest is killed (no servers left listening).
SETPRIV = [p, "--pdeathsig", "TERM", "--"] if (p := shutil.which("setpriv")) else []


def ensure_test_user() -> pwd.struct_passwd:
    """The account the tests' sshd logs in (root only creates it)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/bin/sh",
                "--password",
                "*",
                TEST_USER,
            ],
            check=True,
        )
        return pwd.getpwnam(TEST_USER)


def processes() -> dict[int, tuple[int, bytes]]:
    """Every process on the machine now: pid -> (parent pid, command line)."""
    found: dict[int, tuple[int, bytes]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            found[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
        except (OSError, IndexError, ValueError):
            continue
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "asynchy-test", "-f", str(path)],
        check=True,
    )


@dataclass
class Sshd:
    workdir: Path
    subsystem: str = "internal-sftp"
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)
        self.account = ensure_test_user()
        self.user = self.account.pw_name
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        self.client_key = self.workdir / "client_key"
        self.authorized_keys = self.workdir / "authorized_keys"
        self.known_hosts = self.workdir / "known_hosts"
        self.config = self.workdir / "sshd_config"
        self.log = self.workdir / "sshd.log"
        if not self.host_key.exists():
            keygen(self.host_key)
        if not self.client_key.exists():
            keygen(self.client_key)
        shutil.copy(self.client_key.with_suffix(".pub"), self.authorized_keys)
        os.chmod(self.authorized_keys, 0o644)

    @property
    def known_hosts_name(self) -> str:
        return f"[{self.host}]:{self.port}"

    def host_key_line(self) -> str:
        kind, b64 = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"{self.known_hosts_name} {kind} {b64}\n"

    def known_hosts_via(self, port: int) -> Path:
        """A known_hosts file naming this server's key under another port (a proxy in front of it)."""
        kind, b64 = self.host_key.with_suffix(".pub").read_text().split()[:2]
        path = self.workdir / f"known_hosts.{port}"
        path.write_text(f"[{self.host}]:{port} {kind} {b64}\n")
        return path

    def _write_config(self) -> None:
        self.config.write_text(
            f"""Port {self.port}
ListenAddress {self.host}
HostKey {self.host_key}
PidFile {self.workdir}/sshd.pid
AuthorizedKeysFile {self.authorized_keys}
AllowUsers {self.user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin no
MaxStartups 100:30:200
MaxSessions 100
LogLevel VERBOSE
Subsystem sftp {self.subsystem}
"""
        )

    def start(self) -> Sshd:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        last = ""
        for _ in range(10):
            self.port = free_port()
            self._write_config()
            self.known_hosts.write_text(self.host_key_line())
            log = open(self.log, "ab")
            self.proc = subprocess.Popen(
                [*SETPRIV, SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log
            )
            log.close()
            if self._wait_ready():
                return self
            self.stop()
            last = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"sshd did not start:\n{last}")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def restart(self) -> None:
        """Start again on the same port (after stop)."""
        assert self.proc is None and self.port
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [*SETPRIV, SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log
        )
        log.close()
        if not self._wait_ready():
            raise RuntimeError(
                "sshd did not restart: " + self.log.read_text(errors="replace")[-2000:]
            )

    def sessions(self) -> dict[int, bytes]:
        """Every process serving a connection (the listener's descendants): pid -> command line."""
        assert self.proc is not None
        table = processes()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        found: dict[int, bytes] = {}
        todo = list(children.get(self.proc.pid, []))
        while todo:
            pid = todo.pop()
            found[pid] = table[pid][1]
            todo += children.get(pid, [])
        return found

    def kill_sessions(self) -> int:
        """SIGKILL every process serving a connection (the server going away mid-transfer)."""
        victims = self.sessions()
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        return len(victims)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def settings(self, **extra: object) -> dict[str, object]:
        """Config values that reach this server."""
        values: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "keypath": str(self.client_key),
            "known_hosts": str(self.known_hosts),
        }
        values.update(extra)
        return values
