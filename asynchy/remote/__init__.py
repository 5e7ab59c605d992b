"""Listing a source tree: one small protocol (``base.Tree``), a local and an SFTP implementation."""

from __future__ import annotations

from asynchy.remote.base import Entry, EpnDone, Files, Issue, TopEntry, Tree, WalkEvent

__all__ = ["Entry", "EpnDone", "Files", "Issue", "TopEntry", "Tree", "WalkEvent"]
