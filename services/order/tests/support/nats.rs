//! A real NATS JetStream for the event tests: the shared throwaway server `make unit` starts
//! (`FERRY_TEST_NATS_URL`), with a prefix of each test's own so tests never see each other's
//! events, or a private nats-server process (`FERRY_TEST_NATS_SERVER`, the binary) that a
//! test can stop and start again on the same port and store. Tests that need either FAIL
//! when it is not set: there is no skipping a real broker.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use ferry_events::{EventSettings, Names};

use super::process::free_port;

const HOW: &str = "`make unit` sets it; by hand: export FERRY_TEST_NATS_URL=\"$(services/scripts/nats.sh up)\" \
                   FERRY_TEST_NATS_SERVER=\"$(services/scripts/nats.sh path)\"";

/// The shared test server's URL; panics when unset.
pub fn shared_url() -> String {
    std::env::var("FERRY_TEST_NATS_URL").unwrap_or_else(|_| panic!("FERRY_TEST_NATS_URL is not set; {HOW}"))
}

/// Streams and subjects no other test uses.
pub fn fresh_names() -> Names {
    Names::new(&format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])).unwrap()
}

/// Settings for `url` under fresh names, with a short poison bound (3 deliveries).
pub fn settings(url: &str) -> EventSettings {
    EventSettings { max_deliveries: 3, ..EventSettings::new(url, fresh_names()) }
}

/// A nats-server process of one test's own, with JetStream in a temporary directory.
pub struct PrivateNats {
    child: Option<Child>,
    pub addr: SocketAddr,
    store: tempfile::TempDir,
}

impl PrivateNats {
    fn binary() -> PathBuf {
        std::env::var_os("FERRY_TEST_NATS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("FERRY_TEST_NATS_SERVER is not set; {HOW}"))
    }

    /// Starts a server on a free loopback port.
    pub async fn start() -> Self {
        let mut nats = Self { child: None, addr: free_port(), store: tempfile::tempdir().unwrap() };
        nats.resume().await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Starts the server again (same port, same store), and waits until it accepts
    /// connections.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(Self::binary())
            .args(["--addr", "127.0.0.1", "--port", &self.addr.port().to_string(), "--jetstream"])
            .arg("--store_dir")
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let addr = self.addr;
        tokio::time::timeout(Duration::from_secs(20), async {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("nats-server did not listen within 20 s");
    }

    /// Kills the server (SIGKILL: an outage, not a goodbye).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every message in `stream`, in stream order.
pub async fn stream_messages(
    broker: &ferry_events::Broker,
    stream: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let mut stream = broker.jetstream().get_stream(stream).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// A message's header value.
pub fn header(m: &async_nats::jetstream::message::StreamMessage, name: &str) -> String {
    m.headers.get(name).map(|v| v.as_str().to_string()).unwrap_or_default()
}
