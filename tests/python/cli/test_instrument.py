"""``check`` as a maintainer's instrument (issue 23): failure rates and what they are worth, the
native side of a hang, the fork handling named, what the children printed, check's own state
kept from them, and the parent's health after its children. Every construct is small and local
(a random draw, a tiny C thread pool compiled here, a socket client); every run goes through
cliutil's timeout and leftover-process check."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cliutil import by_path, check, culprits

# --------------------------------------------------------------------------------------------
# Rates: a hazard that fires in a random fraction of children
# --------------------------------------------------------------------------------------------

# Crashes (SIGSEGV) in half of the children whose fork ran Python's fork handlers; the paths
# that skip them (C-level fork, raw clone) never fire, so they stay ok and get raised.
RANDOM_HAZARD_SETUP = """
import ctypes, os
fired = []
os.register_at_fork(after_in_child=lambda: fired.append(os.urandom(1)[0] < 128))
"""
RANDOM_HAZARD_CODE = "ctypes.string_at(0) if fired and fired[-1] else 1"


def test_a_hazard_in_some_children_makes_ok_rows_weak_evidence_and_raises_their_count() -> None:
    args = ["--count", "4", "--deadline", "5", "--budget", "20",
            "--paths", "os_fork,mp_fork,thread_fork,c_fork,raw_syscall",
            "--setup", RANDOM_HAZARD_SETUP, RANDOM_HAZARD_CODE]  # fmt: skip
    run = check("--json", *args)
    assert run.code == 1, run
    report = run.json()
    rows = by_path(report)
    assert report["racy"], run  # 16 children, each crashing with p = 1/2: some did
    for path in ("c_fork", "raw_syscall"):  # never fire: raised towards 30 children
        assert report["boosted"]["added"].get(path, 0) > 0, (path, report["boosted"])
        assert rows[path]["children"] == 4 + report["boosted"]["added"][path], rows[path]
        assert rows[path]["crashed"] == 0, rows[path]  # the hazard never fires there
    # Every child's outcome is in the JSON: as many as the rows count.
    assert len(report["outcomes"]) == sum(row["children"] for row in rows.values()), run
    crashed = [o for o in report["outcomes"] if o["status"] == "crashed"]
    assert crashed and all(o["path"] not in ("c_fork", "raw_syscall") for o in crashed), run
    # The text report says the counts are weak and what was done about it.
    text = check(*args)
    assert text.code == 1, text
    # The report wraps at the terminal's width, and where a line breaks moves with the rates
    # drawn: compare words, not lines.
    words = " ".join(text.stdout.split())
    assert "weak evidence" in words and "Raised the count" in words, text
    assert "of 4" in words, text


KEEP_ALIVE_SETUP = """
import os, socket, threading, time
server = socket.create_server(("127.0.0.1", 0))

def serve():
    conn = server.accept()[0]
    while data := conn.recv(8):
        time.sleep(0.2)  # a slow backend: concurrent requests on the connection interleave
        conn.sendall(data)

