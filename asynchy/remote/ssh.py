"""Opening an authenticated paramiko connection with strict host-key checking.

The server's key must already be in the ``known_hosts`` file named by the
configuration (no system files, no prompts).  ``accept_new=True`` is the
explicit opt-in that records the key of a host the file does not know yet,
like OpenSSH's ``StrictHostKeyChecking=accept-new``; a *changed* key is always
refused.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from asynchy.config import SshTarget
from asynchy.errors import (
    AuthenticationError,
    ConfigError,
    ConnectionLost,
    HostKeyChanged,
    HostKeyUnknown,
    RemoteError,
)

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger(__name__)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint, as `ssh-keygen -lf` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _known_key_line(name: str, key: paramiko.PKey) -> str:
    return f"{name} {key.get_name()} {key.get_base64()}\n"


class _Policy:
    """Refuse unknown hosts, or record them when the user opted in (never a changed key)."""

    def __init__(self, target: SshTarget, accept_new: bool) -> None:
        self.target = target
        self.accept_new = accept_new

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        kh = self.target.known_hosts
        if not self.accept_new:
            raise HostKeyUnknown(
                f"host key of {hostname} is not in {kh} (server offers {key.get_name()} {fingerprint(key)}): "
                f"check that fingerprint with the facility, then add it to {kh} "
                f"(ssh-keyscan -p {self.target.port} {self.target.host} >> {kh}) "
                "or run once with --accept-new-host-key"
            )
        known = client.get_host_keys().lookup(hostname)
        if known:  # the host is known with other key types only: treat as a change, not as new
            raise HostKeyChanged(
                f"host {hostname} is in {kh} with key type(s) {', '.join(known.keys())} but offers "
                f"{key.get_name()} {fingerprint(key)}; not recording it: verify with the facility"
            )
        kh.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(kh, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as fh:
            fh.write(_known_key_line(hostname, key))
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning(
            "recorded new host key of %s in %s: %s %s",
            hostname,
            kh,
            key.get_name(),
            fingerprint(key),
        )


def _import_paramiko() -> None:
    """Import paramiko without `invoke`: paramiko.config imports it at load time (~70 ms) for
    ``Match exec`` in an ssh_config file, which asynchy never reads (it uses no ssh_config)."""
    if "paramiko" in sys.modules or "invoke" in sys.modules:
        return
    sys.modules["invoke"] = None  # type: ignore[assignment]  # `import invoke` raises ImportError
    try:
        import paramiko  # noqa: F401
    finally:
        del sys.modules["invoke"]


def connect(target: SshTarget, *, accept_new_host_key: bool = False) -> paramiko.SSHClient:
    """An authenticated SSHClient; raises an AsynchyError subclass that says what to fix."""
    _import_paramiko()
    import paramiko

    client = paramiko.SSHClient()
    _load_known_hosts(client, target, accept_new_host_key)
    client.set_missing_host_key_policy(_Policy(target, accept_new_host_key))  # type: ignore[arg-type]
    try:
        client.connect(
            target.host,
            port=target.port,
            username=target.user,
            key_filename=str(target.keypath) if target.keypath else None,
            allow_agent=target.agent is not None,  # settings ssh_agent (auto: without keypath)
            look_for_keys=False,
            timeout=target.timeout,
            banner_timeout=target.timeout,
            auth_timeout=target.timeout,
            channel_timeout=target.timeout,
        )
    except (HostKeyUnknown, HostKeyChanged):
        client.close()
        raise
    except Exception as exc:
        client.close()
        worded = _refusal(exc, target)
        if worded is None:
            raise
        raise worded from None
    transport = client.get_transport()
    assert transport is not None
    transport.set_keepalive(max(5, int(target.timeout // 3)))
    return client


def _load_known_hosts(client: paramiko.SSHClient, target: SshTarget, accept_new: bool) -> None:
    """The one known_hosts file the server's key is checked against (no system files)."""
    kh: Path = target.known_hosts
    if kh.is_file():
        try:
            client.load_host_keys(str(kh))
        except OSError as exc:
            raise ConfigError(f"known_hosts file {kh} is not readable: {exc.strerror}") from None
    elif kh.exists():
        raise ConfigError(f"known_hosts {kh} is not a file; fix known_hosts")
    elif not accept_new:
        raise HostKeyUnknown(
            f"known_hosts file {kh} does not exist, so the host key of {target.known_hosts_name} cannot be "
            f"checked: create it (ssh-keyscan -p {target.port} {target.host} > {kh}, after checking the "
            "fingerprint) or run once with --accept-new-host-key"
        )


