//! `peer send` / `peer recv`: one file over the channel (docs/peer-cli.md, "File transfer").
//!
//! The sender sends a text header `{"t":"file","name","size","sha256"}`, then the content as one binary message
//! (the library chunks it), then waits for `{"t":"file-ack","sha256","ok"}` (plus `error` and `message` when
//! `ok` is false). `sha256` in the ack is the header's: it names the transfer being answered.

use crate::common::{self, Failure, Globals, short};
use bytes::Bytes;
use peer::{Event, Payload, Peer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Largest file: the library's largest message.
pub const MAX_FILE: u64 = peer::framing::DEFAULT_MAX_MESSAGE as u64;
/// Longest file name, in bytes (the usual file-system limit).
const MAX_NAME: usize = 255;
/// How long the ack may take to leave before we exit.
const ACK_FLUSH: Duration = Duration::from_secs(5);
/// After a failed content send, how long an ack that explains it may still arrive.
const ACK_GRACE: Duration = Duration::from_secs(2);
/// How often the sender checks that the receiver makes progress.
const PROGRESS_PROBE: Duration = Duration::from_millis(500);

/// A file header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

impl Header {
    pub fn to_json(&self) -> String {
        json!({"t": "file", "name": self.name, "size": self.size, "sha256": self.sha256}).to_string()
    }
}

/// A header that is not usable: answered with `ok:false`, `error: "bad-header"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadHeader {
    /// The header's `sha256` if it had a string one (the ack names the transfer with it), else "".
    pub sha256: String,
    pub message: String,
}

/// `None` if `text` is not a file header at all (not a JSON object with `"t":"file"`).
pub fn parse_header(text: &str) -> Option<Result<Header, BadHeader>> {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(text) else { return None };
    if m.get("t").and_then(Value::as_str) != Some("file") {
        return None;
    }
    let sha = m.get("sha256").and_then(Value::as_str).unwrap_or("").to_owned();
    let bad = |message: &str| Some(Err(BadHeader { sha256: sha.clone(), message: message.to_owned() }));
    let Some(name) = m.get("name").and_then(Value::as_str) else { return bad("header without a string `name`") };
    let Some(size) = m.get("size").and_then(Value::as_u64) else {
        return bad("header without an unsigned integer `size`");
    };
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return bad("header `sha256` is not 64 hex digits");
    }
    Some(Ok(Header { name: name.to_owned(), size, sha256: sha.to_ascii_lowercase() }))
}

/// A received ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub sha256: String,
    pub ok: bool,
    pub error: Option<String>,
    pub message: Option<String>,
}

pub fn ack_json(sha256: &str, refusal: Option<(&str, &str)>) -> String {
    match refusal {
        None => json!({"t": "file-ack", "sha256": sha256, "ok": true}),
        Some((code, message)) => {
            json!({"t": "file-ack", "sha256": sha256, "ok": false, "error": code, "message": message})
        }
    }
    .to_string()
}

/// `None` if `text` is not a `file-ack`.
pub fn parse_ack(text: &str) -> Option<Ack> {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(text) else { return None };
    if m.get("t").and_then(Value::as_str) != Some("file-ack") {
        return None;
    }
    let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    Some(Ack {
        sha256: s("sha256").unwrap_or_default().to_ascii_lowercase(),
        ok: m.get("ok") == Some(&Value::Bool(true)),
        error: s("error"),
        message: s("message"),
    })
}

/// Whether `name` may be created inside the target directory: one plain file name, nothing that walks out
/// of the directory. The error says why not (code `bad-name`).
pub fn check_name(name: &str) -> Result<(), String> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name == "." || name == ".." {
        "it is not a file name"
    } else if name.contains('/') || name.contains('\\') {
        "it contains a path separator"
    } else if name.chars().any(char::is_control) {
        "it contains control characters"
    } else if name.len() > MAX_NAME {
        "it is longer than 255 bytes"
    } else if Path::new(name).is_absolute()
        || !matches!(Path::new(name).components().collect::<Vec<_>>()[..], [Component::Normal(_)])
    {
        "it is not a plain file name"
    } else {
        return Ok(());
    };
    Err(format!("refusing file name {name:?}: {why}"))
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn timeout_failure(what: String) -> Failure {
    Failure::runtime("timeout", what)
}

fn interrupted_failure() -> Failure {
    Failure::runtime("interrupted", "interrupted by a signal")
}

