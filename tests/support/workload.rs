//! The runtime workload a child performs, and its checks in the parent.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::guard_mode::expected_guard;
use super::sys::getpid;
use super::wire::{ChildReport, Reporter};

/// The value a spawned task computes from the PID it runs in.
pub fn task_value(pid: u32) -> u64 {
    u64::from(pid) * 1_000_003 + 17
}

/// The seed a child sends over loopback TCP, and the server's answer.
pub fn tcp_seed(pid: u32) -> u64 {
    u64::from(pid) ^ 0x5eed_0000
}

pub fn tcp_answer(seed: u64) -> u64 {
    seed.wrapping_mul(3) + 1
}

/// `process_info()` as lines: `info.pid`, `info.depth`, `info.runtimes_built`,
/// `info.inherited` (`pid:generations_back,...`), `info.guard`, `info.guard_reason`.
pub fn report_info(rep: &Reporter, prefix: &str, info: &forksafe::ProcessInfo) {
    let rep = rep.with_prefix(prefix);
    rep.kv("pid", info.pid);
    rep.kv("depth", info.depth);
    rep.kv("runtimes_built", info.runtimes_built);
    rep.kv("inherited", format_inherited(&info.inherited_runtimes));
    rep.kv("guard", info.guard.mode);
    rep.kv("guard_reason", info.guard.reason);
}

pub fn format_inherited(list: &[forksafe::InheritedRuntime]) -> String {
    list.iter()
        .map(|r| format!("{}:{}", r.pid, r.generations_back))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `pid:generations_back,...` back into pairs.
pub fn parse_inherited(text: &str) -> Vec<(u32, u32)> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (pid, back) = pair.split_once(':').expect("pid:generations_back");
            (pid.parse().unwrap(), back.parse().unwrap())
        })
        .collect()
}

/// Round trip on loopback: a server task (on a worker) answers `tcp_answer(seed)`. Returns the
/// answer and the PID the server task saw.
pub async fn tcp_round_trip(seed: u64) -> (u64, u32) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    let server = forksafe::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 8];
        sock.read_exact(&mut buf).await.expect("server read");
        let answer = tcp_answer(u64::from_le_bytes(buf));
        sock.write_all(&answer.to_le_bytes())
            .await
            .expect("server write");
        getpid()
    })
    .expect("spawn server");
    let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(&seed.to_le_bytes())
        .await
        .expect("client write");
    let mut buf = [0u8; 8];
    client.read_exact(&mut buf).await.expect("client read");
    let server_pid = server.await.expect("server task");
    (u64::from_le_bytes(buf), server_pid)
}

/// The full workload: a spawned task on a worker (after a timer) computes `task_value` from the
/// PID it sees, a timer, a loopback TCP round trip, `spawn_blocking`, then `process_info()`.
/// Must run on a thread that is not a runtime thread. Keys (under `rep`'s prefix): `pid`,
/// `runtime_addr`, `worker_pid`, `worker_thread`, `task_value`, `timer`, `tcp_answer`,
/// `tcp_server_pid`, `blocking_pid`, and `info.*`.
pub fn exercise_runtime(rep: &Reporter) {
    let me = getpid();
    rep.kv("pid", me);
    let runtime = forksafe::runtime().expect("forksafe::runtime()");
    rep.kv("runtime_addr", runtime as *const _ as usize);
    let result = forksafe::block_on(async move {
        let task = forksafe::spawn(async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let pid = getpid();
            let name = std::thread::current().name().unwrap_or("").to_owned();
            (pid, task_value(pid), name)
        })
        .expect("forksafe::spawn");
        let (worker_pid, value, worker_thread) = task.await.expect("task");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (answer, server_pid) = tcp_round_trip(tcp_seed(getpid())).await;
        let blocking_pid = forksafe::spawn_blocking(getpid)
            .expect("forksafe::spawn_blocking")
            .await
            .expect("blocking task");
        (
            worker_pid,
            value,
            worker_thread,
            answer,
            server_pid,
            blocking_pid,
        )
    })
    .expect("forksafe::block_on");
    let (worker_pid, value, worker_thread, answer, server_pid, blocking_pid) = result;
    rep.kv("worker_pid", worker_pid);
    rep.kv("worker_thread", worker_thread);
    rep.kv("task_value", value);
    rep.kv("timer", "fired");
    rep.kv("tcp_answer", answer);
    rep.kv("tcp_server_pid", server_pid);
    rep.kv("blocking_pid", blocking_pid);
    report_info(rep, "info.", &forksafe::process_info());
}

