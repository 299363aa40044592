#!/usr/bin/env bash
# Every test stage of mlinfra.shared_cache, in order, stopping at the first failure.
#   scripts/test.sh            all stages
#   scripts/test.sh STAGE...   some of: lint ansible-lint build sanity units integration molecule
# Tiers: units (no network) on both controllers; integration = the tests that reach a package
# registry (pytest marker registry), once. A skipped test fails every pytest stage
# (MLINFRA_STRICT_SKIPS=1); what a stage leaves out is deselected by marker (tests/unit/conftest.py).
# Each stage's wall time is printed at the end (also when a stage fails).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
VENV="${VENV:-$ROOT/.venv}"
VENV_221="${VENV_221:-$ROOT/.venv-2.21}"
export ANSIBLE_COLLECTIONS_PATH="$ROOT/.collections:${HOME}/.ansible/collections:/usr/share/ansible/collections"
export ANSIBLE_ROLES_PATH="$ROOT/roles"
export PATH="$VENV/bin:$PATH"

declare -a TIMES=()
summary() {
  echo
  echo "== stage wall times =="
  for t in "${TIMES[@]}"; do echo "  $t"; done
}

stage() {
  local name="$1"; shift
  echo
  echo "== stage: $name =="
  local start end rc
  start=$(date +%s)
  "$@"
  rc=$?
  end=$(date +%s)
  TIMES+=("$(printf '%-22s %4ds  %s' "$name" "$((end - start))" "$([ $rc = 0 ] && echo ok || echo FAILED)")")
  if [ $rc != 0 ]; then
    summary
    echo "make test: stage '$name' failed (exit $rc)"
    exit $rc
  fi
}

run_ruff() { ruff check plugins tests benchmarks molecule && ruff format --check plugins tests benchmarks molecule && antsibull-changelog lint; }
run_ansible_lint() { ansible-lint --profile production --offline; }
run_build() {
  # The collection builds, installs from its tarball, and ansible-doc renders every module from it.
  local tmp rc=0 m
  tmp="$(mktemp -d)"
  ansible-galaxy collection build --force --output-path "$tmp/dist" . >/dev/null &&
    ANSIBLE_COLLECTIONS_PATH="$tmp/collections" ansible-galaxy collection install --offline --force -p "$tmp/collections" "$tmp"/dist/mlinfra-shared_cache-*.tar.gz >/dev/null || rc=1
  if [ $rc = 0 ]; then
    for m in plugins/modules/*.py; do
      [ -e "$m" ] || continue
      m="$(basename "$m" .py)"
      ANSIBLE_COLLECTIONS_PATH="$tmp/collections" ansible-doc "mlinfra.shared_cache.$m" >/dev/null ||
        { echo "ansible-doc mlinfra.shared_cache.$m failed"; rc=1; }
    done
    ANSIBLE_COLLECTIONS_PATH="$tmp/collections" ansible-doc -t filter mlinfra.shared_cache.cache_catalog >/dev/null || rc=1
    echo "built $(basename "$tmp"/dist/*.tar.gz) ($(du -h "$tmp"/dist/*.tar.gz | cut -f1)); ansible-doc rendered every module"
  fi
  rm -rf "$tmp"
  return $rc
}
run_sanity() { scripts/collection-tests.sh sanity "$1"; }
run_units() { scripts/system-deps.sh && MLINFRA_STRICT_SKIPS=1 scripts/collection-tests.sh units "$@"; }
run_molecule() {
  scripts/docker-runtime.sh || return 1
  local rc=0 s
  for s in molecule/*/molecule.yml; do
    s="$(basename "$(dirname "$s")")"
    echo "-- molecule test -s $s"
    local t0=$SECONDS
    molecule test -s "$s" || { rc=1; echo "molecule scenario $s FAILED"; break; }
    TIMES+=("$(printf '  molecule:%-12s %4ds' "$s" "$((SECONDS - t0))")")
  done
  return $rc
}

STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(lint ansible-lint build sanity units integration molecule)
for s in "${STAGES[@]}"; do
  case "$s" in
    lint) stage ruff run_ruff ;;
    ansible-lint) stage ansible-lint run_ansible_lint ;;
    sanity)
      stage "sanity 2.19/py3.11" run_sanity "$VENV"
      stage "sanity 2.21/py3.12" run_sanity "$VENV_221" ;;
    units)
      stage "units 2.19/py3.11" run_units "$VENV" -m "not registry"
      # bare ansible-core: no community.general, awx.awx nor ansible-builder (deselected, not skipped)
      stage "units 2.21/py3.12" run_units "$VENV_221" -m "not registry and not ansible_package and not system_python" ;;
    integration) stage "integration 2.19/py3.11" run_units "$VENV" -m registry ;;
    build) stage "build+ansible-doc" run_build ;;
    molecule) stage molecule run_molecule ;;
    *) echo "unknown stage $s"; exit 2 ;;
  esac
done
summary
echo "make test: all stages passed"
