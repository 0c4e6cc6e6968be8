"""Atomic outputs: write beside the target, then rename, so a killed job never leaves a file that looks done.

Three rules keep a user's files safe:

- **Folders are replaced only if eqseg wrote them.** `atomic_dir` puts a manifest (`.eqseg-output.json`: command,
  time, eqseg version, every file it wrote) into each folder it creates. An existing folder that is not empty is
  replaced only when it holds that manifest and nothing but the files listed in it (plus bookkeeping of the tools
  around us: Snakemake's `.snakemake_timestamp`, GDAL/QGIS side files `NAME.aux.xml`, `NAME.ovr` of listed files).
  Anything else is refused with one line (`EqsegError`) before any work is done.
- **Files may be replaced** (a single-file output such as predict's `.tif` or a checkpoint is like a shell's
  `> file`: the user named that very path), but never a folder or a symbolic link in its place.
- **Leftovers of killed runs are removed by the next run.** Temporary paths are named
  `.{name}.tmp-{host}.{pid}.{random}` (and `.{name}.old-{host}.{pid}.{random}` while a folder is swapped); on
  entry, those of the same target whose process no longer runs on this host are deleted. A concurrently running
  job's temporary (its process is alive) or another host's (on a shared file system) is never touched.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from eqseg.errors import EqsegError
from eqseg.utils.process import pid_alive

log = logging.getLogger(__name__)

MARKER = ".eqseg-output.json"
# Files that tools around eqseg add inside an output folder; replacing them loses nothing.
BOOKKEEPING = frozenset({".snakemake_timestamp", ".DS_Store", "Thumbs.db", "desktop.ini"})
SIDECARS = (".aux.xml", ".ovr", ".msk")  # GDAL/QGIS side files of a listed file (statistics, overviews, masks)


# --------------------------------------------------------------------------------------------- temporary names
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _tmp_prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{_host()}.{os.getpid()}."


def _leftover_pattern(name: str) -> re.Pattern:
    # mkstemp/mkdtemp add 8 characters of [a-z0-9_]; atomic_file adds the target's suffix after them
    return re.compile(rf"^\.{re.escape(name)}\.(?:tmp|old)-(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[a-z0-9_]{{8}}(?:\.[^/]*)?$")


def _legacy_pattern(name: str) -> re.Pattern:
    """Temporaries of eqseg before the pid was in their name: `.{name}.tmp-{random}[suffix]`, `.{name}.old-{pid}`."""
    return re.compile(rf"^\.{re.escape(name)}\.(?:tmp-[a-z0-9_]{{8}}(?:\.[^/]*)?|old-(?P<pid>\d+))$")


def remove_leftovers(target: str | Path) -> list[Path]:
    """Delete `.{name}.tmp-*` / `.{name}.old-*` beside `target` left by killed runs of this host; return them."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern, host, removed, unknown = _leftover_pattern(target.name), _host(), [], []
    legacy = _legacy_pattern(target.name)
    for entry in target.parent.iterdir():
        m = pattern.match(entry.name)
        if not m:
            old = legacy.match(entry.name)
            if old and old["pid"] and not pid_alive(int(old["pid"])):
                m = old  # `.{name}.old-{pid}` of an eqseg before host names: its pid is enough
            elif old:
                unknown.append(entry.name)
                continue
            else:
                continue
        elif m["host"] != host or pid_alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        if not entry.exists():
            removed.append(entry)
    if unknown:
        log.warning("%s: leftovers of an older eqseg that cannot tell whether their run still goes on: %s; delete them "
                    "if no eqseg is writing %s", target.parent, ", ".join(sorted(unknown)), target.name)
    if removed:
        log.info("removed %d leftover(s) of killed runs beside %s: %s", len(removed), target,
                 ", ".join(p.name for p in removed))
    return removed


