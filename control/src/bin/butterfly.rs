//! `butterfly`: the command-line client of butterflyd's API.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

use butterfly::client::{self, Target};
use butterfly::convert;
use butterfly::model::{Direction, NicType, Request};
use butterfly::proto::{self, butterfly_client::ButterflyClient};
use butterfly::server::DEFAULT_SOCKET;

const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  the daemon refused the request (the message names the field and the reason)
  2  usage error (bad option, unreadable request file)
  3  cannot connect to butterflyd";

const EXIT_REFUSED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CONNECT: u8 = 3;

/// Drive butterflyd, the Butterfly dataplane daemon: virtual NICs on VXLAN networks,
/// security groups and their rules, flood lists.
#[derive(Debug, Parser)]
#[command(name = "butterfly", version, after_help = EXIT_CODES, propagate_version = true)]
struct Cli {
    /// butterflyd's API Unix socket.
    #[arg(long, short = 's', global = true, help_heading = "Global options", env = "BUTTERFLY_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Use butterflyd's TCP endpoint instead of the socket (TLS only), e.g.
    /// https://host:9610. Needs --tls-ca.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "BUTTERFLY_SERVER",
        value_name = "URL"
    )]
    server: Option<String>,
    /// CA certificate (PEM) that signed the server's certificate (with --server).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "PEM"
    )]
    tls_ca: Option<PathBuf>,
    /// Name to check in the server's certificate (default: the URL's host).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "NAME"
    )]
    tls_domain: Option<String>,
    /// Client certificate (PEM) when the server requires one (with --tls-key).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "PEM"
    )]
    tls_cert: Option<PathBuf>,
    /// Client private key (PEM) (with --tls-cert).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "PEM"
    )]
    tls_key: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true, help_heading = "Global options")]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Virtual NICs (one per VM interface).
    #[command(subcommand)]
    Nic(NicCmd),
    /// Security groups, their rules and members.
    #[command(subcommand)]
    Sg(SgCmd),
    /// Static flood lists: remote VTEPs that receive a VNI's broadcast and unknown
    /// traffic instead of its multicast group (230.0.0.0/8 + VNI).
    #[command(subcommand)]
    Flood(FloodCmd),
    /// Daemon version, uptime, request count, dataplane and graph.
    Status {
        /// Print only the graph (Graphviz dot), e.g. `butterfly status --dot | dot -Tsvg`.
        #[arg(long)]
        dot: bool,
    },
    /// Stop butterflyd (it detaches XDP and closes the VMs' sockets).
    Shutdown,
    /// Print the whole configuration as requests (JSON) that `butterfly request` replays.
    Dump,
    /// Send the requests of FILE (the format `dump` prints; `-` = stdin), all or nothing.
    Request {
        /// The request file.
        file: PathBuf,
        /// Replace the whole configuration instead of adding to it.
        #[arg(long)]
        replace: bool,
    },
    /// Print a shell completion script, e.g. `butterfly completions bash >
    /// /etc/bash_completion.d/butterfly`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliNicType {
    /// butterflyd creates the vhost-user socket, QEMU connects.
    VhostUserServer,
    /// QEMU creates the socket (server=on), butterflyd connects.
    VhostUserClient,
    /// A kernel TAP interface named after the NIC id.
    Tap,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliDirection {
    /// Towards the VM.
    In,
    /// From the VM.
    Out,
}

