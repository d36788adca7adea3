//! Shared by the `peer` integration tests: a real signaling server on an ephemeral loopback port, and a bounded
//! wait for one event.

#![allow(dead_code)] // each test file uses a different subset

use peer::Event;
use std::time::Duration;
use tokio::sync::mpsc;

/// Starts a real signaling server on 127.0.0.1:0; it stops when the returned sender is dropped.
pub async fn start_server() -> (String, tokio::sync::oneshot::Sender<()>) {
    let server = signaling::Server::bind(signaling::Config::with_listen("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (url, stop)
}

/// Waits (at most `limit`) for the first event `pick` accepts, failing with the events seen meanwhile.
pub async fn wait_for<T>(
    events: &mut mpsc::Receiver<Event>,
    what: &str,
    limit: Duration,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => {
                if let Some(v) = pick(&ev) {
                    return v;
                }
                seen.push(ev);
            }
            Ok(None) => panic!("event stream ended while waiting for {what}; saw {seen:?}"),
            Err(_) => panic!("timed out waiting for {what}; saw {seen:?}"),
        }
    }
}
