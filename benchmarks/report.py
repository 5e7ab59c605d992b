"""Writing a benchmark's results into docs/benchmarks.md, between its own two markers."""

from __future__ import annotations

import re
from pathlib import Path


def write_block(path: str | Path, name: str, text: str) -> None:
    """Replace what stands between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` (or append it)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    path = Path(path)
    doc = path.read_text() if path.exists() else ""
    block = f"{start}\n{text}\n{end}"
    if start in doc:
        doc = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc += "\n" + block + "\n"
    path.write_text(doc)
    print("written to", path)
