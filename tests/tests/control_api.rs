//! The control plane end to end: the real `butterflyd` binary in API-only mode
//! (`--no-dataplane`: configuration validated, persisted and served, no packet path),
//! driven by the real `butterfly` CLI over the real Unix socket (and TCP with TLS).
//!
//! Needs no privileges and sends no packets: the daemon's VTEP address is 192.0.2.1
//! (TEST-NET-1, never used), sockets live in a per-test temporary directory, TCP
//! endpoints listen on 127.0.0.1. The binaries come from the same target directory (see
//! [`bin_dir`], shared with the other daemon tests).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use butterfly_tests::TempDir;
use butterfly_tests::daemon::bin_dir;

/// What a CLI run returned.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A running `butterflyd --no-dataplane`; killed on drop.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
    state: PathBuf,
    extra: Vec<String>,
}

impl Daemon {
    /// Starts a daemon whose socket and state file are in `dir`.
    fn start(dir: &Path, extra: &[&str]) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let mut d = Daemon {
            child: None,
            dir: dir.to_path_buf(),
            socket: dir.join("run/api.sock"),
            state: dir.join("lib/state.json"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
    }

    fn log(&self) -> PathBuf {
        self.dir.join("butterflyd.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let child = Command::new(bin_dir().join("butterflyd"))
            .args([
                "--nic",
                "lo",
                "--ip",
                "192.0.2.1",
                "--no-dataplane",
                "--log-level",
                "debug",
            ])
            .arg("--api-socket")
            .arg(&self.socket)
            .arg("--state-file")
            .arg(&self.state)
            .arg("--vhost-socket-dir")
            .arg(self.dir.join("vhost"))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning butterflyd");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the API answers (`status` exits 0), or fails with the daemon's log.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "butterflyd exited with {st} before serving:\n{}",
                    self.log_text()
                );
            }
            if self.socket.exists() && self.cli(&["status"]).code == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "butterflyd did not serve within 15 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Runs `butterfly -s SOCKET ARGS`.
    fn cli(&self, args: &[&str]) -> Run {
        Command::new(bin_dir().join("butterfly"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running butterfly")
            .into()
    }

    /// Runs the CLI and insists on success.
    fn ok(&self, args: &[&str]) -> String {
        let r = self.cli(args);
        assert_eq!(
            r.code, 0,
            "butterfly {args:?} failed: {}{}",
            r.stdout, r.stderr
        );
        r.stdout
    }

    /// Runs the CLI, expects a refusal (exit 1) whose message contains `message`.
    fn refused(&self, args: &[&str], message: &str) {
        let r = self.cli(args);
        assert_eq!(
            r.code, 1,
            "butterfly {args:?}: expected exit 1, got {}: {}{}",
            r.code, r.stdout, r.stderr
        );
        assert!(
            r.stderr.contains(message),
            "butterfly {args:?}: {:?} lacks {message:?}",
            r.stderr
        );
    }

    fn dump(&self) -> String {
        self.ok(&["dump"])
    }

    /// Sends `signal` and waits for the exit status.
    fn stop(&mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let st = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        wait_exit(&mut child, Duration::from_secs(10))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "butterflyd did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A configuration touching every kind of object.
fn configure(d: &Daemon) {
    d.ok(&["sg", "add", "web", "db"]);
    d.ok(&[
        "sg",
        "rule",
        "add",
        "web",
        "--dir",
        "in",
        "--ip-proto",
        "tcp",
        "--port",
        "5000",
        "--cidr",
        "0.0.0.0/0",
    ]);
    d.ok(&[
        "sg",
        "rule",
        "add",
        "web",
        "--dir",
        "in",
        "--ip-proto",
        "icmp",
        "--cidr",
        "10.0.0.0/8",
    ]);
    d.ok(&[
        "sg",
        "rule",
        "add",
        "db",
        "--dir",
        "in",
        "--ip-proto",
        "tcp",
        "--port-start",
        "5432",
        "--port-end",
        "5433",
        "--sg-members",
        "web",
        "--rule-id",
        "pg",
    ]);
    d.ok(&["sg", "member", "add", "web", "10.0.0.1", "fd00::1"]);
    d.ok(&[
        "nic",
        "add",
        "--id",
        "vm1",
        "--mac",
        "52:54:00:00:00:01",
        "--vni",
        "42",
        "--ip",
        "10.0.0.1,fd00::1",
        "--sg",
        "web",
        "--enable-antispoof",
    ]);
    d.ok(&[
        "nic",
        "add",
        "--id",
        "vm2",
        "--mac",
        "52:54:00:00:00:02",
        "--vni",
        "42",
        "--ip",
        "10.0.0.2",
        "--sg",
        "db",
        "--packet-trace",
        "--trace-path",
        "/tmp/vm2.pcap",
    ]);
    d.ok(&[
        "nic",
        "add",
        "--id",
        "vm3",
        "--mac",
        "52:54:00:00:00:03",
        "--vni",
        "7",
        "--bypass-filtering",
        "--type",
        "tap",
    ]);
    d.ok(&["flood", "add", "7", "192.0.2.7", "192.0.2.8"]);
}

#[test]
fn nics_sgs_rules_members_and_flood_lists() {
    let t = TempDir::new("api-crud");
    let d = Daemon::start(t.path(), &[]);
    configure(&d);

    let list = d.ok(&["nic", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 4, "{list}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("MAC"),
        "{list}"
    );
    assert!(
        lines[1].starts_with("vm1 ")
            && lines[1].contains("10.0.0.1,fd00::1")
            && lines[1].contains("antispoof"),
        "{list}"
    );
    assert!(
        lines[2].starts_with("vm2 ") && lines[2].contains("trace"),
        "{list}"
    );
    assert!(
        lines[3].starts_with("vm3 ")
            && lines[3].contains(" 7 ")
            && lines[3].contains("tap")
            && lines[3].contains("bypass"),
        "{list}"
    );

    let json = d.ok(&["--json", "nic", "details", "vm1"]);
    assert!(json.contains("\"mac\": \"52:54:00:00:00:01\""), "{json}");
    let socket = d.dir.join("vhost/vm1.sock");
    assert!(
        json.contains(&format!("\"socket_path\": \"{}\"", socket.display())),
        "{json}"
    );
    assert!(d.ok(&["nic", "details", "vm2"]).contains("/tmp/vm2.pcap"));

    // Rules: ids are stable (derived from content, or given) and listed.
    let rules = d.ok(&["sg", "rule", "list", "db"]);
    assert!(
        rules.lines().nth(1).is_some_and(|l| l.starts_with("pg ")
            && l.contains("5432-5433")
            && l.contains("sg:web")),
        "{rules}"
    );
    let web_rules = d.ok(&["sg", "rule", "list", "web"]);
    let ids: Vec<&str> = web_rules
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{web_rules}");
    assert!(ids.iter().all(|i| i.len() == 16), "{ids:?}");
    assert_eq!(
        d.ok(&["sg", "member", "list", "web"]),
        "MEMBER\n10.0.0.1\nfd00::1\n"
    );
    assert_eq!(d.ok(&["sg", "list"]), "SG\ndb\nweb\n");
    assert_eq!(d.ok(&["nic", "sg", "list", "vm1"]), "SG\nweb\n");

    let flood = d.ok(&["flood", "list"]);
    assert!(flood.contains("7    192.0.2.7,192.0.2.8"), "{flood}");
    assert!(flood.contains("42   multicast 230.0.0.42"), "{flood}");

    // Changes.
    d.ok(&["nic", "sg", "add", "vm1", "db"]);
    assert_eq!(d.ok(&["nic", "sg", "list", "vm1"]), "SG\nweb\ndb\n");
    d.ok(&[
        "nic",
        "update",
        "--id",
        "vm1",
        "--ip",
        "10.0.0.9",
        "--enable-antispoof",
        "false",
    ]);
    let vm1 = d.ok(&["nic", "details", "vm1"]);
    assert!(
        vm1.contains("ips:              10.0.0.9\n") && vm1.contains("ip antispoof:     false"),
        "{vm1}"
    );
    d.ok(&["sg", "rule", "del", "web", ids[0]]);
    assert_eq!(d.ok(&["sg", "rule", "list", "web"]).lines().count(), 2);
    d.ok(&["sg", "member", "del", "web", "fd00::1"]);
    d.ok(&["flood", "del", "7", "192.0.2.7"]);

    // Deletions, and in-use protection.
    d.refused(
        &["sg", "del", "web"],
        "id: security group 'web' is used by nic 'vm1'",
    );
    d.ok(&["nic", "del", "vm1", "vm2"]);
    d.refused(
        &["sg", "del", "web"],
        "id: security group 'web' is named by rule pg of security group 'db'",
    );
    d.ok(&["sg", "del", "db", "web"]);
    assert_eq!(d.ok(&["sg", "list"]), "SG\n");
    let list = d.ok(&["nic", "list"]);
    assert_eq!(list.lines().count(), 2, "{list}");

    // Status counts requests and says there is no dataplane.
    let status = d.ok(&["status"]);
    assert!(
        status.contains("dataplane: none (API-only mode"),
        "{status}"
    );
    assert!(
        status.contains("nics:      1\n") && status.contains("sgs:       0\n"),
        "{status}"
    );
    assert!(d.ok(&["status", "--dot"]).starts_with("digraph"));
    // nic stats needs a dataplane: answered clearly.
    let r = d.cli(&["nic", "stats", "vm3"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("API-only mode"), "{}", r.stderr);
}

#[test]
fn bad_requests_name_the_field_and_change_nothing() {
    let t = TempDir::new("api-bad");
    let d = Daemon::start(t.path(), &[]);
    configure(&d);
    let before = d.dump();
    let on_disk = std::fs::read(&d.state).unwrap();
    let nic = |extra: &[&'static str]| {
        let mut v = vec![
            "nic",
            "add",
            "--id",
            "vm9",
            "--mac",
            "52:54:00:00:00:09",
            "--vni",
            "42",
        ];
        v.extend_from_slice(extra);
        v
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "nic",
                "add",
                "--id",
                "vm9",
                "--mac",
                "52:54:00:00:09",
                "--vni",
                "42",
            ],
            "mac: '52:54:00:00:09' is not a MAC address",
        ),
        (
            vec![
                "nic",
                "add",
                "--id",
                "vm9",
                "--mac",
                "ff:ff:ff:ff:ff:ff",
                "--vni",
                "42",
            ],
            "mac: ff:ff:ff:ff:ff:ff is a multicast/broadcast address",
        ),
        (
            vec![
                "nic",
                "add",
                "--id",
                "vm9",
                "--mac",
                "00:00:00:00:00:00",
                "--vni",
                "42",
            ],
            "mac: 00:00:00:00:00:00 is the zero address",
        ),
        (
            vec![
                "nic",
                "add",
                "--id",
                "vm9",
                "--mac",
                "52:54:00:00:00:01",
                "--vni",
                "42",
            ],
            "mac: 52:54:00:00:00:01 is already used by nic 'vm1' on VNI 42",
        ),
        (
            vec![
                "nic",
                "add",
                "--id",
                "vm9",
                "--mac",
                "52:54:00:00:00:09",
                "--vni",
                "16777216",
            ],
            "vni: 16777216 is above 16777215",
        ),
        (
            vec![
                "nic",
                "add",
                "--id",
                "vm1",
                "--mac",
                "52:54:00:00:00:09",
                "--vni",
                "42",
            ],
            "id: nic 'vm1' already exists",
        ),
        (
            vec![
                "nic",
                "add",
                "--id",
                "vm 9",
                "--mac",
                "52:54:00:00:00:09",
                "--vni",
                "42",
            ],
            "id: 'vm 9' contains ' '",
        ),
        (
            nic(&["--ip", "10.0.0.256"]),
            "ips[0]: '10.0.0.256' is not an IPv4 or IPv6 address",
        ),
        (
            nic(&["--ip", "10.0.0.2"]),
            "ips[0]: 10.0.0.2 is already used by nic 'vm2' on VNI 42",
        ),
        (
            nic(&["--sg", "web,nosuch"]),
            "security_groups[1]: no security group 'nosuch'",
        ),
        (
            nic(&["--socket-path", "relative.sock"]),
            "socket_path: 'relative.sock' is not an absolute path",
        ),
        (
            nic(&["--type", "tap", "--socket-path", "/tmp/x.sock"]),
            "socket_path: only vhost-user NICs have a socket",
        ),
        (
            nic(&["--packet-trace", "--trace-path", "/tmp/vm2.pcap"]),
            "packet_trace_path: /tmp/vm2.pcap is already used by nic 'vm2'",
        ),
        (vec!["nic", "del", "vm9"], "id: no nic 'vm9'"),
        (
            vec!["nic", "update", "--id", "vm1", "--ip", "::"],
            "ips[0]: :: is the unspecified address",
        ),
        (
            vec!["nic", "sg", "add", "vm1", "web"],
            "sg: security group 'web' is already attached to nic 'vm1'",
        ),
        (
            vec!["nic", "sg", "del", "vm1", "db"],
            "sg: security group 'db' is not attached to nic 'vm1'",
        ),
        (
            vec!["sg", "add", "web"],
            "id: security group 'web' already exists",
        ),
        (
            vec!["sg", "del", "nosuch"],
            "id: no security group 'nosuch'",
        ),
        (
            vec![
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "in",
                "--ip-proto",
                "tcp",
                "--port-start",
                "90",
                "--port-end",
                "80",
                "--cidr",
                "0.0.0.0/0",
            ],
            "rule.port_end: 80 is below port_start 90",
        ),
        (
            vec![
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "in",
                "--ip-proto",
                "tcp",
                "--port",
                "70000",
                "--cidr",
                "0.0.0.0/0",
            ],
            "rule.port_start: 70000 is above 65535",
        ),
        (
            vec![
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "in",
                "--ip-proto",
                "icmp",
                "--port",
                "80",
                "--cidr",
                "0.0.0.0/0",
            ],
            "rule.port_start: ports apply to tcp and udp only, not to protocol icmp",
        ),
        (
            vec![
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "in",
                "--ip-proto",
                "sctp",
                "--cidr",
                "0.0.0.0/0",
            ],
            "rule.protocol: 'sctp' is not a protocol",
        ),
        (
            vec![
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "in",
                "--ip-proto",
                "tcp",
                "--cidr",
                "10.0.0.1/8",
            ],
            "rule.cidr: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?",
        ),
        (
            vec![
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "in",
                "--ip-proto",
                "tcp",
                "--cidr",
                "10.0.0.0/40",
            ],
            "rule.cidr: '10.0.0.0/40' is not a CIDR",
        ),
        (
            vec![
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "in",
                "--ip-proto",
                "tcp",
                "--sg-members",
                "nosuch",
            ],
            "rule.sg_members: no security group 'nosuch'",
        ),
        (
            vec![
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "in",
                "--ip-proto",
                "tcp",
                "--port",
                "5000",
                "--cidr",
                "0.0.0.0/0",
            ],
            "rule.rule: security group 'web' already has this rule",
        ),
        (
            vec![
                "sg",
                "rule",
                "add",
                "nosuch",
                "--dir",
                "in",
                "--ip-proto",
                "tcp",
                "--cidr",
                "0.0.0.0/0",
            ],
            "sg: no security group 'nosuch'",
        ),
        (
            vec!["sg", "rule", "del", "web", "nosuch"],
            "rule_id: security group 'web' has no rule 'nosuch'",
        ),
        (
            vec!["sg", "member", "add", "web", "10.0.0.1"],
            "ip: 10.0.0.1 is already a member of security group 'web'",
        ),
        (
            vec!["sg", "member", "add", "web", "224.0.0.1"],
            "ip: 224.0.0.1 is a multicast address",
        ),
        (
            vec!["sg", "member", "del", "web", "10.9.9.9"],
            "ip: 10.9.9.9 is not a member of security group 'web'",
        ),
        (
            vec!["flood", "add", "42", "2001:db8::1"],
            "vtep: 2001:db8::1 is IPv6 but this host's VTEP 192.0.2.1 is IPv4",
        ),
        (
            vec!["flood", "add", "42", "192.0.2.1"],
            "vtep: 192.0.2.1 is this host's own VTEP",
        ),
        (
            vec!["flood", "add", "16777216", "192.0.2.9"],
            "vni: 16777216 is above 16777215",
        ),
        (
            vec!["flood", "del", "7", "192.0.2.99"],
            "vtep: 192.0.2.99 is not in the flood list of VNI 7",
        ),
    ];
    for (args, message) in &cases {
        d.refused(args, message);
    }
    assert_eq!(
        d.dump(),
        before,
        "a refused request changed the configuration"
    );
    assert_eq!(
        std::fs::read(&d.state).unwrap(),
        on_disk,
        "a refused request rewrote the state file"
    );

    // A request file with one bad request in the middle is refused as a whole.
    let file = t.join("partly-bad.json");
    std::fs::write(
        &file,
        r#"[
  {"sg_add":{"id":"new1"}},
  {"nic_add":{"id":"vm9","mac":"52:54:00:00:00:09","vni":99999999}},
  {"sg_add":{"id":"new2"}}
]"#,
    )
    .unwrap();
    d.refused(
        &["request", file.to_str().unwrap()],
        "requests[1].vni: 99999999 is above 16777215",
    );
    assert_eq!(
        d.dump(),
        before,
        "a refused request file changed the configuration"
    );
}

#[test]
fn dump_and_request_round_trip() {
    let t = TempDir::new("api-dump");
    let a = Daemon::start(&t.join("a"), &[]);
    configure(&a);
    let dump = a.dump();
    assert!(
        dump.starts_with("[\n  {\"sg_add\":{\"id\":\"db\"}},\n"),
        "{dump}"
    );
    let file = t.join("dump.json");
    std::fs::write(&file, &dump).unwrap();

    // Another daemon, empty, replays it: identical configuration.
    let b = Daemon::start(&t.join("b"), &[]);
    assert_eq!(b.dump(), "[]\n");
    let out = b.ok(&["request", file.to_str().unwrap()]);
    assert_eq!(
        out,
        format!("{} requests applied\n", dump.lines().count() - 2)
    );
    assert_eq!(b.dump(), dump);
    // Replaying on top of itself collides (all or nothing); --replace starts afresh.
    b.refused(
        &["request", file.to_str().unwrap()],
        "requests[0].id: security group 'db' already exists",
    );
    b.ok(&["nic", "del", "vm3"]);
    b.ok(&["request", "--replace", file.to_str().unwrap()]);
    assert_eq!(b.dump(), dump);
    // From stdin too.
    let c = Daemon::start(&t.join("c"), &[]);
    let mut child = Command::new(bin_dir().join("butterfly"))
        .arg("--socket")
        .arg(&c.socket)
        .args(["request", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dump.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(c.dump(), dump);
}

#[test]
fn restart_restores_the_persisted_configuration() {
    let t = TempDir::new("api-restart");
    let mut d = Daemon::start(t.path(), &[]);
    configure(&d);
    let before = d.dump();

    // Graceful: SIGTERM exits 0 and removes the API socket.
    let st = d.stop("TERM");
    assert!(st.success(), "SIGTERM exit status {st}:\n{}", d.log_text());
    assert!(!d.socket.exists(), "the API socket is removed at shutdown");
    d.spawn();
    assert_eq!(d.dump(), before);

    // kill -9: the stale socket is replaced at restart and nothing is lost.
    d.ok(&["sg", "add", "late"]);
    let before = d.dump();
    let st = d.stop("KILL");
    assert!(!st.success());
    assert!(d.socket.exists(), "kill -9 leaves the socket file behind");
    d.spawn();
    assert_eq!(d.dump(), before);

    // A second daemon on the same socket is refused while the first one serves.
    let second = Command::new(bin_dir().join("butterflyd"))
        .args([
            "--nic",
            "lo",
            "--ip",
            "192.0.2.1",
            "--no-dataplane",
            "--api-socket",
        ])
        .arg(&d.socket)
        .arg("--state-file")
        .arg(t.join("other.json"))
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another butterflyd is already listening")
    );
    assert_eq!(d.dump(), before);

    // `butterfly shutdown` stops it cleanly.
    assert_eq!(d.ok(&["shutdown"]), "butterflyd is shutting down\n");
    let mut child = d.child.take().unwrap();
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
}

#[test]
fn socket_mode_exit_codes_and_usage() {
    let t = TempDir::new("api-cli");
    let d = Daemon::start(t.path(), &[]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "API socket mode {mode:o}");

    // 3: nobody listening, with a hint naming the socket.
    let missing = t.join("nobody.sock");
    let r: Run = Command::new(bin_dir().join("butterfly"))
        .arg("--socket")
        .arg(&missing)
        .arg("status")
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "is butterflyd running? socket {}",
            missing.display()
        )),
        "{}",
        r.stderr
    );

    // 2: usage errors, and unreadable request files.
    for args in [
        &["nic", "add", "--id", "x"][..],
        &[
            "sg",
            "rule",
            "add",
            "web",
            "--dir",
            "in",
            "--ip-proto",
            "tcp",
        ],
        &["frobnicate"],
    ] {
        let r = d.cli(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
    }
    let bad = t.join("bad.json");
    std::fs::write(&bad, "[{\"nic_add\": 3}]").unwrap();
    let r = d.cli(&["request", bad.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("bad.json") && r.stderr.contains("line 1"),
        "{}",
        r.stderr
    );
    let r = d.cli(&["request", t.join("absent.json").to_str().unwrap()]);
    assert_eq!(r.code, 2);

    // Completions are generated without a daemon.
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin_dir().join("butterfly"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("butterfly") && text.contains("enable-antispoof"),
            "{shell}"
        );
    }

    // The daemon's own usage errors exit 2 and name the option.
    let out = Command::new(bin_dir().join("butterflyd"))
        .args(["--ip", "192.0.2.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nic: missing"));
}

/// A free TCP port on 127.0.0.1 (bound then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn config_file_and_prometheus_metrics() {
    let t = TempDir::new("api-prom");
    let port = free_port();
    let cfg = t.join("butterflyd.toml");
    std::fs::write(
        &cfg,
        format!("prometheus = \"127.0.0.1:{port}\"\nmtu = 9000\n"),
    )
    .unwrap();
    let d = Daemon::start(t.path(), &["--config", cfg.to_str().unwrap()]);
    configure(&d);
    let mut conn = TcpStream::connect(("127.0.0.1", port))
        .expect("the Prometheus endpoint from the config file");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(
        resp.contains("\nbutterfly_nics 3\n") && resp.contains("\nbutterfly_security_groups 2\n"),
        "{resp}"
    );
    assert!(
        resp.contains("# TYPE butterfly_api_requests_total counter\n"),
        "{resp}"
    );
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl not installed (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, in `dir`.
fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=butterfly test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ];
    ca.extend_from_slice(&ec);
    openssl(&ca, dir);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for who in ["server", "client"] {
        let mut req = vec!["req", "-subj"];
        let subj = format!("/CN={who}");
        let key = format!("{who}.key");
        let csr = format!("{who}.csr");
        let pem = format!("{who}.pem");
        let ext = format!("{who}.ext");
        req.extend_from_slice(&[&subj, "-keyout", &key, "-out", &csr]);
        req.extend_from_slice(&ec);
        openssl(&req, dir);
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
            dir,
        );
    }
}

#[test]
fn tcp_endpoint_is_tls_with_client_certificates() {
    let t = TempDir::new("api-tls");
    let pki = t.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    make_pki(&pki);
    let port = free_port();
    let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
    let addr = format!("127.0.0.1:{port}");
    let (cert, key, ca) = (p("server.pem"), p("server.key"), p("ca.pem"));
    let d = Daemon::start(
        t.path(),
        &[
            "--api-tcp",
            &addr,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    );
    d.ok(&["sg", "add", "web"]);
    let url = format!("https://127.0.0.1:{port}");
    let tls = |extra: &[&str]| -> Run {
        Command::new(bin_dir().join("butterfly"))
            .args(["--server", &url, "--tls-ca", &ca])
            .args(extra)
            .output()
            .unwrap()
            .into()
    };
    // With a client certificate: served, same configuration as over the Unix socket.
    let (ccert, ckey) = (p("client.pem"), p("client.key"));
    let r = tls(&["--tls-cert", &ccert, "--tls-key", &ckey, "sg", "list"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "SG\nweb\n"),
        "{}",
        r.stderr
    );
    let r = tls(&["--tls-cert", &ccert, "--tls-key", &ckey, "sg", "add", "db"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(d.ok(&["sg", "list"]), "SG\ndb\nweb\n");
    // Without one: the handshake is refused, nothing is served.
    let r = tls(&["sg", "list"]);
    assert_ne!(
        r.code, 0,
        "served without a client certificate: {}",
        r.stdout
    );
    assert!(r.stdout.is_empty());
    // A second daemon cannot take the same TCP port: it stops at start, saying why.
    let other = t.join("other");
    let out = Command::new(bin_dir().join("butterflyd"))
        .args([
            "--nic",
            "lo",
            "--ip",
            "192.0.2.1",
            "--no-dataplane",
            "--api-socket",
        ])
        .arg(other.join("api.sock"))
        .arg("--state-file")
        .arg(other.join("state.json"))
        .args(["--api-tcp", &addr, "--tls-cert", &cert, "--tls-key", &key])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("tcp:{addr}: bind")), "{err}");
    // Plain text on the TLS port gets no gRPC answer.
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = conn.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("grpc"),
        "plain HTTP/2 was answered"
    );
}