#[derive(Debug, Subcommand)]
enum NicCmd {
    /// Create a NIC: a vhost-user socket (or tap) on a VNI behind firewall and antispoof.
    Add(NicAdd),
    /// Change a NIC's IPs, security groups, antispoof, filtering or trace.
    Update(NicUpdateArgs),
    /// Remove NICs.
    Del {
        /// NIC ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// List NICs.
    List,
    /// Show one NIC.
    Details {
        /// NIC id.
        id: String,
    },
    /// Counters of one NIC (packets and bytes from/to the VM, drops).
    Stats {
        /// NIC id.
        id: String,
    },
    /// Security groups of one NIC.
    #[command(subcommand)]
    Sg(NicSgCmd),
}

#[derive(Debug, Args)]
struct NicAdd {
    /// NIC id: letters, digits, '.', '_', '-' (at most 64; 15 for tap, its interface name).
    #[arg(long)]
    id: String,
    /// The VM's MAC address, e.g. 52:54:00:12:34:56 (unicast, not zero).
    #[arg(long)]
    mac: String,
    /// The VXLAN network identifier, 0..=16777215.
    #[arg(long)]
    vni: u32,
    /// An IP address of the VM (repeat or separate with commas); used by antispoof and
    /// to match rules.
    #[arg(long = "ip", value_delimiter = ',')]
    ips: Vec<String>,
    /// A security group to attach (repeat or separate with commas).
    #[arg(long = "sg", value_delimiter = ',')]
    sgs: Vec<String>,
    /// Drop frames from the VM whose source MAC or IP is not the NIC's.
    #[arg(long)]
    enable_antispoof: bool,
    /// No firewall and no antispoof for this NIC.
    #[arg(long)]
    bypass_filtering: bool,
    /// How the VM attaches.
    #[arg(long = "type", value_enum, default_value = "vhost-user-server")]
    nic_type: CliNicType,
    /// vhost-user socket path (default: the daemon's socket directory + ID.sock).
    #[arg(long, value_name = "PATH")]
    socket_path: Option<String>,
    /// Record the NIC's traffic in a pcap file.
    #[arg(long)]
    packet_trace: bool,
    /// The pcap file (default: the daemon's trace directory + ID.pcap).
    #[arg(long, value_name = "PATH")]
    trace_path: Option<String>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("change").required(true).multiple(true).args([
    "ips", "no_ip", "sgs", "no_sg", "enable_antispoof", "bypass_filtering", "packet_trace", "trace_path",
]))]
struct NicUpdateArgs {
    /// NIC id.
    #[arg(long)]
    id: String,
    /// Replace the VM's IPs (repeat or separate with commas).
    #[arg(long = "ip", value_delimiter = ',', conflicts_with = "no_ip")]
    ips: Vec<String>,
    /// Remove all IPs.
    #[arg(long)]
    no_ip: bool,
    /// Replace the security groups (repeat or separate with commas).
    #[arg(long = "sg", value_delimiter = ',', conflicts_with = "no_sg")]
    sgs: Vec<String>,
    /// Detach all security groups.
    #[arg(long)]
    no_sg: bool,
    /// Antispoof on or off.
    #[arg(long, value_name = "BOOL")]
    enable_antispoof: Option<bool>,
    /// Bypass filtering on or off.
    #[arg(long, value_name = "BOOL")]
    bypass_filtering: Option<bool>,
    /// Packet trace on or off.
    #[arg(long, value_name = "BOOL")]
    packet_trace: Option<bool>,
    /// The pcap file.
    #[arg(long, value_name = "PATH")]
    trace_path: Option<String>,
}

#[derive(Debug, Subcommand)]
enum NicSgCmd {
    /// Attach security groups to a NIC.
    Add {
        /// NIC id.
        nic: String,
        /// Security group ids.
        #[arg(required = true)]
        sgs: Vec<String>,
    },
    /// Detach security groups from a NIC.
    Del {
        /// NIC id.
        nic: String,
        /// Security group ids.
        #[arg(required = true)]
        sgs: Vec<String>,
    },
    /// List a NIC's security groups.
    List {
        /// NIC id.
        nic: String,
    },
}

#[derive(Debug, Subcommand)]
enum SgCmd {
    /// Create security groups.
    Add {
        /// Ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove security groups (refused while a NIC uses one or a rule names it).
    Del {
        /// Ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// List security groups.
    List,
    /// Show a security group's rules and members.
    Details {
        /// Id.
        id: String,
    },
    /// Rules (what is allowed; everything else is dropped).
    #[command(subcommand)]
    Rule(RuleCmd),
    /// Members (IPs that rules with --sg-members refer to).
    #[command(subcommand)]
    Member(MemberCmd),
}

#[derive(Debug, Subcommand)]
enum RuleCmd {
    /// Allow traffic: direction, protocol, ports and the remote end (a CIDR or the members
    /// of a security group). Prints the rule's id.
    Add(RuleAdd),
    /// Remove rules by id.
    Del {
        /// Security group.
        sg: String,
        /// Rule ids (from `sg rule list`).
        #[arg(required = true)]
        rule_ids: Vec<String>,
    },
    /// List a security group's rules.
    List {
        /// Security group.
        sg: String,
    },
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("remote").required(true).args(["cidr", "sg_members"]))]
struct RuleAdd {
    /// Security group.
    sg: String,
    /// in = towards the VM, out = from the VM.
    #[arg(long, value_enum)]
    dir: CliDirection,
    /// tcp, udp, icmp (IPv4), icmpv6, all, or an IP protocol number 0..=255.
    #[arg(long, value_name = "PROTO")]
    ip_proto: String,
    /// One destination port (tcp/udp).
    #[arg(long, conflicts_with_all = ["port_start", "port_end"])]
    port: Option<u32>,
    /// First destination port of a range (tcp/udp).
    #[arg(long, requires = "port_end")]
    port_start: Option<u32>,
    /// Last destination port of a range (inclusive).
    #[arg(long, requires = "port_start")]
    port_end: Option<u32>,
    /// Remote address block, e.g. 10.0.0.0/24 or 0.0.0.0/0.
    #[arg(long)]
    cidr: Option<String>,
    /// Remote = the members of this security group.
    #[arg(long, value_name = "SG")]
    sg_members: Option<String>,
    /// Give the rule this id instead of one derived from its content.
    #[arg(long, value_name = "ID")]
    rule_id: Option<String>,
}

#[derive(Debug, Subcommand)]
enum MemberCmd {
    /// Add member IPs.
    Add {
        /// Security group.
        sg: String,
        /// IPs.
        #[arg(required = true)]
        ips: Vec<String>,
    },
    /// Remove member IPs.
    Del {
        /// Security group.
        sg: String,
        /// IPs.
        #[arg(required = true)]
        ips: Vec<String>,
    },
    /// List member IPs.
    List {
        /// Security group.
        sg: String,
    },
}

#[derive(Debug, Subcommand)]
enum FloodCmd {
    /// Add remote VTEPs to a VNI's flood list.
    Add {
        /// VNI (0..=16777215).
        vni: u32,
        /// Underlay addresses of the remote VTEPs.
        #[arg(required = true)]
        vteps: Vec<String>,
    },
    /// Remove remote VTEPs from a VNI's flood list (empty list = multicast again).
    Del {
        /// VNI.
        vni: u32,
        /// Underlay addresses.
        #[arg(required = true)]
        vteps: Vec<String>,
    },
    /// Show flood destinations (all VNIs in use, or one).
    List {
        /// Only this VNI.
        vni: Option<u32>,
    },
}

/// Why the command failed, with its exit code.
enum Failure {
    Usage(String),
    Connect(String),
    Refused(tonic::Status),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Refused(s)
    }
}

