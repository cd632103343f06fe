//! # sequencer
//!
//! The studio's real-time collaboration server: it speaks `shared/PROTOCOL.md` (v1) over
//! WebSocket and HTTP, sequences every edit of a room with ot-core's [`ot_core::sync::ServerDoc`]
//! (rebase, exactly-once by `opId`), keeps presence, cursors and the transport, checks JWTs,
//! and stores the op log durably before acknowledging. The async code only moves bytes: every
//! OT decision is ot-core's.
//!
//! # Layout
//!
//! - [`run`] / [`start`]: the accept loop (mini-redis style `run(listener, config, shutdown)`),
//!   one task per TCP connection, and the shutdown tree.
//! - [`http`]: the endpoints of PROTOCOL §1 on hyper 1, including the WebSocket upgrade.
//! - [`conn`]: one socket: auth, limits, decoding, a reader loop and a writer task.
//! - [`room`]: rooms. [`room::core::RoomCore`] makes every decision of a room as a synchronous
//!   machine (`handle(input, now) -> outputs`, `next_deadline()`): sequencing through ot-core's
//!   `ServerDoc`, durability bookkeeping, `since` catch-ups, cursors, the transport, presence
//!   ([`room::presence`]), soft locks ([`room::locks`]) and a shared store's lost races and other nodes' ops
//!   ([`room::cluster`]). The room's tokio task is a short shell that feeds it inputs and carries
//!   out its outputs (outboxes, store writes and reads, the bus, the clock); tests and the
//!   simulation drive the core directly. The registry finds or starts rooms.
//! - [`outbox`]: a connection's bounded outbound queue: the slow-client policy.
//! - [`store`]: the [`store::Store`] trait and what every backend shares, one file per backend
//!   ([`store::memory`], [`store::sqlite`], and [`store::postgres`] shared by several nodes,
//!   `--store postgres://…`) and [`store::writer`], the group-commit writer that every
//!   store's writes go through (on its own thread for the stores that block on IO).
//!   [`store_pg`] is the former path of [`store::postgres`].
//! - [`bus`]: the Redis fan-out between nodes sharing a store (`--bus`). A room's multi-node
//!   logic (lost races, other nodes' ops) is part of its core; `docs/scale-out.md` explains the
//!   whole.
//! - [`auth`]: app and room tokens (HS256 JWT): signing and verifying. The claims, their
//!   builder and the roles are ot-core's [`ot_core::protocol::token`], re-exported.
//! - [`error`]: every refusal and its one mapping to wire error codes; the close codes
//!   ([`error::Close`]) are ot-core's [`ot_core::protocol::Close`], shared with the clients,
//!   which also says what a client does on each. The id rule ([`conn::valid_id`]) is ot-core's
//!   too.
//! - [`metrics`]: Prometheus text for `/metrics`.
//!
//! # Ownership
//!
//! A connection task owns its socket; a room task owns its core (document, history, presence,
//! transport). They talk over a bounded `mpsc` (connection → room) and an [`outbox::Outbox`]
//! (room → connection) that never blocks the room. The registry maps room ids to room inboxes
//! under a short `std::sync::Mutex` that is never held across an await or while a room loads.
//!
//! # Choices where PROTOCOL.md leaves room (documented per its preamble)
//!
//! - Close codes besides 4001/4400/1001: 4000 heartbeat timeout, 4008 slow consumer (queue of
//!   operations overflowed; reconnect with `since`), 4009 replaced by a newer connection with the
//!   same `_pk`, 4029 too many connections (room or server), 1008 sustained rate-limit abuse,
//!   1009 frame over the socket layer's hard limit (4 × `--max-frame`), 1011 storage failure.
//! - An `operation` whose ops do not decode (unknown op type, missing op fields) is
//!   `bad_message` with its `opId`; an op that decodes but does not apply is `invalid_op`.
//!   Binary frames are `bad_json`. A `baseVersion` beyond `--max-rebase` is `version_too_old`.
//! - Acks go out only once the op is durable; `init` (state or `ops`) is therefore at the
//!   room's durable version, and `GET …/state` too.
//! - `GET /api/projects/{id}/ops?from=V` answers `{"ops": [...], "version": head, "more": bool}`
//!   with at most `limit` (default and maximum 10,000) ops and at most `max_reply_bytes` of JSON
//!   (but at least one op when there is one); while `more` is true, page on with `from` = the
//!   last op's version. `from` at or past the head gives no ops.
//! - `join`'s `host` is `public_host`, else a valid `Host` header, else the listen address; the
//!   room token it mints never outlives the token it was given. Tokens with an `exp` more than
//!   ten years ahead are refused.
//! - The HTTP API accepts an app token, or a room token for that same project.
//! - `since` newer than the room, or older than `--max-catchup` versions, gets the full `state`.
//! - Exactly-once for an op that has no `baseVersion` covers the in-memory history window; with
//!   a `baseVersion` (as the Rust client always sends), it also covers the whole stored log.
//! - The transport is not versioned and not stored: after a restart (or an idle unload) it is
//!   stopped at the stored playhead.
//! - `error` code `internal` (in ot-core's `ErrorCode`, missing from PROTOCOL §3.2) answers an op
//!   whose older history could not be read from the store; if a *write* fails, the room closes
//!   every socket with 1011 and reloads from the store on the next join.
//! - Every text frame counts towards `--rate-limit`, pings included; an `operation` over the limit
//!   always gets its `rate_limited` error with its `opId`, other messages at most one error per
//!   second (so a flood is not answered with a flood).
//! - Frames over `--max-frame` get `too_large` and the socket stays open, up to 4 × the limit;
//!   beyond that the WebSocket layer refuses to buffer the frame and closes with 1009.
//! - A slow consumer's 4008 close frame is sent when its socket still drains; when it does not,
//!   the server drops the TCP connection (the client sees an abnormal close, 1006) rather than
//!   wait on it. Either way it resyncs with `since`.
//! - With `--memory`, rooms still unload when idle, but their log stays in the process, so a
//!   room "lives as long as the process" as PROTOCOL §4 says.
//! - Soft locks (PROTOCOL §7): a `ttl` above 60,000 ms is taken as 60,000, fractions round up,
//!   and zero, negative or non-numeric is `bad_message`; a refresh sets the expiry to now +
//!   `ttl`. A `target` other than `track`/`clip`/`marker`, an entity that does not exist (in the
//!   live document, so one's own just-sequenced insert can be locked) or is of another kind, is
//!   `invalid_op`. `unlock` of a lock the connection does not hold is ignored, unanswered.
//!   Locks belong to the connection id: a `_pk` takeover keeps them, a leave or eviction ends
//!   them (the `locks` message goes out before `user_left`). A delete ends the locks on what it
//!   removed, a track's clips included, once it is applied (after its `operation` broadcast).
//!   With several nodes the table is room-wide, like presence ([`room::remote`]).
//! - `lastSeen` is refreshed by every message (ping, cursor, edit); it is reported in `init.users`
//!   and `user_joined`, not broadcast on every change.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod bus;
pub mod conn;
pub mod error;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod room;
pub mod store;
pub mod web;

