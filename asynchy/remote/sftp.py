"""The SFTP lister: a pipelined SFTP v3 directory reader over a paramiko channel.

paramiko does the ssh part (host keys, authentication, encryption).  The SFTP
requests are asynchronous by design; this module keeps many ``OPENDIR`` /
``READDIR`` requests in flight on one channel, so the walk costs a few round
trips per tree *level*, not per folder or per file, and every ``READDIR``
answer already carries each entry's attributes (``lstat``: symlinks are
reported, never followed).

It reads names as raw bytes: paramiko's own SFTP client decodes names as
strict UTF-8 and aborts a whole listing on one non-UTF-8 name.  Server-sent
names are checked (``names.check_component``) before use, so a hostile server
cannot steer the walk with ``/``, NUL or ``..``.

Every wait for the server has a deadline (``timeout``); a silent or dropped
connection raises ConnectionLost, and the next ``walk`` call reconnects.
"""

from __future__ import annotations

import logging
import stat
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from asynchy.config import SshTarget
from asynchy.errors import ConnectionLost, RemoteError, SourceNotFound
from asynchy.names import check_component
from asynchy.remote import ssh
from asynchy.remote.base import (
    FILES_CHUNK,
    Entry,
    EpnDone,
    Files,
    Issue,
    IssueKind,
    TopEntry,
    WalkEvent,
)

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger(__name__)

# SFTP v3 (draft-ietf-secsh-filexfer-02) packet types and status codes.
FXP_INIT, FXP_VERSION = 1, 2
FXP_CLOSE, FXP_OPENDIR, FXP_READDIR = 4, 11, 12
FXP_STATUS, FXP_HANDLE, FXP_NAME = 101, 102, 104
FX_OK, FX_EOF, FX_NO_SUCH_FILE, FX_PERMISSION_DENIED = 0, 1, 2, 3
ATTR_SIZE, ATTR_UIDGID, ATTR_PERMISSIONS, ATTR_ACMODTIME = 0x1, 0x2, 0x4, 0x8
ATTR_EXTENDED = 0x80000000

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HDR = struct.Struct(">IBI")  # length, type, request id
_U32x2 = struct.Struct(">II")

READ_AHEAD = 3  # READDIR requests kept in flight per open folder
DEFAULT_WORKERS = 32
WINDOW = 16 * 1024 * 1024


class _Protocol:
    """Framing of SFTP packets on a channel; requests are buffered until ``flush``."""

    def __init__(self, chan: paramiko.Channel, timeout: float, where: str) -> None:
        self.chan = chan
        self.timeout = timeout
        self.where = where
        chan.settimeout(timeout)
        self.inbuf = bytearray()
        self.pos = 0
        self.out = bytearray()
        self.next_id = 1

    def init(self) -> None:
        self.out += _U32.pack(5) + bytes([FXP_INIT]) + _U32.pack(3)
        self.flush()
        length = self._need_u32()
        body = self._take(length)
        if body[0] != FXP_VERSION:
            raise ConnectionLost(
                f"{self.where} did not answer like an SFTP server (packet type {body[0]})"
            )

    def request(self, kind: int, payload: bytes) -> int:
        rid = self.next_id
        self.next_id = (rid + 1) & 0xFFFFFFFF or 1
        self.out += _HDR.pack(len(payload) + 5, kind, rid) + payload
        return rid

    def flush(self) -> None:
        if not self.out:
            return
        data = bytes(self.out)
        self.out.clear()
        try:
            self.chan.sendall(data)
        except TimeoutError:
            raise ConnectionLost(
                f"{self.where} stopped accepting requests for {self.timeout:g} s"
            ) from None
        except (OSError, EOFError) as exc:
            raise ConnectionLost(
                f"connection to {self.where} lost: {exc or type(exc).__name__}"
            ) from None

    def _fill(self) -> None:
        if self.pos > 1 << 20:
            del self.inbuf[: self.pos]
            self.pos = 0
        try:
            data = self.chan.recv(1 << 18)
        except TimeoutError:
            raise ConnectionLost(f"no answer from {self.where} within {self.timeout:g} s") from None
        except (OSError, EOFError) as exc:
            raise ConnectionLost(
                f"connection to {self.where} lost: {exc or type(exc).__name__}"
            ) from None
        if not data:
            raise ConnectionLost(f"connection to {self.where} closed by the server")
        self.inbuf += data

    def _need_u32(self) -> int:
        while len(self.inbuf) - self.pos < 4:
            self._fill()
        (value,) = _U32.unpack_from(self.inbuf, self.pos)
        self.pos += 4
        return int(value)

    def _take(self, n: int) -> bytes:
        while len(self.inbuf) - self.pos < n:
            self._fill()
        body = bytes(self.inbuf[self.pos : self.pos + n])
        self.pos += n
        return body

    def read(self) -> tuple[int, int, bytes]:
        """The next response: (type, request id, body after the id)."""
        length = self._need_u32()
        if length < 5 or length > 1 << 26:
            raise ConnectionLost(f"{self.where} sent a malformed SFTP packet (length {length})")
        body = self._take(length)
        (rid,) = _U32.unpack_from(body, 1)
        return body[0], rid, body[5:]


