"""Choosing the lister for the configured source."""

from __future__ import annotations

from asynchy.config import Settings
from asynchy.remote.base import Tree


def open_tree(
    settings: Settings,
    *,
    workers: int,
    accept_new_host_key: bool = False,
    connect_ahead: bool = False,
) -> Tree:
    """A LocalTree when host is empty or 'local', else an SftpTree, connected on first use, or
    from now on in the background with ``connect_ahead`` (close the tree when it is not used)."""
    prefix = settings.require("src_prefix")
    if settings.is_local:
        from asynchy.remote.local import LocalTree

        return LocalTree(prefix)
    from asynchy.remote.sftp import SftpTree

    tree = SftpTree(
        settings.ssh_target(), prefix, workers=workers, accept_new_host_key=accept_new_host_key
    )
    if connect_ahead:
        tree.connect_ahead()
    return tree
