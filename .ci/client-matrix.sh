#!/usr/bin/env bash
# Run the client tests (tests/test_client*.py) in throwaway venvs against the
# urllib3 lines the client's fast path supports (gosse/_transport.py):
#
#   old:  urllib3 1.26 with the oldest requests setup.cfg allows (2.25)
#   u2.0: urllib3 2.0 (no HTTPResponse.read1 yet) with the oldest requests
#         that accepts urllib3 2 (2.30)
#   new:  the newest urllib3 2.x and requests
#
# Packages come from PyPI (pip's configured index).  If a venv cannot be made
# or its packages cannot be installed (no network, no ensurepip), the script
# says so and exits 0: the matrix is skipped, not failed.  A test failure
# exits 1.  Options (environment): PYTHON (default python3), MATRIX (default
# "old u2.0 new"), KEEP=1 keeps the venvs (in $TMPDIR/gosse-client-matrix.*).
#
#   bash .ci/client-matrix.sh
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/gosse-client-matrix.XXXXXX")"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT

pins() {
    case "$1" in
        old) echo "requests==2.25.* urllib3==1.26.* idna<3 chardet<5" ;;
        u2.0) echo "requests==2.30.* urllib3==2.0.*" ;;
        new) echo "requests urllib3>=2,<3" ;;
        *) echo "unknown matrix entry $1" >&2; return 1 ;;
    esac
}

status=0
for entry in ${MATRIX:-old u2.0 new}; do
    venv="$work/$entry"
    started=$SECONDS
    if ! "$python" -m venv "$venv" >"$work/$entry.log" 2>&1; then
        echo "client-matrix: cannot create a venv with $python; skipping ($(tail -1 "$work/$entry.log"))"
        exit 0
    fi
    # shellcheck disable=SC2046
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check \
            $(pins "$entry") werkzeug pytest pytest-timeout >>"$work/$entry.log" 2>&1; then
        echo "client-matrix: cannot install the $entry packages; skipping"
        tail -3 "$work/$entry.log"
        exit 0
    fi
    versions="$("$venv/bin/python" -c 'import requests, urllib3, sys; print(f"python {sys.version.split()[0]}, requests {requests.__version__}, urllib3 {urllib3.__version__}")')"
    echo "client-matrix [$entry]: $versions"
    # The checkout itself on the path (not installed): what CI tests is this tree.
    if (cd "$root" && PYTHONPATH="$root" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
            -W "ignore::DeprecationWarning" tests/test_client*.py); then
        echo "client-matrix [$entry]: passed in $((SECONDS - started)) s"
    else
        echo "client-matrix [$entry]: FAILED ($versions)"
        status=1
    fi
done
exit $status