/// What `report_info` wrote, parsed.
#[derive(Debug)]
pub struct ReportedInfo {
    pub pid: u32,
    #[allow(
        dead_code,
        reason = "part of the harness; not every test binary that includes this module calls it"
    )]
    pub depth: u32,
    pub runtimes_built: usize,
    pub inherited: Vec<(u32, u32)>,
    pub guard: String,
}

#[track_caller]
pub fn reported_info(report: &ChildReport, prefix: &str) -> ReportedInfo {
    ReportedInfo {
        pid: report.parse(&format!("{prefix}pid")),
        depth: report.parse(&format!("{prefix}depth")),
        runtimes_built: report.parse(&format!("{prefix}runtimes_built")),
        inherited: parse_inherited(report.value(&format!("{prefix}inherited"))),
        guard: report.value(&format!("{prefix}guard")).to_owned(),
    }
}

/// Checks what [`exercise_runtime`] reported for a process whose PID is `pid`: every task,
/// the TCP server and the blocking task ran in that process, the values are the ones derived
/// from that PID, and exactly one runtime was built there.
#[track_caller]
pub fn check_workload(report: &ChildReport, pid: u32) {
    let ctx = || format!("child output:\n{}", report.output);
    assert_eq!(
        report.parse::<u32>("pid"),
        pid,
        "getpid() in the child; {}",
        ctx()
    );
    assert_eq!(
        report.parse::<u32>("worker_pid"),
        pid,
        "PID seen by a runtime worker; {}",
        ctx()
    );
    assert!(
        report.value("worker_thread").starts_with("forksafe-"),
        "task ran on {:?}, not a forksafe worker; {}",
        report.value("worker_thread"),
        ctx()
    );
    assert_eq!(
        report.parse::<u64>("task_value"),
        task_value(pid),
        "{}",
        ctx()
    );
    assert_eq!(report.value("timer"), "fired", "{}", ctx());
    assert_eq!(
        report.parse::<u64>("tcp_answer"),
        tcp_answer(tcp_seed(pid)),
        "{}",
        ctx()
    );
    assert_eq!(report.parse::<u32>("tcp_server_pid"), pid, "{}", ctx());
    assert_eq!(report.parse::<u32>("blocking_pid"), pid, "{}", ctx());
    let info = reported_info(report, "info.");
    assert_eq!(info.pid, pid, "process_info().pid; {}", ctx());
    assert_eq!(info.runtimes_built, 1, "runtimes_built; {}", ctx());
    assert_eq!(info.guard, expected_guard(), "guard mode; {}", ctx());
}

/// The same workload run in the test process itself, checked on the spot: the parent still
/// works (and its record still says what it said).
#[allow(
    dead_code,
    reason = "part of the harness; not every test binary that includes this module calls it"
)]
pub fn parent_still_works() {
    let me = getpid();
    let value = forksafe::block_on(async {
        let task = forksafe::spawn(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            task_value(getpid())
        })
        .unwrap();
        let (answer, server_pid) = tcp_round_trip(tcp_seed(getpid())).await;
        (task.await.unwrap(), answer, server_pid)
    })
    .expect("block_on in the parent");
    assert_eq!(value.0, task_value(me), "parent's task value");
    assert_eq!(value.1, tcp_answer(tcp_seed(me)), "parent's TCP answer");
    assert_eq!(value.2, me, "parent's TCP server PID");
    let info = forksafe::process_info();
    assert_eq!(info.pid, me);
    assert_eq!(info.runtimes_built, 1);
}