/// The PostgreSQL store under its former path; it lives in [`store::postgres`].
pub use store::postgres as store_pg;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::room::Registry;
use crate::store::{MemoryStore, Persister, SqliteStore, Store};

/// Where the op log lives.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    /// In process memory (`--memory`): nothing on disk.
    Memory,
    /// SQLite under this directory (`--data-dir`).
    Sqlite(PathBuf),
    /// PostgreSQL at this URL (`--store postgres://…`), shared by several nodes.
    Postgres(String),
}

/// Everything the server needs to run. Every field has a documented default (see
/// [`Config::memory`]); the binary fills them from flags and environment variables.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to bind; port 0 picks a free port. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// The HS256 secret of every token.
    pub secret: String,
    /// The store.
    pub storage: Storage,
    /// Messages per second per connection (burst the same); 0 turns the limit off. Default 100.
    pub rate_limit: u32,
    /// Largest text frame taken, in bytes. Default 256 KiB.
    pub max_frame: usize,
    /// Most ops in one `operation` batch. Default 1000.
    pub max_batch: usize,
    /// Deepest nesting of any JSON value in an op, and of every property value the server
    /// stores (PROTOCOL §3.3). Default 32; at most [`ot_core::protocol::HARD_MAX_DEPTH`].
    pub max_depth: usize,
    /// Most keys in an update's `path`. Default 32; at most [`ot_core::protocol::HARD_MAX_PATH`].
    pub max_path: usize,
    /// Longest `opId`, in characters. Default 128.
    pub max_op_id: usize,
    /// Most ids in a cursor's `selection`. Default 256.
    pub max_selection: usize,
    /// A room's document cap in bytes of JSON; an op that would pass it is `too_large`.
    /// Default 32 MiB.
    pub max_doc_bytes: usize,
    /// Connections per room. Default 256.
    pub max_room_connections: usize,
    /// Connections in total. Default 20,000.
    pub max_connections: usize,
    /// Connections of one account (token `sub`) in one room. Default 8.
    pub max_account_connections: usize,
    /// Rooms loaded at once; past it a new room is refused (503, close 4029). Default 10,000.
    pub max_rooms: usize,
    /// TCP connections not (yet) an authenticated socket: HTTP requests in flight, idle
    /// keep-alive connections and upgrades in progress. Default 1024.
    pub max_pending: usize,
    /// An HTTP request must complete its headers within this long, and an idle keep-alive
    /// connection is closed after it. Default 10 s.
    pub header_timeout: Duration,
    /// Largest reply body built at once, in bytes: `GET …/ops` pages stop there, and a `since`
    /// catch-up larger than the state is sent as the state. Default 8 MiB.
    pub max_reply_bytes: usize,
    /// The URL clients should connect to (`join`'s `host`/`partykitHost`); when unset, the
    /// request's `Host` header if it is a valid host\[:port\], else the listen address.
    pub public_host: Option<String>,
    /// The built studio page (`web/dist`), served at `/`; `None`: `/` says how to build it.
    pub web_dir: Option<std::path::PathBuf>,
    /// Frames queued for one connection before it is closed as a slow consumer. Default 1024.
    pub outbox_capacity: usize,
    /// A connection that answers nothing for this long is closed. Default 45 s.
    pub heartbeat_timeout: Duration,
    /// Cursor fan-out period: at most one cursor per connection per tick. Default 20 ms.
    pub cursor_tick: Duration,
    /// Versions of history kept in memory per room. Default 1000.
    pub history_window: usize,
    /// Bytes of memory the history window may keep alive per room beyond the document, as
    /// [`ot_core::sync::ServerDoc::set_history_bytes`] estimates them; older versions are then
    /// read from the store. Default 1.75 MiB, which keeps a 1,000-clip project's window under
    /// 2 MB of live heap whatever its ops (BENCHMARKS.md, "The history window's memory").
    pub max_history_bytes: usize,
    /// How many versions back a stale op may be rebased (older: `version_too_old`). Default 100,000.
    pub max_rebase: u64,
    /// Most ops sent in a `since` catch-up; further back gets the full state. Default 10,000.
    pub max_catchup: u64,
    /// A snapshot is stored at least this many versions after the last; a large document waits
    /// longer, so that snapshots write at most about 128 bytes per version on average
    /// ([`crate::room::core::SNAPSHOT_BYTES_PER_VERSION`]). Default 500.
    pub snapshot_every: u64,
    /// A room with no connection is unloaded after this long. Default 60 s.
    pub room_idle: Duration,
    /// Lifetime of the room tokens `join` mints, in seconds. Default 3600.
    pub room_token_ttl: u64,
    /// The Redis bus between nodes sharing a PostgreSQL store (`--bus`); not started for a
    /// store that is not shared ([`store::Store::shared`]). Default none.
    pub bus: Option<bus::BusConfig>,
    /// With a shared store, a room with connections reads other nodes' ops from the store this
    /// often (the safety net under the bus). Default 200 ms.
    pub cluster_poll: Duration,
    /// With a bus, how long a connection's presence (and soft locks) stays in other nodes' view
    /// unless its node refreshes it; the heartbeat refreshes every third of it. A node that dies
    /// drops out of everyone's view within this. Default 15 s.
    pub presence_ttl: Duration,
}

