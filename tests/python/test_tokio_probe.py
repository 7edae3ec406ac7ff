"""``runtime_info()["tokio_parking_lot"]``: the probe of tokio's ``parking_lot`` feature.

This wheel is built without it (the workspace's tokio features), so the probe must say ``False``
once the runtime exists, ``None`` before, and a forked child inherits the answer. The other
configuration (feature on through a dependency) is tested in Rust by tests/parking-lot
(``cargo test --features hazard``), where the probe must say ``True``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import forksafe


def test_the_probe_says_off_in_a_wheel_without_the_feature() -> None:
    script = textwrap.dedent(
        """
        import os, sys, forksafe
        before = forksafe.runtime_info()["tokio_parking_lot"]
        forksafe.testing.echo_sync(1)
        after = forksafe.runtime_info()["tokio_parking_lot"]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            forksafe.testing.echo_sync(2)
            os.write(w, repr(forksafe.runtime_info()["tokio_parking_lot"]).encode())
            os._exit(0)
        os.close(w)
        child = os.read(r, 100).decode()
        os.waitpid(pid, 0)
        print(repr(before), repr(after), child)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done
    assert done.stdout.split() == ["None", "False", "False"], done


def test_runtime_info_has_the_key_here() -> None:
    forksafe.testing.echo_sync(0)
    assert forksafe.runtime_info()["tokio_parking_lot"] is False
    assert os.getpid() == forksafe.runtime_info()["pid"]
