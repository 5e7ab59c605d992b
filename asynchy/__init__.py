"""asynchy: bring experiment data (EPNs) home from a facility's SFTP/rsync service."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
