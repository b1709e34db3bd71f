//! The messaging server (docs/protocol.md, docs/architecture.md): WebSocket
//! sessions for the users of the partitions etcd assigns to it.

mod admin;
pub mod anycast;
pub mod auth;
mod broker_watch;
mod channel_stats;
mod channels;
mod coalesce;
mod config;
mod consumer;
mod delivery;
mod demo;
mod ending;
mod events;
mod fds;
mod frame;
mod freeze;
mod history;
mod http;
mod hub;
mod kafka;
mod log_reader;
mod members;
mod membership;
mod metrics;
mod persisted;
mod presence;
mod producer;
mod publish;
mod reaper;
mod resume;
mod send;
mod session;
mod state;

pub use config::Config;
pub use metrics::{Stage, StartStep};

use anyhow::Context;
use prometheus_client::registry::Registry;
use protocol::{EtcdLayout, ServerInfo};
use service::etcd::{connect_retrying, spawn_assignment_watch};
pub use service::supervise::Faults;
use service::supervise::Supervisor;
use service::Valid;
use state::AppState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Longest a request waits for PostgreSQL before it is answered
/// `unavailable` (group sends past the member cache, history, resume).
const DB_WAIT: Duration = Duration::from_secs(2);

pub async fn run(config: Valid<Config>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = service::bind(config.listen).await?;
    serve(config, listener, shutdown).await
}

/// Serves on `listener` until `shutdown`, then drains (docs/architecture.md, "Drain").
pub async fn serve(
    config: Valid<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(config, listener, shutdown, Faults::default()).await
}

/// `serve` with a fault hook for tests (see [`Faults`]). If any long-lived
/// task ends before `shutdown`, the server drains (readiness false, sessions
/// closed with 4006) and returns the error, so the process exits non-zero.
pub async fn serve_with(
    config: Valid<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
    faults: Faults,
) -> anyhow::Result<()> {
    let info = advertise(&config, &listener)?;
    info!(server = %info.server_id, ws_url = %info.ws_url, "messaging server starting");
    // A key that does not load fails before anything is connected.
    let auth =
        auth::Authenticator::from_args(&config.jwt).context("failed to load the JWT keys")?;
    for line in auth.summary() {
        info!(accepts = %line, "token verification");
    }
    let store = store::Store::connect_lazy(&config.database.url, config.db_connections, DB_WAIT)
        .context("invalid database url")?;
    if !store.migrate(&shutdown).await {
        return Ok(());
    }
    let live = |role| {
        kafka::live_consumer(
            role,
            &config.kafka.brokers,
            &info.server_id,
            config.fetch_wait,
        )
    };
    let consumer = live("server").context("failed to create the Kafka consumer")?;
    let channel_consumer =
        live("channels").context("failed to create the Kafka channel consumer")?;
    let events_consumer = live("events").context("failed to create the Kafka events consumer")?;
    let broker_probe: rdkafka::consumer::BaseConsumer =
        kafka::consumer_config(&config.kafka.brokers, &format!("{}-probe", info.server_id))
            .create()
            .context("failed to create the broker probe")?;
    let Some(etcd) = connect_retrying(&config.etcd.endpoints, &shutdown).await else {
        return Ok(());
    };
    let stop = CancellationToken::new();
    let layout = EtcdLayout::new(&config.etcd.prefix);
    let (assignment_rx, watch) = spawn_assignment_watch(etcd.clone(), layout, stop.clone());
    let state = build_state(
        config.into_inner(),
        info,
        auth,
        store,
        assignment_rx,
        stop.clone(),
    )?;
    let mut tasks = Supervisor::new(faults);
    tasks.spawn("assignment-watch", async move {
        match watch.await {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => {}
        }
    });
    spawn_tasks(&mut tasks, &state, consumer, listener);
    tasks.spawn(
        "broker-watch",
        broker_watch::run(
            broker_watch::or_traffic(
                broker_watch::metadata_probe(Arc::new(broker_probe), state.topic().to_owned()),
                broker_watch::answers(&state.metrics),
            ),
            state.config.lease_ttl,
            state.broker_reachable.clone(),
            state.metrics.broker_reachable.clone(),
            stop.clone(),
        ),
    );
    let channels = consumer::LogConsumer {
        consumer: Arc::new(channel_consumer),
        topic: state.channel_topic.clone(),
        sink: Arc::new(channels::consumer::ChannelSink {
            channels: state.channels.clone(),
            hub: state.hub.clone(),
            anycast: state.anycast.clone(),
            presence: state.presence.clone(),
        }),
        metrics: state.metrics.clone(),
        assignment: state.assignment_rx.clone(),
        lag: None,
    };
    tasks.spawn(
        "channel-consumer",
        channels::consumer::run(channels, stop.clone()),
    );
    let presence = consumer::LogConsumer {
        consumer: Arc::new(events_consumer),
        topic: protocol::events_topic(state.topic()),
        sink: Arc::new(presence::consumer::PresenceSink {
            presence: state.presence.clone(),
            hub: state.hub.clone(),
            channels: state.channels.clone(),
            anycast: state.anycast.clone(),
        }),
        metrics: state.metrics.clone(),
        assignment: state.assignment_rx.clone(),
        lag: None,
    };
    let deliver = anycast::Deliver {
        presence: state.presence.clone(),
        channels: state.channels.clone(),
        hub: state.hub.clone(),
        metrics: state.metrics.clone(),
    };
    tasks.spawn("anycast", state.anycast.clone().run(deliver, stop.clone()));
    let store = state.members.store().clone();
    tasks.spawn(
        "presence-consumer",
        presence::consumer::run(presence, store, stop.clone()),
    );
    let failed = tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        exit = tasks.first_exit() => Some(exit),
    };
    if let Some(exit) = &failed {
        error!(server = %state.info.server_id, task = exit.task, how = %exit.how, "a long-lived task ended; draining and exiting");
    }
    drain(&state).await;
    stop.cancel();
    tasks.join_all(Duration::from_secs(5)).await;
    info!(server = %state.info.server_id, "messaging server stopped");
    match failed {
        Some(exit) => Err(anyhow::Error::new(exit).context("messaging server failed")),
        None => Ok(()),
    }
}

