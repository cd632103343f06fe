//! The `sequencer` binary: the command line of PROTOCOL §6 over [`sequencer::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sequencer::auth::{self, Claims, Role};
use sequencer::{Config, Storage};

/// The studio's real-time collaboration server.
#[derive(Parser, Debug)]
#[command(name = "sequencer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default).
    Serve(Box<ServeArgs>),
    /// Print one room token (PROTOCOL §2) on standard output.
    Token(TokenArgs),
}

#[derive(Args, Debug, Clone)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (printed in the `listening on` line).
    #[arg(long, env = "SEQUENCER_LISTEN", default_value = "127.0.0.1:1999")]
    listen: SocketAddr,
    /// Directory of the embedded SQLite store (created if missing).
    #[arg(long, env = "SEQUENCER_DATA_DIR", default_value = "./data", conflicts_with = "memory")]
    data_dir: PathBuf,
    /// Keep everything in memory; nothing is written to disk.
    #[arg(long, env = "SEQUENCER_MEMORY")]
    memory: bool,
    /// A shared store instead of the embedded one: `postgres://user@host:port/db`. Several
    /// nodes on the same database serve the same rooms.
    #[arg(long, env = "SEQUENCER_STORE", conflicts_with = "memory")]
    store: Option<String>,
    /// Redis bus between nodes sharing a `--store`: `redis://host:port`. Optional: without it,
    /// nodes see each other's ops by polling the store.
    #[arg(long, env = "SEQUENCER_BUS", requires = "store")]
    bus: Option<String>,
    /// Prefix of the bus's channel names (clusters sharing one Redis use different ones).
    #[arg(long, env = "SEQUENCER_BUS_PREFIX", default_value = "sequencer:")]
    bus_prefix: String,
    /// With `--store`, how often (ms) a room with connections polls the store for other
    /// nodes' ops (the safety net under the bus).
    #[arg(long, env = "SEQUENCER_CLUSTER_POLL", default_value_t = 200)]
    cluster_poll: u64,
    /// With `--bus`, how long (ms) a connection's presence and soft locks stay in other nodes'
    /// view unless its node refreshes them (every third of it): a node that dies drops out of
    /// everyone's view within this.
    #[arg(long, env = "SEQUENCER_PRESENCE_TTL", default_value_t = 15_000)]
    presence_ttl: u64,
    /// HS256 secret of all tokens. Without one, a random secret is made and printed together
    /// with a demo room token and socket URL.
    #[arg(long, env = "SEQUENCER_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Runtime worker threads (default: one per core).
    #[arg(long, env = "SEQUENCER_THREADS")]
    threads: Option<usize>,
    /// Messages per second per connection (burst the same); 0 turns the limit off.
    #[arg(long, env = "SEQUENCER_RATE_LIMIT", default_value_t = 100)]
    rate_limit: u32,
    /// Largest text frame taken, in bytes (larger: `too_large`; over 4x: close 1009).
    #[arg(long, env = "SEQUENCER_MAX_FRAME", default_value_t = 256 * 1024)]
    max_frame: usize,
    /// Most ops in one `operation` batch.
    #[arg(long, env = "SEQUENCER_MAX_BATCH", default_value_t = 1000)]
    max_batch: usize,
    /// Deepest nesting of a JSON value in an op and of every stored property value (at most 64).
    #[arg(long, env = "SEQUENCER_MAX_DEPTH", default_value_t = 32)]
    max_depth: usize,
    /// Most keys in an update's `path` (at most 64).
    #[arg(long, env = "SEQUENCER_MAX_PATH", default_value_t = 32)]
    max_path: usize,
    /// Longest `opId` in characters.
    #[arg(long, env = "SEQUENCER_MAX_OP_ID", default_value_t = 128)]
    max_op_id: usize,
    /// Most ids in a cursor's `selection`.
    #[arg(long, env = "SEQUENCER_MAX_SELECTION", default_value_t = 256)]
    max_selection: usize,
    /// A room's document cap in bytes of JSON (an op that would pass it: `too_large`).
    #[arg(long, env = "SEQUENCER_MAX_DOC_BYTES", default_value_t = 32 * 1024 * 1024)]
    max_doc_bytes: usize,
    /// Seconds without any frame from a client before it is closed (4000) and leaves.
    #[arg(long, env = "SEQUENCER_HEARTBEAT_TIMEOUT", default_value_t = 45.0)]
    heartbeat_timeout: f64,
    /// Cursor fan-out period in milliseconds (at most one cursor per connection per tick).
    #[arg(long, env = "SEQUENCER_CURSOR_TICK", default_value_t = 20)]
    cursor_tick: u64,
    /// Connections per room (more: close 4029).
    #[arg(long, env = "SEQUENCER_MAX_ROOM_CONNECTIONS", default_value_t = 256)]
    max_room_connections: usize,
    /// Connections in total (more: close 4029).
    #[arg(long, env = "SEQUENCER_MAX_CONNECTIONS", default_value_t = 20_000)]
    max_connections: usize,
    /// Connections of one account in one room (more: close 4029).
    #[arg(long, env = "SEQUENCER_MAX_ACCOUNT_CONNECTIONS", default_value_t = 8)]
    max_account_connections: usize,
    /// Rooms loaded at once (a new room past it: HTTP 503, close 4029).
    #[arg(long, env = "SEQUENCER_MAX_ROOMS", default_value_t = 10_000)]
    max_rooms: usize,
    /// TCP connections not yet an authenticated socket (HTTP requests, idle keep-alives,
    /// upgrades in progress); further connections wait in the kernel's backlog.
    #[arg(long, env = "SEQUENCER_MAX_PENDING", default_value_t = 1024)]
    max_pending: usize,
    /// Seconds an HTTP request may take to send its headers; also the idle keep-alive timeout.
    #[arg(long, env = "SEQUENCER_HEADER_TIMEOUT", default_value_t = 10.0)]
    header_timeout: f64,
    /// Largest reply built at once in bytes (`GET …/ops` pages, `since` catch-ups).
    #[arg(long, env = "SEQUENCER_MAX_REPLY_BYTES", default_value_t = 8 * 1024 * 1024)]
    max_reply_bytes: usize,
    /// The host[:port] clients should connect to, returned by `join` (default: the request's
    /// valid `Host` header, else the listen address).
    #[arg(long, env = "SEQUENCER_PUBLIC_HOST")]
    public_host: Option<String>,
    /// The built studio page to serve at `/` (`scripts/build-web.sh` writes `web/dist`).
    /// Default: this repository's `web/dist` (or `./web/dist`) when it exists.
    #[arg(long, env = "SEQUENCER_WEB_DIR")]
    web_dir: Option<PathBuf>,
    /// Frames queued for a connection that does not read before it is closed (4008).
    #[arg(long, env = "SEQUENCER_OUTBOX", default_value_t = 1024)]
    outbox: usize,
    /// Versions of history kept in memory per room.
    #[arg(long, env = "SEQUENCER_HISTORY_WINDOW", default_value_t = 1000)]
    history_window: usize,
    /// Bytes of memory the history window may keep alive per room beyond the document (an
    /// estimate: the entities and lists each op copied, the values it carries); older versions
    /// are then read from the store.
    #[arg(long, env = "SEQUENCER_MAX_HISTORY_BYTES", default_value_t = 1792 * 1024)]
    max_history_bytes: usize,
    /// How many versions back a stale op may be rebased (older: `version_too_old`).
    #[arg(long, env = "SEQUENCER_MAX_REBASE", default_value_t = 100_000)]
    max_rebase: u64,
    /// Most ops sent in a `since` catch-up; further back gets the full state.
    #[arg(long, env = "SEQUENCER_MAX_CATCHUP", default_value_t = 10_000)]
    max_catchup: u64,
    /// Store a snapshot at least this many versions after the last; a large document waits
    /// longer, so that snapshots write at most about 128 bytes per version on average.
    #[arg(long, env = "SEQUENCER_SNAPSHOT_EVERY", default_value_t = 500)]
    snapshot_every: u64,
    /// Seconds a room without connections stays loaded.
    #[arg(long, env = "SEQUENCER_ROOM_IDLE", default_value_t = 60.0)]
    room_idle: f64,
    /// Lifetime of room tokens minted by `POST /api/projects/{id}/join`, in seconds.
    #[arg(long, env = "SEQUENCER_ROOM_TOKEN_TTL", default_value_t = 3600)]
    room_token_ttl: u64,
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// HS256 secret.
    #[arg(long, env = "SEQUENCER_SECRET", hide_env_values = true)]
    secret: String,
    /// The room (project id).
    #[arg(long)]
    room: String,
    /// The account id.
    #[arg(long)]
    sub: String,
    /// Display name.
    #[arg(long)]
    name: String,
    /// Avatar URL.
    #[arg(long)]
    avatar: Option<String>,
    /// `editor` or `viewer`.
    #[arg(long, default_value = "editor")]
    role: Role,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

