"""The directories: the date tree root/YYYY/MM/DD, and the views beside it,
by-type/<Type>/YYYY/MM/DD and by-number/<number>.

The date and type trees live in memory (a few directories per day of history:
thousands for years of calls). Numbers can be hundreds of thousands, so by-number/
is listed from the catalog and a number's directory is made when first looked up.
Every directory inode is derived from its path, so it survives remounts; a file
has the same inode in every directory that lists it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recfs.catalog.database import dir_ino

ROOT_INO = 1
# A directory's mtime is the start of the latest call below it: the same on every
# mount, so that backups see no change where nothing changed. Empty: the epoch.
EMPTY_MTIME = 0.0
BY_TYPE = "by-type"
BY_NUMBER = "by-number"

# What a directory's files are: ("day", day), ("type-day", type, day),
# ("number", number); or ("numbers",) for by-number/ itself.
Files = tuple[str, ...]


@dataclass
class DirNode:
    ino: int
    parent: int
    name: str
    path: str  # "", "2024/06/10", "by-type/Inbound/2024", "by-number/1001"
    mtime: float
    children: dict[str, int] = field(default_factory=dict)  # subdirectories by name
    files: Files | None = None


class DirTree:
    def __init__(self, views: bool = True, top: str = ""):
        """*top*: in a mount of several PBXs, this PBX's directory: its tree hangs
        there, and its directory inodes are derived from paths below it."""
        self.root_ino = dir_ino(top) if top else ROOT_INO
        self.nodes: dict[int, DirNode] = {
            self.root_ino: DirNode(self.root_ino, ROOT_INO, top, top, EMPTY_MTIME),
        }
        self.views = views
        self.by_type: DirNode | None = None
        self.by_number: DirNode | None = None
        if views:
            self.by_type = self._child(self.root, BY_TYPE, EMPTY_MTIME)
            self.by_number = self._child(self.root, BY_NUMBER, EMPTY_MTIME)
            self.by_number.files = ("numbers",)

    @property
    def root(self) -> DirNode:
        return self.nodes[self.root_ino]

    def get(self, ino: int) -> DirNode | None:
        return self.nodes.get(ino)

    def _child(self, node: DirNode, name: str, mtime: float) -> DirNode:
        child_ino = node.children.get(name)
        if child_ino is None:
            path = f"{node.path}/{name}" if node.path else name
            child_ino = dir_ino(path)
            self.nodes[child_ino] = DirNode(child_ino, node.ino, name, path, mtime)
            node.children[name] = child_ino
        child = self.nodes[child_ino]
        child.mtime = max(child.mtime, mtime)
        return child

    def _add_dated(self, base: DirNode, day: str, mtime: float, files: Files) -> DirNode:
        node = base
        node.mtime = max(node.mtime, mtime)
        for part in day.split("-"):
            node = self._child(node, part, mtime)
        node.files = files
        return node

    def add_day(self, day: str, mtime: float) -> DirNode:
        """Make sure YYYY/MM/DD exists for *day* ("YYYY-MM-DD"); newer mtimes
        propagate upwards so that a directory's mtime is its newest arrival."""
        return self._add_dated(self.root, day, mtime, ("day", day))

    def add_type_day(self, type_: str, day: str, mtime: float) -> DirNode:
        """by-type/<type>/YYYY/MM/DD; *type_* must be a safe directory name."""
        assert self.by_type is not None
        for node in (self.root, self.by_type):
            node.mtime = max(node.mtime, mtime)
        base = self._child(self.by_type, type_, mtime)
        return self._add_dated(base, day, mtime, ("type-day", type_, day))

    def number_node(self, number: str, mtime: float) -> DirNode:
        """by-number/<number>, made on demand (the caller checked it exists), with
        the catalog's *mtime* (its latest call)."""
        assert self.by_number is not None
        path = f"{self.by_number.path}/{number}"
        ino = dir_ino(path)
        node = self.nodes.get(ino)
        if node is None:
            node = DirNode(ino, self.by_number.ino, number, path, mtime, files=("number", number))
            self.nodes[ino] = node
        node.mtime = mtime
        return node