fn closed_failure() -> Failure {
    Failure::runtime("closed", "the peer stopped")
}

fn matches_target(to: Option<&str>, peer: &str) -> bool {
    to.is_none_or(|t| peer.starts_with(t))
}

// ------------------------------------------------------------------------------------------------ send

pub async fn send(g: &Globals, file: &Path, to: Option<&str>, timeout: u64) -> Result<(), Failure> {
    let t = Duration::from_secs(timeout);
    if to == Some("") {
        return Err(Failure::usage("bad-peer", "--to must not be empty"));
    }
    let shown = file.display();
    let meta = std::fs::metadata(file).map_err(|e| Failure::usage("bad-file", format!("{shown}: {e}")))?;
    if !meta.is_file() {
        return Err(Failure::usage("bad-file", format!("{shown}: not a regular file")));
    }
    let too_large = |size: u64| {
        Failure::usage("file-too-large", format!("{shown} has {size} bytes; at most {MAX_FILE} (256 MiB) can be sent"))
    };
    if meta.len() > MAX_FILE {
        return Err(too_large(meta.len()));
    }
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Failure::usage("bad-name", format!("{shown}: the file name is not UTF-8")))?
        .to_owned();
    check_name(&name).map_err(|m| Failure::usage("bad-name", m))?;
    let data = std::fs::read(file).map_err(|e| Failure::runtime("io", format!("reading {shown}: {e}")))?;
    if data.len() as u64 > MAX_FILE {
        return Err(too_large(data.len() as u64));
    }
    let header = Header { name, size: data.len() as u64, sha256: sha256_hex(&data) };

    let (peer, mut events) = common::connect(g).await?;
    let result = send_on(&peer, &mut events, g, to, t, &header, Bytes::from(data)).await;
    common::close(peer).await;
    result
}