/// Shorter secrets get a warning at start: HS256 wants a key at least as long as its 32-byte hash.
const MIN_SECRET_BYTES: usize = 32;

fn secs(v: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).with_context(|| format!("--{flag} must be a non-negative number of seconds"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(t)) => {
            let now = auth::now_secs();
            let claims =
                Claims::user(&t.sub, &t.name, t.role, now, t.ttl)?.with_avatar(t.avatar).into_room(&t.room, now, t.ttl);
            println!("{}", auth::sign(&t.secret, &claims)?);
            Ok(())
        }
        Some(Command::Serve(s)) => serve(*s),
        None => serve(cli.serve),
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sequencer=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let (secret, generated) = match a.secret.clone() {
        Some(s) if !s.is_empty() => (s, false),
        _ => (format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()), true),
    };
    if secret.len() < MIN_SECRET_BYTES {
        tracing::warn!(
            bytes = secret.len(),
            "the secret is shorter than {MIN_SECRET_BYTES} bytes: anyone holding one token can try to guess it \
             offline and then mint any token; use at least {MIN_SECRET_BYTES} random bytes"
        );
    }
    let storage = match (&a.store, a.memory) {
        (Some(url), _) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Storage::Postgres(url.clone())
        }
        (Some(url), _) => anyhow::bail!("--store {url}: only postgres:// URLs are supported"),
        (None, true) => Storage::Memory,
        (None, false) => Storage::Sqlite(a.data_dir.clone()),
    };
    use ot_core::protocol::{HARD_MAX_DEPTH, HARD_MAX_PATH};
    anyhow::ensure!(a.max_depth <= HARD_MAX_DEPTH, "--max-depth is at most {HARD_MAX_DEPTH}");
    anyhow::ensure!(a.max_path <= HARD_MAX_PATH, "--max-path is at most {HARD_MAX_PATH}");
    let config = Config {
        listen: a.listen,
        secret: secret.clone(),
        storage,
        rate_limit: a.rate_limit,
        max_frame: a.max_frame,
        max_batch: a.max_batch,
        max_depth: a.max_depth,
        max_path: a.max_path,
        max_op_id: a.max_op_id,
        max_selection: a.max_selection,
        max_doc_bytes: a.max_doc_bytes,
        max_room_connections: a.max_room_connections,
        max_connections: a.max_connections,
        max_account_connections: a.max_account_connections,
        max_rooms: a.max_rooms,
        max_pending: a.max_pending,
        header_timeout: secs(a.header_timeout, "header-timeout")?,
        max_reply_bytes: a.max_reply_bytes,
        public_host: a.public_host.clone(),
        web_dir: web_dir(a.web_dir.clone()),
        outbox_capacity: a.outbox,
        heartbeat_timeout: secs(a.heartbeat_timeout, "heartbeat-timeout")?,
        cursor_tick: Duration::from_millis(a.cursor_tick),
        history_window: a.history_window,
        max_history_bytes: a.max_history_bytes,
        max_rebase: a.max_rebase,
        max_catchup: a.max_catchup,
        snapshot_every: a.snapshot_every,
        room_idle: secs(a.room_idle, "room-idle")?,
        room_token_ttl: a.room_token_ttl,
        bus: a.bus.clone().map(|url| sequencer::bus::BusConfig { url, prefix: a.bus_prefix.clone() }),
        cluster_poll: Duration::from_millis(a.cluster_poll),
        presence_ttl: Duration::from_millis(a.presence_ttl.max(3)),
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let store = match &config.storage {
            Storage::Memory => "memory (nothing on disk)".to_string(),
            Storage::Sqlite(d) => format!("sqlite in {}", d.display()),
            Storage::Postgres(_) => "postgres".to_string(),
        };
        if generated {
            let token = auth::room_token(&secret, "demo", "demo-user", "Demo User", Role::Editor, 24 * 3600)?;
            println!("no --secret or SEQUENCER_SECRET given; generated secret: {secret}");
            println!("demo room token (room `demo`, 24 h): {token}");
            println!("socket URL: ws://{addr}/parties/main/demo?token={token}");
            if config.web_dir.is_some() {
                println!(
                    "studio page (open it in two windows to edit together): http://{addr}/?room=demo&token={token}"
                );
            }
        }
        match &config.web_dir {
            Some(d) => println!("studio page served from {}", d.display()),
            None => println!("no studio page built (scripts/build-web.sh builds it); GET / says so"),
        }
        println!("store: {store}");
        println!("listening on {addr}");
        sequencer::run(listener, config, shutdown_signal()).await
    })
}