# --------------------------------------------------------------------------------------------- ownership
def _listing(folder: Path) -> list[str]:
    """Every file below `folder` (relative, '/'-separated), without the manifest itself."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        rel = Path(dirpath).relative_to(folder)
        files += [(rel / f).as_posix() for f in sorted(filenames) if not (rel == Path(".") and f == MARKER)]
    return files


def _foreign(folder: Path, listed: set[str]) -> list[str]:
    """Files below `folder` that eqseg did not list and that are not bookkeeping of the tools around it."""
    out = []
    for rel in _listing(folder):
        name = rel.rsplit("/", 1)[-1]
        if rel in listed or name in BOOKKEEPING:
            continue
        if any(rel.endswith(s) and rel[: -len(s)] in listed for s in SIDECARS):
            continue
        out.append(rel)
    return out


def check_replaceable(target: str | Path) -> None:
    """Raise EqsegError unless `target` is absent, an empty folder, or a folder that eqseg wrote (its manifest
    lists every file in it). Call it before heavy work, so a refused output costs nothing."""
    target = Path(target)
    if target.is_symlink():
        raise EqsegError(f"{target}: is a symbolic link; eqseg will not replace it (remove the link or choose another --out)")
    if not target.exists():
        return
    if not target.is_dir():
        raise EqsegError(f"{target}: exists and is a file, not an output folder of eqseg; it will not be replaced "
                         "(move it or choose another --out)")
    try:
        empty = not any(target.iterdir())
    except PermissionError:
        raise EqsegError(f"{target}: cannot list the existing folder (permission denied)") from None
    if empty:
        return
    marker = target / MARKER
    if not marker.is_file():
        raise EqsegError(
            f"{target}: folder exists and was not written by eqseg (no {MARKER}), so it will not be replaced; move it "
            "or choose another --out (if an older eqseg wrote it, delete it and run again)")
    try:
        listed = set(json.loads(marker.read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise EqsegError(f"{marker}: unreadable manifest, so {target} will not be replaced; delete the folder "
                         "yourself if it is an old output, or choose another --out") from None
    foreign = _foreign(target, listed)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise EqsegError(f"{target}: holds files eqseg did not write ({', '.join(foreign[:3])}{more}), so it will not "
                         "be replaced; move them out or choose another --out")


def write_manifest(folder: Path) -> dict:
    """Mark `folder` as eqseg's output: which command wrote it, when, and every file in it."""
    from eqseg import __version__

    manifest = {
        "written_by": "eqseg",
        "version": __version__,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": _listing(folder),
    }
    (folder / MARKER).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_outputs_apart(outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | None]) -> None:
    """Raise EqsegError when an output path is one of the command's inputs, or a folder holding one (writing it
    would replace the input: `predict --raster a.tif --out a.tif`, `make-slides` into the folder of its images).
    Keys name the option or parameter ({"--out": out}, {"slides.g.images": images}); None values are skipped;
    paths need not exist; symbolic links are resolved. Call it before any work."""
    for out_name, out in outputs.items():
        if out is None:
            continue
        o = Path(os.path.realpath(out))
        for in_name, src in inputs.items():
            if src is None:
                continue
            i = Path(os.path.realpath(src))
            if o == i:
                raise EqsegError(f"{out}: {out_name} is the input {in_name}; writing it would replace the input "
                                 "(choose another output path)")
            if o in i.parents:
                raise EqsegError(f"{out}: {out_name} holds the input {in_name} ({src}); writing it would replace the "
                                 "input (choose another output folder)")


# --------------------------------------------------------------------------------------------- atomic outputs
def _prepare_parent(target: Path) -> None:
    """Create the output's folder (one line if impossible) and remove dead jobs' leftovers of this output."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EqsegError(f"{target.parent}: cannot create the output folder ({err.strerror})") from None
    remove_leftovers(target)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `target`; on success it gets a manifest and replaces `target`, on
    error it is removed. Refuses (EqsegError, before the body runs) to replace a folder eqseg did not write."""
    target = Path(target)
    check_replaceable(target)
    _prepare_parent(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target, "tmp"), dir=target.parent))
    except OSError as err:
        raise EqsegError(f"{target.parent}: cannot write there ({err.strerror})") from None
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        write_manifest(tmp)
        check_replaceable(target)  # again: something may have appeared there while we worked
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target, "old"), dir=target.parent))
        os.replace(target, old)  # renaming a folder onto an empty folder replaces it
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def check_file_replaceable(target: str | Path) -> None:
    """Raise EqsegError if a single-file output cannot be written at `target` (a folder or a symbolic link is there);
    `atomic_file` checks it too, but a command writing several files calls it for each before any work."""
    target = Path(target)
    if target.is_symlink():
        raise EqsegError(f"{target}: is a symbolic link; eqseg will not replace it (remove the link or choose another path)")
    if target.is_dir():
        raise EqsegError(f"{target}: is a folder, but a file is to be written there; it will not be replaced "
                         "(move it or choose another path)")


@contextlib.contextmanager
def atomic_file(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `target` (same suffix, so writers infer the format); rename on success.

    An existing file at `target` is replaced (the caller named that path); a folder or a symbolic link is not."""
    target = Path(target)
    check_file_replaceable(target)
    _prepare_parent(target)
    try:
        fd, name = tempfile.mkstemp(prefix=_tmp_prefix(target, "tmp"), suffix=suffix or target.suffix, dir=target.parent)
    except OSError as err:
        raise EqsegError(f"{target.parent}: cannot write there ({err.strerror})") from None
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise EqsegError(f"{target}: a folder appeared there while writing; it was not replaced") from None
        raise


def _umask() -> int:
    """The process umask (mkdtemp/mkstemp create private paths; outputs should look like any other file)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj, reasons: dict[str, str] | None = None) -> None:
    """Write JSON atomically, sorted and indented so DVC diffs stay readable; strict (eqseg.utils.strictjson): a
    NaN or Infinity becomes null with `<key>_undefined` beside it (`reasons[key]` or what the value was)."""
    from eqseg.utils.strictjson import dumps

    with atomic_file(path) as tmp:
        tmp.write_text(dumps(obj, reasons, indent=2, sort_keys=True) + "\n")
