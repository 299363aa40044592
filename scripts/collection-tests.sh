#!/usr/bin/env bash
# Run ansible-test sanity or the pytest unit tests against a copy of the collection at
# <tmp>/ansible_collections/mlinfra/shared_cache (ansible-test refuses a symlinked path).
#   scripts/collection-tests.sh sanity|units VENV [PYTEST ARGS...]   (e.g. -m registry)
set -euo pipefail
what="$1"; venv="$(cd "$2" && pwd)"; shift 2
cd "$(dirname "$0")/.."
src="$PWD"
py="$venv/bin/python"
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
core="$("$py" -c 'import ansible.release as r; print(r.__version__)')"
echo "$what: ansible-core $core on Python $pyver"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/mlinfra/shared_cache"
mkdir -p "$dest"
# Tracked and new (not ignored) files only: exactly what would be committed.
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] || continue
  mkdir -p "$dest/$(dirname "$f")"
  cp -a "$f" "$dest/$f"
done
# ansible-test lists files with git when it finds a repository.
git -C "$dest" init -q && git -C "$dest" add -A && git -C "$dest" -c user.name=t -c user.email=t@t commit -qm copy

case "$what" in
  sanity)
    # ansible-test --venv bootstraps pip with get-pip.py from a host that is not reachable here.
    # A stand-in in its cache does the same job with the interpreter's own ensurepip.
    pipver="$(grep -oE "pip='[0-9.]+'" "$venv"/lib/python*/site-packages/ansible_test/_internal/python_requirements.py | head -1 | grep -oE '[0-9.]+')"
    cache="$HOME/.ansible/test/cache"
    mkdir -p "$cache"
    cat >"$cache/get_pip_${pipver//./_}.py" <<'PY'
"""Stand-in for get-pip.py: ensurepip, then pip install the requested packages."""
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check"] + args)
PY
    cd "$dest"
    "$venv/bin/ansible-test" sanity --venv --python "$pyver" --color no
    ;;
  units)
    cd "$dest"
    PYTHONPATH="$work" "$py" -m pytest -q -rs -p no:cacheprovider --strict-markers "$@" tests/unit
    ;;
  *) echo "usage: $0 sanity|units VENV" >&2; exit 2 ;;
esac