/// The page directory: the flag's, else this repository's `web/dist`, else `./web/dist`, when
/// it holds an `index.html`.
fn web_dir(flag: Option<PathBuf>) -> Option<PathBuf> {
    if flag.is_some() {
        return flag;
    }
    let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../web/dist"));
    [repo, PathBuf::from("web/dist")].into_iter().find(|d| d.join("index.html").is_file())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server started with no flags runs with the library's defaults, which the docs and the
    /// README describe.
    #[test]
    fn the_flags_default_to_the_library_defaults() {
        let a = match Cli::try_parse_from(["sequencer"]) {
            Ok(cli) => cli.serve,
            Err(e) => panic!("no flags parse: {e}"),
        };
        let c = Config::memory("s");
        let flags = [
            a.rate_limit as u64,
            a.max_frame as u64,
            a.max_batch as u64,
            a.max_room_connections as u64,
            a.max_connections as u64,
            a.max_account_connections as u64,
            a.max_rooms as u64,
            a.max_pending as u64,
            a.max_reply_bytes as u64,
            a.outbox as u64,
            a.history_window as u64,
            a.max_history_bytes as u64,
            a.max_rebase,
            a.max_catchup,
            a.snapshot_every,
            a.max_doc_bytes as u64,
        ];
        let library = [
            c.rate_limit as u64,
            c.max_frame as u64,
            c.max_batch as u64,
            c.max_room_connections as u64,
            c.max_connections as u64,
            c.max_account_connections as u64,
            c.max_rooms as u64,
            c.max_pending as u64,
            c.max_reply_bytes as u64,
            c.outbox_capacity as u64,
            c.history_window as u64,
            c.max_history_bytes as u64,
            c.max_rebase,
            c.max_catchup,
            c.snapshot_every,
            c.max_doc_bytes as u64,
        ];
        assert_eq!(flags, library);
    }
}