def _string(data: bytes, off: int) -> tuple[bytes, int]:
    (n,) = _U32.unpack_from(data, off)
    off += 4
    return data[off : off + n], off + n


def parse_status(body: bytes) -> tuple[int, str]:
    (code,) = _U32.unpack_from(body, 0)
    try:
        msg, _ = _string(body, 4)
        text = msg.decode("utf-8", "replace")
    except struct.error:
        text = ""
    return int(code), text or f"status {code}"


def iter_names(body: bytes) -> Iterator[tuple[bytes, int, int, int]]:
    """SSH_FXP_NAME body -> (name, size, mtime, mode; -1 when the server sent no mode)."""
    unpack_u32 = _U32.unpack_from
    unpack_u64 = _U64.unpack_from
    unpack_2u32 = _U32x2.unpack_from
    (count,) = unpack_u32(body, 0)
    off = 4
    for _ in range(count):
        (n,) = unpack_u32(body, off)
        off += 4
        name = body[off : off + n]
        off += n
        (n,) = unpack_u32(body, off)  # longname: ls -l text, not used
        off += 4 + n
        (flags,) = unpack_u32(body, off)
        off += 4
        size = 0
        mode = -1
        mtime = 0
        if flags & ATTR_SIZE:
            (size,) = unpack_u64(body, off)
            off += 8
        if flags & ATTR_UIDGID:
            off += 8
        if flags & ATTR_PERMISSIONS:
            (mode,) = unpack_u32(body, off)
            off += 4
        if flags & ATTR_ACMODTIME:
            (_atime, mtime) = unpack_2u32(body, off)
            off += 8
        if flags & ATTR_EXTENDED:
            (n_ext,) = unpack_u32(body, off)
            off += 4
            for _ in range(2 * n_ext):
                (n,) = unpack_u32(body, off)
                off += 4 + n
        yield name, size, mtime, mode


def _status_kind(code: int, at_root: bool) -> IssueKind:
    if code == FX_PERMISSION_DENIED:
        return "permission"
    if code == FX_NO_SUCH_FILE:
        return "missing" if at_root else "vanished"
    return "error"


@dataclass(slots=True)
class _Epn:
    name: bytes
    pending: int = 0  # folders queued or open
    entries: list[Entry] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)


@dataclass(slots=True)
class _Dir:
    epn: _Epn
    rel: bytes
    handle: bytes = b""
    reads: int = 0  # READDIR requests in flight
    eof: bool = False