type Client = ButterflyClient<Channel>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Completions { shell } = cli.cmd {
        clap_complete::generate(shell, &mut Cli::command(), "butterfly", &mut io::stdout());
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("butterfly: {m}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Connect(m)) => {
            eprintln!("butterfly: {m}");
            ExitCode::from(EXIT_CONNECT)
        }
        Err(Failure::Refused(s)) => {
            let what = match s.code() {
                Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::FailedPrecondition => "refused",
                _ => "error",
            };
            eprintln!("butterfly: {what}: {}", s.message());
            ExitCode::from(EXIT_REFUSED)
        }
    }
}

fn target(cli: &Cli) -> Result<Target, Failure> {
    let Some(url) = &cli.server else {
        return Ok(Target::Unix(cli.socket.clone()));
    };
    let ca = cli.tls_ca.clone().ok_or_else(|| {
        Failure::Usage("--server needs --tls-ca (the API over TCP is TLS only)".into())
    })?;
    let identity = match (&cli.tls_cert, &cli.tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            return Err(Failure::Usage(
                "--tls-cert and --tls-key go together".into(),
            ));
        }
    };
    if !url.starts_with("https://") {
        return Err(Failure::Usage(format!(
            "--server {url}: expected https://HOST:PORT"
        )));
    }
    Ok(Target::Tls {
        url: url.clone(),
        ca,
        domain: cli.tls_domain.clone(),
        identity,
    })
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let target = target(&cli)?;
    // Read local input before connecting, so a bad file is a usage error either way.
    let requests = match &cli.cmd {
        Cmd::Request { file, .. } => Some(read_requests(file)?),
        _ => None,
    };
    let mut c = client::connect(&target)
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    let json = cli.json;
    match cli.cmd {
        Cmd::Nic(cmd) => nic(&mut c, cmd, json).await,
        Cmd::Sg(cmd) => sg(&mut c, cmd, json).await,
        Cmd::Flood(cmd) => flood(&mut c, cmd, json).await,
        Cmd::Status { dot } => {
            let s = c.status(proto::Empty {}).await?.into_inner();
            if dot {
                print!("{}", s.graph_dot);
            } else if json {
                print_json(&json!({
                    "version": s.version, "uptime_seconds": s.uptime_seconds,
                    "request_count": s.request_count, "dataplane": s.dataplane,
                    "nic_count": s.nic_count, "sg_count": s.sg_count, "graph_dot": s.graph_dot,
                }));
            } else {
                println!("version:   {}", s.version);
                println!("uptime:    {}", human_duration(s.uptime_seconds));
                println!("requests:  {}", s.request_count);
                println!("dataplane: {}", s.dataplane);
                println!("nics:      {}", s.nic_count);
                println!("sgs:       {}", s.sg_count);
                println!("graph:");
                for line in s.graph_dot.lines() {
                    println!("  {line}");
                }
            }
            Ok(())
        }
        Cmd::Shutdown => {
            c.shutdown(proto::Empty {}).await?;
            if !json {
                println!("butterflyd is shutting down");
            }
            Ok(())
        }
        Cmd::Dump => {
            let reqs = c.dump(proto::Empty {}).await?.into_inner();
            let reqs = reqs
                .requests
                .iter()
                .map(convert::request_from_proto)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    Failure::Usage(format!(
                        "the daemon sent a request this CLI cannot read: {e}"
                    ))
                })?;
            print!("{}", dump_text(&reqs));
            Ok(())
        }
        Cmd::Request { replace, .. } => {
            let reqs = requests.unwrap_or_default();
            let requests = proto::Requests {
                requests: reqs.iter().map(convert::request_to_proto).collect(),
            };
            let r = c
                .load(proto::LoadRequest {
                    requests: Some(requests),
                    replace,
                })
                .await?
                .into_inner();
            if json {
                print_json(&json!({"applied": r.applied}));
            } else {
                println!("{} requests applied", r.applied);
            }
            Ok(())
        }
        Cmd::Completions { .. } => unreachable!("handled before connecting"),
    }
}

