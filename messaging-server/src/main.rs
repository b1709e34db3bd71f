/// mimalloc instead of glibc's malloc: a delivery allocates and frees small
/// buffers on every runtime thread, and glibc's arenas spent ~15% of a
/// server's CPU on it under fan-out (docs/benchmarks.md, "Fan-out vs NATS").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::main::<messaging_server::Config, _, _>("messaging-server", messaging_server::run).await
}
