//! The web demo when WebSockets are blocked: the real `signaling` binary offers only some transports (as
//! behind a proxy that blocks the others, which answer 404), two separate headless Chromium processes fall
//! back by themselves, with no delay, open a direct data channel through it and chat both ways. Also short
//! polling, which is used only when the page asks for it (`?transport=shortpoll`).
//!
//! Run inside a loopback-only network namespace (see `docs/testing.md`).

use std::time::Instant;

use anyhow::{Result, ensure};
use e2e::{
    Browser, DEMO_STATE, SignalingServer, demo_chat, demo_join, demo_wait_ready,
    keep_failure_artifacts, require_loopback_only_network,
};

/// (server `--transports`, page query, the transport both pages must report)
const CASES: &[(&str, &str, &str)] = &[
    ("sse,longpoll", "", "sse"),
    ("longpoll", "", "longpoll"),
    ("ws,sse,longpoll", "?transport=shortpoll", "shortpoll"),
];

#[tokio::test]
async fn the_demo_falls_back_to_sse_and_polling_and_chats() -> Result<()> {
    require_loopback_only_network()?;
    let a = Browser::launch("fallback-a").await?;
    let b = Browser::launch("fallback-b").await?;
    for &(transports, query, expected) in CASES {
        let server = SignalingServer::start(&["--transports", transports])?;
        let url = format!(
            "{}/{query}#room=e2e-{expected}-{}",
            server.url(),
            std::process::id()
        );
        let outcome = async {
            let started = Instant::now();
            let a_id = demo_join(&a, &url).await?;
            let a_join_ms = started.elapsed().as_millis();
            let b_started = Instant::now();
            let b_id = demo_join(&b, &url).await?;
            let b_join_ms = b_started.elapsed().as_millis();
            demo_wait_ready(&a, &b_id).await?;
            demo_wait_ready(&b, &a_id).await?;
            let ready_ms = b_started.elapsed().as_millis();
            for browser in [&a, &b] {
                let transport = browser.eval(&format!("({DEMO_STATE})?.transport")).await?;
                ensure!(transport == expected, "{} reports transport {transport}, expected {expected}", browser.name());
            }
            demo_chat(&a, &a_id, &b, &format!("{expected}: a → b, héllo ✓")).await?;
            demo_chat(&b, &b_id, &a, &format!("{expected}: b → a")).await?;
            println!(
                "--transports {transports} {query}: pages on {expected}; page load → welcome {a_join_ms} ms (a), \
                 {b_join_ms} ms (b); b's load → channel ready both ways {ready_ms} ms"
            );
            Ok(())
        }
        .await;
        keep_failure_artifacts(outcome, &[&a, &b], &format!("fallback-{expected}")).await?;
        let shot = a.screenshot(&format!("fallback-{expected}.png")).await?;
        println!("screenshot: {}", shot.display());
    }
    a.close().await?;
    b.close().await?;
    Ok(())
}
