#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::main::<coordinator::Config, _, _>("coordinator", coordinator::run).await
}