threading.Thread(target=serve, daemon=True).start()
client = socket.create_connection(server.getsockname())  # one keep-alive connection
"""
KEEP_ALIVE_CODE = "client.sendall(b'%8d' % os.getpid()); int(client.recv(8)) == os.getpid()"


def test_isolate_keeps_children_from_taking_each_others_replies() -> None:
    # All at once, children may read each other's replies (by hand: 2 of 4 wrong); one at a
    # time, each child gets its own.
    run = check("--json", "--isolate", "--count", "4", "--paths", "os_fork", "--setup",
                KEEP_ALIVE_SETUP, KEEP_ALIVE_CODE)  # fmt: skip
    assert run.code == 0, run
    assert by_path(run.json())["os_fork"]["ok"] == 4, run


def test_repeat_runs_the_whole_check_again_and_isolate_runs_one_child_at_a_time() -> None:
    run = check("--json", "--count", "2", "--repeat", "2", "--isolate", "--paths",
                "os_fork,spawn", "1 + 1")  # fmt: skip
    assert run.code == 0, run
    rows = by_path(run.json())
    assert rows["os_fork"]["children"] == 4 and rows["spawn"]["children"] == 2, run


# --------------------------------------------------------------------------------------------
# Native evidence: a C thread pool whose shutdown in exit() waits for a worker
# --------------------------------------------------------------------------------------------

POOL_C = r"""
#include <pthread.h>
#include <stdlib.h>
static pthread_t worker;
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
static int stop, stopped, no_worker;
static void *run(void *arg) {
    pthread_mutex_lock(&m);
    while (!stop) pthread_cond_wait(&c, &m);
    stopped = 1;
    pthread_cond_broadcast(&c);
    pthread_mutex_unlock(&m);
    return arg;
}
static void pool_shutdown(void) {  /* run by C exit(): waits for the worker to acknowledge */
    if (no_worker) return;  /* no join either: glibc 2.43's pthread_join waits for a thread
                               that the fork did not copy (2.36's returned) */
    pthread_mutex_lock(&m);
    stop = 1;
    pthread_cond_broadcast(&c);
    while (!stopped) pthread_cond_wait(&c, &m);
    pthread_mutex_unlock(&m);
    pthread_join(worker, NULL);
}
static void forgotten(void) { no_worker = 1; }  /* a fork child has no worker */
void pool_start(void) {
    pthread_create(&worker, NULL, run, NULL);
    atexit(pool_shutdown);
}
void pool_start_fork_aware(void) {
    pthread_atfork(NULL, NULL, forgotten);
    pool_start();
}
"""


@pytest.fixture(scope="module")
def libpool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (gcc or cc) to build the test thread pool")
    folder = tmp_path_factory.mktemp("pool")
    (folder / "pool.c").write_text(POOL_C)
    library = folder / "libpool.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-g", "-O1", "-o", str(library),
                    str(folder / "pool.c"), "-lpthread"], check=True, timeout=60)  # fmt: skip
    return library


def test_a_c_thread_pool_joined_in_exit_is_named_from_its_native_frames(libpool: Path) -> None:
    setup = f"import ctypes; ctypes.CDLL({str(libpool)!r}).pool_start()"
    run = check("--json", "--count", "1", "--deadline", "2", "--paths", "os_fork",
                "--setup", setup, "1")  # fmt: skip
    assert run.code == 1, run
    stuck = culprits(run.json(), "os_fork")[0]
    assert stuck["status"] == "hangs_at_exit", stuck
    assert "Python's exit is over" in stuck["detail"], stuck
    # The dump signal was not sent to a process that no longer handles it: it did not kill it.
    assert "no longer handles the dump signal" in stuck["stack"], stuck
    native = stuck["native"]
    assert native["threads"] and "futex" in native["threads"][0], native
    if shutil.which("gdb") or shutil.which("eu-stack"):
        assert "pool_shutdown" in native["backtrace"], native
        assert native["stuck"].startswith("pool_shutdown in libpool.so"), native
        names = [hazard["name"] for hazard in native["hazards"]]
        assert names == ["a thread pool's join inside C exit()"], native
    else:
        assert native["tool"] == "neither gdb nor eu-stack is installed", native
    text = check("--count", "1", "--deadline", "2", "--paths", "os_fork", "--setup", setup, "1")
    assert "native threads (/proc/PID/task):" in text.stdout, text
    words = " ".join(text.stdout.split())  # the hazard's line is wrapped at 100 columns
    if native["tool"] in ("gdb", "eu-stack"):  # the hazard is known by its native frames
        assert "known native hazard: a thread pool's join inside C exit()" in words, text
    else:
        assert f"no native backtrace: {native['tool']}" in words, text


def test_a_pthread_atfork_repair_is_named_from_the_failing_paths(libpool: Path) -> None:
    setup = f"import ctypes; ctypes.CDLL({str(libpool)!r}).pool_start_fork_aware()"
    run = check("--json", "--count", "1", "--deadline", "2", "--paths",
                "os_fork,c_fork,raw_syscall", "--setup", setup, "1")  # fmt: skip
    assert run.code == 1, run
    rows = by_path(run.json())
    assert rows["os_fork"]["ok"] == 1 and rows["c_fork"]["ok"] == 1, run
    assert rows["raw_syscall"]["hangs_at_exit"] == 1, run
    (finding,) = run.json()["mechanism"]
    assert finding.startswith("Repairs itself in a pthread_atfork hook"), finding


REGISTER_AT_FORK_SETUP = """
import os, queue, threading
jobs = queue.Queue()
def start():
    global jobs
    jobs = queue.Queue()
    threading.Thread(target=lambda q=jobs: [q.get()() for _ in iter(int, 1)], daemon=True).start()
