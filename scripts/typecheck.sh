#!/usr/bin/env bash
# mypy over the `runstream` package as it installs: the top-level folders are its subpackages
# (setuptools package-dir), so a link tree gives mypy the installed layout without installing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tree="$repo/build/typecheck"
rm -rf "$tree"
mkdir -p "$tree/runstream"
for file in "$repo"/runstream/*.py "$repo"/runstream/py.typed; do
  ln -s "$file" "$tree/runstream/$(basename "$file")"
done
# the subpackages' folders, as pyproject.toml's package-dir names them
subs=$("$repo/.venv/bin/python" -c 'import sys, tomllib; dirs = tomllib.load(open(sys.argv[1], "rb"))["tool"]["setuptools"]["package-dir"]; print(" ".join(d for name, d in dirs.items() if name.count(".") == 1))' "$repo/pyproject.toml")
for sub in $subs; do
  ln -s "$repo/$sub" "$tree/runstream/$sub"
done
cd "$tree"
"${MYPY:-$repo/.venv/bin/mypy}" --config-file "$repo/pyproject.toml" --cache-dir "$repo/.mypy_cache" -p runstream "$@"
