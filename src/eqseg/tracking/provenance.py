"""The code a run used, from git: the commit, whether the work tree is dirty, a hash of the uncommitted code."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from pathlib import Path

from eqseg.errors import EqsegError


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess | None:
    try:
        env = dict(os.environ, LC_ALL="C", LANGUAGE="C")  # messages we recognise ("not a git repository")
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, env=env)
    except (OSError, subprocess.SubprocessError):
        return None


def _in_repo(cwd: Path) -> bool:
    """Whether cwd is inside a git work tree. False outside one (or without git); any other failure of git
    (e.g. "detected dubious ownership") is an EqsegError, so provenance is never silently lost."""
    out = _git(["rev-parse", "--is-inside-work-tree"], cwd)
    if out is None:
        return False
    if out.returncode == 0:
        return out.stdout.strip() == "true"
    if "not a git repository" in out.stderr.lower():
        return False
    raise EqsegError(f"{cwd}: git cannot read the repository ({out.stderr.strip().splitlines()[0][:200] if out.stderr.strip() else out.returncode})")


def git_commit(cwd: Path | None = None) -> str:
    """The commit checked out in the git work tree holding `cwd` (default: the current folder).

    "unknown" only outside a git work tree (or without a `git` program); "none" in a repository without commits.
    Any other failure of git inside a work tree is an EqsegError, never a silent "unknown"."""
    cwd = Path(cwd or Path.cwd())
    if not _in_repo(cwd):
        return "unknown"
    head = _git(["rev-parse", "--verify", "--quiet", "HEAD"], cwd)
    if head is not None and head.returncode == 0 and head.stdout.strip():
        return head.stdout.strip()
    if head is not None and head.returncode == 1 and not head.stdout.strip():
        return "none"  # `git init` without a commit
    raise EqsegError(f"{cwd}: git cannot read HEAD ({(head.stderr if head else '').strip()[:200]})")


def git_dirty(cwd: Path | None = None) -> str:
    """"true" when the work tree holding `cwd` differs from its commit (modified, staged or untracked files that
    .gitignore does not hide), "false" when clean, "unknown" outside a git work tree."""
    cwd = Path(cwd or Path.cwd())
    if not _in_repo(cwd):
        return "unknown"
    out = _git(["status", "--porcelain"], cwd)
    if out is None or out.returncode != 0:
        raise EqsegError(f"{cwd}: `git status` failed ({(out.stderr if out else '').strip()[:200]})")
    return "true" if out.stdout.strip() else "false"


# What is not code, at the top of the repository: DVC rewrites params.yaml (`exp run -S`) and dvc.lock, and
# writes data and results; MLflow records the params itself. A change to any of these says nothing about the code a run used.
NOT_CODE = ("params.yaml", "dvc.lock", "data/**", "results/**", "mlflow.db", "mlartifacts/**")


def _code_pathspec() -> list[str]:
    """The whole work tree but NOT_CODE (paths from the repository's top: src/eqseg/data is code)."""
    return ["--", ":(top)", *(f":(top,exclude,glob){p}" for p in NOT_CODE)]


def git_code_diff(cwd: Path | None = None) -> str:
    """A 16-hex hash of the uncommitted code: the diff against HEAD and the untracked files .gitignore does not
    hide, without NOT_CODE. "none" when the code is as committed; "unknown" outside a repository or before the
    first commit. The same local edit gives the same hash, so runs show which code change they share."""
    cwd = Path(cwd or Path.cwd())
    if git_commit(cwd) in ("unknown", "none"):
        return "unknown"
    diff = _git(["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff", *_code_pathspec()], cwd)
    new = _git(["ls-files", "--others", "--exclude-standard", "--full-name", "-z", *_code_pathspec()], cwd)
    top = _git(["rev-parse", "--show-toplevel"], cwd)
    if any(out is None or out.returncode != 0 for out in (diff, new, top)):
        raise EqsegError(f"{cwd}: git cannot diff the work tree ({next((o.stderr for o in (diff, new, top) if o), '').strip()[:200]})")
    untracked = sorted(n for n in new.stdout.split("\0") if n)
    if not diff.stdout and not untracked:
        return "none"
    h = hashlib.sha256(diff.stdout.encode())
    for name in untracked:
        h.update(b"\0" + name.encode() + b"\0")
        with contextlib.suppress(OSError):  # a file removed meanwhile: its name alone
            h.update((Path(top.stdout.strip()) / name).read_bytes())
    return h.hexdigest()[:16]


def git_tags(cwd: Path | None = None) -> dict[str, str]:
    """Run tags for the code version: git_commit; git_code_diff, the hash of the uncommitted code (git_code_diff:
    "none" when the code is the commit's, whatever DVC did to params.yaml); git_dirty (any change at all, params
    and data included); and MLflow's own `mlflow.source.git.commit` (the UI's source version) when there is a
    commit."""
    commit = git_commit(cwd)
    tags = {"git_commit": commit, "git_code_diff": git_code_diff(cwd), "git_dirty": git_dirty(cwd)}
    if commit not in ("unknown", "none"):
        tags["mlflow.source.git.commit"] = commit
    return tags