def call(f):
    done = queue.Queue()
    jobs.put(lambda: done.put(f()))
    return done.get()
start()
os.register_at_fork(after_in_child=start)  # the library repairs itself after os.fork
"""


def test_an_os_register_at_fork_repair_is_named_from_the_failing_paths() -> None:
    run = check("--json", "--count", "1", "--deadline", "2", "--paths",
                "os_fork,c_fork,raw_syscall", "--setup", REGISTER_AT_FORK_SETUP,
                "call(lambda: 7)")  # fmt: skip
    assert run.code == 1, run
    rows = by_path(run.json())
    assert rows["os_fork"]["ok"] == 1, run
    assert rows["c_fork"]["hung"] == 1 and rows["raw_syscall"]["hung"] == 1, run
    (finding,) = run.json()["mechanism"]
    assert finding.startswith("Repairs itself in an os.register_at_fork hook"), finding


# --------------------------------------------------------------------------------------------
# Both facts kept: CODE raised, then the exit hung
# --------------------------------------------------------------------------------------------

RAISES_THEN_BLOCKS_SETUP = """
import os, threading
PARENT = os.getpid()
blocker = threading.Event()
threading.Thread(target=blocker.wait, name="blocker").start()  # non-daemon: the exit joins it
"""


def test_code_that_raised_and_then_hung_at_exit_reports_both() -> None:
    code = "1 if os.getpid() == PARENT else {}['missing']"
    # After a C-level fork Python still lists the parent's non-daemon thread: the exit joins it.
    run = check("--json", "--count", "1", "--deadline", "2", "--paths", "c_fork", "--setup",
                RAISES_THEN_BLOCKS_SETUP, code)  # fmt: skip
    assert run.code == 1, run
    stuck = culprits(run.json(), "c_fork")[0]
    assert stuck["status"] == "hangs_at_exit", stuck
    assert stuck["detail"].startswith("CODE raised (KeyError: 'missing'), then hung at exit"), stuck
    assert "Traceback (most recent call last)" in stuck["detail"], stuck
    text = check("--count", "1", "--deadline", "2", "--paths", "c_fork", "--setup",
                 RAISES_THEN_BLOCKS_SETUP, code)  # fmt: skip
    assert "CODE raised (KeyError: 'missing'), then hung at exit" in text.stdout, text
    # The traceback sits indented in its block.
    assert "\n      KeyError: 'missing'" in text.stdout, text


# --------------------------------------------------------------------------------------------
# What the children printed
# --------------------------------------------------------------------------------------------

WARNING_SETUP = """
import os, sys, warnings
PARENT = os.getpid()
def warn_in_child():  # as a library's fork handler does, before any code of check runs
    print("mylib: fork support is experimental", file=sys.stderr, flush=True)
