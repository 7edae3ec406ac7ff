# Sourced by the jobs (scripts/jobs/*) after scripts/env.sh: what more than one job shares.

step() { printf '\n==> %s\n' "$*"; }

# The library's fault injection (tests/fork_locks.rs) is compiled in by a --cfg, never by a
# feature. Every cargo step of the fork suites uses the same flags, so they share one build.
FAULT_RUSTFLAGS="--cfg forksafe_fault_injection"
# The native module's feature that adds the control probe (plain pyo3-async-runtimes).
CONTROL_FEATURE="control-probe"

# tests/python_fork.rs embeds an interpreter: it gets the venv's packages (uvloop, required
# here) and the libpython it was built against (not another install's of the same version).
eval "$("$PY" -c 'import sysconfig as s; print("PYLIB=%s SITE=%s" % (s.get_config_var("LIBDIR"), s.get_paths()["purelib"]))')"
embedded() { PYTHONPATH="$SITE" LD_LIBRARY_PATH="$PYLIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" FORKSAFE_REQUIRE_UVLOOP=1 "$@"; }

# need_test_wheel [PROFILE]: the test wheel (the release build plus the control probe) in
# target/test-wheel, installed into the venv. Built once per scripts/test run
# (FORKSAFE_RUN_ID), whichever job asks first; a lock makes jobs running side by side wait for
# one build instead of racing. PROFILE (default release) is the cargo profile.
need_test_wheel() {
  local profile=${1:-release} run=${FORKSAFE_RUN_ID:-$$-$RANDOM}
  mkdir -p "$ROOT/target"
  (
    flock 7
    if [ "$(cat "$ROOT/target/test-wheel/.run" 2>/dev/null)" != "$run $profile" ]; then
      step "the test wheel (profile $profile, the control probe added)"
      rm -rf "$ROOT/target/test-wheel"
      maturin build --locked --profile "$profile" --features "$CONTROL_FEATURE" -o "$ROOT/target/test-wheel" -i "$PY"
      echo "$run $profile" >"$ROOT/target/test-wheel/.run"
    fi
    # Installed once per run: a reinstall while the other lane's tests import forksafe (or
    # spawn interpreters that do) would pull the files from under them.
    if [ "$(cat "$VENV/.forksafe-test-wheel" 2>/dev/null)" != "$run $profile" ]; then
      "$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$ROOT"/target/test-wheel/forksafe-*.whl
      echo "$run $profile" >"$VENV/.forksafe-test-wheel"
    fi
  ) 7>"$ROOT/target/test-wheel.lock"
}

# apt_install PACKAGE...: Debian packages that are missing, as root; waits for another job's
# apt-get instead of failing on dpkg's lock.
apt_install() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || { echo "error: needs root to install: apt-get install ${missing[*]}" >&2; return 2; }
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -y -qq)
  "${apt[@]}" install "${missing[@]}" >/dev/null 2>&1 || { "${apt[@]}" update && "${apt[@]}" install "${missing[@]}"; } >/dev/null
}