fn spawn_tasks(
    tasks: &mut Supervisor,
    state: &Arc<AppState>,
    consumer: kafka::LiveStream,
    listener: TcpListener,
) {
    let stop = state.stop.clone();
    let (own_tx, own_rx) = tokio::sync::mpsc::channel(256);
    let live = consumer::LogConsumer {
        consumer: Arc::new(consumer),
        topic: state.topic().to_owned(),
        sink: state.hub.clone(),
        metrics: state.metrics.clone(),
        assignment: state.assignment_rx.clone(),
        lag: Some(state.metrics.lag.clone()),
    };
    tasks.spawn("kafka-consumer", live.run(own_rx, stop.clone()));
    tasks.spawn(
        "producer-supervisor",
        state.producer.clone().supervise(stop.clone()),
    );
    tasks.spawn(
        "ownership",
        membership::run_ownership(state.clone(), own_tx, stop.clone()),
    );
    tasks.spawn("reaper", reaper::run(state.clone(), stop.clone()));
    let positions = (state.clone(), stop.clone());
    tasks.spawn("persister-positions", async move {
        let (state, stop) = positions;
        let partitions = || state.assignment().map(|a| a.partitions);
        state.persisted.keep_fresh(partitions, stop).await;
    });
    tasks.spawn(
        "jwks-refresh",
        state.auth.clone().refresh_keys(stop.clone()),
    );
    let woken = state.clone();
    tasks.spawn("freeze-watch", async move {
        let close_all = |_| {
            let woke = || ending::Ending::leaving(session::WOKE);
            woken.hub.close_all(|_, _| woke());
        };
        woken
            .freeze
            .clone()
            .run(close_all, woken.stop.clone())
            .await;
    });
    let (registrar, until) = (state.clone(), stop.clone());
    let registration = service::own_thread::spawn("registration", move || async move {
        // A client of its own: its connection runs on this thread's runtime.
        let endpoints = &registrar.config.etcd.endpoints;
        let etcd = connect_retrying(endpoints, &until).await?;
        membership::run_registration(registrar, etcd, until).await
    });
    tasks.spawn("registration", async move {
        let _ = registration.await;
    });
    let server = axum::serve(listener, http::router(state.clone()))
        .with_graceful_shutdown(async move { stop.cancelled().await });
    tasks.spawn("http", async move {
        if let Err(e) = server.await {
            error!(error = %e, "http server failed");
        }
    });
}

