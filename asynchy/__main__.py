from __future__ import annotations

from asynchy.cli import main

main()
