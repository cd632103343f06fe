//! The simulator: `rooms × clients` simulated users editing over real sockets, with faults,
//! then quiescence and the verdict (every client's document equals the server's
//! `GET /api/projects/{id}/state` as canonical JSON, and every acknowledged op is in the
//! server's log). The same workload can run against the bare [`crate::relay`] for a baseline.
//!
//! With several URLs every client knows them all, starting at its own (client `i` at
//! `urls[i % n]`, so the load is spread as before), and fails over to the next when its server
//! stops answering ([`crate::client`], "Failover"). The verdict then has three outcomes
//! ([`Outcome`](crate::stats::Outcome)): `CONVERGED` (every client online at the end, each equal to the server, and no
//! acknowledged op lost), `DIVERGED` (an online client differs from the server, or an
//! acknowledged op is missing from the log), and `INCOMPLETE` (no divergence and no lost ack,
//! but some clients were still offline when quiescence timed out: their documents were not
//! compared, their acknowledged ops were still checked). An offline client is not a divergence:
//! it is a server that stayed unreachable, and the run says so apart.
//!
//! Every random choice comes from `seed`: client `i` of room `r` draws from
//! `seed ^ hash(r, i)`. Timing (the scheduler, the network) is not deterministic, so a seed
//! reproduces the workload and the fault schedule, not the interleaving.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ot_core::protocol::{decode_server, ServerMsg};
use ot_core::Document;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::backoff::BackoffConfig;
use crate::canon::first_difference;
use crate::client::{Client, ClientConfig, ClientError};
use crate::endpoint::{BaseUrl, EndpointError, UrlForm};
use crate::http::{get_json, HttpError};
use crate::session::Event;
use crate::stats::{Report, Stats};
use crate::workload::{Limits, Step, Workload};

/// Faults to inject. Rates are per client per second.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Clean disconnects (close 1000) per client per second.
    pub disconnects: f64,
    /// Abrupt kills (TCP reset, no close frame) per client per second.
    pub kills: f64,
    /// Added one-way latency on every frame, each direction.
    pub latency: Duration,
    /// How many clients (spread over rooms) stop reading for [`Faults::stall`] once mid-run.
    pub stalled_clients: usize,
    /// How long a stalled client stops reading.
    pub stall: Duration,
    /// Deliberate duplicate sends of the op in flight per client per second.
    pub duplicates: f64,
}

/// Mints tokens for the simulated users.
pub trait Tokens: Send + Sync {
    /// A room token for `room` for user `sub`.
    fn room_token(&self, room: &str, sub: &str) -> String;
    /// An app token allowed to read every project (for the verdict's HTTP calls).
    fn app_token(&self) -> String;
}

/// One run's settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Base URLs; clients are spread across them round-robin (they must front one server, or
    /// nodes of one cluster). With [`SimConfig::failover`] each client knows them all.
    pub urls: Vec<String>,
    /// Give each client the whole list of [`SimConfig::urls`], starting at its own, so it fails
    /// over when its server stops answering; `false`: only its own URL.
    pub failover: bool,
    /// Socket path form.
    pub form: UrlForm,
    /// Number of rooms.
    pub rooms: usize,
    /// Clients per room.
    pub clients: usize,
    /// Edit steps per client.
    pub ops: u64,
    /// Edit steps per second per client; 0 = closed loop (next step right after the ack).
    pub rate: f64,
    /// Upper bound on the workload phase.
    pub duration: Duration,
    /// Cursor messages per second per client.
    pub cursor_hz: f64,
    /// Transport changes per second per client.
    pub transport_hz: f64,
    /// The seed of everything random.
    pub seed: u64,
    /// Faults.
    pub faults: Faults,
    /// Room ids are `{room_prefix}{n}`.
    pub room_prefix: String,
    /// How long quiescence may take before the verdict runs anyway.
    pub quiesce_timeout: Duration,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// Hold a soft lock on the entity of each property drag while it lasts (PROTOCOL §7), with
    /// this `ttl`, refreshed every half of it; `None`: no locks.
    pub drag_locks: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            urls: Vec::new(),
            failover: true,
            form: UrlForm::Parties,
            rooms: 10,
            clients: 5,
            ops: 200,
            rate: 50.0,
            duration: Duration::from_secs(60),
            cursor_hz: 5.0,
            transport_hz: 0.05,
            seed: 1,
            faults: Faults::default(),
            room_prefix: "sim".into(),
            quiesce_timeout: Duration::from_secs(30),
            progress: false,
            drag_locks: Some(Duration::from_secs(2)),
        }
    }
}

