//! `peer chat`: the web demo's chat protocol on the `--channel` channel (docs/protocol.md, "The web demo's
//! data-channel messages"). It is the demo's application protocol, so it lives here and not in the library.
//!
//! Per peer: once the channel is open we send `hello{ack:false}` every 250 ms until any `hello` arrives;
//! every `hello{ack:false}` is answered with `hello{ack:true}`; chat lines wait until the peer's `hello` has
//! arrived (so nothing goes to a side that cannot hear it yet); `ping` is answered with `pong`.

use crate::common::{self, Failure, Globals, short};
use peer::{Event, Payload, Peer};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Write};
use std::time::Duration;
use tokio::sync::mpsc;

const HELLO_INTERVAL: Duration = Duration::from_millis(250);
/// Lines kept per peer that is not ready yet (as the demo's `MAX_QUEUED_LINES`).
const MAX_QUEUED_LINES: usize = 1000;
/// After end of input: how long queued lines may wait for their peers, and sent ones for acknowledgement.
const EOF_LINGER: Duration = Duration::from_secs(5);
/// Longest a send to one peer may wait for buffer space. Safe to give up: every message we send is one frame
/// (chat lines are limited to [`MAX_FRAME`]), so it is either on the channel whole or not at all.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest chat message: one frame (a plain text frame, which every client reads).
const MAX_FRAME: usize = peer::framing::MAX_FRAME;

/// A message of the demo protocol, as received.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// `hello`; `ack` is true only for `ack: true`.
    Hello { ack: bool },
    /// A chat line.
    Chat(String),
    /// `ping`: the pong to answer with.
    Ping { pong: Value },
    /// `pong`, or a demo message we have no use for (`early`, a `chat` without text, ...).
    Ignored(String),
    /// Not a demo message: shown as it is.
    Raw(String),
}

/// Classifies a text message received on the chat channel.
pub fn parse(text: &str) -> Incoming {
    let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(text) else {
        return Incoming::Raw(text.to_owned());
    };
    let Some(t) = msg.get("t").and_then(Value::as_str) else {
        return Incoming::Raw(text.to_owned());
    };
    match t {
        "hello" => Incoming::Hello { ack: msg.get("ack") == Some(&Value::Bool(true)) },
        "chat" => match msg.get("text").and_then(Value::as_str) {
            Some(s) => Incoming::Chat(s.to_owned()),
            None => Incoming::Ignored("chat without text".into()),
        },
        "ping" => {
            // Echo `id` and `ts` as given (absent stays absent, like the demo's JSON.stringify).
            let mut pong = serde_json::Map::new();
            pong.insert("t".into(), "pong".into());
            for k in ["id", "ts"] {
                if let Some(v) = msg.get(k) {
                    pong.insert(k.into(), v.clone());
                }
            }
            Incoming::Ping { pong: Value::Object(pong) }
        }
        other => Incoming::Ignored(other.to_owned()),
    }
}

pub fn hello(ack: bool) -> String {
    json!({"t": "hello", "ack": ack}).to_string()
}

pub fn chat_line(id: u64, text: &str) -> String {
    json!({"t": "chat", "id": id, "text": text}).to_string()
}

/// The lines to print for a message `text` from `from`: one `<from>: line` per line of the text, with control
/// characters escaped, so a remote peer can neither fake another sender's line nor drive the terminal.
pub fn render(from: &str, text: &str) -> String {
    let mut out = String::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        out.push_str(short(from));
        out.push_str(": ");
        for c in line.chars() {
            if c.is_control() && c != '\t' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// Per remote peer.
#[derive(Debug, Default)]
struct Link {
    /// The channel is open.
    open: bool,
    /// Its `hello` arrived: it hears us.
    ready: bool,
    /// Lines waiting for `ready`.
    queue: VecDeque<String>,
}

/// Reads stdin on a thread of its own (a blocked read must not hold up the runtime), line by line.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.strip_suffix('\n').unwrap_or(&line);
                    let line = line.strip_suffix('\r').unwrap_or(line);
                    if tx.blocking_send(line.to_owned()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("reading stdin failed: {e}");
                    break;
                }
            }
        }
    });
    rx
}