class _Ahead:
    """A connection being opened in a background thread (SftpTree.connect_ahead)."""

    def __init__(self, open_: Callable[[], tuple[paramiko.SSHClient, _Protocol]]) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._abandoned = False
        self._value: tuple[paramiko.SSHClient, _Protocol] | None = None
        self._error: BaseException | None = None
        self._closed_client: paramiko.SSHClient | None = None  # an abandoned one, for the tests
        # Not a daemon: at exit (a command that failed before it used the connection) Python waits
        # for the handshake instead of ending the thread inside cryptography's native code, which
        # aborted the process (SIGABRT, "FATAL: exception not rethrown") after its error line.
        threading.Thread(target=self._run, args=(open_,), name="sftp-connect").start()

    def _run(self, open_: Callable[[], tuple[paramiko.SSHClient, _Protocol]]) -> None:
        try:
            value = open_()
        except BaseException as exc:  # handed to the thread that uses the connection
            self._error = exc
        else:
            with self._lock:
                if self._abandoned:  # nobody will use it: close it here
                    value[0].close()
                    self._closed_client = value[0]
                else:
                    self._value = value
        self._done.set()

    def result(self) -> tuple[paramiko.SSHClient, _Protocol]:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value

    def abandon(self) -> None:
        """Close the connection when it is ready (or now, if it is); never waits (the process
        does, at exit, as the thread is not a daemon)."""
        with self._lock:
            self._abandoned = True
            value, self._value = self._value, None
        if value is not None:
            value[0].close()
            self._closed_client = value[0]