/// Why a run could not be carried out (a divergence is not an error: it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A URL is unusable.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// No URL was given.
    #[error("no server URL")]
    NoUrl,
    /// A client could not start or join.
    #[error("client {pk} (seed {seed}): {source}")]
    Client {
        /// The client.
        pk: String,
        /// The run's seed.
        seed: u64,
        /// What failed.
        source: ClientError,
    },
    /// The verdict's HTTP call failed.
    #[error("verdict (seed {seed}): {source}")]
    Http {
        /// The run's seed.
        seed: u64,
        /// What failed.
        source: HttpError,
    },
    /// A relay client failed.
    #[error("relay client {pk}: {reason}")]
    Relay {
        /// The client.
        pk: String,
        /// What failed.
        reason: String,
    },
}

/// First-send instants by op id, shared by all simulated clients, for ack and remote-delivery
/// latency.
#[derive(Default)]
struct SentAt {
    shards: Vec<Mutex<HashMap<String, Instant>>>,
}

impl SentAt {
    fn new() -> Self {
        SentAt { shards: (0..64).map(|_| Mutex::new(HashMap::new())).collect() }
    }
    fn shard(&self, id: &str) -> &Mutex<HashMap<String, Instant>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        &self.shards[(h.finish() % self.shards.len() as u64) as usize]
    }
    fn insert(&self, id: String, at: Instant) {
        self.shard(&id).lock().unwrap_or_else(|p| p.into_inner()).entry(id).or_insert(at);
    }
    fn get(&self, id: &str) -> Option<Instant> {
        self.shard(id).lock().unwrap_or_else(|p| p.into_inner()).get(id).copied()
    }
}

#[derive(Default)]
struct Live {
    acked: AtomicU64,
    steps: AtomicU64,
    reconnects: AtomicU64,
    done: AtomicU64,
    /// Clients that were live once and are offline now.
    offline: AtomicU64,
}

fn client_seed(seed: u64, room: usize, client: usize) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (seed, room, client).hash(&mut h);
    h.finish()
}

fn progress_task(
    live: Arc<Live>,
    total: usize,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let acked = live.acked.load(Ordering::Relaxed);
            eprintln!(
                "[{:>6.1}s] clients done {}/{}  steps {}  acked {} ({}/s)  reconnects {}  offline {}",
                start.elapsed().as_secs_f64(),
                live.done.load(Ordering::Relaxed),
                total,
                live.steps.load(Ordering::Relaxed),
                acked,
                acked - last,
                live.reconnects.load(Ordering::Relaxed),
                live.offline.load(Ordering::Relaxed)
            );
            last = acked;
        }
    })
}

struct Driven {
    stats: Stats,
    acked: Vec<(String, u64)>,
}

struct Plan {
    cfg: SimConfig,
    room: String,
    pk: String,
    seed: u64,
    stall_at: Option<Duration>,
}

fn plans(cfg: &SimConfig) -> Vec<(usize, Plan)> {
    let mut out = Vec::new();
    let total = cfg.rooms * cfg.clients;
    let stalled = cfg.faults.stalled_clients.min(total);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    for r in 0..cfg.rooms {
        for c in 0..cfg.clients {
            let i = r * cfg.clients + c;
            // Spread stalled clients over rooms: every (total / stalled)-th client.
            let stall_at =
                (stalled > 0 && i.is_multiple_of((total / stalled).max(1)) && i / (total / stalled).max(1) < stalled)
                    .then(|| Duration::from_millis(rng.gen_range(200..1500)));
            out.push((
                r,
                Plan {
                    cfg: cfg.clone(),
                    room: format!("{}{r}", cfg.room_prefix),
                    pk: format!("{}r{r}c{c}", cfg.room_prefix),
                    seed: client_seed(cfg.seed, r, c),
                    stall_at,
                },
            ));
        }
    }
    out
}

