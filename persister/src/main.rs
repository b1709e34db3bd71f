#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::main::<persister::Config, _, _>("persister", persister::run).await
}