/// This server's registration: its id and the URLs clients reach it by
/// (written to the port file when one is configured).
fn advertise(config: &Config, listener: &TcpListener) -> anyhow::Result<ServerInfo> {
    let bound: SocketAddr = listener.local_addr()?;
    if let Some(path) = &config.port_file {
        std::fs::write(path, bound.port().to_string())
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    let (ws_url, http_url) = config.urls(bound);
    Ok(ServerInfo {
        server_id: config.server_id(),
        ws_url,
        http_url,
        weight: config.weight,
        draining: false,
        broker_unreachable: false,
        incarnation: None,
    })
}

fn build_state(
    config: Config,
    info: ServerInfo,
    auth: auth::Authenticator,
    store: store::Store,
    assignment_rx: service::etcd::AssignmentRx,
    stop: CancellationToken,
) -> anyhow::Result<Arc<AppState>> {
    // The persister's position has a connection of its own: every resume
    // plans with it, and behind a herd's replays it came too late (persisted.rs).
    let positions = store::Store::connect_lazy(&config.database.url, 1, DB_WAIT)
        .context("invalid database url")?;
    let metrics = metrics::Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    auth.register(&mut registry);
    let settings = producer::ProducerSettings {
        brokers: config.kafka.brokers.clone(),
        extra: config.kafka_producer_config.clone(),
        max_in_flight: config.max_produce_in_flight,
    };
    let producer = producer::Producers::new(settings, metrics.clone())
        .context("failed to create the Kafka producer")?;
    let log = kafka::LogReader::new(
        &config.kafka.brokers,
        &config.kafka.topic,
        metrics.range_reads.clone(),
    )
    .context("failed to create the Kafka log reader")?;
    let producer = Arc::new(producer);
    let incarnation = tokio::sync::watch::channel(None).0;
    let events = events::EventLog {
        producer: producer.clone(),
        topic: protocol::events_topic(&config.kafka.topic),
        server: info.server_id.clone(),
        incarnation: incarnation.subscribe(),
        metrics: metrics.clone(),
        writing: tokio_util::task::TaskTracker::new(),
    };
    let limit = freeze::FreezeWatch::limit_for(config.lease_ttl);
    let freeze = Arc::new(freeze::FreezeWatch::new(limit));
    Ok(Arc::new(AppState {
        hub: Arc::new(hub::Hub::new(config.queue_len, config.max_devices_per_user)),
        channels: Arc::new(channels::ChannelHub::new(config.queue_len)),
        channel_topic: protocol::channel_topic(&config.kafka.topic),
        presence: Arc::new(presence::Presence::new(presence::Rules {
            patterns: config.presence_channels.clone(),
            join_leave_limit: config.join_leave_limit,
        })),
        anycast: Arc::new(anycast::Anycast::new(anycast::table::Settings {
            handle_timeout: config.anycast_handle_timeout,
            max_pending: config.anycast_max_pending,
            max_wait: config.anycast_max_wait,
        })),
        persisted: persisted::PersistedOffsets::new(positions, &config.kafka.topic),
        replay_reads: tokio::sync::Semaphore::new(replay_reads(config.db_connections)),
        members: members::MemberCache::new(store, config.member_cache_entries),
        api_keys: auth::ApiKeys::new(config.api_keys()),
        admin_keys: auth::ApiKeys::new(
            config
                .admin_key
                .iter()
                .map(|k| k.expose().trim())
                .filter(|k| !k.is_empty()),
        ),
        sockets: Arc::new(tokio::sync::Semaphore::new(connection_limit(
            &config, &metrics,
        ))),
        config,
        info,
        auth,
        log,
        producer,
        events,
        metrics,
        registry,
        assignment_rx,
        registered: tokio::sync::watch::channel(false).0,
        incarnation,
        draining: tokio::sync::watch::channel(false).0,
        broker_reachable: tokio::sync::watch::channel(true).0,
        freeze,
        stop,
    }))
}

/// Replay reads of PostgreSQL at once out of `connections` (`AppState::replay_reads`).
fn replay_reads(connections: u32) -> usize {
    usize::try_from(connections / 2).map_or(1, |n| n.max(1))
}

/// The configured connection limit, or fewer if the process may not open
/// that many descriptors (the soft limit is raised to the hard one first).
fn connection_limit(config: &Config, metrics: &metrics::Metrics) -> usize {
    let fd_limit = fds::raise_limit();
    let limit = fds::connection_limit(config.max_connections, fd_limit);
    if limit < config.max_connections {
        warn!(
            configured = config.max_connections,
            limit,
            open_files = fd_limit,
            "the open-file limit caps the connection limit; raise it (ulimit -n, LimitNOFILE, the container's nofile) to hold more"
        );
    }
    metrics
        .connection_limit
        .set(i64::try_from(limit).unwrap_or(i64::MAX));
    limit
}

/// Graceful hand-off, then exit: flush what we produced.
async fn drain(state: &AppState) {
    hand_off(state).await;
    if !state.events.written(Duration::from_secs(5)).await {
        warn!("connection events still being written after 5 s");
    }
    if let Err(e) = state.producer.flush(Duration::from_secs(5)).await {
        warn!(error = %e, "producer flush incomplete");
    }
}

/// Mark draining, let the coordinator move our partitions, redirect every
/// client (on shutdown, and for an operator's `/admin/drain`).
async fn hand_off(state: &AppState) {
    info!(server = %state.info.server_id, "draining");
    state.draining.send_replace(true);
    let handed_off = async {
        loop {
            let changes = state.changes();
            let mine = state
                .assignment()
                .map_or(0, |a| a.partitions_of(&state.info.server_id).len());
            if mine == 0 || !*state.registered.borrow() {
                return;
            }
            changes.any().await;
        }
    };
    let _ = tokio::time::timeout(state.config.drain_timeout, handed_off).await;
    membership::close_all_for_drain(state);
    let gone = async {
        loop {
            let changed = state.hub.changed();
            if state.hub.connections() == 0 {
                return;
            }
            changed.await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), gone).await;
}
