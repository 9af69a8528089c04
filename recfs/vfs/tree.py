"""The directory tree above the recordings: root / YYYY / MM / DD.

Only directories live in memory (a few per day of history, so about a thousand for
three years); the files of a day are asked of the catalog when needed. Directory
inodes are derived from their path, so they too survive remounts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recfs.catalog import dir_ino

ROOT_INO = 1


@dataclass
class DirNode:
    ino: int
    parent: int
    name: str
    path: str  # "", "2024", "2024/06", "2024/06/10"
    mtime: float
    children: dict[str, int] = field(default_factory=dict)  # subdirectories by name

    @property
    def day(self) -> str | None:
        """"YYYY-MM-DD" if this is a day directory (the one that holds files)."""
        parts = self.path.split("/")
        return "-".join(parts) if len(parts) == 3 else None


class DirTree:
    def __init__(self, mount_time: float):
        self.nodes: dict[int, DirNode] = {
            ROOT_INO: DirNode(ROOT_INO, ROOT_INO, "", "", mount_time),
        }

    def get(self, ino: int) -> DirNode | None:
        return self.nodes.get(ino)

    def add_day(self, day: str, mtime: float) -> DirNode:
        """Make sure YYYY/MM/DD exists for *day* ("YYYY-MM-DD"); newer mtimes
        propagate upwards so that a directory's mtime is its newest arrival."""
        node = self.nodes[ROOT_INO]
        node.mtime = max(node.mtime, mtime)
        for part in day.split("-"):
            child_ino = node.children.get(part)
            if child_ino is None:
                path = f"{node.path}/{part}" if node.path else part
                child_ino = dir_ino(path)
                self.nodes[child_ino] = DirNode(child_ino, node.ino, part, path, mtime)
                node.children[part] = child_ino
            node = self.nodes[child_ino]
            node.mtime = max(node.mtime, mtime)
        return node

    def day_node(self, day: str) -> DirNode | None:
        node: DirNode | None = self.nodes[ROOT_INO]
        for part in day.split("-"):
            assert node is not None
            child = node.children.get(part)
            node = self.nodes.get(child) if child is not None else None
            if node is None:
                return None
        return node
