//! SMX over loopback TCP with an authenticator (RFC 3179 8.2 and 9), against hostile local
//! clients. The fixture runtime connects late, so every hostile client gets there first.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use smx::proto::{ExitCode, RunState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tcp_runtime(name: &str, flags: &[&str], cookie: Option<&str>) -> String {
    let mut argv = vec![
        format!("{:?}", "python3"),
        format!("{:?}", fixture("tcp_runtime.py")),
    ];
    argv.extend(flags.iter().map(|f| format!("{f:?}")));
    let cookie = cookie
        .map(|c| format!("cookie = {c:?}\n"))
        .unwrap_or_default();
    format!(
        "[[runtime]]\nname = \"{name}\"\ncommand = [{}]\ntransport = \"tcp\"\nprofiles = [\"default\"]\n{cookie}",
        argv.join(", ")
    )
}

fn tcp_host(extra: &str, hello_timeout: Duration) -> smx::host::Host {
    let mut c = config(extra);
    c.host.hello_timeout = hello_timeout;
    smx::host::Host::new(c, smx::storage::Storage::temporary().unwrap())
}

async fn read_file(p: &Path) -> String {
    eventually(10, &format!("{} to be written", p.display()), || p.exists()).await;
    std::fs::read_to_string(p).unwrap()
}

/// Reads until the host closes the connection; returns what was received. Fails if the
/// connection stays open longer than `secs`.
async fn closed_by_host(mut s: TcpStream, secs: u64) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), read)
        .await
        .expect("the host keeps a hostile connection open");
    String::from_utf8_lossy(&got).into_owned()
}

async fn answer_hello(port: u16, reply: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut hello = [0u8; 9];
    s.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"hello 1\r\n");
    s.write_all(reply.as_bytes()).await.unwrap();
    closed_by_host(s, 6).await
}

#[tokio::test]
async fn hostile_local_clients_are_dropped_and_the_runtime_is_unaffected() {
    let d = tempfile::tempdir().unwrap();
    let pf = d.path().join("port");
    let h = tcp_host(
        &tcp_runtime(
            "slow",
            &["--delay", "2", "--port-file", pf.to_str().unwrap()],
            None,
        ),
        Duration::from_secs(5),
    );
    let s = install(&h, "x.script", "", false);
    let run = h.launch(request(&s, Some("slow"))).unwrap();
    let port: u16 = read_file(&pf).await.parse().unwrap();

    let wrong_reply = format!("211 1 SMX/1.1 {}\r\n", "AB".repeat(32));
    let wrong = answer_hello(port, &wrong_reply);
    let missing = answer_hello(port, "211 1 SMX/1.1\r\n");
    let garbage = answer_hello(port, "hello there\r\n");
    let dribble = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        for b in b"211 1 SMX/1.1 0" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        closed_by_host(s, 8).await
    };
    let overlong = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = s.write_all(&vec![b'A'; 300 * 1024]).await;
        closed_by_host(s, 6).await
    };
    let hold =
        async { closed_by_host(TcpStream::connect(("127.0.0.1", port)).await.unwrap(), 8).await };
    let (a, b, c, d2, e, f) = tokio::join!(wrong, missing, garbage, dribble, overlong, hold);
    for (what, got) in [
        ("wrong cookie", a),
        ("no cookie", b),
        ("garbage", c),
        ("dribble", d2),
        ("over-long", e),
        ("hold", f),
    ] {
        assert!(!got.contains("start"), "{what} was given a run: {got:?}");
    }

    let r = reach(&h, run, RunState::Executing).await;
    assert_eq!(r.exit_code, ExitCode::NoError);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "a second connection after the runtime connected must be refused"
    );
    assert_eq!(h.refresh(run).await.unwrap().state, RunState::Executing);
    assert_eq!(h.abort(run).await.unwrap().exit_code, ExitCode::Halted);
    h.shutdown().await;
}

