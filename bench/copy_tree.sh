#!/usr/bin/env bash
# Copy this repository's files into DEST (an existing folder), for a run that must not touch this checkout's
# results/ (bench/gpu_check.sh's pipeline step): the tracked files in a git checkout, links kept as links
# (profiles -> workflow/profiles); without .git (a device machine's copy of the working tree may have none), all
# files but what .gitignore names.   Usage: bash bench/copy_tree.sh DEST
set -euo pipefail
DEST=$(cd "${1:?usage: copy_tree.sh DEST}" && pwd)
cd "$(dirname "$0")/.."
if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  git ls-files -z | xargs -0 cp -P --parents -t "$DEST"
else  # .gitignore's patterns as tar's: "/x" or "a/b" anchored at the root, a bare name anywhere
  excludes=(--exclude=./.git)
  while IFS= read -r pattern; do
    [[ -z "$pattern" || "$pattern" == \#* ]] && continue
    pattern=${pattern%/}
    if [[ "$pattern" == /* ]]; then excludes+=("--exclude=.$pattern")
    elif [[ "$pattern" == */* ]]; then excludes+=("--exclude=./$pattern")
    else excludes+=("--exclude=$pattern"); fi
  done < .gitignore
  tar -c "${excludes[@]}" . | tar -x -C "$DEST"
fi
