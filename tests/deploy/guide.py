"""The README's deploy guide as data: its ```sh blocks, in order, exactly as written."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SECTION = "Deploy on a VM"

# Commands that download (apt, pip): the container has a private network, so these run in the host's network
# namespace (every other namespace is the container's).
DOWNLOADS = re.compile(r"\b(apt-get|apt|pip|pip3)\s")


@dataclass(frozen=True)
class Block:
    index: int          # 1-based, in the order of the section
    text: str           # the block, word for word

    @property
    def downloads(self) -> bool:
        return bool(DOWNLOADS.search(self.text))

    def __str__(self) -> str:
        return f"guide block {self.index}:\n{self.text.rstrip()}"


def section(readme: str, heading: str = SECTION) -> str:
    """The text of the section under `heading` (any level), up to the next heading of the same or a higher
    level. Lines inside code fences are never headings."""
    lines, found, level, out, fence = readme.splitlines(keepends=True), False, 0, [], False
    for line in lines:
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"(#+) +(.*?)\s*$", line)
        if m and found and len(m.group(1)) <= level:
            break
        if found:
            out.append(line)
        elif m and m.group(2) == heading:
            found, level = True, len(m.group(1))
    if not found:
        raise LookupError(f"README.md has no section headed {heading!r}")
    return "".join(out)


def blocks(readme_path: Path, heading: str = SECTION) -> list[Block]:
    """The ```sh blocks of the section, in order."""
    text = section(readme_path.read_text(), heading)
    found = re.findall(r"^```sh[ \t]*\n(.*?)^```[ \t]*$", text, re.S | re.M)
    return [Block(i, b) for i, b in enumerate(found, 1)]


def find(all_blocks: list[Block], pattern: str, what: str) -> Block:
    """The one block matching `pattern` (a regex); a clear error when the guide has none or several."""
    hits = [b for b in all_blocks if re.search(pattern, b.text, re.M)]
    if len(hits) != 1:
        raise LookupError(f"the deploy guide should have exactly one {what} block (matching {pattern!r}); "
                          f"it has {len(hits)}")
    return hits[0]