/// A dump: a JSON array with one request per line.
fn dump_text(reqs: &[Request]) -> String {
    let lines: Vec<String> = reqs
        .iter()
        .map(|r| {
            format!(
                "  {}",
                serde_json::to_string(r).expect("requests serialize")
            )
        })
        .collect();
    if lines.is_empty() {
        "[]\n".into()
    } else {
        format!("[\n{}\n]\n", lines.join(",\n"))
    }
}

fn read_requests(file: &PathBuf) -> Result<Vec<Request>, Failure> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::Usage(format!("reading stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| Failure::Usage(format!("request file {}: {e}", file.display())))?
    };
    serde_json::from_str(&text).map_err(|e| {
        Failure::Usage(format!(
            "request file {}: {e} (expected a JSON array of requests as `butterfly dump` prints)",
            file.display()
        ))
    })
}

fn print_json(v: &Value) {
    let mut out = io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
}

/// Prints rows under headers, columns padded to their widest cell.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m {s}s")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

fn or_dash(list: &[String]) -> String {
    if list.is_empty() {
        "-".into()
    } else {
        list.join(",")
    }
}

fn nic_type_name(t: i32) -> String {
    match proto::NicType::try_from(t) {
        Ok(proto::NicType::VhostUserServer) => NicType::VhostUserServer.to_string(),
        Ok(proto::NicType::VhostUserClient) => NicType::VhostUserClient.to_string(),
        Ok(proto::NicType::Tap) => NicType::Tap.to_string(),
        Err(_) => format!("unknown({t})"),
    }
}

fn nic_flags(n: &proto::Nic) -> String {
    let mut f = Vec::new();
    if n.ip_antispoof {
        f.push("antispoof");
    }
    if n.bypass_filtering {
        f.push("bypass");
    }
    if n.packet_trace {
        f.push("trace");
    }
    if f.is_empty() {
        "-".into()
    } else {
        f.join(",")
    }
}

fn nic_json(n: &proto::Nic) -> Value {
    match convert::nic_spec_from_proto(n) {
        Ok(spec) => serde_json::to_value(spec).expect("serializes"),
        Err(_) => json!({"id": n.id}),
    }
}

fn rule_json(r: &proto::Rule) -> Value {
    match convert::rule_spec_from_proto(r) {
        Ok(spec) => serde_json::to_value(spec).expect("serializes"),
        Err(_) => json!({"id": r.id}),
    }
}

fn rule_row(r: &proto::Rule) -> Vec<String> {
    let dir = match proto::Direction::try_from(r.direction) {
        Ok(proto::Direction::In) => Direction::In.to_string(),
        Ok(proto::Direction::Out) => Direction::Out.to_string(),
        Err(_) => r.direction.to_string(),
    };
    let ports = match (r.port_start, r.port_end) {
        (0, 0) => "any".to_string(),
        (a, b) if a == b => a.to_string(),
        (a, b) => format!("{a}-{b}"),
    };
    let remote = if r.cidr.is_empty() {
        format!("sg:{}", r.sg_members)
    } else {
        r.cidr.clone()
    };
    vec![r.id.clone(), dir, r.protocol.clone(), ports, remote]
}

const RULE_HEADERS: [&str; 5] = ["ID", "DIR", "PROTO", "PORTS", "REMOTE"];

fn print_ids(ids: &[String], header: &str, json: bool) {
    if json {
        print_json(&json!(ids));
    } else {
        print_table(
            &[header],
            &ids.iter().map(|i| vec![i.clone()]).collect::<Vec<_>>(),
        );
    }
}

fn done(json: bool, what: String) {
    if !json {
        println!("{what}");
    }
}