os.register_at_fork(after_in_child=warn_in_child)
"""


def test_a_library_warning_in_the_children_is_attributed_grouped_and_counted() -> None:
    args = [
        "--count",
        "3",
        "--paths",
        "os_fork,thread_fork",
        "--setup",
        WARNING_SETUP,
        "if os.getpid() != PARENT:\n    warnings.warn('mylib: inherited client')",
    ]
    run = check(*args)
    assert run.code == 0, run
    assert "mylib" not in run.stderr, run  # nothing on check's own stderr, unattributed
    lines = run.stdout.splitlines()
    fork = [line for line in lines if line.endswith("mylib: fork support is experimental")]
    assert len(fork) == 1, run  # once, counted
    assert "[6 of 6 children: os_fork, thread_fork; pid" in fork[0], run
    warned = [line for line in lines if "UserWarning: mylib: inherited client" in line]
    assert len(warned) == 1 and "[6 of 6 children" in warned[0], run
    report = check("--json", *args).json()
    printed = {entry["line"]: entry for entry in report["printed"]}
    assert printed["mylib: fork support is experimental"]["children"] == 6, printed


def test_a_rust_style_panic_message_shows_in_the_text_report() -> None:
    setup = "import os, sys\nPARENT = os.getpid()"
    code = (
        "if os.getpid() != PARENT:\n"
        "    print(\"thread 'tokio-runtime-worker' panicked at src/lib.rs:7:9:\",\n"
        "          file=sys.stderr)\n"
        "    print('runtime dropped its driver', file=sys.stderr, flush=True)\n"
        "    os.abort()\n"
    )
    run = check("--count", "1", "--paths", "os_fork", "--setup", setup, code)
    assert run.code == 1, run
    expected = (
        "    Rust panic: thread 'tokio-runtime-worker' panicked at src/lib.rs:7:9: runtime "
        "dropped its driver"
    )
    assert expected in run.stdout, run


def test_a_multi_line_value_gets_its_own_block_and_exit_lines_only_for_exit_hangs() -> None:
    setup = "class V:\n    def __repr__(self):\n        return 'first\\nsecond'"
    run = check("--count", "1", "--paths", "os_fork", "--setup", setup, "V()")
    assert run.code == 0, run
    assert run.stdout.startswith("parent: CODE returned in "), run
    assert "\n    first\n    second\n" in run.stdout, run
    assert "second in " not in run.stdout, run
    wrong = check("--count", "1", "--paths", "os_fork", "--setup", "import os", "os.getpid()")
    assert wrong.code == 1, wrong
    assert "atexit handlers still registered" not in wrong.stdout, wrong
    # Wrapped advice never breaks inside an option (it once read "--no-\n    compare").
    assert "compare with --no-compare." in " ".join(wrong.stdout.split()), wrong


# --------------------------------------------------------------------------------------------
# check's own state stays out of the children
# --------------------------------------------------------------------------------------------


def test_a_child_inherits_none_of_checks_multiprocessing_children() -> None:
    # mp_fork's children are started before c_fork forks: a plain fork of the user's program
    # has no such multiprocessing children, so its exit must not try to join them.
    run = check("--json", "--count", "2", "--paths", "mp_fork,c_fork,os_fork", "1")
    assert run.code == 0, run
    output = "\n".join(line for o in run.json()["outcomes"] for line in o["output"])
    assert "can only join a child process" not in output, run


# --------------------------------------------------------------------------------------------
# The parent after its children
# --------------------------------------------------------------------------------------------

SHARED_SOCKET_SETUP = """
import os, socket, threading
server = socket.create_server(("127.0.0.1", 0))

def echo(conn):
    while data := conn.recv(64):
        conn.sendall(data)

def serve():
    while True:
        threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()

threading.Thread(target=serve, daemon=True).start()

class Client:
    def __init__(self):
        self.pid, self.sock = os.getpid(), socket.create_connection(server.getsockname())

    def call(self, message):
        if self.pid != os.getpid():  # forked: reconnect, shutting the inherited socket down
            self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
            self.__init__()
        self.sock.sendall(message)
        return self.sock.recv(64)

