use clap::Parser;
use messaging_server::Config;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: a delivery allocates and frees small
/// buffers on every runtime thread, and glibc's arenas spent ~15% of a
/// server's CPU on it under fan-out (docs/benchmarks.md, "Fan-out vs NATS").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    if let Err(reason) = config.validate() {
        eprintln!("messaging-server: invalid configuration: {reason}");
        return std::process::ExitCode::from(2);
    }
    service::init_tracing();
    tracing::info!(?config, "effective configuration");
    let shutdown = CancellationToken::new();
    service::cancel_on_signal(shutdown.clone());
    match messaging_server::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("messaging server failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
