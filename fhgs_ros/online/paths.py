"""Where service requests may read and write files: the map directory (``node.map_dir``). ROS-free.

A DDS peer names the files of ``save_map``, ``load_map`` and ``export_mesh``. :class:`MapDir`
resolves such a name so that it stays inside the operator's map directory:
- relative names are taken relative to ``map_dir`` (never to the node's working directory);
- ``..`` components and names starting with ``~`` are refused; symlinks are resolved
  (``realpath``) and the result must lie inside ``map_dir``, unless it is one of the files the
  operator listed (``node.map_path``, its default mesh, ``node.map_dir_allow``);
- only ``.safetensors`` (maps) and ``.ply`` / ``.obj`` (meshes) names;
- an existing file is replaced only when it is a regular file written by fhgs_ros (safetensors
  header ``format: fhgs_map``; PLY ``comment fhgs_ros``; OBJ first line ``# fhgs_ros``);
- directories are created only inside ``map_dir``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from fhgs_ros.online.guard import Rejected

MAP_SUFFIXES = (".safetensors",)
MESH_SUFFIXES = (".ply", ".obj")


def default_map_dir(map_path: str) -> str:
    """``node.map_dir`` when empty: the folder of ``node.map_path``, else ``$ROS_HOME/fhgs_maps``."""
    if map_path:
        return str(Path(map_path).expanduser().parent)
    return str(Path(os.environ.get("ROS_HOME", "~/.ros")).expanduser() / "fhgs_maps")


def _inside(p: str, root: str) -> bool:
    return p == root or p.startswith(root.rstrip(os.sep) + os.sep)


def _head(path: str, n: int) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.read(fd, n)
    finally:
        os.close(fd)


def is_ours(path: str) -> bool:
    """True when ``path`` is a regular file that fhgs_ros wrote (a map or a mesh)."""
    from fhgs_ros.core.mapfile_schema import fhgs_header_format

    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".safetensors":
            return fhgs_header_format(path) == "fhgs_map"
        head = _head(path, 4096)
    except OSError:
        return False
    if suffix == ".ply":
        end = head.find(b"end_header")
        lines = head[: end if end >= 0 else len(head)].split(b"\n")
        return lines[0].strip() == b"ply" and any(ln.startswith(b"comment fhgs_ros") for ln in lines)
    if suffix == ".obj":
        return head.split(b"\n", 1)[0].startswith(b"# fhgs_ros")
    return False


class MapDir:
    """Resolution of peer-given file names inside the map directory (module docstring)."""

    def __init__(self, root: str, allow: Iterable[str] = ()):
        self.root = os.path.realpath(os.path.expanduser(root))
        self.allow = {os.path.realpath(os.path.expanduser(a)) for a in allow if a}

    def resolve(self, requested: str, suffixes: tuple[str, ...], what: str) -> Path:
        """The real path a request names (refused with a reason when it leaves the map directory)."""
        name = str(requested)
        bad = "bad_path"
        if not name or "\x00" in name or len(name) > 4096:
            raise Rejected(bad, f"{what}: empty or invalid path")
        shown = name if len(name) <= 200 else name[:200] + "..."
        if name.startswith("~"):
            raise Rejected(bad, f"{what}: '{shown}': '~' is not expanded; give a name inside node.map_dir")
        if ".." in Path(name).parts:
            raise Rejected(bad, f"{what}: '{shown}': '..' is not allowed in paths")
        if Path(name).suffix.lower() not in suffixes:
            raise Rejected(bad, f"{what}: '{shown}': only {', '.join(suffixes)} files")
        cand = name if os.path.isabs(name) else os.path.join(self.root, name)
        real = os.path.realpath(cand)
        if real in self.allow:
            return Path(real)
        if not _inside(real, self.root):
            raise Rejected(bad, f"{what}: '{shown}' is outside node.map_dir ({self.root})"
                                + (" (a symlink leads out)" if _inside(os.path.abspath(cand), self.root) else ""))
        if Path(real).suffix.lower() not in suffixes:
            raise Rejected(bad, f"{what}: '{shown}' resolves to a file that is not {', '.join(suffixes)}")
        return Path(real)

    def prepare_write(self, path: Path, what: str) -> None:
        """Before writing a resolved ``path``: refuse replacing foreign files; create folders only inside."""
        p = os.fspath(path)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            st = None
        except NotADirectoryError:
            raise Rejected("bad_path", f"{what}: cannot save '{p}': '{os.path.dirname(p)}' is not a directory") \
                from None
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                raise Rejected("bad_path", f"{what}: '{p}' exists and is not a regular file; not replaced")
            if not is_ours(p):
                raise Rejected("bad_path", f"{what}: '{p}' exists and was not written by fhgs_ros; not replaced")
        parent = os.path.dirname(p)
        if os.path.isdir(parent):
            return
        if os.path.lexists(parent):
            raise Rejected("bad_path", f"{what}: cannot save '{p}': '{parent}' is not a directory")
        if not _inside(parent, self.root):
            raise Rejected("bad_path", f"{what}: folder '{parent}' does not exist (folders are created only "
                                       f"inside node.map_dir)")
        os.makedirs(parent, exist_ok=True)


__all__ = ["MapDir", "is_ours", "default_map_dir", "MAP_SUFFIXES", "MESH_SUFFIXES"]
