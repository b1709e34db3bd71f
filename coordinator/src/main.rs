use clap::Parser;
use coordinator::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    if let Err(reason) = config.validate() {
        eprintln!("coordinator: invalid configuration: {reason}");
        return std::process::ExitCode::from(2);
    }
    service::init_tracing();
    tracing::info!(?config, "effective configuration");
    let shutdown = CancellationToken::new();
    service::cancel_on_signal(shutdown.clone());
    match coordinator::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("coordinator failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