impl Config {
    /// Defaults with the in-memory store, listening on `127.0.0.1:0`.
    pub fn memory(secret: impl Into<String>) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret: secret.into(),
            storage: Storage::Memory,
            rate_limit: 100,
            max_frame: 256 * 1024,
            max_batch: 1000,
            max_depth: 32,
            max_path: 32,
            max_op_id: 128,
            max_selection: 256,
            max_doc_bytes: 32 * 1024 * 1024,
            max_room_connections: 256,
            max_connections: 20_000,
            max_account_connections: 8,
            max_rooms: 10_000,
            max_pending: 1024,
            header_timeout: Duration::from_secs(10),
            max_reply_bytes: 8 * 1024 * 1024,
            public_host: None,
            web_dir: None,
            outbox_capacity: 1024,
            heartbeat_timeout: Duration::from_secs(45),
            cursor_tick: Duration::from_millis(20),
            history_window: 1000,
            max_history_bytes: 1792 * 1024,
            max_rebase: 100_000,
            max_catchup: 10_000,
            snapshot_every: 500,
            room_idle: Duration::from_secs(60),
            room_token_ttl: 3600,
            bus: None,
            cluster_poll: Duration::from_millis(200),
            presence_ttl: Duration::from_secs(15),
        }
    }

    /// The size limits every client message is checked against (held to their ceilings).
    pub fn limits(&self) -> ot_core::protocol::Limits {
        ot_core::protocol::Limits {
            max_depth: self.max_depth,
            max_path: self.max_path,
            max_op_id: self.max_op_id,
            max_selection: self.max_selection,
        }
        .clamped()
    }

    /// Defaults with the SQLite store under `data_dir`.
    pub fn sqlite(secret: impl Into<String>, data_dir: PathBuf) -> Config {
        Config { storage: Storage::Sqlite(data_dir), ..Config::memory(secret) }
    }
}