async fn nic(c: &mut Client, cmd: NicCmd, json: bool) -> Result<(), Failure> {
    match cmd {
        NicCmd::Add(a) => {
            let nic_type = match a.nic_type {
                CliNicType::VhostUserServer => proto::NicType::VhostUserServer,
                CliNicType::VhostUserClient => proto::NicType::VhostUserClient,
                CliNicType::Tap => proto::NicType::Tap,
            };
            let id = a.id.clone();
            let r = c
                .nic_add(proto::NicAddRequest {
                    nic: Some(proto::Nic {
                        id: a.id,
                        mac: a.mac,
                        vni: a.vni,
                        ips: a.ips,
                        security_groups: a.sgs,
                        ip_antispoof: a.enable_antispoof,
                        bypass_filtering: a.bypass_filtering,
                        r#type: nic_type as i32,
                        socket_path: a.socket_path.unwrap_or_default(),
                        packet_trace: a.packet_trace,
                        packet_trace_path: a.trace_path.unwrap_or_default(),
                    }),
                })
                .await?
                .into_inner();
            if json {
                print_json(&json!({"id": id, "socket_path": r.socket_path}));
            } else if r.socket_path.is_empty() {
                println!("nic {id} added");
            } else {
                println!("nic {id} added, vhost-user socket {}", r.socket_path);
            }
        }
        NicCmd::Update(u) => {
            let ips = (u.no_ip || !u.ips.is_empty()).then_some(proto::IdList { ids: u.ips });
            let sgs = (u.no_sg || !u.sgs.is_empty()).then_some(proto::IdList { ids: u.sgs });
            c.nic_update(proto::NicUpdateRequest {
                id: u.id.clone(),
                ips,
                security_groups: sgs,
                ip_antispoof: u.enable_antispoof,
                bypass_filtering: u.bypass_filtering,
                packet_trace: u.packet_trace,
                packet_trace_path: u.trace_path,
            })
            .await?;
            done(json, format!("nic {} updated", u.id));
        }
        NicCmd::Del { ids } => {
            for id in ids {
                c.nic_del(proto::NicDelRequest { id: id.clone() }).await?;
                done(json, format!("nic {id} deleted"));
            }
        }
        NicCmd::List => {
            let nics = c.nic_list(proto::Empty {}).await?.into_inner().nics;
            if json {
                print_json(&Value::Array(nics.iter().map(nic_json).collect()));
            } else {
                let rows: Vec<Vec<String>> = nics
                    .iter()
                    .map(|n| {
                        vec![
                            n.id.clone(),
                            n.vni.to_string(),
                            n.mac.clone(),
                            or_dash(&n.ips),
                            or_dash(&n.security_groups),
                            nic_type_name(n.r#type),
                            nic_flags(n),
                        ]
                    })
                    .collect();
                print_table(&["ID", "VNI", "MAC", "IPS", "SGS", "TYPE", "FLAGS"], &rows);
            }
        }
        NicCmd::Details { id } => {
            let n = c.nic_details(proto::NicId { id }).await?.into_inner();
            if json {
                print_json(&nic_json(&n));
            } else {
                let dash = |s: &str| {
                    if s.is_empty() {
                        "-".to_string()
                    } else {
                        s.to_string()
                    }
                };
                println!("id:               {}", n.id);
                println!("mac:              {}", n.mac);
                println!("vni:              {}", n.vni);
                println!("ips:              {}", or_dash(&n.ips));
                println!("security groups:  {}", or_dash(&n.security_groups));
                println!("type:             {}", nic_type_name(n.r#type));
                println!("socket:           {}", dash(&n.socket_path));
                println!("ip antispoof:     {}", n.ip_antispoof);
                println!("bypass filtering: {}", n.bypass_filtering);
                println!("packet trace:     {}", n.packet_trace);
                println!("trace path:       {}", dash(&n.packet_trace_path));
            }
        }
        NicCmd::Stats { id } => {
            let s = c.nic_stats(proto::NicId { id }).await?.into_inner();
            if json {
                print_json(&json!({
                    "id": s.id, "rx_packets": s.rx_packets, "rx_bytes": s.rx_bytes,
                    "tx_packets": s.tx_packets, "tx_bytes": s.tx_bytes,
                    "dropped_firewall": s.dropped_firewall, "dropped_antispoof": s.dropped_antispoof,
                }));
            } else {
                print_table(
                    &[
                        "NIC",
                        "RX PKTS",
                        "RX BYTES",
                        "TX PKTS",
                        "TX BYTES",
                        "DROP FW",
                        "DROP SPOOF",
                    ],
                    &[vec![
                        s.id,
                        s.rx_packets.to_string(),
                        s.rx_bytes.to_string(),
                        s.tx_packets.to_string(),
                        s.tx_bytes.to_string(),
                        s.dropped_firewall.to_string(),
                        s.dropped_antispoof.to_string(),
                    ]],
                );
            }
        }
        NicCmd::Sg(NicSgCmd::Add { nic, sgs }) => {
            for sg in sgs {
                c.nic_sg_add(proto::NicSgRequest {
                    nic: nic.clone(),
                    sg: sg.clone(),
                })
                .await?;
                done(json, format!("security group {sg} attached to nic {nic}"));
            }
        }
        NicCmd::Sg(NicSgCmd::Del { nic, sgs }) => {
            for sg in sgs {
                c.nic_sg_del(proto::NicSgRequest {
                    nic: nic.clone(),
                    sg: sg.clone(),
                })
                .await?;
                done(json, format!("security group {sg} detached from nic {nic}"));
            }
        }
        NicCmd::Sg(NicSgCmd::List { nic }) => {
            let ids = c
                .nic_sg_list(proto::NicId { id: nic })
                .await?
                .into_inner()
                .ids;
            print_ids(&ids, "SG", json);
        }
    }
    Ok(())
}

async fn sg(c: &mut Client, cmd: SgCmd, json: bool) -> Result<(), Failure> {
    match cmd {
        SgCmd::Add { ids } => {
            for id in ids {
                c.sg_add(proto::SgAddRequest { id: id.clone() }).await?;
                done(json, format!("security group {id} added"));
            }
        }
        SgCmd::Del { ids } => {
            for id in ids {
                c.sg_del(proto::SgId { id: id.clone() }).await?;
                done(json, format!("security group {id} deleted"));
            }
        }
        SgCmd::List => {
            let ids = c.sg_list(proto::Empty {}).await?.into_inner().ids;
            print_ids(&ids, "SG", json);
        }
        SgCmd::Details { id } => {
            let sg = c.sg_details(proto::SgId { id }).await?.into_inner();
            if json {
                print_json(&json!({
                    "id": sg.id,
                    "rules": sg.rules.iter().map(rule_json).collect::<Vec<_>>(),
                    "members": sg.members,
                }));
            } else {
                println!("security group {}", sg.id);
                println!("members: {}", or_dash(&sg.members));
                println!("rules:");
                print_table(
                    &RULE_HEADERS,
                    &sg.rules.iter().map(rule_row).collect::<Vec<_>>(),
                );
            }
        }
        SgCmd::Rule(RuleCmd::Add(a)) => {
            let (port_start, port_end) = match (a.port, a.port_start, a.port_end) {
                (Some(p), _, _) => (p, p),
                (None, Some(s), Some(e)) => (s, e),
                _ => (0, 0),
            };
            if port_start == 0 && port_end == 0 && (a.port.is_some() || a.port_start.is_some()) {
                return Err(Failure::Usage(
                    "port 0 cannot be filtered on; leave the port out to match any port".into(),
                ));
            }
            let direction = match a.dir {
                CliDirection::In => proto::Direction::In,
                CliDirection::Out => proto::Direction::Out,
            };
            let r = c
                .sg_rule_add(proto::SgRuleAddRequest {
                    sg: a.sg.clone(),
                    rule: Some(proto::Rule {
                        id: a.rule_id.unwrap_or_default(),
                        direction: direction as i32,
                        protocol: a.ip_proto,
                        port_start,
                        port_end,
                        cidr: a.cidr.unwrap_or_default(),
                        sg_members: a.sg_members.unwrap_or_default(),
                    }),
                })
                .await?
                .into_inner();
            if json {
                print_json(&json!({"sg": a.sg, "rule_id": r.rule_id}));
            } else {
                println!("rule {} added to security group {}", r.rule_id, a.sg);
            }
        }
        SgCmd::Rule(RuleCmd::Del { sg, rule_ids }) => {
            for rule_id in rule_ids {
                c.sg_rule_del(proto::SgRuleDelRequest {
                    sg: sg.clone(),
                    rule_id: rule_id.clone(),
                })
                .await?;
                done(
                    json,
                    format!("rule {rule_id} deleted from security group {sg}"),
                );
            }
        }
        SgCmd::Rule(RuleCmd::List { sg }) => {
            let rules = c
                .sg_rule_list(proto::SgId { id: sg })
                .await?
                .into_inner()
                .rules;
            if json {
                print_json(&Value::Array(rules.iter().map(rule_json).collect()));
            } else {
                print_table(
                    &RULE_HEADERS,
                    &rules.iter().map(rule_row).collect::<Vec<_>>(),
                );
            }
        }
        SgCmd::Member(MemberCmd::Add { sg, ips }) => {
            for ip in ips {
                c.sg_member_add(proto::SgMemberRequest {
                    sg: sg.clone(),
                    ip: ip.clone(),
                })
                .await?;
                done(json, format!("{ip} added to security group {sg}"));
            }
        }
        SgCmd::Member(MemberCmd::Del { sg, ips }) => {
            for ip in ips {
                c.sg_member_del(proto::SgMemberRequest {
                    sg: sg.clone(),
                    ip: ip.clone(),
                })
                .await?;
                done(json, format!("{ip} removed from security group {sg}"));
            }
        }
        SgCmd::Member(MemberCmd::List { sg }) => {
            let ids = c
                .sg_member_list(proto::SgId { id: sg })
                .await?
                .into_inner()
                .ids;
            print_ids(&ids, "MEMBER", json);
        }
    }
    Ok(())
}

async fn flood(c: &mut Client, cmd: FloodCmd, json: bool) -> Result<(), Failure> {
    match cmd {
        FloodCmd::Add { vni, vteps } => {
            for vtep in vteps {
                c.flood_add(proto::FloodRequest {
                    vni,
                    vtep: vtep.clone(),
                })
                .await?;
                done(json, format!("{vtep} added to the flood list of VNI {vni}"));
            }
        }
        FloodCmd::Del { vni, vteps } => {
            for vtep in vteps {
                c.flood_del(proto::FloodRequest {
                    vni,
                    vtep: vtep.clone(),
                })
                .await?;
                done(
                    json,
                    format!("{vtep} removed from the flood list of VNI {vni}"),
                );
            }
        }
        FloodCmd::List { vni } => {
            let entries = c
                .flood_list(proto::FloodListRequest { vni })
                .await?
                .into_inner()
                .entries;
            if json {
                let v: Vec<Value> = entries
                    .iter()
                    .map(|e| json!({"vni": e.vni, "vteps": e.vteps, "multicast_group": e.multicast_group}))
                    .collect();
                print_json(&Value::Array(v));
            } else {
                let rows: Vec<Vec<String>> = entries
                    .iter()
                    .map(|e| {
                        let dest = if e.vteps.is_empty() {
                            format!("multicast {}", e.multicast_group)
                        } else {
                            e.vteps.join(",")
                        };
                        vec![e.vni.to_string(), dest]
                    })
                    .collect();
                print_table(&["VNI", "FLOOD TO"], &rows);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("butterfly").chain(args.iter().copied()))
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn nic_add_takes_the_original_options() {
        let cli = parse(&[
            "nic",
            "add",
            "--id",
            "vm1",
            "--mac",
            "52:54:00:00:00:01",
            "--vni",
            "42",
            "--ip",
            "10.0.0.1",
            "--ip",
            "fd00::1,10.0.0.2",
            "--sg",
            "web",
            "--enable-antispoof",
            "--bypass-filtering",
            "--type",
            "tap",
            "--packet-trace",
            "--trace-path",
            "/tmp/t.pcap",
        ])
        .unwrap();
        let Cmd::Nic(NicCmd::Add(a)) = cli.cmd else {
            panic!("{:?}", cli.cmd)
        };
        assert_eq!((a.id.as_str(), a.vni), ("vm1", 42));
        assert_eq!(a.ips, ["10.0.0.1", "fd00::1", "10.0.0.2"]);
        assert_eq!(a.sgs, ["web"]);
        assert!(a.enable_antispoof && a.bypass_filtering && a.packet_trace);
        assert!(matches!(a.nic_type, CliNicType::Tap));
        assert_eq!(a.trace_path.as_deref(), Some("/tmp/t.pcap"));
        assert_eq!(cli.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn nic_add_needs_id_mac_vni() {
        let e = parse(&["nic", "add", "--id", "vm1", "--mac", "52:54:00:00:00:01"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(e.exit_code(), 2);
        let e = parse(&["nic", "add", "--id", "a", "--mac", "m", "--vni", "-1"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn rule_add_forms() {
        let cli = parse(&[
            "sg",
            "rule",
            "add",
            "web",
            "--dir",
            "in",
            "--ip-proto",
            "tcp",
            "--port",
            "22",
            "--cidr",
            "0.0.0.0/0",
        ])
        .unwrap();
        let Cmd::Sg(SgCmd::Rule(RuleCmd::Add(a))) = cli.cmd else {
            panic!()
        };
        assert_eq!((a.port, a.cidr.as_deref()), (Some(22), Some("0.0.0.0/0")));
        let cli = parse(&[
            "sg",
            "rule",
            "add",
            "web",
            "--dir",
            "out",
            "--ip-proto",
            "udp",
            "--port-start",
            "1000",
            "--port-end",
            "2000",
            "--sg-members",
            "db",
        ])
        .unwrap();
        let Cmd::Sg(SgCmd::Rule(RuleCmd::Add(a))) = cli.cmd else {
            panic!()
        };
        assert_eq!(
            (a.port_start, a.port_end, a.sg_members.as_deref()),
            (Some(1000), Some(2000), Some("db"))
        );
        // Usage errors: no remote, both remotes, --port with a range, half a range, bad dir.
        for bad in [
            &[
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "in",
                "--ip-proto",
                "tcp",
            ][..],
            &[
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "in",
                "--ip-proto",
                "tcp",
                "--cidr",
                "0.0.0.0/0",
                "--sg-members",
                "db",
            ],
            &[
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "in",
                "--ip-proto",
                "tcp",
                "--port",
                "1",
                "--port-start",
                "1",
                "--port-end",
                "2",
                "--cidr",
                "0.0.0.0/0",
            ],
            &[
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "in",
                "--ip-proto",
                "tcp",
                "--port-start",
                "1",
                "--cidr",
                "0.0.0.0/0",
            ],
            &[
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "up",
                "--ip-proto",
                "tcp",
                "--cidr",
                "0.0.0.0/0",
            ],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn other_commands_parse() {
        assert!(matches!(
            parse(&["status"]).unwrap().cmd,
            Cmd::Status { dot: false }
        ));
        assert!(matches!(parse(&["shutdown"]).unwrap().cmd, Cmd::Shutdown));
        assert!(matches!(parse(&["dump"]).unwrap().cmd, Cmd::Dump));
        let cli = parse(&[
            "--json",
            "-s",
            "/tmp/x.sock",
            "request",
            "f.json",
            "--replace",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
        assert!(matches!(cli.cmd, Cmd::Request { replace: true, .. }));
        assert!(matches!(
            parse(&["nic", "sg", "add", "vm1", "web", "db"])
                .unwrap()
                .cmd,
            Cmd::Nic(NicCmd::Sg(NicSgCmd::Add { .. }))
        ));
        assert!(matches!(
            parse(&["sg", "member", "del", "web", "10.0.0.1"])
                .unwrap()
                .cmd,
            Cmd::Sg(SgCmd::Member(MemberCmd::Del { .. }))
        ));
        assert!(matches!(
            parse(&["flood", "list"]).unwrap().cmd,
            Cmd::Flood(FloodCmd::List { vni: None })
        ));
        assert!(matches!(
            parse(&["completions", "zsh"]).unwrap().cmd,
            Cmd::Completions { .. }
        ));
        let cli = parse(&[
            "nic",
            "update",
            "--id",
            "vm1",
            "--enable-antispoof",
            "false",
            "--no-sg",
        ])
        .unwrap();
        let Cmd::Nic(NicCmd::Update(u)) = cli.cmd else {
            panic!()
        };
        assert_eq!(u.enable_antispoof, Some(false));
        assert!(u.no_sg && u.sgs.is_empty());
        assert_eq!(
            parse(&["nic", "update", "--id", "v", "--ip", "1.2.3.4", "--no-ip"])
                .unwrap_err()
                .exit_code(),
            2
        );
        assert_eq!(parse(&["nic", "del"]).unwrap_err().exit_code(), 2);
        // An update that changes nothing is a usage error.
        assert_eq!(
            parse(&["nic", "update", "--id", "v"])
                .unwrap_err()
                .exit_code(),
            2
        );
    }

    #[test]
    fn tls_target_rules() {
        let t = target(
            &parse(&[
                "--server",
                "https://h:9610",
                "--tls-ca",
                "/ca.pem",
                "status",
            ])
            .unwrap(),
        );
        assert!(matches!(t, Ok(Target::Tls { .. })));
        assert!(matches!(
            target(&parse(&["--server", "https://h:1", "status"]).unwrap()),
            Err(Failure::Usage(_))
        ));
        assert!(matches!(
            target(&parse(&["--server", "http://h:1", "--tls-ca", "/c", "status"]).unwrap()),
            Err(Failure::Usage(_))
        ));
        assert!(matches!(
            target(
                &parse(&[
                    "--server",
                    "https://h:1",
                    "--tls-ca",
                    "/c",
                    "--tls-cert",
                    "/x",
                    "status"
                ])
                .unwrap()
            ),
            Err(Failure::Usage(_))
        ));
    }

    #[test]
    fn dump_text_is_one_request_per_line_and_reads_back() {
        let reqs = vec![
            Request::SgAdd { id: "web".into() },
            Request::FloodAdd {
                vni: 4,
                vtep: "192.0.2.2".into(),
            },
        ];
        let text = dump_text(&reqs);
        assert_eq!(
            text,
            "[\n  {\"sg_add\":{\"id\":\"web\"}},\n  {\"flood_add\":{\"vni\":4,\"vtep\":\"192.0.2.2\"}}\n]\n"
        );
        assert_eq!(serde_json::from_str::<Vec<Request>>(&text).unwrap(), reqs);
        assert_eq!(dump_text(&[]), "[]\n");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(3725), "1h 2m 5s");
        assert_eq!(human_duration(90061), "1d 1h 1m 1s");
    }
}