client = Client()
"""


def test_a_child_that_breaks_the_parent_through_a_shared_socket_is_its_own_finding() -> None:
    args = ["--count", "1", "--deadline", "3", "--paths", "os_fork", "--setup",
            SHARED_SOCKET_SETUP, "client.call(b'ping')"]  # fmt: skip
    run = check("--json", *args)
    assert run.code == 4, run  # the children were ok; the parent broke: its own status bit
    report = run.json()
    assert report["passed"] is True and report["status"] == 4, run
    after = report["parent_after"]
    assert after["status"] in ("wrong", "raised"), after
    text = check(*args)
    assert text.code == 4, text
    assert "THE PARENT BROKE AFTER ITS CHILDREN RAN" in text.stdout, text
    words = " ".join(text.stdout.split())  # the advice is wrapped at 100 columns
    assert "never close, shut down or re-register an inherited descriptor" in words, text
    assert text.stdout.rstrip().endswith("but the parent broke after its children ran"), text


TOKEN_SETUP = """
import os
PARENT = os.getpid()
token_r, token_w = os.pipe()  # one token in a pipe: whoever holds it may go on
os.write(token_w, b"t")
"""
TOKEN_CODE = """
token = os.read(token_r, 1)
if os.getpid() == PARENT:  # only the parent gives it back: a child keeps it
    os.write(token_w, token)
