//! Two native peers through a real signaling server on loopback.

use peer::{ChannelOptions, Event, Payload, Peer, PeerConfig};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

async fn start_server() -> (String, tokio::sync::oneshot::Sender<()>) {
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

fn config(url: &str, room: &str) -> PeerConfig {
    let mut cfg = PeerConfig::new(url, room);
    cfg.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    cfg.channels = vec![ChannelOptions::reliable("chat"), ChannelOptions::unreliable("state")];
    cfg
}

/// Waits for the first event `pick` accepts, failing with the events seen meanwhile.
async fn wait_for<T>(events: &mut mpsc::Receiver<Event>, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
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

async fn both_open(
    a_ev: &mut mpsc::Receiver<Event>,
    b_ev: &mut mpsc::Receiver<Event>,
    label: &str,
) {
    for ev in [a_ev, b_ev] {
        wait_for(ev, &format!("{label} open"), |e| match e {
            Event::ChannelOpen { label: l, .. } if l == label => Some(()),
            _ => None,
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_to_native_reliable_in_order_both_ways() {
    let (url, _stop) = start_server().await;
    let (a, mut a_ev) = Peer::connect(config(&url, "n2n")).await.unwrap();
    let started = std::time::Instant::now();
    let (b, mut b_ev) = Peer::connect(config(&url, "n2n")).await.unwrap();
    both_open(&mut a_ev, &mut b_ev, "chat").await;
    eprintln!("join → chat open: {:?}", started.elapsed());
    const N: usize = 1000;
    let (a_id, b_id) = (a.id().to_owned(), b.id().to_owned());
    let send_a = async {
        for i in 0..N {
            a.send(&b_id, "chat", Payload::Text(format!("a{i}"))).await.unwrap();
        }
    };
    let send_b = async {
        for i in 0..N {
            b.send(&a_id, "chat", Payload::Binary(format!("b{i}").into_bytes().into())).await.unwrap();
        }
    };
    tokio::join!(send_a, send_b);
    for i in 0..N {
        let got = wait_for(&mut b_ev, "a's message", |e| match e {
            Event::Message { label, payload, .. } if label == "chat" => Some(payload.clone()),
            _ => None,
        })
        .await;
        assert_eq!(got, Payload::Text(format!("a{i}")));
    }
    for i in 0..N {
        let got = wait_for(&mut a_ev, "b's message", |e| match e {
            Event::Message { label, payload, .. } if label == "chat" => Some(payload.clone()),
            _ => None,
        })
        .await;
        assert_eq!(got, Payload::Binary(format!("b{i}").into_bytes().into()));
    }
    a.close().await;
    let left = wait_for(&mut b_ev, "a left", |e| match e {
        Event::PeerLeft { peer, .. } => Some(peer.clone()),
        _ => None,
    })
    .await;
    assert_eq!(left, a_id);
    assert!(b.open_channels("chat").is_empty(), "b released its channels to a");
    b.close().await;
}