/// What every task shares: read-only config, the registry, the store, metrics and limits.
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// Room id → room inbox.
    pub rooms: Registry,
    /// The store and its writer.
    pub persister: Arc<Persister>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The bus to other nodes, when configured and the store is shared.
    pub bus: Option<Arc<bus::Bus>>,
    /// Permits for open sockets (`max_connections`).
    pub connections: Arc<Semaphore>,
    /// Permits for TCP connections that are not (yet) an authenticated socket
    /// (`max_pending`): taken before `accept`, released when the connection ends or upgrades.
    pub pending: Arc<Semaphore>,
    /// The address the server listens on (`join`'s host when neither `public_host` nor a valid
    /// `Host` header gives one).
    pub addr: SocketAddr,
    /// Flips to true when shutdown starts.
    pub shutdown: watch::Receiver<bool>,
    /// Dropped by every task when it ends; the server waits for all of them.
    pub done: mpsc::Sender<()>,
}

/// A running server started by [`start`].
pub struct ServerHandle {
    /// The address it listens on (the real port when `listen` had port 0).
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ServerHandle {
    /// Graceful shutdown: stop accepting, flush acknowledged writes, close every socket with
    /// 1001, wait for every task and the store writer.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        // The server may already have stopped on its own; its result is reported below.
        let _ = self.stop.send(());
        self.task.await.context("server task panicked")?
    }
}

/// Binds `config.listen`, spawns the server and returns at once.
pub async fn start(config: Config) -> anyhow::Result<ServerHandle> {
    let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(listener, config, async move {
        // A dropped handle also stops the server.
        let _ = stopped.await;
    }));
    Ok(ServerHandle { addr, stop, task })
}

/// Opens the configured store.
pub fn open_store(storage: &Storage) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match storage {
        Storage::Memory => Arc::new(MemoryStore::new()),
        Storage::Sqlite(dir) => Arc::new(SqliteStore::open(dir)?),
        Storage::Postgres(url) => Arc::new(store::postgres::PgStore::open(url)?),
    })
}

/// Serves on `listener` until `shutdown` completes, then shuts down gracefully (PROTOCOL §6).
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if let Some(host) = config.public_host.as_deref().filter(|h| !http::valid_host(h)) {
        anyhow::bail!("public host `{host}` is not a host[:port]");
    }
    let addr = listener.local_addr().context("reading the listen address")?;
    let metrics = Arc::new(Metrics::default());
    // Opening a store may block (PostgreSQL connects and migrates).
    let storage = config.storage.clone();
    let store = tokio::task::spawn_blocking(move || open_store(&storage)).await.context("opening the store")??;
    // Whether other nodes write this store is the store's answer; the multi-node machinery
    // (the bus here, a room's cluster logic) runs only when they do.
    let bus = match &config.bus {
        Some(b) if store.shared() => Some(bus::Bus::start(b).await?),
        Some(_) => {
            warn!("a bus is configured but no other node writes this store; not starting the bus");
            None
        }
        None => None,
    };
    let persister = Persister::start(store, metrics.clone())?;
    let (notify_shutdown, shutdown_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let shared = Arc::new(Shared {
        connections: Arc::new(Semaphore::new(config.max_connections)),
        // Zero would never accept anything.
        pending: Arc::new(Semaphore::new(config.max_pending.max(1))),
        addr,
        config,
        rooms: Registry::default(),
        persister: persister.clone(),
        metrics,
        bus: bus.clone(),
        shutdown: shutdown_rx,
        done: done_tx,
    });
    tokio::pin!(shutdown);
    loop {
        // A permit before `accept` (as mini-redis does): past `max_pending` connections that
        // are not yet authenticated sockets, new ones wait in the kernel's backlog instead of
        // each taking a task, buffers and a file descriptor here.
        let permit = tokio::select! {
            permit = shared.pending.clone().acquire_owned() => match permit {
                Ok(p) => p,
                // Never closed while `shared` lives; stop serving rather than spin if it were.
                Err(e) => {
                    warn!(error = %e, "pending-connection semaphore closed");
                    break;
                }
            },
            _ = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        warn!(%peer, error = %e, "set_nodelay failed");
                    }
                    tokio::spawn(http::serve_tcp(shared.clone(), stream, peer, permit));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
    info!("shutting down: closing sockets and flushing the store");
    drop(listener);
    // Receivers live in `shared`, so this cannot fail while we hold it.
    let _ = notify_shutdown.send(true);
    shared.rooms.close();
    drop(shared);
    // Every task holds a clone of `done`; recv returns None once all have finished.
    let _ = done_rx.recv().await;
    tokio::task::spawn_blocking(move || persister.finish()).await.context("store writer join")?;
    if let Some(b) = bus {
        b.stop();
    }
    info!("shutdown complete");
    Ok(())
}
