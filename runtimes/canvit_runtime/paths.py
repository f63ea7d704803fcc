"""Paths as untrusted input: what a command may write, what `--force` may replace, how an artifact's files are read.

One rule for every command that writes (canvit-export's targets, calibration sets, Triton repositories, reports;
canvit-runtime's engine builds and rollout outputs):

- A folder this tool writes holds a marker file, `.canvit-export`, listing every path it wrote there. `--force`
  replaces an existing `--out` only when it is such a folder holding nothing else, or an empty folder; anything else
  (a user's folder, a file, a symlink) is refused with one line before any work.
- `--out` is never `/`, the home folder, the current folder or one of its parents, nor equal to, inside or around
  an input of the command; `--out` itself may not be a symlink (its parent folders may be).
- Output files are written through a temporary file renamed into place: never through a symlink, never inside an
  input artifact.

Reading (Manifest.verify_checksums, the runners): every file an artifact lists is a plain relative name inside its
folder and a regular file (no symlink, device or FIFO), read with a size bound; strings from a manifest are printed
through `printable`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

MARKER = ".canvit-export"
"""The marker file in every folder this tool writes: JSON {"written_by": "canvit-export", "kind", "paths"}."""
MARKER_KINDS = ("artifact", "calibration set", "Triton repository", "report folder", "device bundle")


class ExportError(ValueError):
    """Bad input or an unmet requirement while writing an artifact; the message names the fix in one line."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: object, limit: int = 200) -> str:
    """`text` as one safe line for a terminal: control characters (escape sequences, newlines, bidirectional
    overrides) shown as `?`, cut to `limit` characters. For every string that comes from a manifest or a file."""
    line = _CONTROL.sub("?", str(text))
    return line if len(line) <= limit else line[:limit - 1] + "…"


# --- writing ----------------------------------------------------------------------------------------------------
def file_on_path(out: Path) -> Path | None:
    """The first existing ancestor of `out` that is a file, not a folder (so `out` cannot be created), or None."""
    return next((p for p in Path(out).parents if p.exists() and not p.is_dir()), None)


