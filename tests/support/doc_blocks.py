"""The command blocks of the docs, found by the id in the comment above each one.

Every fenced block of README.md, slurm/README.md and apptainer/README.md is either output or a
layout (fence info ``text``) or commands (no info, ``bash`` or ``sh``). A command block carries
``<!-- doc-block: ID -->`` on the line above its fence; the tests fetch it with
``doc_block(DOC, ID)`` and run its text as written (tests/test_docs.py checks that each one is).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "slurm/README.md", "apptainer/README.md")
COMMAND_INFOS = ("", "bash", "sh")
OUTPUT_INFO = "text"
_MARKER = re.compile(r"^<!-- doc-block: ([a-z0-9-]+) -->$")
_FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class DocBlock:
    doc: str
    line: int  # of the opening fence, 1-based
    info: str
    block_id: str | None
    text: str

    @property
    def is_commands(self) -> bool:
        return self.info in COMMAND_INFOS


def blocks(doc: str) -> list[DocBlock]:
    lines = (REPO_ROOT / doc).read_text().splitlines()
    found: list[DocBlock] = []
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].startswith("```")), None)
        assert end is not None, f"{doc}:{index + 1}: a code fence that never closes"
        marker = _MARKER.match(lines[index - 1]) if index > 0 else None
        text = "\n".join(lines[index + 1 : end]) + "\n"
        found.append(DocBlock(doc, index + 1, fence.group(1), marker.group(1) if marker else None, text))
        index = end + 1
    return found


def all_blocks() -> list[DocBlock]:
    return [block for doc in DOCS for block in blocks(doc)]


def doc_block(doc: str, block_id: str) -> str:
    """The text of the command block ``block_id`` of ``doc``, exactly as the reader sees it."""
    matches = [block for block in blocks(doc) if block.block_id == block_id]
    assert len(matches) == 1, f"{doc} has {len(matches)} blocks with id {block_id!r}"
    assert matches[0].is_commands, f"{doc}:{matches[0].line}: block {block_id!r} is not a command block"
    return matches[0].text


def commands(text: str) -> list[str]:
    """The block's commands, one per logical line (backslash continuations joined, comments and blank
    lines dropped): for a test that runs them one by one and looks at each result."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def new_users_checkout(target: Path) -> Path:
    """This working tree as a new user gets it: the tracked and untracked, not ignored files (no
    .venv, no caches, no results), modes kept."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO_ROOT, capture_output=True, check=True).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is gone for the user too
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target
