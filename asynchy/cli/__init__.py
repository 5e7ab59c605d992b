"""The command line: parse options, build settings, call one library function, render.

No SQL, no subprocess and no paramiko here.  ``main.py`` holds the group, its
global options and the one place where exceptions become a line and an exit
code (docs/exit-codes.md); ``common.py`` the options, settings, database and
output shared by the commands; each other module one command or a few related
ones (as pre-commit's ``commands/``).
"""

from __future__ import annotations

from asynchy.cli.main import cli, main

__all__ = ["cli", "main"]
