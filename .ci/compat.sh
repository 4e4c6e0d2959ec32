#!/usr/bin/env bash
# The compatibility matrix (noxfile.py, issue 16), as CI runs it.
#
# nox goes into a throwaway venv; the interpreters are the pyenv ones
# (~/.pyenv/versions/3.X*/bin, or $PYENV_ROOT), put first on PATH.  A Python
# that is not installed is skipped with a message, not failed.
#
# The budget is 25 minutes on 2 cores; one full session takes about 225 s
# (3.5 min of tests, 10-15 s of installing with a warm pip cache, a minute or
# two more with a cold one), seven of them would not fit, so CI runs
# (measured: 882 s in all with a warm cache; 1185 s once test_deploy_defects.py
# arrived, before the fast subset left it out; 1355 s on 2 cores shared with
# other work, 1656 s at load 10-14):
#   the whole suite:  tests-3.9, oldest (3.9, the floors of setup.cfg),
#                     newest (3.13, the newest release of everything; it is
#                     the 3.13 entry, so tests-3.13 is not run again)
#   the fast subset:  tests-3.10, tests-3.12 (FAST=1: noxfile.py FAST_IGNORE)
#   3.11 is the machine's python3: .ci/run's README command runs the whole
#   suite on it.
# The packaging test runs in .ci/run only (it builds its own venvs).
#
#   bash .ci/compat.sh                    # the CI plan above
#   COMPAT_FULL=1 bash .ci/compat.sh      # the whole suite on every session
#   bash .ci/compat.sh -s oldest -- -x    # any nox arguments instead
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work="$(mktemp -d "${TMPDIR:-/tmp}/gosse-compat.XXXXXX")"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT

# nox itself runs on the machine's python3, not on whichever pyenv one
# ends up first on PATH below.
base_python="$(command -v python3)"
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
for minor in 13 12 11 10 9; do
    found=""
    for dir in "$pyenv_root"/versions/3."$minor".*/bin; do
        [ -x "$dir/python3.$minor" ] && found="$dir"
    done
    if [ -n "$found" ]; then
        PATH="$found:$PATH"
    elif ! command -v "python3.$minor" >/dev/null 2>&1; then
        echo "compat: Python 3.$minor is not installed (not under $pyenv_root/versions, not on PATH); its sessions are skipped"
    fi
done
export PATH

if ! "$base_python" -m venv "$work/nox" >"$work/nox.log" 2>&1 ||
   ! "$work/nox/bin/python" -m pip install -q --disable-pip-version-check nox >>"$work/nox.log" 2>&1; then
    echo "compat: cannot install nox into a venv; the matrix is skipped"
    tail -3 "$work/nox.log"
    exit 0
fi
# An absent interpreter is skipped (nox says so), never fetched from outside.
export NOX_DOWNLOAD_PYTHON=never
nox=("$work/nox/bin/nox" --envdir "$work/envs" --no-error-on-missing-interpreters)

if [ $# -gt 0 ]; then
    "${nox[@]}" "$@"
    exit $?
fi

status=0
failed=()
run() {   # run FAST SESSION: one nox session, timed
    local fast="$1" session="$2" started=$SECONDS
    echo "compat: $session$([ "$fast" = 1 ] && echo ' (fast subset)')"
    if FAST="$fast" "${nox[@]}" -s "$session"; then
        echo "compat: $session passed in $((SECONDS - started)) s"
    else
        echo "compat: $session FAILED after $((SECONDS - started)) s"
        failed+=("$session")
        status=1
    fi
}
if [ "${COMPAT_FULL:-0}" = 1 ]; then
    for s in tests-3.9 tests-3.10 tests-3.11 tests-3.12 tests-3.13 oldest newest; do run 0 "$s"; done
else
    run 0 tests-3.9
    run 1 tests-3.10
    run 1 tests-3.12
    run 0 oldest
    run 0 newest
fi
if [ $status -eq 0 ]; then
    echo "compat: the matrix passed in $SECONDS s"
else
    echo "compat: FAILED: ${failed[*]} (after $SECONDS s)"
fi
exit $status