def _listing(folder: Path) -> list[str]:
    """Every path under `folder`, relative, POSIX-style, sorted; symlinks listed, never followed."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        base = Path(root).relative_to(folder)
        found += [(base / name).as_posix() for name in (*dirs, *files)]
    return sorted(found)


def write_marker(folder: Path, kind: str) -> None:
    """Write `folder`/.canvit-export listing what is in `folder` now: call it last, on a folder this tool filled."""
    assert kind in MARKER_KINDS, kind
    paths = [p for p in _listing(folder) if p != MARKER]
    (folder / MARKER).write_text(json.dumps({"written_by": "canvit-export", "kind": kind, "paths": paths}, indent=0) + "\n")


def _marker(folder: Path) -> dict | None:
    path = folder / MARKER
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > 64 << 20:
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    ok = isinstance(data, dict) and data.get("written_by") == "canvit-export" and isinstance(data.get("paths"), list)
    return data if ok else None


def not_ours(out: Path) -> str | None:
    """Why `--force` may not replace `out` (None when it may): it must be an empty folder, or a folder this tool wrote
    (its marker) holding only the paths the marker lists."""
    if out.is_symlink():
        return "is a symbolic link"
    if not out.is_dir():
        return "is a file, not a folder this tool wrote"
    present = _listing(out)
    if not present:
        return None
    marker = _marker(out)
    if marker is None:
        return f"is a folder canvit-export did not write (no {MARKER} marker in it)"
    extra = sorted(set(present) - set(marker["paths"]) - {MARKER})
    if extra:
        return (f"holds {len(extra)} path{'s' if len(extra) > 1 else ''} canvit-export did not write "
                f"({printable(extra[0], 80)}{', ...' if len(extra) > 1 else ''})")
    return None


def _protected(resolved: Path) -> str | None:
    """Why no command may write or replace `resolved` (an absolute path), or None."""
    cwd = Path.cwd().resolve()
    if resolved == Path(resolved.anchor):
        return "the file system's root"
    if resolved == Path.home().resolve():
        return "your home folder"
    if resolved == cwd:
        return "the current folder"
    if resolved in cwd.parents:
        return "a parent of the current folder"
    return None


def check_out(out: Path, *, force: bool, inputs: Iterable[Path] = (), option: str = "--out") -> None:
    """The replacement rule (module docstring) for an output folder `out` of a command whose inputs are `inputs`.

    Raises ExportError with one line naming the fix, before any work: `out` a symlink, protected (root, home, the
    current folder or a parent of it), overlapping an input, existing without force, not replaceable with force
    (not_ours), or below a file.
    """
    out = Path(out)
    if out.is_symlink():
        raise ExportError(f"{option} {printable(out)} is a symbolic link: pass the folder it points to, or choose "
                          f"another {option}")
    if blocker := file_on_path(out):
        raise ExportError(f"{option} {printable(out)}: {printable(blocker)} is a file, not a folder; choose another "
                          f"{option}")
    resolved = out.resolve()
    if why := _protected(resolved):
        raise ExportError(f"{option} {printable(out)} is {why}: choose a new folder for the output")
    for source in inputs:
        source_resolved = Path(source).resolve()
        if resolved == source_resolved or source_resolved in resolved.parents or resolved in source_resolved.parents:
            where = ("is" if resolved == source_resolved else
                     "is inside" if source_resolved in resolved.parents else "contains")
            raise ExportError(f"{option} {printable(out)} {where} the input {printable(source)}: choose a folder "
                              f"apart from it")
    if refusal := replacement_refusal(out, force=force, option=option):
        raise ExportError(refusal)


def replacement_refusal(out: Path, *, force: bool, option: str = "--out") -> str | None:
    """The one line refusing to replace an existing `out` (None when nothing is there, or `--force` may replace it:
    an empty folder or one this tool wrote, not_ours); the replacement rule of every command that writes a folder."""
    if not os.path.lexists(out):
        return None
    if not force:
        return f"{printable(out)} already exists: pass --force to overwrite it, or choose another {option}"
    if why := not_ours(out):
        return (f"{option} {printable(out)} {why}; --force replaces only what canvit-export wrote: move it away or "
                f"choose another {option}")
    return None


def inside_any(path: Path, folders: Iterable[Path]) -> Path | None:
    """The first of `folders` that `path` is in (its folder resolved, its last part not: a link planted inside a
    folder still counts as inside it), or None."""
    resolved = Path(path).parent.resolve() / Path(path).name
    for folder in folders:
        folder_resolved = Path(folder).resolve()
        if resolved == folder_resolved or folder_resolved in resolved.parents:
            return Path(folder)
    return None


def report_folder(folder: Path, *, inputs: Iterable[Path] = (), option: str) -> Path:
    """Make (or reuse) a folder for a command's report files (bench, parity --pictures): created with a marker when
    missing; an existing one must be empty or this tool's report folder. Never a symlink, protected or inside an
    input. Returns `folder`."""
    folder = Path(folder)
    if folder.is_symlink():
        raise ExportError(f"{option} {printable(folder)} is a symbolic link: pass the folder it points to")
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{option} {printable(folder)} is a file: pass a folder (created if missing)")
    if blocker := file_on_path(folder):
        raise ExportError(f"{option} {printable(folder)}: {printable(blocker)} is a file, not a folder; choose "
                          f"another {option}")
    if why := _protected(folder.resolve()):
        raise ExportError(f"{option} {printable(folder)} is {why}: choose a new folder for the output")
    if source := inside_any(folder, inputs):
        raise ExportError(f"{option} {printable(folder)} is inside the input {printable(source)}: choose a folder "
                          f"outside it")
    if folder.is_dir() and _listing(folder) and _marker(folder) is None:
        raise ExportError(f"{option} {printable(folder)} is a folder canvit-export did not write (no {MARKER} "
                          f"marker): choose a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    if _marker(folder) is None:
        write_marker(folder, "report folder")
    return folder


def check_output_file(path: Path, *, inputs: Iterable[Path] = (), option: str = "--out") -> Path:
    """Raise ExportError unless `path` may be written as an output file (write_output's rules, checked before the work
    that produces it): not a symlink, not a folder, not inside an input, no file on its way. Returns `path`."""
    path = Path(path)
    if path.is_symlink():
        raise ExportError(f"{option} {printable(path)} is a symbolic link: canvit-export does not write through links; "
                          f"choose another path")
    if path.is_dir():
        raise ExportError(f"{option} {printable(path)} is a folder: pass a file path")
    if source := inside_any(path, inputs):
        raise ExportError(f"{option} {printable(path)} is inside the input {printable(source)}: write it elsewhere")
    if blocker := file_on_path(path):
        raise ExportError(f"{option} {printable(path)}: {printable(blocker)} is a file, not a folder")
    return path


def write_output(path: Path, data: bytes | str, *, inputs: Iterable[Path] = (), option: str = "--out") -> Path:
    """Write an output file: refused (ExportError) when `path` is a symlink, a folder or inside an input artifact;
    written to a fresh temporary file beside it (O_EXCL | O_NOFOLLOW) and renamed over `path`, so a link planted at
    `path` is replaced, not followed, and a reader never sees half a file. Returns `path`."""
    path = check_output_file(path, inputs=inputs, option=option)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(temporary, flags, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


# --- reading ----------------------------------------------------------------------------------------------------
MAX_MANIFEST_BYTES = 16 << 20
"""manifest.json is a few kB (a Core ML artifact's with class names ~100 kB): 16 MiB bounds a hostile one."""
MAX_JSON_DEPTH = 64
"""Nesting of a manifest or viewpoints file: the schema needs 6 levels; a deeper one is refused before parsing."""


def json_depth_ok(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `text`'s brackets nest at most `limit` deep (strings skipped), checked before json.loads recurses."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return False
        elif char in "]}":
            depth -= 1
    return True


def plain_member(name: str) -> bool:
    """Whether `name` is a plain relative path inside a folder: no absolute path, no `..`, no empty or `.` part, no
    backslash or control character."""
    if not name or name.startswith("/") or "\\" in name or _CONTROL.search(name):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def regular_file(path: Path) -> os.stat_result | None:
    """lstat of `path` when it is a regular file (not a symlink, folder, device or FIFO), else None."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def bad_tree(folder: Path) -> Path | None:
    """The first entry under `folder` (an .mlpackage) that is neither a real folder nor a regular file, or None."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in (*dirs, *files):
            entry = Path(root) / name
            mode = entry.lstat().st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                return entry
    return None


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (ValueError otherwise), opened without following a
    symlink, so that a FIFO or /dev/zero cannot hang or exhaust the reader."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{printable(path)} is not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{printable(path)} is {info.st_size} bytes, more than the {limit} allowed")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{printable(path)} grew past {limit} bytes while read")
    return data
