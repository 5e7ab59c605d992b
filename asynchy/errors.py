"""The one exception tree of asynchy and the exit codes it maps to.

Library code raises an :class:`AsynchyError` subclass whose message names the
problem and the fix; ``cli.py`` turns it into one line on stderr and the exit
code below.  Anything else escaping is a bug and shows a traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # something failed at run time (network, I/O, a bug in the remote)
    USAGE = 2  # bad option, bad configuration, refused input; fix the invocation
    PARTIAL = 3  # the run finished but some items failed; the database has details
    INTERRUPTED = 130  # Ctrl+C or SIGTERM


class AsynchyError(Exception):
    """Base class: an expected failure with a message for the user."""

    exit_code: ExitCode = ExitCode.ERROR


class ConfigError(AsynchyError):
    """A configuration file, environment variable or option is wrong or missing."""

    exit_code = ExitCode.USAGE


class UsageError(AsynchyError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = ExitCode.USAGE


class DatabaseError(AsynchyError):
    """The database cannot be opened or used."""


class SchemaError(DatabaseError):
    """The database is not an asynchy database, or its schema is newer than this asynchy."""

    exit_code = ExitCode.USAGE


class RemoteError(AsynchyError):
    """Talking to the source (SFTP server or local folder) failed."""


class LinkDown(RemoteError):
    """The server cannot be reached (refused, timed out, no route, name unknown), and did not come
    back within the run's probes; nothing was charged to any EPN."""


class SetupError(ConfigError):
    """This host's setup stops every transfer alike (a bad option value, an unwritable destination,
    rsync missing on the server); nothing was charged to any EPN."""


class ConnectionLost(RemoteError):
    """The connection dropped or stopped answering; the caller may reconnect and resume."""


class HostKeyUnknown(RemoteError):
    """The server's host key is not in known_hosts (and no opt-in to record it)."""

    exit_code = ExitCode.USAGE


class HostKeyChanged(RemoteError):
    """The server presented a key different from the one in known_hosts: possible attack."""


class AuthenticationError(RemoteError):
    """The server refused our credentials, or the key file cannot be used."""

    exit_code = ExitCode.USAGE


class SourceNotFound(RemoteError):
    """``src_prefix`` does not exist or is not a readable folder."""

    exit_code = ExitCode.USAGE


class Interrupted(AsynchyError):
    """The user asked us to stop (Ctrl+C, SIGTERM)."""

    exit_code = ExitCode.INTERRUPTED


class PartialFailure(AsynchyError):
    """A run finished, but some items failed; the summary has already been shown."""

    exit_code = ExitCode.PARTIAL


class Busy(AsynchyError):
    """Another asynchy process holds what this one needs (e.g. a second watch on one database)."""


class PortalError(AsynchyError):
    """The facility portal could not be asked; an alert still goes out, without visit details."""


class PortalRefused(PortalError):
    """The portal refused the configured credentials: a fix in the configuration."""

    exit_code = ExitCode.USAGE


class AlertError(AsynchyError):
    """An alert e-mail could not be sent (the SMTP server refused it or cannot be reached)."""
