"""Refresh every generated table in README.md from the file it names.

    .venv/bin/python tools/readme_tables.py [--check]

Each block between ``<!-- from: PATH -->`` and ``<!-- end -->`` is replaced by PATH's text (the
``.md`` table merlib wrote); ``--check`` only lists the blocks that differ and exits 1 if any do.
tests/test_readme.py asserts they are equal, so a table in the README is never typed in.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- from: (\S+) -->\n)(.*?)(<!-- end -->)", re.S)


def refresh(text: str, root: Path = ROOT) -> tuple[str, list[str]]:
    changed = []

    def sub(m: re.Match) -> str:
        new = (root / m.group(2)).read_text().strip() + "\n"
        if new.strip() != m.group(3).strip():
            changed.append(m.group(2))
        return m.group(1) + new + m.group(4)

    return BLOCK.sub(sub, text), changed


def main() -> int:
    readme = ROOT / "README.md"
    text, changed = refresh(readme.read_text())
    for path in changed:
        print(f"{'differs' if '--check' in sys.argv else 'refreshed'}: {path}")
    if "--check" in sys.argv:
        return 1 if changed else 0
    readme.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
