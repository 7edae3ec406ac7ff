# Sourced by the scripts: a project-local virtualenv with everything the build and tests need.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${FORKSAFE_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# FORKSAFE_REQUIREMENTS: a smaller set for a script that needs less (scripts/stress: the build).
"$PY" -m pip install -q --disable-pip-version-check -r "${FORKSAFE_REQUIREMENTS:-$ROOT/scripts/requirements-dev.txt}"
export PATH="$VENV/bin:$PATH"
