"""Logging: warnings (or more with -v) to stderr, and optionally a log file.

The log file is opened by a ``WatchedFileHandler``: logrotate may move it
away, and the next line goes to a new file (docs/operations.md has a
logrotate snippet).  A new log file is created with mode 0600.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

from asynchy.errors import ConfigError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTINUED = "\n    "  # how a record's second and later lines start: never like a new record


class Block(str):
    """A log argument that is several lines of its own (rsync's stderr): its newlines are kept,
    each continuation line indented; any other argument is one line."""


def _one_line(value: object) -> object:
    """A log argument as one line: control characters (a newline, ESC, BEL, CR) escaped, as the
    tables show names (render.shown); numbers stay numbers for %d."""
    if isinstance(value, (int, float)) or value is None:
        return value
    text = str(value)
    if isinstance(value, Block):
        return "\n".join(_escaped(line) for line in text.split("\n"))
    return _escaped(text)


def _escaped(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or ch == "\t" else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


class SafeFormatter(logging.Formatter):
    """A name from the server is data, not layout (docs/security.md): every argument of a log
    call is one line with its control characters escaped, and every line after a record's first
    is indented, so that nothing a server sends can forge a record or reach the terminal raw."""

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)  # other handlers format the record too
        if isinstance(record.args, dict):
            safe.args = {k: _one_line(v) for k, v in record.args.items()}
        elif record.args:
            safe.args = tuple(_one_line(a) for a in record.args)
        elif "\n" not in str(record.msg):
            safe.msg = _escaped(str(record.msg))
        return super().format(safe).replace("\n", CONTINUED)


class _AtLeast(logging.Filter):
    """The console's level as a filter too: tqdm's logging redirect copies filters, not levels."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


ALERT_LOGGERS = ("asynchy.alert", "asynchy.portal")


def _file_handler(path: Path, key: str, level: int) -> logging.Handler:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))  # new: 0600
        fh = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{key} {path} cannot be opened: {exc.strerror}; fix {key}") from None
    fh.setLevel(level)
    fh.setFormatter(SafeFormatter(FORMAT))
    fh._asynchy = True  # type: ignore[attr-defined]
    return fh


def setup(
    *,
    verbose: int,
    quiet: bool,
    log_file: str | None,
    log_level: str,
    alert_log_file: str | None = None,
) -> None:
    root = logging.getLogger()
    for logger in (root, *map(logging.getLogger, ALERT_LOGGERS)):
        for handler in list(logger.handlers):
            if getattr(handler, "_asynchy", False):
                logger.removeHandler(handler)
                handler.close()
    if quiet:
        console_level = logging.ERROR
    else:
        console_level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    console = logging.StreamHandler()  # bars redirect it through tqdm.write (progress.py)
    console.setLevel(console_level)
    console.addFilter(_AtLeast(console_level))
    console.setFormatter(SafeFormatter("asynchy: %(levelname)s: %(message)s"))
    console._asynchy = True  # type: ignore[attr-defined]
    root.addHandler(console)
    level = console_level
    file_level = getattr(logging, log_level)
    if log_file:
        root.addHandler(_file_handler(Path(log_file).expanduser(), "log_file", file_level))
        level = min(level, file_level)
    if alert_log_file:  # HPC ASSyncy's log-files.epnalert: the alert's own lines, also here
        handler = _file_handler(Path(alert_log_file).expanduser(), "alert_log_file", file_level)
        for name in ALERT_LOGGERS:
            logging.getLogger(name).addHandler(handler)
        level = min(level, file_level)
    root.setLevel(level)
    # paramiko logs every connection failure as ERROR with a traceback; we report those ourselves.
    logging.getLogger("paramiko").setLevel(
        logging.CRITICAL if level > logging.DEBUG else logging.DEBUG
    )
