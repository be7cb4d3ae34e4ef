//! A 3-member etcd cluster on loopback for the bench, started from Debian's `etcd` binary and
//! stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jepsen_lite::cluster::wait_for;

/// A running 3-member etcd cluster on loopback, stopped on drop.
pub struct EtcdCluster {
    etcd: PathBuf,
    /// With `--tls`: the certificates (`tls::etcd_flags`).
    certs: Option<PathBuf>,
    dir: tempfile::TempDir,
    peers: Vec<String>,
    pub client_urls: Vec<String>,
    pub(crate) children: Vec<(String, Child)>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl EtcdCluster {
    /// Start `members` etcd members from the `etcd` binary and wait until they serve. The ports
    /// are found by binding port 0 and letting go, so another process (an outgoing connection of
    /// the other clusters) can take one before etcd binds it: then it starts again on new ports,
    /// at most three times.
    pub async fn start(
        etcd: &Path,
        members: usize,
        certs: Option<&Path>,
    ) -> anyhow::Result<EtcdCluster> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            match Self::start_once(etcd, members, certs).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) if attempt < ATTEMPTS => {
                    eprintln!("etcd did not start ({e:#}); starting it again on new ports");
                    attempt += 1;
                }
                Err(e) => {
                    return Err(e.context(format!("etcd did not start in {ATTEMPTS} attempts")))
                }
            }
        }
    }

    async fn start_once(
        etcd: &Path,
        members: usize,
        certs: Option<&Path>,
    ) -> anyhow::Result<EtcdCluster> {
        let dir = tempfile::tempdir()?;
        let scheme = if certs.is_some() { "https" } else { "http" };
        let mut peers = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..members {
            peers.push(format!("{scheme}://127.0.0.1:{}", free_port()?));
            clients.push(format!("{scheme}://127.0.0.1:{}", free_port()?));
        }
        if let Some(certs) = certs {
            let tls = crate::tls::etcd_tls(certs)?;
            for url in &clients {
                crate::tls::register_etcd(url, tls.clone());
            }
        }
        let mut cluster = EtcdCluster {
            etcd: etcd.to_path_buf(),
            certs: certs.map(Path::to_path_buf),
            dir,
            peers,
            client_urls: clients,
            children: Vec::new(),
        };
        for i in 0..members {
            let child = cluster.spawn(i)?;
            cluster.children.push((format!("e{}", i + 1), child));
        }
        for i in 0..members {
            if let Err(e) = cluster.wait_serving(i, "bench-health").await {
                // The member's log goes with its data dir when `cluster` drops: keep its end.
                let log =
                    std::fs::read_to_string(cluster.dir.path().join(format!("e{}.log", i + 1)))
                        .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(3)..];
                return Err(e.context(format!("member e{} log ends: {}", i + 1, tail.join(" | "))));
            }
        }
        Ok(cluster)
    }

    /// Start member `i` (again: an existing data dir makes etcd ignore the initial-cluster
    /// flags and rejoin).
    pub(crate) fn spawn(&self, i: usize) -> anyhow::Result<Child> {
        let name = format!("e{}", i + 1);
        let initial: Vec<String> = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, peer)| format!("e{}={peer}", i + 1))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))?;
        Command::new(&self.etcd)
            .arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&name))
            .arg("--listen-client-urls")
            .arg(&self.client_urls[i])
            .arg("--advertise-client-urls")
            .arg(&self.client_urls[i])
            .arg("--listen-peer-urls")
            .arg(&self.peers[i])
            .arg("--initial-advertise-peer-urls")
            .arg(&self.peers[i])
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-token")
            .arg("mirrorkv-bench")
            .arg("--initial-cluster-state")
            .arg("new")
            // Room for the 1M-key scale run (the default quota is 2 GiB).
            .arg("--quota-backend-bytes")
            .arg((8u64 << 30).to_string())
            .args(
                self.certs
                    .as_deref()
                    .map_or_else(Vec::new, |certs| crate::tls::etcd_flags(certs, i)),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", self.etcd.display()))
    }

    /// Wait until member `i` answers a linearizable range of `key`.
    pub(crate) async fn wait_serving(&self, i: usize, key: &str) -> anyhow::Result<()> {
        let url = self.client_urls[i].clone();
        wait_for(&format!("etcd at {url}"), Duration::from_secs(60), || {
            let url = url.clone();
            async move {
                let mut options = etcd_client::ConnectOptions::new()
                    .with_timeout(Duration::from_secs(2))
                    .with_connect_timeout(Duration::from_secs(1));
                if let Some(tls) = crate::tls::etcd(&url) {
                    options = options.with_tls(tls);
                }
                let mut client = etcd_client::Client::connect([url], Some(options))
                    .await
                    .ok()?;
                client.get(key, None).await.ok().map(|_| ())
            }
        })
        .await?;
        Ok(())
    }

    /// Index of the member that is leader now.
    pub(crate) async fn leader(&self) -> anyhow::Result<usize> {
        for (i, url) in self.client_urls.iter().enumerate() {
            let mut client = crate::conn::etcd_connect(url).await?;
            let status = client.status().await?;
            let is_leader = status
                .header()
                .is_some_and(|h| h.member_id() == status.leader());
            if is_leader {
                return Ok(i);
            }
        }
        anyhow::bail!("no etcd member says it is the leader")
    }

    pub(crate) fn pids(&self) -> Vec<(String, u32)> {
        self.children
            .iter()
            .map(|(name, child)| (format!("etcd {name}"), child.id()))
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `etcd` binary: `--etcd`, else `etcd` on the PATH.
pub fn find_etcd(given: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(path) = given {
        return Some(path);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    })
}
