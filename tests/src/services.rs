//! Our services started in-process on port 0, each on its own runtime thread
//! so a test can stop one gracefully or kill it: dropping the runtime ends
//! every task at once, with no drain, no lease revoke — like `kill -9`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub struct ServiceHandle {
    pub name: String,
    pub addr: SocketAddr,
    pub cancel: CancellationToken,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    exit: Arc<Mutex<Option<Result<(), String>>>>,
}

impl ServiceHandle {
    pub fn start<F, Fut>(name: &str, body: F) -> anyhow::Result<Self>
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let (token, label) = (cancel.clone(), name.to_owned());
        let exit = Arc::new(Mutex::new(None));
        let exited = exit.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return drop(addr_tx.send(Err(anyhow::Error::from(e)))),
                };
                rt.block_on(async move {
                    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                    let listener = match service::bind(any).await {
                        Ok(l) => l,
                        Err(e) => return drop(addr_tx.send(Err(e.into()))),
                    };
                    let _ = addr_tx.send(listener.local_addr().map_err(Into::into));
                    tokio::select! {
                        r = body(listener, token) => {
                            if let Err(e) = &r { eprintln!("[{label}] exited with error: {e:#}") }
                            let r = r.map_err(|e| format!("{e:#}"));
                            *exited.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                        }
                        _ = kill_rx => {}
                    }
                });
                rt.shutdown_background();
            })?;
        let addr = addr_rx.recv()??;
        Ok(Self {
            name: name.to_owned(),
            addr,
            cancel,
            kill: Some(kill_tx),
            thread: Some(thread),
            exit,
        })
    }

    /// How the service's `serve` returned, once it has (not after `kill`).
    pub fn exit(&self) -> Option<Result<(), String>> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (up to 40 s) until the service has stopped by itself with an
    /// error that mentions `needle`.
    pub async fn exits_with(&self, needle: &str) -> anyhow::Result<()> {
        crate::wait_until(
            "the service exits",
            std::time::Duration::from_secs(40),
            || async { self.exit().is_some() },
        )
        .await?;
        match self.exit() {
            Some(Err(e)) if e.contains(needle) => Ok(()),
            other => anyhow::bail!(
                "{} exited with {other:?}, want an error about {needle}",
                self.name
            ),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful: cancel and wait for the service to finish its shutdown.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Crash: every task is dropped where it stands.
    pub async fn kill(mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
    }
}