class SftpTree:
    """The Tree protocol over SFTP: ``prefix/<epn>/...`` on the facility's server."""

    def __init__(
        self,
        target: SshTarget,
        prefix: str,
        *,
        workers: int = DEFAULT_WORKERS,
        accept_new_host_key: bool = False,
    ) -> None:
        self.target = target
        raw = prefix.encode("utf-8", "surrogateescape")
        self.prefix = raw.rstrip(b"/") if raw.strip(b"/") else b"/"
        self.workers = max(1, workers)
        self.accept_new_host_key = accept_new_host_key
        self.source = f"sftp://{target.user}@{target.known_hosts_name}{prefix}"
        self._client: paramiko.SSHClient | None = None
        self._proto: _Protocol | None = None
        self._ahead: _Ahead | None = None

    # -- connection -------------------------------------------------------------
    def connect(self) -> None:
        self.close()
        self._client, self._proto = self._open()
        # After a user's first accept-new, the key is known: never accept another one silently.
        self.accept_new_host_key = False

    def connect_ahead(self) -> None:
        """Start connecting in a background thread (paramiko's import and the ssh handshake then
        overlap the caller's own start-up); the first request waits for it and raises its error."""
        if self._proto is None and self._ahead is None:
            self._ahead = _Ahead(self._open)

    def _open(self) -> tuple[paramiko.SSHClient, _Protocol]:
        client = ssh.connect(self.target, accept_new_host_key=self.accept_new_host_key)
        where = self.target.known_hosts_name
        transport = client.get_transport()
        assert transport is not None
        # paramiko's invoke_subsystem waits without a deadline: close the transport if it takes too long.
        watchdog = threading.Timer(self.target.timeout, transport.close)
        watchdog.daemon = True
        watchdog.start()
        try:
            chan = transport.open_session(window_size=WINDOW, timeout=self.target.timeout)
            chan.invoke_subsystem("sftp")
            proto = _Protocol(chan, self.target.timeout, where)
            proto.init()
        except ConnectionLost:
            client.close()
            raise
        except Exception as exc:  # paramiko raises SSHException, EOFError, socket errors here
            client.close()
            if watchdog.finished.is_set():
                raise ConnectionLost(
                    f"no answer from {where} within {self.target.timeout:g} s"
                ) from None
            raise ConnectionLost(
                f"cannot start SFTP on {where}: {exc or type(exc).__name__}"
            ) from None
        finally:
            watchdog.cancel()
        return client, proto

    def _session(self) -> _Protocol:
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            self._client, self._proto = ahead.result()
            self.accept_new_host_key = False
        if self._proto is None:
            self.connect()
        assert self._proto is not None
        return self._proto

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.abandon()
            self._ahead = None
        if self._client is not None:
            self._client.close()
        self._client, self._proto = None, None

    def _path(self, *parts: bytes) -> bytes:
        base = b"" if self.prefix == b"/" else self.prefix
        return b"/".join((base, *(p for p in parts if p)))

    # -- the top folder -----------------------------------------------------------
    def list_epns(self) -> tuple[list[TopEntry], list[Issue]]:
        proto = self._session()
        try:
            top: list[TopEntry] = []
            issues: list[Issue] = []
            path = self.prefix
            rid = proto.request(FXP_OPENDIR, _U32.pack(len(path)) + path)
            proto.flush()
            kind, got, body = proto.read()
            self._expect(got, rid)
            if kind == FXP_STATUS:
                _code, msg = parse_status(body)
                raise SourceNotFound(
                    f"src_prefix {path.decode('utf-8', 'replace')} is not a readable folder on "
                    f"{self.target.known_hosts_name}: {msg}; fix src_prefix"
                )
            handle, _ = _string(body, 0)
            hpayload = _U32.pack(len(handle)) + handle
            while True:
                rid = proto.request(FXP_READDIR, hpayload)
                proto.flush()
                kind, got, body = proto.read()
                self._expect(got, rid)
                if kind == FXP_STATUS:
                    code, msg = parse_status(body)
                    if code != FX_EOF:
                        raise RemoteError(
                            f"listing {path.decode('utf-8', 'replace')} failed: {msg}"
                        )
                    break
                for name, _size, mtime, mode in iter_names(body):
                    if name in (b".", b".."):
                        continue
                    problem = check_component(name)
                    if problem:
                        issues.append(Issue(name, "bad-name", problem))
                        continue
                    top.append(TopEntry(name, mtime, mode >= 0 and stat.S_ISDIR(mode)))
            proto.request(FXP_CLOSE, hpayload)
            proto.flush()
            proto.read()
            return top, issues
        except ConnectionLost:
            self.close()
            raise

    @staticmethod
    def _expect(got: int, rid: int) -> None:
        if got != rid:
            raise ConnectionLost(f"SFTP server answered request {got}, expected {rid}")

    # -- the walk -------------------------------------------------------------------
    def walk(self, epns: Sequence[bytes]) -> Iterator[WalkEvent]:
        proto = self._session()
        finished = False
        try:
            yield from self._walk(proto, epns)
            finished = True
        finally:
            if not finished:  # requests may still be in flight: this session cannot be reused
                self.close()

    def _walk(self, proto: _Protocol, epns: Sequence[bytes]) -> Iterator[WalkEvent]:
        walker = _Walker(self, proto, epns)
        while walker.start_more():
            proto.flush()
            walker.answer(*proto.read())
            yield from walker.take_events()

    def _take_names(self, d: _Dir, body: bytes, queue: deque[_Dir]) -> None:
        """One SSH_FXP_NAME answer -> entries, sub-folders to list, and issues (the hot loop)."""
        e = d.epn
        prefix = d.rel + b"/" if d.rel else b""
        append = e.entries.append
        for name, size, mtime, mode in iter_names(body):
            if name == b"." or name == b"..":
                continue
            if b"/" in name or b"\x00" in name or not name:
                e.issues.append(
                    Issue(prefix + name, "bad-name", check_component(name) or "bad name")
                )
                continue
            fmt = mode & 0o170000
            if fmt == stat.S_IFREG:
                append(Entry(prefix + name, size, mtime, "file"))
            elif fmt == stat.S_IFDIR:
                e.pending += 1
                queue.appendleft(_Dir(e, prefix + name))
            elif fmt == stat.S_IFLNK:
                append(Entry(prefix + name, size, mtime, "symlink"))
            elif mode < 0:
                e.issues.append(Issue(prefix + name, "error", "server sent no file type"))