fn poisson(rng: &mut StdRng, per_sec: f64, dt: Duration) -> bool {
    per_sec > 0.0 && rng.gen_bool((per_sec * dt.as_secs_f64()).min(1.0))
}

/// Runs the workload against the sequencer at `cfg.urls`, then the verdict.
pub async fn run(cfg: SimConfig, tokens: Arc<dyn Tokens>) -> Result<Report, SimError> {
    if cfg.urls.is_empty() {
        return Err(SimError::NoUrl);
    }
    let bases = cfg.urls.iter().map(|u| BaseUrl::parse(u)).collect::<Result<Vec<_>, _>>()?;
    let sent_at = Arc::new(SentAt::new());
    let live = Arc::new(Live::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let total = cfg.rooms * cfg.clients;
    let start = Instant::now();
    let cpu0 = crate::stats::process_cpu_secs();
    let progress = cfg.progress.then(|| progress_task(live.clone(), total, start, stop_rx.clone()));
    let mut clients: Vec<(usize, Arc<Client>)> = Vec::new();
    let mut tasks = Vec::new();
    for (i, (r, plan)) in plans(&cfg).into_iter().enumerate() {
        let n = cfg.urls.len();
        let urls: Vec<String> = if cfg.failover {
            (0..n).map(|k| cfg.urls[(i + k) % n].clone()).collect()
        } else {
            vec![cfg.urls[i % n].clone()]
        };
        let mut cc =
            ClientConfig::with_urls(urls, plan.room.clone(), tokens.room_token(&plan.room, &plan.pk), plan.pk.clone());
        cc.form = cfg.form;
        cc.seed = plan.seed;
        cc.backoff = BackoffConfig { base: Duration::from_millis(50), max: Duration::from_secs(2) };
        cc.ping_interval = Duration::from_secs(2);
        cc.connect_timeout = Duration::from_secs(2);
        cc.latency = cfg.faults.latency;
        cc.events_capacity = 65_536;
        let (client, events) =
            Client::connect(cc).map_err(|source| SimError::Client { pk: plan.pk.clone(), seed: cfg.seed, source })?;
        let client = Arc::new(client);
        clients.push((r, client.clone()));
        tasks.push(tokio::spawn(drive(plan, client, events, sent_at.clone(), live.clone(), stop_rx.clone())));
    }
    // Workload phase: wait until every driver has finished its steps.
    let deadline = start + cfg.duration + Duration::from_secs(30);
    while live.done.load(Ordering::Relaxed) < total as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let cpu1 = crate::stats::process_cpu_secs();
    // Quiesce and judge (asking the first URL that answers).
    let app = tokens.app_token();
    let verdict = verdict(&cfg, &bases, &app, &clients).await;
    // The drivers stop once told; their handles only fail if one panicked.
    let _ = stop_tx.send(true);
    let mut stats = Stats::default();
    let mut acked: BTreeMap<usize, Vec<(String, u64)>> = BTreeMap::new();
    for (t, (r, _)) in tasks.into_iter().zip(clients.iter()) {
        match t.await {
            Ok(d) => {
                stats.merge(&d.stats);
                acked.entry(*r).or_default().extend(d.acked);
            }
            Err(e) => {
                return Err(SimError::Relay { pk: format!("driver of room {r}"), reason: format!("panicked: {e}") })
            }
        }
    }
    for (_, c) in &clients {
        let s = c.snapshot();
        stats.reconnects += s.reconnects;
        stats.failovers += s.failovers;
        stats.events_lagged += s.events_lagged;
    }
    drop(clients);
    if let Some(p) = progress {
        // Ends on the stop signal; a join error would only mean it panicked printing.
        let _ = p.await;
    }
    let Verdict { rooms_converged, divergences, offline } =
        verdict.map_err(|source| SimError::Http { seed: cfg.seed, source })?;
    let lost_acks =
        check_acks(&cfg, &bases, &app, &acked).await.map_err(|source| SimError::Http { seed: cfg.seed, source })?;
    Ok(Report {
        mode: "sequencer",
        seed: cfg.seed,
        rooms: cfg.rooms,
        clients: cfg.clients,
        elapsed,
        stats,
        rooms_converged,
        divergences,
        offline_at_end: offline,
        lost_acks,
        process_cpu: cpu0.zip(cpu1).map(|(a, b)| b - a),
    })
}

/// `GET path` from the first of `bases` that answers (a node of the cluster may be down).
async fn get_json_any(bases: &[BaseUrl], path: &str, app: &str, timeout: Duration) -> Result<Value, HttpError> {
    let mut last = None;
    for base in bases {
        match get_json(base, path, Some(app), timeout).await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(HttpError::NoServer))
}

/// The state without the unversioned transport fields, which clients hold apart.
fn comparable(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("playhead");
        m.remove("isPlaying");
    }
    v
}