1
"""


def test_a_parent_that_hangs_after_its_children_is_reported_with_its_stacks() -> None:
    run = check("--json", "--count", "1", "--deadline", "2", "--paths", "os_fork", "--setup",
                TOKEN_SETUP, TOKEN_CODE)  # fmt: skip
    assert run.code == 4, run
    after = run.json()["parent_after"]
    assert after["status"] == "hung", after
    assert 'File "<CODE>", line 2 in <module>' in after["stack"], after
    assert after["threads"], after


def test_a_clear_error_in_the_children_is_named_fail_fast() -> None:
    setup = "import os\nPARENT = os.getpid()"
    code = (
        "if os.getpid() != PARENT:\n"
        "    raise RuntimeError('Forked process detected: build the client after the fork')\n"
        "1"
    )
    run = check("--json", "--count", "1", "--paths", "os_fork,c_fork", "--setup", setup, code)
    assert run.code == 1, run
    (finding,) = run.json()["mechanism"]
    assert finding.startswith("Fail-fast: the children raise a clear error"), finding
    assert "Forked process detected" in finding, finding


def test_code_on_forksafe_is_said_to_be() -> None:
    setup = "import forksafe\nfrom forksafe import testing"
    code = "async def probe():\n    return await testing.echo(1)\nforksafe.run(probe())"
    run = check("--json", "--count", "1", "--paths", "os_fork,c_fork", "--setup", setup, code)
    assert run.code == 0, run
    (finding,) = run.json()["mechanism"]
    assert finding.startswith("CODE runs on forksafe"), finding


@pytest.mark.parametrize(
    ("frames", "hazard"),
    [
        ("#3 parking_lot_core::parking_lot::park\n#4 tokio::runtime::park",
         "parking_lot's parking table"),
        ("#2 __lll_lock_wait_private\n#3 _int_malloc\n#4 __libc_malloc",
         "glibc's malloc arena lock"),
        ("#4 pthread_join\n#5 pool_shutdown\n#6 __run_exit_handlers\n#7 exit",
         "a thread pool's join inside C exit()"),
    ],
)  # fmt: skip
def test_the_known_native_hazards_are_one_row_each(frames: str, hazard: str) -> None:
    from forksafe._cli import native

    assert [h.name for h in native.recognise(frames)] == [hazard]
    assert native.recognise("#0 epoll_wait\n#1 main") == []


# --------------------------------------------------------------------------------------------
# gRPC's fork support (Why item 6): a pthread_atfork repair that races the child's first call
# --------------------------------------------------------------------------------------------


def _outcomes(failed: dict[str, tuple[int, int]]) -> dict[str, list[Any]]:
    """Outcomes per path: ``(failed, children)``, the failures "wrong" (raised)."""
    from forksafe._cli.engine import Outcome, ProcessReport

    found: dict[str, list[Any]] = {}
    for path, (bad, children) in failed.items():
        found[path] = []
        for index in range(children):
            status = "wrong" if index < bad else "ok"
            process = ProcessReport(4000 + index, 1, 0, status=status, detail="UNAVAILABLE")
            found[path].append(Outcome(path, index, 1, [process]))
    return found


def _mechanism(failed: dict[str, tuple[int, int]]) -> list[str]:
    from forksafe._cli import mechanism
    from forksafe._cli.report import summarise

    outcomes = _outcomes(failed)
    rows = [summarise(path, found) for path, found in outcomes.items()]
    return mechanism.name(rows, outcomes, forksafe=False)


def test_a_fork_hook_whose_repair_races_the_first_call_is_named_so() -> None:
    # What check measured on a gRPC channel built in the parent with GRPC_ENABLE_FORK_SUPPORT=1
    # (its pthread_atfork handlers; the repair finishes on threads they start in the child):
    # the paths that run the hook fail in some children, the raw clone (which skips it) in all.
    (finding,) = _mechanism({
        "os_fork": (2, 5), "mp_fork": (0, 5), "c_fork": (2, 5), "raw_syscall": (5, 5),
        "thread_fork": (2, 30), "nested": (1, 5),
    })  # fmt: skip
    assert finding.startswith(
        "Repairs itself in a pthread_atfork hook, but not in time for every child: raw_syscall "
        "fails in every child"
    ), finding
    assert "(os_fork 2 of 5, c_fork 2 of 5, thread_fork 2 of 30, nested 1 of 5)" in finding
    # Where every hooked path fails in every child, that is no fork handling after all.
    (finding,) = _mechanism({"os_fork": (5, 5), "c_fork": (5, 5), "raw_syscall": (5, 5)})
    assert finding.startswith("No fork handling"), finding


def test_one_fork_path_alone_names_no_pattern() -> None:
    # `--paths os_fork` on gRPC once read "No fork handling: CODE fails on every fork path".
    (finding,) = _mechanism({"os_fork": (1, 5)})
    assert finding.startswith("Fails on os_fork, the only fork path checked"), finding


STAMPED_SETUP = """
import os, sys, threading, time
def log_in_child():  # as gRPC's C core logs after a fork: glog's stamp, then file:line]
    now = time.time()
    stamp = time.strftime("%m%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
    print(f"I{stamp} {threading.get_native_id():>8} ev_poll_posix.cc:588] FD from fork parent "
          "still in poll list", file=sys.stderr, flush=True)
os.register_at_fork(after_in_child=log_in_child)
"""


def test_a_log_line_stamped_differently_in_each_child_is_counted_once() -> None:
    run = check("--count", "3", "--paths", "os_fork", "--setup", STAMPED_SETUP, "1")
    assert run.code == 0, run
    lines = [line for line in run.stdout.splitlines() if "FD from fork parent" in line]
    assert len(lines) == 1, run  # once, whatever each child's time stamp and thread ID
    assert lines[0].startswith("  [3 of 3 children: os_fork; pid"), run
    assert lines[0].endswith("] I ev_poll_posix.cc:588] FD from fork parent still in poll list")
    report = check("--json", "--count", "1", "--paths", "os_fork", "--setup", STAMPED_SETUP, "1")
    raw = [line for o in report.json()["outcomes"] for line in o["output"]]
    assert raw and raw[0].startswith("I") and "ev_poll_posix.cc:588]" in raw[0], raw  # kept whole