class _Walker:
    """One walk's state: up to ``workers`` EPNs and folders open at once, ``READ_AHEAD`` READDIR
    requests in flight per folder, every reply matched to its request by id."""

    def __init__(self, tree: SftpTree, proto: _Protocol, epns: Sequence[bytes]) -> None:
        self.tree = tree
        self.request = proto.request
        self.todo = deque(epns)
        self.queue: deque[_Dir] = deque()  # folders to open; an EPN's sub-folders go first
        self.inflight: dict[int, tuple[int, _Dir]] = {}
        self.open_dirs = 0
        self.live_epns = 0
        self.events: list[WalkEvent] = []

    def start_more(self) -> bool:
        """Start EPNs and open folders up to the limits; False when nothing is left to wait for."""
        workers = self.tree.workers
        while self.todo and self.live_epns < workers and len(self.queue) < workers:
            self.live_epns += 1
            self.queue.append(_Dir(_Epn(self.todo.popleft(), pending=1), b""))
        while self.queue and self.open_dirs < workers:
            d = self.queue.popleft()
            path = self.tree._path(d.epn.name, d.rel)
            self.inflight[self.request(FXP_OPENDIR, _U32.pack(len(path)) + path)] = (FXP_OPENDIR, d)
            self.open_dirs += 1
        return bool(self.inflight)

    def answer(self, kind: int, rid: int, body: bytes) -> None:
        try:
            op, d = self.inflight.pop(rid)
        except KeyError:
            raise ConnectionLost(f"SFTP server answered unknown request {rid}") from None
        if op == FXP_OPENDIR:
            self._opened(d, kind, body)
        elif op == FXP_READDIR:
            self._read(d, kind, body)
        # FXP_CLOSE replies need nothing.
        if len(d.epn.entries) >= FILES_CHUNK and d.epn.pending:
            self.events.append(Files(d.epn.name, d.epn.entries))
            d.epn.entries = []

    def take_events(self) -> list[WalkEvent]:
        events, self.events = self.events, []
        self.live_epns -= sum(1 for ev in events if isinstance(ev, EpnDone))
        return events

    def _opened(self, d: _Dir, kind: int, body: bytes) -> None:
        if kind == FXP_HANDLE:
            d.handle, _ = _string(body, 0)
            for _ in range(READ_AHEAD):
                self._readdir(d)
            return
        code, msg = parse_status(body) if kind == FXP_STATUS else (-1, f"unexpected reply {kind}")
        d.epn.issues.append(Issue(d.rel, _status_kind(code, d.rel == b""), msg))
        self._finish(d)

    def _read(self, d: _Dir, kind: int, body: bytes) -> None:
        d.reads -= 1
        if kind == FXP_NAME:
            self.tree._take_names(d, body, self.queue)
            if not d.eof:
                self._readdir(d)
        else:
            code, msg = (
                parse_status(body) if kind == FXP_STATUS else (-1, f"unexpected reply {kind}")
            )
            if code != FX_EOF and not d.eof:
                d.epn.issues.append(Issue(d.rel, "error", f"reading the folder failed: {msg}"))
            d.eof = True
        if d.eof and d.reads == 0:
            self.inflight[self.request(FXP_CLOSE, _U32.pack(len(d.handle)) + d.handle)] = (
                FXP_CLOSE,
                d,
            )
            self._finish(d)

    def _readdir(self, d: _Dir) -> None:
        self.inflight[self.request(FXP_READDIR, _U32.pack(len(d.handle)) + d.handle)] = (
            FXP_READDIR,
            d,
        )
        d.reads += 1

    def _finish(self, d: _Dir) -> None:
        self.open_dirs -= 1
        e = d.epn
        e.pending -= 1
        if e.pending == 0:
            if e.entries:
                self.events.append(Files(e.name, e.entries))
            self.events.append(EpnDone(e.name, e.issues))
