//! The gRPC service (`butterfly.v1.Butterfly`) over the model, the state file and a
//! [`Dataplane`].
//!
//! A mutating call: validate on a copy of the configuration ([`Config::apply`]) → the
//! dataplane carries out the changes → the new configuration is written to the state
//! file → it becomes current. If the dataplane refuses, nothing changed; if the state
//! file cannot be written, the dataplane is reconciled back to the old configuration and
//! the call fails. Calls are serialized by one lock, so the order on disk is the order
//! the dataplane saw.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request as GrpcRequest, Response, Status};

use crate::convert;
use crate::dataplane::{Dataplane, DataplaneError};
use crate::model::{self, Config, Context, ErrorKind, FieldError, Request};
use crate::persist::{PersistError, StateFile};
use crate::proto;
use crate::proto::butterfly_server::{Butterfly, ButterflyServer};

/// gRPC metadata key carrying the refused field (the message is `FIELD: REASON`).
pub const FIELD_METADATA: &str = "butterfly-field";

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state file could not be read.
    #[error(transparent)]
    State(#[from] PersistError),
    /// The state file holds a configuration this build refuses (edited by hand?).
    #[error("state file {path}: the saved configuration is refused: {error}")]
    Invalid {
        /// The state file.
        path: String,
        /// The first problem.
        error: FieldError,
    },
    /// The dataplane could not rebuild the saved configuration.
    #[error("restoring the saved configuration in the dataplane: {0}")]
    Dataplane(#[from] DataplaneError),
}

struct Inner {
    config: Mutex<Config>,
    ctx: Context,
    state: StateFile,
    dataplane: Arc<dyn Dataplane>,
    started: Instant,
    requests: AtomicU64,
    shutdown: watch::Sender<bool>,
}

/// The API service. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Api {
    inner: Arc<Inner>,
}

/// A refused request as a gRPC status: code from the kind, message `FIELD: REASON`, and
/// the field in the [`FIELD_METADATA`] metadata entry.
pub fn field_status(e: &FieldError) -> Status {
    let code = match e.kind {
        ErrorKind::Invalid => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::InUse => Code::FailedPrecondition,
    };
    with_field(Status::new(code, e.to_string()), &e.field)
}

fn with_field(mut s: Status, field: &str) -> Status {
    if let Ok(v) = MetadataValue::try_from(field) {
        s.metadata_mut().insert(FIELD_METADATA, v);
    }
    s
}

fn dataplane_status(e: &DataplaneError) -> Status {
    match e {
        DataplaneError::Refused { field, .. } => {
            with_field(Status::failed_precondition(e.to_string()), field)
        }
        DataplaneError::Unavailable(_) => Status::unavailable(e.to_string()),
        DataplaneError::Failed(_) => Status::internal(e.to_string()),
    }
}