async fn send_on(
    peer: &Peer,
    events: &mut mpsc::Receiver<Event>,
    g: &Globals,
    to: Option<&str>,
    t: Duration,
    header: &Header,
    data: Bytes,
) -> Result<(), Failure> {
    let label = g.channel.as_str();
    let interrupted = common::interrupted();
    tokio::pin!(interrupted);

    // 1. A peer opens the channel.
    let deadline = Instant::now() + t;
    let target = loop {
        let ev = tokio::select! {
            _ = &mut interrupted => return Err(interrupted_failure()),
            ev = tokio::time::timeout_at(deadline, events.recv()) => ev,
        };
        let ev = ev.map_err(|_| {
            let secs = t.as_secs();
            timeout_failure(match to {
                Some(p) => format!("peer {p} did not open channel {label} within {secs}s"),
                None => format!("no peer opened channel {label} within {secs}s"),
            })
        })?;
        let ev = ev.ok_or_else(closed_failure)?;
        common::print_presence(&ev);
        match ev {
            Event::ChannelOpen { peer: p, label: l } if l == label && matches_target(to, &p) => break p,
            Event::SignalingClosed { .. } => {
                return Err(Failure::runtime("signaling-closed", "signaling closed before a peer opened the channel"));
            }
            _ => {}
        }
    };

    // 2. The header, then the content; an ack may come early (a refusal).
    tokio::time::timeout(t, peer.send(&target, label, Payload::Text(header.to_json())))
        .await
        .map_err(|_| timeout_failure(format!("sending the header took more than {}s", t.as_secs())))??;
    common::status(&format!("sending {} ({} bytes) to {}", header.name, header.size, short(&target)));
    let started = std::time::Instant::now();
    let content = peer.send(&target, label, Payload::Binary(data));
    tokio::pin!(content);
    // Progress means SCTP acknowledges data: the amount it still holds changes. The watch is a future of its
    // own, polled by the select! below *alongside* `content`, never awaited inside a select! arm: the probe
    // takes webrtc-rs' connection lock, and tokio's fair locks hand a released lock to the next waiter even
    // when that waiter is not being polled. Had an arm awaited the probe while `content` queued for the same
    // lock, neither (nor the webrtc-rs driver) could ever proceed: the transfer would hang for good.
    let last_progress = std::cell::Cell::new(Instant::now());
    let watch = async {
        let mut last_buffered = None;
        loop {
            tokio::time::sleep(PROGRESS_PROBE).await;
            let now = peer.buffered_amount(&target, label).await.ok();
            if now != last_buffered {
                last_buffered = now;
                last_progress.set(Instant::now());
            }
        }
    };
    tokio::pin!(watch);
    let mut sending = true;
    let mut send_error: Option<peer::Error> = None;
    let mut wait_until = Instant::now() + t;
    let ack = loop {
        let deadline = if sending { last_progress.get() + t } else { wait_until };
        // No arm below awaits anything: each only looks at what arrived (see `watch`).
        tokio::select! {
            _ = &mut interrupted => return Err(interrupted_failure()),
            r = &mut content, if sending => {
                sending = false;
                match r {
                    Ok(()) => {
                        tracing::info!(elapsed = ?started.elapsed(), "content sent; waiting for the ack");
                        wait_until = Instant::now() + t;
                    }
                    Err(e) => {
                        send_error = Some(e);
                        wait_until = Instant::now() + ACK_GRACE;
                    }
                }
            }
            () = &mut watch, if sending => unreachable!("the progress watch never ends"),
            _ = tokio::time::sleep_until(deadline) => {
                if sending && last_progress.get() + t > Instant::now() {
                    continue; // progress was made meanwhile
                }
                return Err(match send_error {
                    Some(e) => e.into(),
                    None if sending => timeout_failure(format!("the receiver made no progress for {}s", t.as_secs())),
                    None => timeout_failure(format!("no file-ack from {} within {}s", short(&target), t.as_secs())),
                });
            }
            ev = events.recv() => {
                let ev = ev.ok_or_else(closed_failure)?;
                match ev {
                    Event::Message { peer: from, label: l, payload: Payload::Text(text) } if from == target && l == label => {
                        match parse_ack(&text) {
                            Some(ack) if ack.sha256 == header.sha256 => break ack,
                            Some(ack) => tracing::debug!(sha256 = %ack.sha256, "ack for another transfer ignored"),
                            None => tracing::debug!("message from the receiver ignored"),
                        }
                    }
                    Event::Message { .. } => {}
                    ev => {
                        common::print_presence(&ev);
                        let gone = match &ev {
                            Event::PeerLeft { peer: p, .. } => *p == target,
                            Event::ChannelClosed { peer: p, label: l } => *p == target && l == label,
                            _ => false,
                        };
                        if gone {
                            return Err(send_error.map(Failure::from).unwrap_or_else(|| {
                                Failure::runtime("peer-left", format!("{} went away before acknowledging the file", short(&target)))
                            }));
                        }
                    }
                }
            }
        }
    };
    if ack.ok {
        common::status(&format!(
            "{} confirmed {} ({} bytes, sha256 {}) in {:.2?}",
            short(&target),
            header.name,
            header.size,
            header.sha256,
            started.elapsed()
        ));
        Ok(())
    } else {
        let code = ack.error.as_deref().unwrap_or("unspecified");
        let why = ack.message.as_deref().unwrap_or("no reason given");
        Err(Failure::runtime("rejected", format!("{} refused the file: {code}: {why}", short(&target))))
    }
}

// ------------------------------------------------------------------------------------------------ recv

pub async fn recv(g: &Globals, dir: &Path, overwrite: bool, timeout: u64) -> Result<(), Failure> {
    let t = Duration::from_secs(timeout);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Failure::usage("bad-dir", format!("{}: not a directory", dir.display()))),
        Err(e) => return Err(Failure::usage("bad-dir", format!("{}: {e}", dir.display()))),
    }
    let (peer, mut events) = common::connect(g).await?;
    let result = recv_on(&peer, &mut events, g, dir, overwrite, t).await;
    common::close(peer).await;
    result
}

/// Sends a refusal (or the final ack) and waits, bounded, until it has left.
async fn answer(peer: &Peer, to: &str, label: &str, sha256: &str, refusal: Option<(&str, &str)>) {
    let msg = ack_json(sha256, refusal);
    match tokio::time::timeout(ACK_FLUSH, peer.send(to, label, Payload::Text(msg))).await {
        Ok(Ok(())) => common::drain(peer, &[to.to_owned()], label, ACK_FLUSH).await,
        Ok(Err(e)) => tracing::warn!(code = e.code(), "the file-ack could not be sent: {e}"),
        Err(_) => tracing::warn!("the file-ack could not be sent in time"),
    }
}

/// Refuses the transfer: tells the sender, then fails with the same code.
async fn refuse(peer: &Peer, to: &str, label: &str, sha256: &str, code: &str, message: String) -> Failure {
    answer(peer, to, label, sha256, Some((code, &message))).await;
    Failure::runtime(code, message)
}

