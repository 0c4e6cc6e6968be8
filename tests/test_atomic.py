"""Atomic outputs: eqseg replaces only folders it wrote, and the next run removes what killed runs left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eqseg.errors import EqsegError
from eqseg.utils.atomic import MARKER, atomic_dir, atomic_file, check_replaceable, remove_leftovers, write_json


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def write_output(target: Path, **files: str) -> None:
    with atomic_dir(target) as tmp:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)


def test_manifest_lists_what_eqseg_wrote(tmp_path):
    out = tmp_path / "out"
    write_output(out, **{"a.txt": "1", "sub/b.txt": "2"})
    manifest = json.loads((out / MARKER).read_text())
    assert manifest["written_by"] == "eqseg" and manifest["files"] == ["a.txt", "sub/b.txt"]
    assert manifest["command"] and manifest["created"].endswith("+00:00")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "a.txt", "sub"]
    assert hidden(tmp_path) == []  # no temporary left beside it


def test_own_output_is_replaced_with_tool_bookkeeping(tmp_path):
    out = tmp_path / "out"
    write_output(out, **{"a.tif": "1", "old.txt": "x"})
    (out / ".snakemake_timestamp").touch()
    (out / "a.tif.aux.xml").write_text("<PAMDataset/>")  # QGIS computed statistics
    write_output(out, **{"a.tif": "2"})
    assert (out / "a.tif").read_text() == "2" and not (out / "old.txt").exists()
    assert json.loads((out / MARKER).read_text())["files"] == ["a.tif"]
    assert hidden(tmp_path) == []


def test_foreign_folder_is_refused_before_the_work(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    ran = []
    with pytest.raises(EqsegError) as err:
        with atomic_dir(out):
            ran.append(True)
    msg = str(err.value)
    assert "\n" not in msg and str(out) in msg and "not written by eqseg" in msg and "another --out" in msg
    assert "older eqseg" in msg  # outputs written before the manifest existed: says how to proceed
    assert not ran and (out / "thesis.tex").read_text() == "years of work" and hidden(tmp_path) == []


def test_output_with_a_user_file_added_is_refused(tmp_path):
    out = tmp_path / "out"
    write_output(out, **{"a.txt": "1"})
    (out / "notes.md").write_text("mine")
    with pytest.raises(EqsegError, match=r"holds files eqseg did not write \(notes.md\)"):
        write_output(out, **{"a.txt": "2"})
    assert (out / "notes.md").read_text() == "mine" and (out / "a.txt").read_text() == "1"


def test_empty_folder_and_file_targets(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    write_output(empty, **{"a.txt": "1"})
    assert (empty / "a.txt").is_file()
    a_file = tmp_path / "file"
    a_file.write_text("keep")
    with pytest.raises(EqsegError, match="exists and is a file"):
        write_output(a_file, **{"a.txt": "1"})
    assert a_file.read_text() == "keep"
    link = tmp_path / "link"
    link.symlink_to(empty)
    with pytest.raises(EqsegError, match="symbolic link"):
        write_output(link, **{"a.txt": "1"})


def test_atomic_file_replaces_files_never_folders(tmp_path):
    target = tmp_path / "pred.tif"
    target.write_text("old")
    with atomic_file(target) as tmp:
        assert tmp.suffix == ".tif" and tmp.parent == tmp_path
        tmp.write_text("new")
    assert target.read_text() == "new"
    folder = tmp_path / "dir.tif"
    (folder / "x").mkdir(parents=True)
    with pytest.raises(EqsegError, match="is a folder"):
        with atomic_file(folder) as tmp:
            tmp.write_text("x")
    assert (folder / "x").is_dir() and hidden(tmp_path) == []


def test_failure_keeps_the_previous_output(tmp_path):
    out = tmp_path / "out"
    write_output(out, **{"a.txt": "1"})
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "1" and hidden(tmp_path) == []


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from eqseg.utils.atomic import atomic_dir, atomic_file
    folder, file = Path(sys.argv[1]), Path(sys.argv[2])
    with atomic_dir(folder) as tmp, atomic_file(file) as tmp_file:
        (tmp / "big.npy").write_bytes(b"x" * 1000)
        tmp_file.write_bytes(b"partial")
        print("ready", flush=True)
        time.sleep(120)
""")


def hold_outputs(folder: Path, file: Path) -> subprocess.Popen:
    """A real process that is writing both outputs (its temporaries exist) until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(file)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_next_run_removes_leftovers_of_killed_runs_only(tmp_path, caplog):
    folder, file = tmp_path / "tiles", tmp_path / "scene.tif"
    killed = hold_outputs(folder, file)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    left = hidden(tmp_path)
    assert len(left) == 2 and all(f".{killed.pid}." in n for n in left), left
    legacy = tmp_path / ".tiles.tmp-abc12345"  # left by an eqseg before the pid was in the name: not ours to judge
    legacy.mkdir()
    (tmp_path / ".tiles.old-4194305").mkdir()  # an older eqseg's swap folder, its pid (above Linux's pid_max) dead
    running = hold_outputs(folder, file)
    try:
        mine = [n for n in hidden(tmp_path) if f".{running.pid}." in n]
        assert len(mine) == 2
        write_output(folder, **{"a.txt": "1"})
        write_json(file, {"ok": True})
        assert hidden(tmp_path) == sorted([legacy.name, *mine])  # the killed runs' gone, the running job's kept
        assert "delete them if no eqseg is writing tiles" in caplog.text and legacy.name in caplog.text
    finally:
        running.kill()
        running.wait()
    assert remove_leftovers(folder) and remove_leftovers(file)
    assert hidden(tmp_path) == [legacy.name]
    assert json.loads(file.read_text()) == {"ok": True} and (folder / "a.txt").read_text() == "1"


def test_check_replaceable_is_cheap_to_call_first(tmp_path):
    check_replaceable(tmp_path / "absent")
    write_output(tmp_path / "out", **{"a": "1"})
    check_replaceable(tmp_path / "out")
    (tmp_path / "out" / MARKER).write_text("{not json")
    with pytest.raises(EqsegError, match="unreadable manifest"):
        check_replaceable(tmp_path / "out")


def test_outputs_never_land_on_their_inputs(tmp_path):
    from eqseg.utils.atomic import check_outputs_apart

    scene = tmp_path / "scene.tif"
    scene.write_text("raster")
    with pytest.raises(EqsegError, match=r"scene.tif: --out is the input --raster; writing it would replace the input"):
        check_outputs_apart({"--out": scene}, {"--raster": scene})
    (tmp_path / "link.tif").symlink_to(scene)
    with pytest.raises(EqsegError, match="is the input --raster"):
        check_outputs_apart({"--out": tmp_path / "link.tif"}, {"--raster": scene})
    images = tmp_path / "data" / "g" / "images"
    with pytest.raises(EqsegError, match=r"--out holds the input slides.g.images"):
        check_outputs_apart({"--out": tmp_path / "data" / "g"}, {"slides.g.images": images})
    check_outputs_apart({"--out": tmp_path / "data" / "g2", "--metrics": None}, {"slides.g.images": images, "--tiles": None})
    check_outputs_apart({"--out": tmp_path / "data" / "g" / "images" / "out.tif"}, {"slides.g.images": images / "a.png"})