/// What the comparison found.
struct Verdict {
    /// Rooms whose every online client equals the server.
    rooms_converged: usize,
    /// (room, first difference) of rooms where an online client differs.
    divergences: Vec<(String, String)>,
    /// Clients still offline at the end (not compared).
    offline: Vec<String>,
}

async fn verdict(
    cfg: &SimConfig,
    bases: &[BaseUrl],
    app: &str,
    clients: &[(usize, Arc<Client>)],
) -> Result<Verdict, HttpError> {
    let timeout = Duration::from_secs(10);
    let until = Instant::now() + cfg.quiesce_timeout;
    let mut by_room: BTreeMap<usize, Vec<&Arc<Client>>> = BTreeMap::new();
    for (r, c) in clients {
        by_room.entry(*r).or_default().push(c);
    }
    let mut converged = 0;
    let mut divergences = Vec::new();
    let mut offline = Vec::new();
    for (r, cs) in by_room {
        let room = format!("{}{r}", cfg.room_prefix);
        let path = format!("/api/projects/{room}/state");
        // Quiesce: every client live, nothing pending, at the server's version.
        let (server, version) = loop {
            let server = get_json_any(bases, &path, app, timeout).await?;
            let version = server.get("version").and_then(Value::as_u64).unwrap_or(0);
            let settled = cs.iter().all(|c| {
                let s = c.snapshot();
                s.live && !s.pending && s.version == Some(version)
            });
            if settled || Instant::now() > until {
                break (server, version);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let server = comparable(server);
        let mut first = None;
        for c in cs {
            let s = c.snapshot();
            if !s.live {
                // Offline at the end: its server never answered again. Not compared (it holds
                // what it had); counted apart from divergences.
                offline.push(format!("{} (room {room}, last server {})", c_pk(c), s.url));
                continue;
            }
            let pk = s.your_id.clone().unwrap_or_default();
            let Some(doc) = s.doc else {
                first = Some(format!("client {pk} has no document"));
                break;
            };
            let mine = comparable(doc.to_state_value(s.version.unwrap_or(0)));
            if let Some(d) = first_difference(&mine, &server) {
                first = Some(format!(
                    "client {pk} (live {}, pending {}, version {:?}) vs server (version {version}): {d}",
                    s.live, s.pending, s.version
                ));
                break;
            }
        }
        match first {
            None => converged += 1,
            Some(d) => divergences.push((room, d)),
        }
    }
    Ok(Verdict { rooms_converged: converged, divergences, offline })
}

/// A client's connection id, as the server last named it, or its url while it never joined.
fn c_pk(c: &Client) -> String {
    let s = c.snapshot();
    s.your_id.unwrap_or_else(|| format!("(never joined {})", s.url))
}

/// Every acknowledged (op id, version) must be in the server's log at that version.
async fn check_acks(
    cfg: &SimConfig,
    bases: &[BaseUrl],
    app: &str,
    acked: &BTreeMap<usize, Vec<(String, u64)>>,
) -> Result<Vec<String>, HttpError> {
    let mut lost = Vec::new();
    for (r, list) in acked {
        let room = format!("{}{r}", cfg.room_prefix);
        let mut log: HashMap<String, u64> = HashMap::new();
        let mut from = 0u64;
        for _ in 0..10_000 {
            let v = get_json_any(bases, &format!("/api/projects/{room}/ops?from={from}"), app, Duration::from_secs(10))
                .await?;
            let ops = v.get("ops").and_then(Value::as_array).cloned().unwrap_or_default();
            let Some(last) = ops.last().and_then(|m| m.get("version")).and_then(Value::as_u64) else { break };
            for m in &ops {
                if let (Some(id), Some(ver)) =
                    (m.get("opId").and_then(Value::as_str), m.get("version").and_then(Value::as_u64))
                {
                    log.insert(id.to_string(), ver);
                }
            }
            from = last;
        }
        for (id, ver) in list {
            match log.get(id) {
                Some(v) if v == ver => {}
                other => lost.push(format!("room {room}: op {id} acked at version {ver}, server log has {other:?}")),
            }
        }
    }
    Ok(lost)
}

async fn drive(
    plan: Plan,
    client: Arc<Client>,
    mut events: crate::client::Events,
    sent_at: Arc<SentAt>,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) -> Driven {
    let cfg = &plan.cfg;
    let mut stats = Stats::default();
    let mut acked = Vec::new();
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let workload = Arc::new(Mutex::new(Workload::new(plan.pk.clone(), plan.seed, Limits::default())));
    let start = Instant::now();
    let end = start + cfg.duration;
    let mut step_tick = ticker(cfg.rate, Duration::from_millis(100));
    let mut cursor_tick = ticker(cfg.cursor_hz, Duration::from_secs(3600));
    let fault_dt = Duration::from_millis(100);
    let mut fault_tick = tokio::time::interval(fault_dt);
    let mut stall_at = plan.stall_at.map(|d| tokio::time::Instant::now() + d);
    let mut done = false;
    let mut want_step = cfg.rate <= 0.0;
    let mut in_step = false;
    let mut readies = 0u64;
    // Since when this client is offline (after having been live), for the outage histogram.
    let mut offline_since: Option<Instant> = None;
    // The drag's entity and the guard that keeps its lock.
    let mut held: Option<((ot_core::EntityKind, ot_core::Id), crate::client::LockGuard)> = None;
    let (step_tx, mut step_rx) = tokio::sync::mpsc::channel::<Result<usize, ClientError>>(4);
    // Bounded by the run's duration: a client whose servers never answer edits offline.
    let first = Duration::from_secs(30).min(cfg.duration);
    if client.ready(first).await.is_err() {
        tracing::warn!(pk = %plan.pk, "client did not get init in {first:?}");
    }
    let finish = |done: &mut bool| {
        if !*done {
            *done = true;
            live.done.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        if !done && (stats.steps >= cfg.ops || Instant::now() >= end) {
            finish(&mut done);
        }
        let closed_loop_go = want_step && !in_step && !done;
        if closed_loop_go {
            want_step = false;
            in_step = true;
            let (c, w, tx) = (client.clone(), workload.clone(), step_tx.clone());
            tokio::spawn(async move {
                let r = step(&c, w).await;
                // The driver may have finished; then the result is moot.
                let _ = tx.send(r).await;
            });
        }
        tokio::select! {
            _ = stop.changed() => break,
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                match ev.event {
                    Event::Sent { op_id, resend } => {
                        if resend { stats.resent += 1 } else { stats.sent += 1; sent_at.insert(op_id, ev.at); }
                    }
                    Event::Acked { op_id, version, latency } => {
                        stats.acked += 1;
                        live.acked.fetch_add(1, Ordering::Relaxed);
                        // The session counts whole milliseconds; the events' instants are finer.
                        // Without the `Sent` event (a lagged queue drops events), its count.
                        let latency = sent_at.get(&op_id).map_or(latency, |at| ev.at.saturating_duration_since(at));
                        stats.ack.record(latency);
                        acked.push((op_id, version));
                        if cfg.rate <= 0.0 { want_step = true; }
                    }
                    Event::Remote { op_id, .. } => {
                        stats.remote += 1;
                        if let Some(at) = op_id.as_deref().and_then(|id| sent_at.get(id)) {
                            stats.delivery.record(ev.at.saturating_duration_since(at));
                        }
                    }
                    Event::Cursor { .. } => stats.cursors_in += 1,
                    Event::ServerError { code, .. } => *stats.errors.entry(code.as_str().to_string()).or_default() += 1,
                    Event::Locked { .. } => stats.locked += 1,
                    Event::Locks(_) => stats.lock_tables += 1,
                    Event::Dropped { ops, .. } => stats.dropped_ops += ops.len() as u64,
                    Event::Disconnected { .. } => {
                        stats.disconnects += 1;
                        if readies > 0 && offline_since.is_none() {
                            offline_since = Some(ev.at);
                            live.offline.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Event::Ready { .. } => {
                        readies += 1;
                        if let Some(at) = offline_since.take() {
                            stats.outage.record(ev.at.saturating_duration_since(at));
                            live.offline.fetch_sub(1, Ordering::Relaxed);
                        }
                        if readies > 1 { live.reconnects.fetch_add(1, Ordering::Relaxed); }
                        if cfg.rate <= 0.0 && !client.snapshot().pending { want_step = true; }
                    }
                    _ => {}
                }
            }
            r = step_rx.recv() => {
                in_step = false;
                if let Some(ttl) = cfg.drag_locks {
                    // Lock the entity a drag changes as the drag starts (its first update is on
                    // the wire just before), release it when the drag ends.
                    let now = workload.lock().unwrap_or_else(|p| p.into_inner()).drag_entity();
                    if held.as_ref().map(|(e, _)| e) != now.as_ref() {
                        if let Some((_, guard)) = held.take() {
                            guard.release().await;
                        }
                        if let Some((kind, id)) = now {
                            stats.locks_held += 1;
                            held = Some(((kind, id.clone()), client.hold_lock(kind, &id, Some(ttl))));
                        }
                    }
                }
                match r {
                    Some(Ok(n)) if n > 0 => { stats.steps += 1; live.steps.fetch_add(1, Ordering::Relaxed); }
                    Some(Ok(_)) => {}
                    Some(Err(ClientError::Op(_))) => stats.local_rejects += 1,
                    Some(Err(_)) | None => {}
                }
                // Closed loop: if the step was merged into a pending op or nothing was sent,
                // go on at once; otherwise the ack triggers the next step.
                if cfg.rate <= 0.0 && !client.snapshot().pending { want_step = true; }
            }
            _ = step_tick.tick(), if cfg.rate > 0.0 && !done && !in_step => {
                in_step = true;
                let (c, w, tx) = (client.clone(), workload.clone(), step_tx.clone());
                tokio::spawn(async move {
                    let r = step(&c, w).await;
                    // As above.
                    let _ = tx.send(r).await;
                });
            }
            _ = cursor_tick.tick(), if cfg.cursor_hz > 0.0 && !done => {
                let (x, y) = (rng.gen_range(0.0..1920.0), rng.gen_range(0.0..1080.0));
                if client.cursor(x, y).await.is_ok() { stats.cursors_out += 1; }
            }
            _ = fault_tick.tick(), if !done => {
                let f = &cfg.faults;
                let mut fault = |name: &str| *stats.faults.entry(name.to_string()).or_default() += 1;
                if poisson(&mut rng, f.disconnects, fault_dt) && client.disconnect().await.is_ok() { fault("disconnect"); }
                if poisson(&mut rng, f.kills, fault_dt) && client.kill().await.is_ok() { fault("kill"); }
                if poisson(&mut rng, f.duplicates, fault_dt) && client.duplicate_inflight().await.is_ok() { fault("duplicate"); stats.duplicates += 1; }
                if poisson(&mut rng, cfg.transport_hz, fault_dt) {
                    let playing = rng.gen_bool(0.5);
                    if client.transport(playing, rng.gen_range(0.0..120.0)).await.is_ok() { stats.transports_out += 1; }
                }
                if stall_at.is_some_and(|t| t <= tokio::time::Instant::now()) {
                    stall_at = None;
                    if client.stall(f.stall).await.is_ok() { fault("stall"); }
                }
            }
        }
    }
    if let Some((_, guard)) = held.take() {
        guard.release().await;
    }
    finish(&mut done);
    Driven { stats, acked }
}

/// One step of a user: an edit made from the exact local document, or an undo or redo of their
/// own edits. Returns how many ops it applied locally (0: nothing to do).
async fn step(client: &Client, workload: Arc<Mutex<Workload>>) -> Result<usize, ClientError> {
    let next = workload.lock().unwrap_or_else(|p| p.into_inner()).next_step();
    match next {
        Step::Undo => client.undo().await.map(|o| o.applied.map_or(0, |ops| ops.len())),
        Step::Redo => client.redo().await.map(|o| o.applied.map_or(0, |ops| ops.len())),
        Step::Edit => client
            .edit(move |doc: &Document| workload.lock().unwrap_or_else(|p| p.into_inner()).next(doc).1)
            .await
            .map(|o| o.len()),
    }
}

/// Runs the same workload against a bare relay at `cfg.urls` (no OT, no verdict): each client
/// sends an op frame, waits for its own echo (the "ack"), and counts others' frames.
pub async fn run_relay(cfg: SimConfig) -> Result<Report, SimError> {
    if cfg.urls.is_empty() {
        return Err(SimError::NoUrl);
    }
    let sent_at = Arc::new(SentAt::new());
    let live = Arc::new(Live::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let total = cfg.rooms * cfg.clients;
    let start = Instant::now();
    let cpu0 = crate::stats::process_cpu_secs();
    let progress = cfg.progress.then(|| progress_task(live.clone(), total, start, stop_rx.clone()));
    // Connect everyone first so no frame is sent into a half-joined room.
    let mut sockets = Vec::new();
    for (i, (_, plan)) in plans(&cfg).into_iter().enumerate() {
        let base = BaseUrl::parse(&cfg.urls[i % cfg.urls.len()])?;
        let url = base.socket(cfg.form, &plan.room, "relay", &plan.pk, None);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .map_err(|e| SimError::Relay { pk: plan.pk.clone(), reason: e.to_string() })?;
        sockets.push((plan, ws));
    }
    let mut tasks = Vec::new();
    for (plan, ws) in sockets {
        tasks.push(tokio::spawn(drive_relay(plan, ws, sent_at.clone(), live.clone())));
    }
    let mut stats = Stats::default();
    let mut failure = None;
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => stats.merge(&s),
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(SimError::Relay { pk: "driver".into(), reason: format!("panicked: {e}") }),
        }
    }
    let elapsed = start.elapsed();
    let cpu1 = crate::stats::process_cpu_secs();
    // Stop the progress line; it ends on this signal.
    let _ = stop_tx.send(true);
    if let Some(p) = progress {
        // A join error would only mean it panicked printing.
        let _ = p.await;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Report {
        mode: "relay",
        seed: cfg.seed,
        rooms: cfg.rooms,
        clients: cfg.clients,
        elapsed,
        stats,
        rooms_converged: 0,
        divergences: Vec::new(),
        offline_at_end: Vec::new(),
        lost_acks: Vec::new(),
        process_cpu: cpu0.zip(cpu1).map(|(a, b)| b - a),
    })
}

async fn drive_relay(
    plan: Plan,
    mut ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    sent_at: Arc<SentAt>,
    live: Arc<Live>,
) -> Result<Stats, SimError> {
    let cfg = &plan.cfg;
    let err = |e: String| SimError::Relay { pk: plan.pk.clone(), reason: e };
    let mut stats = Stats::default();
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut workload = Workload::new(plan.pk.clone(), plan.seed, Limits::default());
    let mut doc = Document::new();
    let start = Instant::now();
    let end = start + cfg.duration;
    let mut step_tick = ticker(cfg.rate, Duration::from_secs(3600));
    let mut cursor_tick = ticker(cfg.cursor_hz, Duration::from_secs(3600));
    let mut inflight: Option<(String, Instant)> = None;
    let mut seq = 0u64;
    let mut done = false;
    // In the relay everyone's frames keep coming after this client is done; it keeps reading
    // until every client is done, plus a short grace for frames in transit.
    let total = (cfg.rooms * cfg.clients) as u64;
    let mut grace_until: Option<Instant> = None;
    let mut send_next = cfg.rate <= 0.0;
    let mut wake = tokio::time::interval(Duration::from_millis(50));
    loop {
        if !done && ((stats.steps >= cfg.ops && inflight.is_none()) || Instant::now() >= end) {
            done = true;
            live.done.fetch_add(1, Ordering::Relaxed);
        }
        if done && live.done.load(Ordering::Relaxed) >= total {
            let g = *grace_until.get_or_insert_with(|| Instant::now() + Duration::from_millis(300));
            if Instant::now() >= g {
                break;
            }
        }
        if send_next && inflight.is_none() && !done && stats.steps < cfg.ops {
            send_next = false;
            let (_, batch) = workload.next(&doc);
            if ot_core::apply(&mut doc, &batch).is_err() {
                stats.local_rejects += 1;
            }
            seq += 1;
            let op_id = format!("{}:{seq}", plan.pk);
            let frame = json!({"type":"operation","operation":batch,"version":seq,"userId":plan.pk,"opId":op_id});
            let now = Instant::now();
            sent_at.insert(op_id.clone(), now);
            inflight = Some((op_id, now));
            stats.steps += 1;
            stats.sent += 1;
            live.steps.fetch_add(1, Ordering::Relaxed);
            ws.send(Message::text(frame.to_string())).await.map_err(|e| err(e.to_string()))?;
        }
        tokio::select! {
            frame = ws.next() => {
                let Some(frame) = frame else { return Err(err("relay closed the socket".into())) };
                let frame = frame.map_err(|e| err(e.to_string()))?;
                let Message::Text(t) = frame else { continue };
                match decode_server(t.as_str()) {
                    Ok(ServerMsg::Operation(m)) => {
                        let now = Instant::now();
                        let mine = matches!((&inflight, &m.op_id), (Some((a, _)), Some(b)) if a == b);
                        if mine {
                            if let Some((_, at)) = inflight.take() {
                                stats.acked += 1;
                                live.acked.fetch_add(1, Ordering::Relaxed);
                                stats.ack.record(now.saturating_duration_since(at));
                            }
                            if cfg.rate <= 0.0 { send_next = true; }
                        } else if m.user_id != plan.pk {
                            stats.remote += 1;
                            if let Some(at) = m.op_id.as_deref().and_then(|id| sent_at.get(id)) {
                                stats.delivery.record(now.saturating_duration_since(at));
                            }
                        }
                    }
                    Ok(ServerMsg::Cursor { user_id, .. }) => if user_id != plan.pk { stats.cursors_in += 1 },
                    Ok(_) => {}
                    Err(e) => *stats.errors.entry(format!("undecodable: {}", e.code().as_str())).or_default() += 1,
                }
            }
            _ = step_tick.tick(), if cfg.rate > 0.0 && !done => { send_next = true; }
            _ = cursor_tick.tick(), if cfg.cursor_hz > 0.0 && !done => {
                let (x, y): (f64, f64) = (rng.gen_range(0.0..1920.0), rng.gen_range(0.0..1080.0));
                let frame = json!({"type":"cursor","userId":plan.pk,"x":x,"y":y});
                ws.send(Message::text(frame.to_string())).await.map_err(|e| err(e.to_string()))?;
                stats.cursors_out += 1;
            }
            _ = wake.tick() => {}
        }
    }
    // Best effort: the relay may be gone.
    let _ = ws.close(None).await;
    Ok(stats)
}

/// An interval ticking `hz` times a second (every `idle` when `hz` is 0), delaying rather than
/// bursting after a missed tick.
fn ticker(hz: f64, idle: Duration) -> tokio::time::Interval {
    let every = if hz > 0.0 { Duration::from_secs_f64(1.0 / hz) } else { idle };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}
