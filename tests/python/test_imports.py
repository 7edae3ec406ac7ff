"""The library never imports the tool: ``import forksafe`` and its API leave ``forksafe._cli``
(check, stress, doctor and their fork engine) out of the process."""

from __future__ import annotations

import json
import subprocess
import sys

USE_THE_LIBRARY = """
import json, sys
import forksafe
from forksafe import testing

async def echo(v):
    return await testing.echo(v)

async def sleep(v):
    return await testing.sleep(0.001, v)

counter = forksafe.fork_local(lambda: [0])
counter.get()[0] += 1
loop = forksafe.BackgroundEventLoop()
results = [
    forksafe.run(echo(1)),
    forksafe.LOOP.run(sleep(2)),
    loop.run(echo(3)),
    counter.get()[0],
    forksafe.runtime_info()["pid"] > 0,
]
modules = sorted(name for name in sys.modules if name.startswith("forksafe"))
print(json.dumps({"results": results, "modules": modules}))
"""


def test_the_library_never_imports_the_tool() -> None:
    done = subprocess.run(
        [sys.executable, "-c", USE_THE_LIBRARY],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/tmp",
        check=False,
    )
    assert done.returncode == 0, done
    report = json.loads(done.stdout)
    assert report["results"] == [1, 2, 3, 1, True], report  # the API really ran
    assert "forksafe._native" in report["modules"], report
    tool = [m for m in report["modules"] if m == "forksafe._cli" or m.startswith("forksafe._cli.")]
    assert tool == [], f"import forksafe loaded the tool: {tool}"
