"""Output directories: one policy for every command that writes one, so that no user file is ever lost.

Every directory a dspark command writes carries a marker file, `.dspark-output.json`, naming the kind of
output and the top-level entries the command wrote. Before any work, `check_output_dir` decides:

* missing, empty, or holding only a marker: it is written;
* holding output of the same kind (its marker says so, or it holds only names that kind writes, files
  among them, as directories written before markers do): refused unless `overwrite`; with it, only those entries are
  replaced and every other entry stays where it is;
* anything else (a regular file, a directory with entries dspark did not write, a foreign entry under a
  name the command writes): refused, naming what is in the way; `overwrite` does not change that.

`write_output_dir` builds the output in a temporary sibling, then installs it: by renaming the whole
directory when nothing foreign has to survive, else entry by entry (each rename atomic; while they move,
the marker lists the old and the new entries, so an interrupted install leaves nothing unowned).
`claim_output_dir` is for writers that fill a directory in place (a training run, a report).

Temporary (`.NAME.tmp-PID-*`) and replaced (`.NAME.old-PID-*`) siblings carry the writer's pid; those of a
writer that is gone are cleaned by the next check (`clean_leftovers`), and a replaced directory whose
successor never arrived is put back.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from dspark.errors import ConfigError

log = logging.getLogger(__name__)

MARKER = ".dspark-output.json"
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<tag>tmp|old)-(?P<pid>\d+)?(?:-?[A-Za-z0-9_]*)$")


class OutputDirError(ConfigError):
    """An output path is in the way: not ours, ours without --overwrite, or not a directory."""


@dataclass(frozen=True)
class OutputKind:
    """What a command writes: a name for messages and markers, and the top-level entries it may write."""

    name: str
    entries: frozenset[str]


def _listing(path: Path) -> set[str]:
    """Top-level entry names, without the marker (and a marker being rewritten)."""
    return {p.name for p in path.iterdir() if not p.name.startswith(MARKER)}


def read_marker(path: Path) -> dict | None:
    """The marker of a directory, or None when it has none (or an unreadable one)."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("entries"), list) else None


def write_marker(path: Path, kind: OutputKind, entries: Iterable[str]) -> None:
    """Record (atomically) that `entries` of `path` are `kind` output written by dspark."""
    from dspark import __version__

    body = {"kind": kind.name, "entries": sorted(set(entries)), "written_by": f"dspark {__version__}"}
    tmp = Path(path) / f"{MARKER}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, Path(path) / MARKER)


def owned_entries(path: Path, kind: OutputKind) -> set[str] | None:
    """The entries of directory `path` that are `kind` output written by dspark; None: not ours at all."""
    present = _listing(path)
    marker = read_marker(path)
    if marker is not None:
        return set(marker["entries"]) & present if marker.get("kind") == kind.name else None
    if present <= kind.entries and any((path / name).is_file() for name in present):  # written before markers
        return present
    return None


def check_output_dir(path: str | Path, kind: OutputKind, overwrite: bool = False, flag: str = "--out") -> Path:
    """Refuse (`OutputDirError`) an output directory that may not be written; see the module docstring."""
    out = Path(path).expanduser()
    clean_leftovers(out.parent, out.name)
    if out.is_symlink() and not out.exists():
        raise OutputDirError(f"{flag} {str(out)!r} is a broken symbolic link; choose another path")
    if not out.exists():
        return out
    if not out.is_dir():
        raise OutputDirError(f"{flag} {str(out)!r} is a file, not a directory; choose a directory path "
                             "(nothing was changed)")
    present = _listing(out)
    if not present:
        return out
    owned = owned_entries(out, kind)
    if owned is None:
        raise OutputDirError(f"{flag} {str(out)!r} is not empty and holds no {kind.name} written by dspark "
                             f"(it holds {sorted(present)[0]!r}); choose a new or empty directory (nothing was changed)")
    in_the_way = sorted((present - owned) & kind.entries)
    if in_the_way:
        raise OutputDirError(f"{flag} {str(out)!r} holds {in_the_way[0]!r}, which dspark did not write there; "
                             "move it away or choose another directory (nothing was changed)")
    if owned and not overwrite:
        raise OutputDirError(f"{flag} {str(out)!r} already exists and holds a {kind.name} from an earlier run; "
                             "pass --overwrite to replace it (other files there are kept)")
    return out


def claim_output_dir(path: str | Path, kind: OutputKind, overwrite: bool = False, flag: str = "--out") -> Path:
    """Check `path`, create it and mark it as `kind` output, for a writer that fills it in place."""
    out = check_output_dir(path, kind, overwrite, flag)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, kind, (owned_entries(out, kind) or set()) | kind.entries)
    return out


def write_output_dir(path: str | Path, kind: OutputKind, fill: Callable[[Path], None], overwrite: bool = False,
                     flag: str = "--out") -> Path:
    """Check `path`, let `fill` write the output into a temporary sibling, then install it; returns the path."""
    out = check_output_dir(path, kind, overwrite, flag).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    tmp.mkdir()
    try:
        fill(tmp)
        write_marker(tmp, kind, _listing(tmp))
        _install(tmp, out, kind, flag)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _sibling(out: Path, tag: str) -> Path:
    return out.with_name(f".{out.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def _install(tmp: Path, out: Path, kind: OutputKind, flag: str) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    owned = owned_entries(out, kind) or set()
    foreign = _listing(out) - owned
    new = _listing(tmp)
    if foreign & new:  # appeared while the work ran
        raise OutputDirError(f"{flag} {str(out)!r} now holds {sorted(foreign & new)[0]!r}, which dspark did not "
                             "write; the new output was not installed")
    if not foreign:  # all ours: swap the whole directory
        old = _sibling(out, "old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    write_marker(out, kind, owned | new)  # an interrupted move leaves only owned entries behind
    trash = tmp / ".replaced"
    trash.mkdir()
    for name in sorted(new):
        if (out / name).is_dir() and not (out / name).is_symlink():
            os.replace(out / name, trash / name)
        os.replace(tmp / name, out / name)
    for name in sorted(owned - new):
        os.replace(out / name, trash / name)
    write_marker(out, kind, new)
    shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(parent: Path, name: str | None = None) -> list[Path]:
    """Remove the temporary siblings that killed writers left in `parent` (of `name`, or of any entry).

    A replaced directory (`.NAME.old-*`) whose successor is missing is renamed back instead. Returns
    the paths removed or restored.
    """
    if not parent.is_dir():
        return []
    done = []
    for entry in sorted(parent.iterdir()):
        match = _LEFTOVER.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        if _alive(int(match["pid"]) if match["pid"] else None):
            continue
        final = parent / match["name"]
        try:
            if match["tag"] == "old" and not final.exists():
                os.replace(entry, final)
                log.warning("restored %s from %s (its replacement was interrupted)", final, entry.name)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
                log.info("removed %s, left by an interrupted write", entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # another process (a torchrun rank) cleaned it first
            continue
        done.append(entry)
    return done