async fn recv_on(
    peer: &Peer,
    events: &mut mpsc::Receiver<Event>,
    g: &Globals,
    dir: &Path,
    overwrite: bool,
    t: Duration,
) -> Result<(), Failure> {
    let label = g.channel.as_str();
    let interrupted = common::interrupted();
    tokio::pin!(interrupted);
    let mut deadline = Instant::now() + t;
    // The transfer under way: its sender and header.
    let mut current: Option<(String, Header)> = None;
    loop {
        let ev = tokio::select! {
            _ = &mut interrupted => return Err(interrupted_failure()),
            _ = tokio::time::sleep_until(deadline) => {
                return Err(timeout_failure(match &current {
                    None => format!("no file header within {}s", t.as_secs()),
                    Some((_, h)) => format!("the content of {} did not arrive within {}s of its header", h.name, t.as_secs()),
                }));
            }
            ev = events.recv() => ev.ok_or_else(closed_failure)?,
        };
        let from_sender = |p: &str| current.as_ref().is_some_and(|(s, _)| s == p);
        match ev {
            Event::Message { peer: from, label: l, payload } if l == label => match payload {
                Payload::Text(text) => {
                    let Some(parsed) = parse_header(&text) else {
                        tracing::debug!(peer = %from, "text message that is not a file header ignored");
                        continue;
                    };
                    let sha = match &parsed {
                        Ok(h) => h.sha256.clone(),
                        Err(b) => b.sha256.clone(),
                    };
                    if let Some((sender, h)) = &current {
                        if *sender != from {
                            let busy = format!("already receiving {} from another peer", h.name);
                            answer(peer, &from, label, &sha, Some(("busy", &busy))).await;
                            continue;
                        }
                        let msg = "a second header arrived before the content".to_owned();
                        return Err(refuse(peer, &from, label, &sha, "bad-header", msg).await);
                    }
                    let h = match parsed {
                        Ok(h) => h,
                        Err(b) => return Err(refuse(peer, &from, label, &sha, "bad-header", b.message).await),
                    };
                    if let Err(msg) = check_name(&h.name) {
                        return Err(refuse(peer, &from, label, &sha, "bad-name", msg).await);
                    }
                    if h.size > MAX_FILE {
                        let msg = format!("{} has {} bytes; at most {MAX_FILE} are accepted", h.name, h.size);
                        return Err(refuse(peer, &from, label, &sha, "too-large", msg).await);
                    }
                    let path = dir.join(&h.name);
                    if !overwrite && std::fs::symlink_metadata(&path).is_ok() {
                        let msg = format!("{} already exists (use --overwrite)", path.display());
                        return Err(refuse(peer, &from, label, &sha, "exists", msg).await);
                    }
                    common::status(&format!("receiving {} ({} bytes) from {}", h.name, h.size, short(&from)));
                    current = Some((from, h));
                    deadline = Instant::now() + t;
                }
                Payload::Binary(data) => {
                    let Some((sender, h)) = current.as_ref().filter(|(s, _)| *s == from) else {
                        tracing::debug!(peer = %from, "binary message without a header ignored");
                        continue;
                    };
                    return finish(peer, sender, label, h, &data, dir, overwrite).await;
                }
            },
            Event::Message { .. } => {}
            Event::Error(peer::Error::BadFrame { peer: p, label: l, detail }) if l == label && from_sender(&p) => {
                let sha = current.as_ref().map(|(_, h)| h.sha256.clone()).unwrap_or_default();
                let msg = format!("the content could not be reassembled: {detail}");
                return Err(refuse(peer, &p, label, &sha, "bad-frame", msg).await);
            }
            ev => {
                common::print_presence(&ev);
                let gone = match &ev {
                    Event::PeerLeft { peer: p, .. } => from_sender(p),
                    Event::ChannelClosed { peer: p, label: l } => l == label && from_sender(p),
                    _ => false,
                };
                if gone {
                    return Err(Failure::runtime("peer-left", "the sender went away before the content arrived"));
                }
                if matches!(ev, Event::SignalingClosed { .. }) && current.is_none() {
                    return Err(Failure::runtime(
                        "signaling-closed",
                        "signaling closed before any file header arrived",
                    ));
                }
            }
        }
    }
}