def _refusal(exc: Exception, target: SshTarget) -> RemoteError | ConfigError | None:
    """What a failed connect means, worded with its fix (None: not a connection failure)."""
    import paramiko

    name = target.known_hosts_name
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyChanged(
            f"host key of {name} has CHANGED: the server offers {exc.key.get_name()} "
            f"{fingerprint(exc.key)} but {target.known_hosts} has {fingerprint(exc.expected_key)}. "
            "This may be a man-in-the-middle attack. If the facility really changed its key, verify "
            f"the new fingerprint with them and replace the line for {name} in {target.known_hosts}"
        )
    if isinstance(exc, paramiko.PasswordRequiredException):
        return AuthenticationError(
            f"key file {target.keypath} is protected by a passphrase: load it into ssh-agent "
            "(ssh-add) and leave keypath unset, or use a key without a passphrase"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        how = f"key {target.keypath}" if target.keypath else "ssh-agent keys"
        return AuthenticationError(
            f"{name} refused user {target.user!r} with {how} ({exc}): check user and keypath"
        )
    if isinstance(exc, paramiko.SSHException):
        if "No authentication methods available" in str(exc):
            return AuthenticationError(
                "no ssh key to offer: set keypath, or start ssh-agent with a key loaded"
            )
        if target.keypath is not None and re.search(
            r"private key file|not a valid|key format|Unable to load|encountered .* key", str(exc)
        ):
            return AuthenticationError(
                f"key file {target.keypath} cannot be used ({exc}): give a private key "
                "(OpenSSH or PEM format), e.g. one made by ssh-keygen"
            )
        if "protocol banner" in str(exc):
            return ConnectionLost(unreachable(name, no_banner(target.timeout)))
        return ConnectionLost(f"ssh to {name} failed: {exc}")
    if isinstance(exc, socket.gaierror):
        return RemoteError(unresolved(target.host, exc.strerror or str(exc)))
    if isinstance(exc, TimeoutError):
        return ConnectionLost(unreachable(name, no_answer(target.timeout)))
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        causes = {getattr(e, "strerror", None) or str(e) for e in exc.errors.values()}
        return ConnectionLost(unreachable(name, "; ".join(sorted(causes))))
    if isinstance(exc, (OSError, EOFError)):
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return ConnectionLost(unreachable(name, reason))
    if isinstance(exc, ValueError):  # e.g. a key file that is not a private key
        return AuthenticationError(f"key file {target.keypath} cannot be used: {exc}")
    return None


# ------------------------------------------------------------------ one wording for "cannot reach"
# walk (paramiko) and sync (OpenSSH, through rsync) say the same line when the server cannot be
# reached (docs/failures.md): "cannot reach [host]:port: Connection refused", and the same for a
# name that does not resolve; each command adds what it did about it.


def unreachable(name: str, reason: str) -> str:
    return f"cannot reach {name}: {reason}"


def unresolved(host: str, reason: str, fix: str = "check host") -> str:
    return f"cannot resolve host {host!r}: {reason}; {fix}"


def no_answer(timeout: float) -> str:
    return f"no answer within {timeout:g} s"


def no_banner(timeout: float) -> str:
    return f"connected, but no SSH banner within {timeout:g} s (is it an ssh server?)"


_SSH_CONNECT = re.compile(r"ssh: connect to host \S+ port \d+: (.+)$")
_SSH_RESOLVE = re.compile(r"ssh: Could not resolve hostname (\S+?): (.+)$")


def worded_link(target: SshTarget, said: str, charged: str) -> str:
    """OpenSSH's line about a connection that failed, in the walk's words (see ``unreachable``),
    with ``charged`` (what the command did about it) before the fix."""
    name = target.known_hosts_name
    m = _SSH_RESOLVE.search(said)
    if m:
        return unresolved(target.host, m.group(2).strip().rstrip("."), f"{charged}: check host")
    return (
        f"{_worded_connect(target, name, said)}; {charged}: run sync again once the server answers"
    )


def _worded_connect(target: SshTarget, name: str, said: str) -> str:
    m = _SSH_CONNECT.search(said)
    if m:
        reason = m.group(1).strip()
        if reason.lower() == "connection timed out":
            reason = no_answer(target.timeout)
        return unreachable(name, reason)
    if "banner exchange" in said:
        return unreachable(name, no_banner(target.timeout))
    return unreachable(name, said)