struct Chat<'a> {
    peer: &'a Peer,
    label: &'a str,
    links: HashMap<String, Link>,
    next_id: u64,
}

impl Chat<'_> {
    /// Sends one message; a peer that takes no message for [`SEND_TIMEOUT`] loses it rather than stalling
    /// the chat with everyone else.
    async fn send(&self, to: &str, msg: String) {
        match tokio::time::timeout(SEND_TIMEOUT, self.peer.send(to, self.label, Payload::Text(msg))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(peer = %to, code = e.code(), "not sent: {e}"),
            Err(_) => tracing::warn!(peer = %to, "message dropped: the peer took nothing for {SEND_TIMEOUT:?}"),
        }
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Message { peer: from, label, payload } if label == self.label => match payload {
                Payload::Text(text) => self.on_text(&from, &text).await,
                Payload::Binary(b) => {
                    common::status(&format!("{} sent {} bytes of binary data (not shown)", short(&from), b.len()))
                }
            },
            Event::Message { peer: from, label, .. } => {
                tracing::debug!(peer = %from, %label, "message on another channel ignored");
            }
            ev => {
                common::print_presence(&ev);
                match ev {
                    Event::PeerJoined(p) => {
                        self.links.entry(p).or_default();
                    }
                    Event::PeerLeft { peer: p, .. } => {
                        self.links.remove(&p);
                    }
                    Event::ChannelOpen { peer: p, label } if label == self.label => {
                        self.links.entry(p.clone()).or_default().open = true;
                        self.send(&p, hello(false)).await;
                    }
                    Event::ChannelClosed { peer: p, label } if label == self.label => {
                        if let Some(link) = self.links.get_mut(&p) {
                            link.open = false;
                            link.ready = false;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    async fn on_text(&mut self, from: &str, text: &str) {
        match parse(text) {
            Incoming::Hello { ack } => {
                if !ack {
                    self.send(from, hello(true)).await;
                }
                let link = self.links.entry(from.to_owned()).or_default();
                if !link.ready {
                    link.ready = true;
                    let queued: Vec<String> = link.queue.drain(..).collect();
                    tracing::debug!(peer = %from, queued = queued.len(), "peer ready");
                    for msg in queued {
                        self.send(from, msg).await;
                    }
                }
            }
            Incoming::Chat(t) | Incoming::Raw(t) => print_stdout(&render(from, &t)),
            Incoming::Ping { pong } => self.send(from, pong.to_string()).await,
            Incoming::Ignored(what) => tracing::debug!(peer = %from, "ignored demo message: {what}"),
        }
    }

    async fn on_line(&mut self, line: &str) {
        if self.links.is_empty() {
            common::status("nobody else is in the room; that line went nowhere");
            return;
        }
        let msg = chat_line(self.next_id, line);
        if msg.len() > MAX_FRAME {
            common::status(&format!("line too long ({} bytes as JSON, at most {MAX_FRAME}); not sent", msg.len()));
            return;
        }
        self.next_id += 1;
        let mut now = Vec::new();
        for (id, link) in &mut self.links {
            if link.ready {
                now.push(id.clone());
            } else if link.queue.len() < MAX_QUEUED_LINES {
                link.queue.push_back(msg.clone());
            } else {
                tracing::warn!(peer = %id, "peer never became ready; dropping a chat line");
            }
        }
        for id in now {
            self.send(&id, msg.clone()).await;
        }
    }

    async fn hello_tick(&self) {
        let waiting: Vec<String> =
            self.links.iter().filter(|(_, l)| l.open && !l.ready).map(|(id, _)| id.clone()).collect();
        for id in waiting {
            self.send(&id, hello(false)).await;
        }
    }

    /// Lines still waiting for a peer to become ready.
    fn pending(&self) -> usize {
        self.links.values().map(|l| l.queue.len()).sum()
    }
}

fn print_stdout(s: &str) {
    let mut out = std::io::stdout().lock();
    if out.write_all(s.as_bytes()).and_then(|()| out.flush()).is_err() {
        // stdout is gone (a closed pipe): nothing useful left to do with messages.
        tracing::debug!("stdout closed");
    }
}

pub async fn run(g: &Globals) -> Result<(), Failure> {
    let (peer, mut events) = common::connect(g).await?;
    let mut lines = stdin_lines();
    let mut chat = Chat { peer: &peer, label: &g.channel, links: HashMap::new(), next_id: 1 };
    let mut ticker = tokio::time::interval(HELLO_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let interrupted = common::interrupted();
    tokio::pin!(interrupted);
    let mut eof_deadline: Option<tokio::time::Instant> = None;
    let mut signaling_open = true;
    let result = loop {
        if eof_deadline.is_some_and(|d| chat.pending() == 0 || tokio::time::Instant::now() >= d) {
            break Ok(());
        }
        tokio::select! {
            _ = &mut interrupted => break Ok(()),
            line = lines.recv(), if eof_deadline.is_none() => match line {
                Some(line) => chat.on_line(&line).await,
                None => eof_deadline = Some(tokio::time::Instant::now() + EOF_LINGER),
            },
            ev = events.recv() => {
                let Some(ev) = ev else { break Err(Failure::runtime("closed", "the peer stopped")) };
                if matches!(ev, Event::SignalingClosed { .. }) {
                    signaling_open = false;
                }
                chat.on_event(ev).await;
                if !signaling_open && !chat.links.values().any(|l| l.open) {
                    break Err(Failure::runtime("signaling-closed", "signaling session closed and no channel is open"));
                }
            }
            _ = ticker.tick() => chat.hello_tick().await,
        }
    };
    if eof_deadline.is_some() {
        let open: Vec<String> = chat.links.iter().filter(|(_, l)| l.open).map(|(id, _)| id.clone()).collect();
        let left = eof_deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now())).unwrap_or_default();
        common::drain(&peer, &open, &g.channel, left.max(Duration::from_millis(500))).await;
    }
    drop(chat);
    common::close(peer).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_messages_are_recognised() {
        assert_eq!(parse(r#"{"t":"hello","ack":false}"#), Incoming::Hello { ack: false });
        assert_eq!(parse(r#"{"t":"hello"}"#), Incoming::Hello { ack: false });
        assert_eq!(parse(r#"{"t":"hello","ack":true}"#), Incoming::Hello { ack: true });
        assert_eq!(parse(r#"{"t":"chat","id":3,"text":"hi"}"#), Incoming::Chat("hi".into()));
        assert_eq!(
            parse(r#"{"t":"ping","id":7,"ts":12.5}"#),
            Incoming::Ping { pong: json!({"t":"pong","id":7,"ts":12.5}) }
        );
        assert!(matches!(parse(r#"{"t":"pong","id":7}"#), Incoming::Ignored(_)));
        assert!(matches!(parse(r#"{"t":"early"}"#), Incoming::Ignored(_)));
    }

    #[test]
    fn anything_else_is_shown_as_it_is() {
        for raw in ["plain words", "{not json", "42", r#"{"text":"no t"}"#, "[1,2]"] {
            assert_eq!(parse(raw), Incoming::Raw(raw.into()));
        }
    }

    #[test]
    fn outgoing_messages() {
        let v: Value = serde_json::from_str(&chat_line(4, "a \"quoted\" line")).unwrap();
        assert_eq!(v, json!({"t":"chat","id":4,"text":"a \"quoted\" line"}));
        assert_eq!(serde_json::from_str::<Value>(&hello(true)).unwrap(), json!({"t":"hello","ack":true}));
    }

    #[test]
    fn rendering_prefixes_every_line_and_escapes_control_characters() {
        assert_eq!(render("0123456789", "hi"), "01234567: hi\n");
        assert_eq!(render("abcdefghij", "one\r\ntwo"), "abcdefgh: one\nabcdefgh: two\n");
        assert_eq!(render("x", "\u{1b}[2Jboom\tok"), "x: \\u{1b}[2Jboom\tok\n");
    }
}