#[tokio::test]
async fn the_cookie_of_another_runtime_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (pa, ca, pb, cb) = (
        d.path().join("pa"),
        d.path().join("ca"),
        d.path().join("pb"),
        d.path().join("cb"),
    );
    let extra = format!(
        "{}{}",
        tcp_runtime(
            "a",
            &[
                "--delay",
                "2",
                "--port-file",
                pa.to_str().unwrap(),
                "--cookie-file",
                ca.to_str().unwrap()
            ],
            None
        ),
        tcp_runtime(
            "b",
            &[
                "--delay",
                "2",
                "--port-file",
                pb.to_str().unwrap(),
                "--cookie-file",
                cb.to_str().unwrap()
            ],
            None
        ),
    );
    let h = tcp_host(&extra, Duration::from_secs(5));
    let s = install(&h, "x.script", "", false);
    let ra = h.launch(request(&s, Some("a"))).unwrap();
    let rb = h.launch(request(&s, Some("b"))).unwrap();
    let port_a: u16 = read_file(&pa).await.parse().unwrap();
    let port_b: u16 = read_file(&pb).await.parse().unwrap();
    let cookie_a = read_file(&ca).await;
    let cookie_b = read_file(&cb).await;
    assert_ne!(port_a, port_b);
    assert_ne!(cookie_a, cookie_b, "each runtime has its own secret");
    assert_eq!(cookie_a.len(), 64, "256-bit cookie in hex");
    let got = answer_hello(port_a, &format!("211 1 SMX/1.1 {cookie_b}\r\n")).await;
    assert!(!got.contains("start"), "{got:?}");
    let a = reach(&h, ra, RunState::Executing).await;
    let b = reach(&h, rb, RunState::Executing).await;
    assert_ne!(a.runtime_pid, b.runtime_pid);

    // The secret is neither in the runtime's argv nor in its environment (fd delivery).
    for pid in [a.runtime_pid.unwrap(), b.runtime_pid.unwrap()] {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        for c in [&cookie_a, &cookie_b] {
            assert!(!String::from_utf8_lossy(&cmdline).contains(c.as_str()));
            assert!(!String::from_utf8_lossy(&environ).contains(c.as_str()));
        }
        assert!(String::from_utf8_lossy(&environ).contains("SMX_COOKIE_FD=3"));
    }
    h.shutdown().await;
}

#[tokio::test]
async fn env_cookie_delivery_for_rfc2593_runtimes() {
    let h = tcp_host(
        &tcp_runtime("old", &[], Some("env")),
        Duration::from_secs(5),
    );
    let s = install(&h, "x.script", "", false);
    let run = h.launch(request(&s, Some("old"))).unwrap();
    let r = reach(&h, run, RunState::Executing).await;
    let environ = std::fs::read(format!("/proc/{}/environ", r.runtime_pid.unwrap())).unwrap();
    assert!(
        String::from_utf8_lossy(&environ).contains("SMX_COOKIE="),
        "opt-in env delivery"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_runtime_that_never_connects_is_reported() {
    let h = tcp_host(
        &tcp_runtime("mute", &["--never-connect"], None),
        Duration::from_secs(1),
    );
    let s = install(&h, "x.script", "", false);
    let r = finish(&h, h.launch(request(&s, Some("mute"))).unwrap(), 10).await;
    assert_eq!(
        (r.state, r.exit_code),
        (RunState::Terminated, ExitCode::GenericError)
    );
    assert!(
        r.error
            .contains("did not connect and authenticate within 1s"),
        "{}",
        r.error
    );
}

#[tokio::test]
async fn a_runtime_with_the_wrong_cookie_gets_no_run() {
    let h = tcp_host(
        &tcp_runtime("liar", &["--wrong-cookie"], None),
        Duration::from_secs(1),
    );
    let s = install(&h, "x.script", "", false);
    let r = finish(&h, h.launch(request(&s, Some("liar"))).unwrap(), 10).await;
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(
        r.error.contains("before a connection authenticated"),
        "{}",
        r.error
    );
    assert!(
        r.error.contains("Authenticator does not match"),
        "{}",
        r.error
    );
}

/// Non-loopback IPv4 addresses of this machine.
fn external_addresses() -> Vec<std::net::Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .map(|ifs| {
            ifs.filter_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|s| s.ip())))
                .filter(|ip| !ip.is_loopback())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_listener_is_not_reachable_on_other_addresses() {
    let addrs = external_addresses();
    if addrs.is_empty() {
        eprintln!("SKIP: this machine has no non-loopback IPv4 address to test against");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let pf = d.path().join("port");
    let h = tcp_host(
        &tcp_runtime(
            "slow",
            &["--delay", "2", "--port-file", pf.to_str().unwrap()],
            None,
        ),
        Duration::from_secs(5),
    );
    let s = install(&h, "x.script", "", false);
    let run = h.launch(request(&s, Some("slow"))).unwrap();
    let port: u16 = read_file(&pf).await.parse().unwrap();
    // While the listener is open, loopback reaches it...
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_ok());
    // ...and no other address of this machine does.
    for ip in addrs {
        let r = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect((ip, port))).await;
        assert!(!matches!(r, Ok(Ok(_))), "listener reachable on {ip}:{port}");
    }
    reach(&h, run, RunState::Executing).await;
    h.shutdown().await;
}

#[tokio::test]
async fn crash_handling_is_the_same_over_tcp() {
    let h = tcp_host(&tcp_runtime("t", &[], None), Duration::from_secs(5));
    let s = install(&h, "x.script", "", false);
    let run = h.launch(request(&s, Some("t"))).unwrap();
    let pid = reach(&h, run, RunState::Executing)
        .await
        .runtime_pid
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let r = finish(&h, run, 10).await;
    assert_eq!(r.exit_code, ExitCode::GenericError);
    assert!(r.error.contains("killed by SIGKILL"), "{}", r.error);
}