impl Api {
    /// Starts the API: reads the state file (none = empty configuration), checks the
    /// saved configuration by replaying it through validation, and has the dataplane
    /// rebuild it.
    pub fn start(
        ctx: Context,
        state: StateFile,
        dataplane: Arc<dyn Dataplane>,
    ) -> Result<Self, StartError> {
        let saved = state.load()?.unwrap_or_default();
        let config = Config::default()
            .apply_all(&saved.to_requests(), true, &ctx)
            .map_err(|error| StartError::Invalid {
                path: state.path().display().to_string(),
                error,
            })?
            .config;
        dataplane.reconcile(&config)?;
        let (shutdown, _) = watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner {
                config: Mutex::new(config),
                ctx,
                state,
                dataplane,
                started: Instant::now(),
                requests: AtomicU64::new(0),
                shutdown,
            }),
        })
    }

    /// The tonic service to serve.
    pub fn into_service(self) -> ButterflyServer<Api> {
        ButterflyServer::new(self)
    }

    /// Becomes `true` when a client called `Shutdown`.
    pub fn shutdown_requested(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// The current configuration.
    pub fn config(&self) -> Config {
        self.lock().clone()
    }

    /// Stops the dataplane (daemon exit).
    pub fn stop_dataplane(&self) {
        let _guard = self.lock();
        self.inner.dataplane.shutdown();
    }

    fn lock(&self) -> MutexGuard<'_, Config> {
        // A panic while holding the lock cannot leave a half-applied configuration (the
        // new one is swapped in whole), so a poisoned lock is still consistent.
        self.inner.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self) {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Validates and carries out one request; returns the configuration after it.
    pub fn execute(&self, req: &Request) -> Result<Config, Status> {
        let mut current = self.lock();
        let out = current
            .apply(req, &self.inner.ctx)
            .map_err(|e| field_status(&e))?;
        self.commit(&mut current, out.config, |dp, cfg| {
            dp.apply(&out.changes, cfg)
        })?;
        tracing::info!(?req, "applied");
        Ok(current.clone())
    }

    /// Carries out `reqs` all or nothing; `replace` starts from an empty configuration.
    pub fn load_requests(&self, reqs: &[Request], replace: bool) -> Result<Config, Status> {
        let mut current = self.lock();
        let out = current
            .apply_all(reqs, replace, &self.inner.ctx)
            .map_err(|e| field_status(&e))?;
        self.commit(&mut current, out.config, |dp, cfg| dp.reconcile(cfg))?;
        tracing::info!(requests = reqs.len(), replace, "loaded");
        Ok(current.clone())
    }

    fn commit(
        &self,
        current: &mut Config,
        next: Config,
        to_dataplane: impl FnOnce(&dyn Dataplane, &Config) -> Result<(), DataplaneError>,
    ) -> Result<(), Status> {
        let dp = self.inner.dataplane.as_ref();
        if let Err(e) = to_dataplane(dp, &next) {
            tracing::warn!(error = %e, "dataplane refused the change");
            return Err(dataplane_status(&e));
        }
        if let Err(e) = self.inner.state.save(&next) {
            tracing::error!(error = %e, "cannot persist; undoing the change in the dataplane");
            if let Err(e2) = dp.reconcile(current) {
                tracing::error!(error = %e2, "dataplane could not be reconciled back");
            }
            return Err(Status::internal(e.to_string()));
        }
        *current = next;
        Ok(())
    }

    fn nic(&self, id: &str) -> Result<model::Nic, Status> {
        self.lock()
            .nics
            .get(id)
            .cloned()
            .ok_or_else(|| field_status(&FieldError::not_found("id", format!("no nic '{id}'"))))
    }

    fn sg(&self, id: &str) -> Result<model::SecurityGroup, Status> {
        self.lock().sgs.get(id).cloned().ok_or_else(|| {
            field_status(&FieldError::not_found(
                "id",
                format!("no security group '{id}'"),
            ))
        })
    }

    /// [`Api::execute`] on the blocking thread pool: the dataplane waits for its workers
    /// and the state file is fsynced, neither of which may stall the API's runtime.
    async fn execute_blocking(&self, req: Request) -> Result<Config, Status> {
        let api = self.clone();
        tokio::task::spawn_blocking(move || api.execute(&req))
            .await
            .map_err(|e| Status::internal(format!("request task failed: {e}")))?
    }

    async fn empty(&self, req: Request) -> Result<Response<proto::Empty>, Status> {
        self.execute_blocking(req).await?;
        Ok(Response::new(proto::Empty {}))
    }

    /// Prometheus text exposition (format 0.0.4) of the daemon's and NICs' counters.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write;
        let cfg = self.config();
        let mut s = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        gauge(
            "butterfly_uptime_seconds",
            "Seconds since butterflyd started.",
            "gauge",
            self.inner.started.elapsed().as_secs(),
        );
        gauge(
            "butterfly_api_requests_total",
            "API requests served.",
            "counter",
            self.inner.requests.load(Ordering::Relaxed),
        );
        gauge(
            "butterfly_nics",
            "Configured NICs.",
            "gauge",
            cfg.nics.len() as u64,
        );
        gauge(
            "butterfly_security_groups",
            "Configured security groups.",
            "gauge",
            cfg.sgs.len() as u64,
        );
        let stats: Vec<_> = cfg
            .nics
            .keys()
            .filter_map(|id| self.inner.dataplane.nic_stats(id).ok().map(|c| (id, c)))
            .collect();
        type Get = fn(&crate::dataplane::NicCounters) -> u64;
        let series: [(&str, &str, Get); 6] = [
            (
                "butterfly_nic_rx_packets_total",
                "Frames received from the VM.",
                |c| c.rx_packets,
            ),
            (
                "butterfly_nic_rx_bytes_total",
                "Bytes received from the VM.",
                |c| c.rx_bytes,
            ),
            (
                "butterfly_nic_tx_packets_total",
                "Frames sent to the VM.",
                |c| c.tx_packets,
            ),
            (
                "butterfly_nic_tx_bytes_total",
                "Bytes sent to the VM.",
                |c| c.tx_bytes,
            ),
            (
                "butterfly_nic_dropped_firewall_total",
                "Frames dropped by the NIC's firewall.",
                |c| c.dropped_firewall,
            ),
            (
                "butterfly_nic_dropped_antispoof_total",
                "Frames dropped by the NIC's antispoof.",
                |c| c.dropped_antispoof,
            ),
        ];
        if !stats.is_empty() {
            for (name, help, get) in series {
                let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
                for (id, c) in &stats {
                    let _ = writeln!(s, "{name}{{nic=\"{id}\"}} {}", get(c));
                }
            }
        }
        s
    }

    fn flood_entry(&self, cfg: &Config, vni: u32) -> proto::FloodEntry {
        proto::FloodEntry {
            vni,
            vteps: cfg
                .flood
                .get(&vni)
                .map(|l| l.iter().map(IpAddr::to_string).collect())
                .unwrap_or_default(),
            multicast_group: model::multicast_group(vni, self.inner.ctx.vtep_ip).to_string(),
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Butterfly for Api {
    async fn nic_add(&self, r: GrpcRequest<proto::NicAddRequest>) -> Reply<proto::NicAddResponse> {
        self.count();
        let nic = r
            .into_inner()
            .nic
            .ok_or_else(|| field_status(&FieldError::invalid("nic", "missing")))?;
        let spec = convert::nic_spec_from_proto(&nic).map_err(|e| field_status(&e))?;
        let cfg = self.execute_blocking(Request::NicAdd(spec)).await?;
        let socket_path = cfg.nics[&nic.id]
            .socket_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        Ok(Response::new(proto::NicAddResponse { socket_path }))
    }

    async fn nic_update(&self, r: GrpcRequest<proto::NicUpdateRequest>) -> Reply<proto::Empty> {
        self.count();
        self.empty(Request::NicUpdate(convert::nic_update_from_proto(
            r.get_ref(),
        )))
        .await
    }

    async fn nic_del(&self, r: GrpcRequest<proto::NicDelRequest>) -> Reply<proto::Empty> {
        self.count();
        self.empty(Request::NicDel {
            id: r.into_inner().id,
        })
        .await
    }

    async fn nic_list(&self, _: GrpcRequest<proto::Empty>) -> Reply<proto::NicListResponse> {
        self.count();
        let nics = self
            .lock()
            .nics
            .values()
            .map(convert::nic_to_proto)
            .collect();
        Ok(Response::new(proto::NicListResponse { nics }))
    }

    async fn nic_details(&self, r: GrpcRequest<proto::NicId>) -> Reply<proto::Nic> {
        self.count();
        Ok(Response::new(convert::nic_to_proto(
            &self.nic(&r.get_ref().id)?,
        )))
    }

    async fn nic_stats(&self, r: GrpcRequest<proto::NicId>) -> Reply<proto::NicStats> {
        self.count();
        let id = r.into_inner().id;
        self.nic(&id)?;
        let c = self
            .inner
            .dataplane
            .nic_stats(&id)
            .map_err(|e| dataplane_status(&e))?;
        Ok(Response::new(proto::NicStats {
            id,
            rx_packets: c.rx_packets,
            rx_bytes: c.rx_bytes,
            tx_packets: c.tx_packets,
            tx_bytes: c.tx_bytes,
            dropped_firewall: c.dropped_firewall,
            dropped_antispoof: c.dropped_antispoof,
        }))
    }

    async fn nic_sg_add(&self, r: GrpcRequest<proto::NicSgRequest>) -> Reply<proto::Empty> {
        self.count();
        let r = r.into_inner();
        self.empty(Request::NicSgAdd {
            nic: r.nic,
            sg: r.sg,
        })
        .await
    }

    async fn nic_sg_del(&self, r: GrpcRequest<proto::NicSgRequest>) -> Reply<proto::Empty> {
        self.count();
        let r = r.into_inner();
        self.empty(Request::NicSgDel {
            nic: r.nic,
            sg: r.sg,
        })
        .await
    }

    async fn nic_sg_list(&self, r: GrpcRequest<proto::NicId>) -> Reply<proto::IdList> {
        self.count();
        let ids = self.nic(&r.get_ref().id)?.security_groups;
        Ok(Response::new(proto::IdList { ids }))
    }

    async fn sg_add(&self, r: GrpcRequest<proto::SgAddRequest>) -> Reply<proto::Empty> {
        self.count();
        self.empty(Request::SgAdd {
            id: r.into_inner().id,
        })
        .await
    }

    async fn sg_del(&self, r: GrpcRequest<proto::SgId>) -> Reply<proto::Empty> {
        self.count();
        self.empty(Request::SgDel {
            id: r.into_inner().id,
        })
        .await
    }

    async fn sg_list(&self, _: GrpcRequest<proto::Empty>) -> Reply<proto::IdList> {
        self.count();
        let ids = self.lock().sgs.keys().cloned().collect();
        Ok(Response::new(proto::IdList { ids }))
    }

    async fn sg_details(&self, r: GrpcRequest<proto::SgId>) -> Reply<proto::SecurityGroup> {
        self.count();
        let sg = self.sg(&r.get_ref().id)?;
        Ok(Response::new(proto::SecurityGroup {
            id: sg.id.clone(),
            rules: sg.rules.iter().map(convert::rule_to_proto).collect(),
            members: sg.members.iter().map(IpAddr::to_string).collect(),
        }))
    }

    async fn sg_rule_add(
        &self,
        r: GrpcRequest<proto::SgRuleAddRequest>,
    ) -> Reply<proto::SgRuleAddResponse> {
        self.count();
        let r = r.into_inner();
        let rule = r
            .rule
            .ok_or_else(|| field_status(&FieldError::invalid("rule", "missing")))?;
        let rule =
            convert::rule_spec_from_proto(&rule).map_err(|e| field_status(&e.within("rule")))?;
        let cfg = self
            .execute_blocking(Request::SgRuleAdd {
                sg: r.sg.clone(),
                rule,
            })
            .await?;
        let rule_id = cfg.sgs[&r.sg]
            .rules
            .last()
            .map(|r| r.id.clone())
            .unwrap_or_default();
        Ok(Response::new(proto::SgRuleAddResponse { rule_id }))
    }

    async fn sg_rule_del(&self, r: GrpcRequest<proto::SgRuleDelRequest>) -> Reply<proto::Empty> {
        self.count();
        let r = r.into_inner();
        self.empty(Request::SgRuleDel {
            sg: r.sg,
            rule_id: r.rule_id,
        })
        .await
    }

    async fn sg_rule_list(&self, r: GrpcRequest<proto::SgId>) -> Reply<proto::RuleList> {
        self.count();
        let rules = self
            .sg(&r.get_ref().id)?
            .rules
            .iter()
            .map(convert::rule_to_proto)
            .collect();
        Ok(Response::new(proto::RuleList { rules }))
    }

    async fn sg_member_add(&self, r: GrpcRequest<proto::SgMemberRequest>) -> Reply<proto::Empty> {
        self.count();
        let r = r.into_inner();
        self.empty(Request::SgMemberAdd { sg: r.sg, ip: r.ip })
            .await
    }

    async fn sg_member_del(&self, r: GrpcRequest<proto::SgMemberRequest>) -> Reply<proto::Empty> {
        self.count();
        let r = r.into_inner();
        self.empty(Request::SgMemberDel { sg: r.sg, ip: r.ip })
            .await
    }

    async fn sg_member_list(&self, r: GrpcRequest<proto::SgId>) -> Reply<proto::IdList> {
        self.count();
        let ids = self
            .sg(&r.get_ref().id)?
            .members
            .iter()
            .map(IpAddr::to_string)
            .collect();
        Ok(Response::new(proto::IdList { ids }))
    }

    async fn flood_add(&self, r: GrpcRequest<proto::FloodRequest>) -> Reply<proto::Empty> {
        self.count();
        let r = r.into_inner();
        self.empty(Request::FloodAdd {
            vni: r.vni,
            vtep: r.vtep,
        })
        .await
    }

    async fn flood_del(&self, r: GrpcRequest<proto::FloodRequest>) -> Reply<proto::Empty> {
        self.count();
        let r = r.into_inner();
        self.empty(Request::FloodDel {
            vni: r.vni,
            vtep: r.vtep,
        })
        .await
    }

    async fn flood_list(
        &self,
        r: GrpcRequest<proto::FloodListRequest>,
    ) -> Reply<proto::FloodListResponse> {
        self.count();
        let cfg = self.config();
        let vnis: Vec<u32> = match r.get_ref().vni {
            Some(vni) if vni > model::VNI_MAX => {
                return Err(field_status(&FieldError::invalid(
                    "vni",
                    format!(
                        "{vni} is above {} (a VNI is 24 bits, RFC 7348 §5)",
                        model::VNI_MAX
                    ),
                )));
            }
            Some(vni) => vec![vni],
            None => {
                let mut v: Vec<u32> = cfg
                    .flood
                    .keys()
                    .copied()
                    .chain(cfg.nics.values().map(|n| n.vni))
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            }
        };
        let entries = vnis
            .into_iter()
            .map(|vni| self.flood_entry(&cfg, vni))
            .collect();
        Ok(Response::new(proto::FloodListResponse { entries }))
    }

    async fn status(&self, _: GrpcRequest<proto::Empty>) -> Reply<proto::StatusResponse> {
        self.count();
        let cfg = self.config();
        Ok(Response::new(proto::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.inner.started.elapsed().as_secs(),
            request_count: self.inner.requests.load(Ordering::Relaxed),
            graph_dot: self.inner.dataplane.graph_dot(),
            dataplane: self.inner.dataplane.describe(),
            nic_count: cfg.nics.len() as u32,
            sg_count: cfg.sgs.len() as u32,
        }))
    }

    async fn shutdown(&self, _: GrpcRequest<proto::Empty>) -> Reply<proto::Empty> {
        self.count();
        tracing::info!("shutdown requested through the API");
        self.inner.shutdown.send_replace(true);
        Ok(Response::new(proto::Empty {}))
    }

    async fn dump(&self, _: GrpcRequest<proto::Empty>) -> Reply<proto::Requests> {
        self.count();
        let requests = self
            .config()
            .to_requests()
            .iter()
            .map(convert::request_to_proto)
            .collect();
        Ok(Response::new(proto::Requests { requests }))
    }

    async fn load(&self, r: GrpcRequest<proto::LoadRequest>) -> Reply<proto::LoadResponse> {
        self.count();
        let r = r.into_inner();
        let reqs = r
            .requests
            .unwrap_or_default()
            .requests
            .iter()
            .enumerate()
            .map(|(i, q)| {
                convert::request_from_proto(q).map_err(|e| e.within(&format!("requests[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| field_status(&e))?;
        let api = self.clone();
        let replace = r.replace;
        let applied = reqs.len() as u32;
        tokio::task::spawn_blocking(move || api.load_requests(&reqs, replace))
            .await
            .map_err(|e| Status::internal(format!("request task failed: {e}")))??;
        Ok(Response::new(proto::LoadResponse { applied }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::testing::{Call, Recording};
    use crate::model::DesiredChange;
    use crate::testutil::TempDir;

    struct Fixture {
        api: Api,
        dp: Arc<Recording>,
        state: StateFile,
        _dir: TempDir,
    }

    fn ctx() -> Context {
        Context {
            vtep_ip: "192.0.2.1".parse().unwrap(),
            vhost_socket_dir: "/run/butterfly/vhost".into(),
            trace_dir: "/tmp".into(),
        }
    }

    fn fixture() -> Fixture {
        let dir = TempDir::new("api");
        let state = StateFile::new(dir.path().join("state.json"));
        let dp = Arc::new(Recording::default());
        let api = Api::start(ctx(), state.clone(), dp.clone()).unwrap();
        assert_eq!(dp.take(), vec![Call::Reconcile(Config::default())]);
        Fixture {
            api,
            dp,
            state,
            _dir: dir,
        }
    }

    fn nic(id: &str, mac: &str) -> proto::NicAddRequest {
        proto::NicAddRequest {
            nic: Some(proto::Nic {
                id: id.into(),
                mac: mac.into(),
                vni: 42,
                ..proto::Nic::default()
            }),
        }
    }

    fn req<T>(t: T) -> GrpcRequest<T> {
        GrpcRequest::new(t)
    }

    #[tokio::test]
    async fn nic_add_persists_and_reaches_the_dataplane() {
        let f = fixture();
        let r = f
            .api
            .nic_add(req(nic("vm1", "52:54:00:00:00:01")))
            .await
            .unwrap();
        assert_eq!(r.get_ref().socket_path, "/run/butterfly/vhost/vm1.sock");
        let saved = f.state.load().unwrap().unwrap();
        assert_eq!(saved, f.api.config());
        assert_eq!(
            f.dp.take(),
            vec![Call::Apply(vec![DesiredChange::NicAdded(
                saved.nics["vm1"].clone()
            )])]
        );
        let list = f
            .api
            .nic_list(req(proto::Empty {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(list.nics.len(), 1);
        assert_eq!(list.nics[0].mac, "52:54:00:00:00:01");
    }

    #[tokio::test]
    async fn refused_request_names_the_field_and_changes_nothing() {
        let f = fixture();
        f.api
            .nic_add(req(nic("vm1", "52:54:00:00:00:01")))
            .await
            .unwrap();
        f.dp.take();
        let on_disk = std::fs::read(f.state.path()).unwrap();
        let e = f
            .api
            .nic_add(req(nic("vm2", "01:00:5e:00:00:01")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message()
                .starts_with("mac: 01:00:5e:00:00:01 is a multicast"),
            "{}",
            e.message()
        );
        assert_eq!(e.metadata().get(FIELD_METADATA).unwrap(), "mac");
        let e = f
            .api
            .nic_del(req(proto::NicDelRequest { id: "vm9".into() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.message(), "id: no nic 'vm9'");
        let e = f
            .api
            .nic_add(req(nic("vm1", "52:54:00:00:00:02")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists);
        assert_eq!(std::fs::read(f.state.path()).unwrap(), on_disk);
        assert_eq!(
            f.dp.take(),
            vec![],
            "the dataplane saw none of the refused requests"
        );
    }

    #[tokio::test]
    async fn dataplane_refusal_changes_nothing() {
        let f = fixture();
        *f.dp.fail_next_apply.lock().unwrap() = Some(DataplaneError::Refused {
            field: "socket_path".into(),
            reason: "address in use".into(),
        });
        let e = f
            .api
            .nic_add(req(nic("vm1", "52:54:00:00:00:01")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(e.message(), "socket_path: address in use");
        assert!(f.api.config().nics.is_empty());
        assert!(f.state.load().unwrap().is_none(), "nothing was written");
    }

    #[tokio::test]
    async fn persistence_failure_undoes_the_dataplane_change() {
        let dir = TempDir::new("api-ro");
        let state = StateFile::new(dir.path().join("blocker/state.json"));
        let dp = Arc::new(Recording::default());
        let api = Api::start(ctx(), state, dp.clone()).unwrap();
        dp.take();
        // The state directory becomes impossible to create (a file is in the way).
        std::fs::write(dir.path().join("blocker"), b"").unwrap();
        let e = api
            .nic_add(req(nic("vm1", "52:54:00:00:00:01")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert!(e.message().contains("blocker"), "{}", e.message());
        assert!(api.config().nics.is_empty());
        let calls = dp.take();
        assert!(matches!(calls[0], Call::Apply(_)));
        assert_eq!(calls[1], Call::Reconcile(Config::default()));
    }

    #[tokio::test]
    async fn sg_rules_members_and_ids() {
        let f = fixture();
        f.api
            .sg_add(req(proto::SgAddRequest { id: "web".into() }))
            .await
            .unwrap();
        let rule = proto::Rule {
            direction: proto::Direction::In as i32,
            protocol: "tcp".into(),
            port_start: 5000,
            port_end: 5000,
            cidr: "0.0.0.0/0".into(),
            ..proto::Rule::default()
        };
        let id = f
            .api
            .sg_rule_add(req(proto::SgRuleAddRequest {
                sg: "web".into(),
                rule: Some(rule.clone()),
            }))
            .await
            .unwrap()
            .into_inner()
            .rule_id;
        assert_eq!(id.len(), 16);
        let e = f
            .api
            .sg_rule_add(req(proto::SgRuleAddRequest {
                sg: "web".into(),
                rule: Some(proto::Rule {
                    port_end: 70000,
                    ..rule.clone()
                }),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.message(), "rule.port_end: 70000 is above 65535");
        f.api
            .sg_member_add(req(proto::SgMemberRequest {
                sg: "web".into(),
                ip: "10.0.0.7".into(),
            }))
            .await
            .unwrap();
        let sg = f
            .api
            .sg_details(req(proto::SgId { id: "web".into() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(sg.members, vec!["10.0.0.7".to_string()]);
        assert_eq!(
            sg.rules,
            vec![proto::Rule {
                id: id.clone(),
                ..rule
            }]
        );
        f.api
            .sg_rule_del(req(proto::SgRuleDelRequest {
                sg: "web".into(),
                rule_id: id,
            }))
            .await
            .unwrap();
        assert!(
            f.api
                .sg_rule_list(req(proto::SgId { id: "web".into() }))
                .await
                .unwrap()
                .into_inner()
                .rules
                .is_empty()
        );
    }

    #[tokio::test]
    async fn dump_load_round_trip_and_atomic_load() {
        let f = fixture();
        f.api
            .sg_add(req(proto::SgAddRequest { id: "web".into() }))
            .await
            .unwrap();
        f.api
            .nic_add(req(nic("vm1", "52:54:00:00:00:01")))
            .await
            .unwrap();
        f.api
            .flood_add(req(proto::FloodRequest {
                vni: 42,
                vtep: "192.0.2.9".into(),
            }))
            .await
            .unwrap();
        let before = f.api.config();
        let dump = f.api.dump(req(proto::Empty {})).await.unwrap().into_inner();
        f.dp.take();
        f.api
            .load(req(proto::LoadRequest {
                requests: Some(dump.clone()),
                replace: true,
            }))
            .await
            .unwrap();
        assert_eq!(f.api.config(), before);
        assert_eq!(f.dp.take(), vec![Call::Reconcile(before.clone())]);
        // Without replace the same requests collide with what exists: refused, unchanged.
        let e = f
            .api
            .load(req(proto::LoadRequest {
                requests: Some(dump),
                replace: false,
            }))
            .await
            .unwrap_err();
        assert_eq!(
            e.message(),
            "requests[0].id: security group 'web' already exists"
        );
        assert_eq!(f.api.config(), before);
        assert_eq!(f.state.load().unwrap().unwrap(), before);
    }

    #[tokio::test]
    async fn restart_restores_the_state_file() {
        let f = fixture();
        f.api
            .sg_add(req(proto::SgAddRequest { id: "web".into() }))
            .await
            .unwrap();
        f.api
            .nic_add(req(nic("vm1", "52:54:00:00:00:01")))
            .await
            .unwrap();
        let before = f.api.config();
        let dp = Arc::new(Recording::default());
        let again = Api::start(ctx(), f.state.clone(), dp.clone()).unwrap();
        assert_eq!(again.config(), before);
        assert_eq!(dp.take(), vec![Call::Reconcile(before)]);
    }

    #[tokio::test]
    async fn a_hand_edited_invalid_state_file_is_refused_at_start() {
        let f = fixture();
        f.api
            .nic_add(req(nic("vm1", "52:54:00:00:00:01")))
            .await
            .unwrap();
        let text = std::fs::read_to_string(f.state.path())
            .unwrap()
            .replace("\"vni\": 42", "\"vni\": 99999999");
        std::fs::write(f.state.path(), text).unwrap();
        let e = Api::start(ctx(), f.state.clone(), Arc::new(Recording::default()))
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("requests[0].vni: 99999999 is above 16777215"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn status_counts_requests_and_shutdown_is_signalled() {
        let f = fixture();
        let mut rx = f.api.shutdown_requested();
        f.api.sg_list(req(proto::Empty {})).await.unwrap();
        let _ = f.api.sg_del(req(proto::SgId { id: "x".into() })).await;
        let s = f
            .api
            .status(req(proto::Empty {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            s.request_count, 3,
            "refused requests count too, and status itself"
        );
        assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(s.graph_dot, "digraph recording {}\n");
        assert!(!*rx.borrow());
        f.api.shutdown(req(proto::Empty {})).await.unwrap();
        rx.changed().await.unwrap();
        assert!(*rx.borrow());
    }

    #[tokio::test]
    async fn flood_list_shows_multicast_defaults_and_static_lists() {
        let f = fixture();
        f.api
            .nic_add(req(nic("vm1", "52:54:00:00:00:01")))
            .await
            .unwrap();
        f.api
            .flood_add(req(proto::FloodRequest {
                vni: 7,
                vtep: "192.0.2.9".into(),
            }))
            .await
            .unwrap();
        let l = f
            .api
            .flood_list(req(proto::FloodListRequest { vni: None }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            l.entries,
            vec![
                proto::FloodEntry {
                    vni: 7,
                    vteps: vec!["192.0.2.9".into()],
                    multicast_group: "230.0.0.7".into()
                },
                proto::FloodEntry {
                    vni: 42,
                    vteps: vec![],
                    multicast_group: "230.0.0.42".into()
                },
            ]
        );
        let e = f
            .api
            .flood_list(req(proto::FloodListRequest { vni: Some(1 << 24) }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn nic_stats_and_metrics() {
        let f = fixture();
        let e = f
            .api
            .nic_stats(req(proto::NicId { id: "vm1".into() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        f.api
            .nic_add(req(nic("vm1", "52:54:00:00:00:01")))
            .await
            .unwrap();
        let s = f
            .api
            .nic_stats(req(proto::NicId { id: "vm1".into() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((s.rx_packets, s.rx_bytes), (1, 64));
        let m = f.api.metrics_text();
        assert!(m.contains("butterfly_nics 1\n"), "{m}");
        assert!(
            m.contains("butterfly_nic_rx_bytes_total{nic=\"vm1\"} 64\n"),
            "{m}"
        );
    }
}
