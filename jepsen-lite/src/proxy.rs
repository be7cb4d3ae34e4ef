//! `Proxy`: a TCP proxy for one directed raft-net link of a test cluster, which a fault can cut
//! or slow (`Delay`).

use std::time::Duration;

/// A TCP proxy for one directed raft-net link. `cut` closes its connections and refuses new
/// ones until `restore`; `set_delay` holds every chunk it forwards for a latency plus jitter.
pub struct Proxy {
    pub addr: String,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    delay: std::sync::Arc<tokio::sync::watch::Sender<Delay>>,
    task: tokio::task::JoinHandle<()>,
}

/// Added latency of a link: each forwarded chunk waits `latency_ms` plus up to `jitter_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delay {
    pub latency_ms: u64,
    pub jitter_ms: u64,
}

/// Forward bytes from `from` to `to`, holding each chunk for the link's current delay.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: tokio::sync::watch::Receiver<Delay>,
    mut seed: u64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Delay {
            latency_ms,
            jitter_ms,
        } = *delay.borrow();
        if latency_ms + jitter_ms > 0 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let jitter = if jitter_ms > 0 {
                seed % (jitter_ms + 1)
            } else {
                0
            };
            tokio::time::sleep(Duration::from_millis(latency_ms + jitter)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    pub async fn start(target: String) -> std::io::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
        let (delay_tx, delay_rx) = tokio::sync::watch::channel(Delay::default());
        let task = tokio::spawn(async move {
            let mut connections = 0u64;
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if *cut_rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let mut cut = cut_rx.clone();
                let delay = delay_rx.clone();
                connections += 1;
                let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(connections);
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::select! {
                        _ = pump(in_read, out_write, delay.clone(), seed) => {}
                        _ = pump(out_read, in_write, delay, seed ^ 1) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Ok(Proxy {
            addr,
            cut: std::sync::Arc::new(cut_tx),
            delay: std::sync::Arc::new(delay_tx),
            task,
        })
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    pub fn set_delay(&self, delay: Delay) {
        self.delay.send_replace(delay);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