/// Verifies the content, writes it, answers.
async fn finish(
    peer: &Peer,
    sender: &str,
    label: &str,
    h: &Header,
    data: &[u8],
    dir: &Path,
    overwrite: bool,
) -> Result<(), Failure> {
    if data.len() as u64 != h.size {
        let msg = format!("{}: got {} bytes, the header announced {}", h.name, data.len(), h.size);
        return Err(refuse(peer, sender, label, &h.sha256, "size-mismatch", msg).await);
    }
    let got = sha256_hex(data);
    if got != h.sha256 {
        let msg = format!("{}: sha256 is {got}, the header announced {}", h.name, h.sha256);
        return Err(refuse(peer, sender, label, &h.sha256, "checksum-mismatch", msg).await);
    }
    let path = match write_file(dir, &h.name, data, overwrite) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let msg = format!("{} already exists (use --overwrite)", dir.join(&h.name).display());
            return Err(refuse(peer, sender, label, &h.sha256, "exists", msg).await);
        }
        Err(e) => {
            let msg = format!("writing {}: {e}", dir.join(&h.name).display());
            return Err(refuse(peer, sender, label, &h.sha256, "io", msg).await);
        }
    };
    answer(peer, sender, label, &h.sha256, None).await;
    common::status(&format!("received {} ({} bytes, sha256 ok) from {}", h.name, h.size, short(sender)));
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", path.display()).and_then(|()| out.flush());
    Ok(())
}

/// Writes `data` to `dir/name`: never through an existing file or link unless `overwrite`, and then by
/// renaming a complete temporary file over it. A failed write leaves nothing behind.
fn write_file(dir: &Path, name: &str, data: &[u8], overwrite: bool) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    let target = if overwrite { dir.join(format!(".peer-recv.{}.part", std::process::id())) } else { path.clone() };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&target)?;
    let written = f.write_all(data).and_then(|()| f.sync_all());
    drop(f);
    let done = written.and_then(|()| if overwrite { std::fs::rename(&target, &path) } else { Ok(()) });
    if let Err(e) = done {
        let _ = std::fs::remove_file(&target);
        return Err(e);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        for bad in
            ["", ".", "..", "../evil", "a/b", "/etc/passwd", "a\\b", "..\\evil", "x\ny", "nul\0", &"n".repeat(256)]
        {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a.txt", ".hidden", "..two-dots-prefix", "spaces are fine", "é.bin", &"n".repeat(255)] {
            assert_eq!(check_name(good), Ok(()), "{good:?} refused");
        }
    }

    #[test]
    fn headers() {
        let h = Header { name: "a.bin".into(), size: 3, sha256: sha256_hex(b"abc") };
        assert_eq!(parse_header(&h.to_json()), Some(Ok(h.clone())));
        assert_eq!(parse_header(r#"{"t":"chat","text":"x"}"#), None);
        assert_eq!(parse_header("not json"), None);
        let bad = parse_header(&format!(r#"{{"t":"file","name":"a","size":-1,"sha256":"{}"}}"#, h.sha256));
        assert!(matches!(bad, Some(Err(BadHeader { ref sha256, .. })) if *sha256 == h.sha256));
        assert!(matches!(parse_header(r#"{"t":"file","name":"a","size":1,"sha256":"xyz"}"#), Some(Err(_))));
        let upper = format!(r#"{{"t":"file","name":"a","size":1,"sha256":"{}"}}"#, h.sha256.to_uppercase());
        assert_eq!(parse_header(&upper).unwrap().unwrap().sha256, h.sha256);
    }

    #[test]
    fn acks() {
        assert_eq!(
            parse_ack(&ack_json("ab", None)),
            Some(Ack { sha256: "ab".into(), ok: true, error: None, message: None })
        );
        let refused = parse_ack(&ack_json("ab", Some(("bad-name", "no")))).unwrap();
        assert!(!refused.ok);
        assert_eq!(refused.error.as_deref(), Some("bad-name"));
        assert_eq!(parse_ack(r#"{"t":"file-ack","sha256":"ab"}"#).map(|a| a.ok), Some(false));
        assert_eq!(parse_ack(r#"{"t":"file"}"#), None);
    }

    #[test]
    fn files_are_written_without_clobbering() {
        let dir = std::env::temp_dir().join(format!("peer-cli-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = write_file(&dir, "f", b"one", false).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(write_file(&dir, "f", b"two", false).unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
        write_file(&dir, "f", b"two", true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
