//! Relaying one client connection to its server while recording what the
//! protocol decoder finds, under the logging mode:
//!
//! | | express spool | recoverable spool |
//! |---|---|---|
//! | relaxed | forwarded at once, spooled beside | forwarded once spooled and fsynced, or at once with a gap event if the spool fails |
//! | strict | chat forwarded once the server acknowledged it | chat forwarded once spooled and fsynced |
//!
//! In strict mode a chat message that cannot be recorded in time is withheld
//! and the user is told; a line too long to decode is withheld too.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use verbatim_schema::{UnixNanos, WireEvent};

use crate::capture::{Capture, Flow};
use crate::frontend::lock;
use crate::recorder::{RecordError, Recorder};
use crate::spool::SpoolMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logging {
    /// Users cannot chat what cannot be recorded.
    Strict,
    /// Chat always flows; what is not recorded is named by a gap event.
    Relaxed,
}

impl std::str::FromStr for Logging {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict" => Ok(Self::Strict),
            "relaxed" => Ok(Self::Relaxed),
            _ => Err(format!("logging mode `{s}`: expected strict or relaxed")),
        }
    }
}

/// A piece of one direction of the stream, ready to forward.
#[derive(Debug, Default)]
pub struct Unit {
    pub bytes: Vec<u8>,
    pub captures: Vec<Capture>,
    /// Bytes the decoder could not read (a line past the limit, say); the
    /// reason is set on the first piece of such a run.
    pub opaque: bool,
    pub undecoded: Option<String>,
}

impl Unit {
    pub fn pass(bytes: Vec<u8>) -> Self {
        Unit { bytes, ..Unit::default() }
    }
}

/// A protocol's view of one connection.
pub trait Session: Send {
    /// Feeds bytes read from one side; returns what to forward to the other.
    fn feed(&mut self, flow: Flow, data: &[u8]) -> Vec<Unit>;
    /// Bytes that tell the user something (an IRC NOTICE, an XMPP message).
    fn notice(&self, text: &str) -> Vec<u8>;
    /// Bytes that tell the user a chat unit was withheld (XMPP answers the
    /// sender's message with an error stanza); a notice by default.
    fn refuse(&self, _flow: Flow, _captures: &[Capture], text: &str) -> Vec<u8> {
        self.notice(text)
    }
    /// The user's name on the network, once known.
    fn user(&self) -> Option<String>;
    /// `irc`, `xmpp`, or `tcp` for undecoded traffic.
    fn network(&self) -> &'static str;
}

/// A session that decodes nothing: bytes pass, the connection record remains.
#[derive(Debug)]
pub struct Opaque;

impl Session for Opaque {
    fn feed(&mut self, _: Flow, data: &[u8]) -> Vec<Unit> {
        vec![Unit::pass(data.to_vec())]
    }
    fn notice(&self, _: &str) -> Vec<u8> {
        Vec::new()
    }
    fn user(&self) -> Option<String> {
        None
    }
    fn network(&self) -> &'static str {
        "tcp"
    }
}

/// Settings of the relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub logging: Logging,
    /// How long strict mode waits for a message to be recorded.
    pub strict_wait: Duration,
    pub disclaimer: Option<String>,
}

type Writer = Arc<tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>>;

/// One relayed connection.
pub struct Conn {
    pub config: Arc<RelayConfig>,
    pub recorder: Recorder,
    pub session: Mutex<Box<dyn Session>>,
    /// Who is behind the client side when the protocol does not say (the
    /// SOCKS user, else the client's address).
    pub fallback_user: String,
    seen: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("user", &self.fallback_user).finish_non_exhaustive()
    }
}

impl Conn {
    pub fn new(config: Arc<RelayConfig>, recorder: Recorder, session: Box<dyn Session>, fallback_user: String) -> Self {
        Conn { config, recorder, session: Mutex::new(session), fallback_user, seen: Mutex::new(HashSet::new()) }
    }

    pub fn user(&self) -> String {
        lock(&self.session).user().unwrap_or_else(|| self.fallback_user.clone())
    }

    /// Relays both directions until both are closed; returns the bytes
    /// (client → server, server → client).
    pub async fn run<C, U>(self: Arc<Self>, client: C, upstream: U) -> (u64, u64)
    where
        C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        U: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (client_r, client_w) = tokio::io::split(client);
        let (up_r, up_w) = tokio::io::split(upstream);
        let client_w: Writer = Arc::new(tokio::sync::Mutex::new(Box::new(client_w)));
        let up_w: Writer = Arc::new(tokio::sync::Mutex::new(Box::new(up_w)));
        let out = tokio::spawn(self.clone().pump(Flow::Outbound, client_r, up_w.clone(), client_w.clone()));
        let inb = self.pump(Flow::Inbound, up_r, client_w.clone(), client_w);
        let (inb, out) = tokio::join!(inb, out);
        (out.unwrap_or(0), inb)
    }

    async fn pump<R: AsyncRead + Unpin>(self: Arc<Self>, flow: Flow, mut from: R, to: Writer, client: Writer) -> u64 {
        // Small: a proxy holds tens of thousands of these (two per connection).
        let mut buf = vec![0u8; 4 << 10];
        let mut total = 0u64;
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            total += n as u64;
            let units = lock(&self.session).feed(flow, &buf[..n]);
            if self.handle(flow, units, &to, &client).await.is_err() {
                break;
            }
        }
        let _ = to.lock().await.shutdown().await;
        total
    }

    /// Records and forwards what one read produced.
    async fn handle(&self, flow: Flow, units: Vec<Unit>, to: &Writer, client: &Writer) -> std::io::Result<()> {
        let now = UnixNanos::now();
        let (user, network) = {
            let s = lock(&self.session);
            (s.user().unwrap_or_else(|| self.fallback_user.clone()), s.network())
        };
        let mut notices = Vec::new();
        let mut refusals = Vec::new();
        let mut disclaimers = Vec::new();
        self.disclaimers(&units, &user, now, &mut notices, &mut disclaimers);
        let mut extra = Vec::new();
        for u in &units {
            if let Some(why) = &u.undecoded {
                let gap = Capture::new(network, "gap", &user).attr("gap.flow", flow.as_str());
                extra.push(Capture { body: Some(why.clone()), ..gap }.into_wire(now));
            }
        }
        let events: Vec<WireEvent> =
            units.iter().flat_map(|u| u.captures.iter().cloned()).map(|c| c.into_wire(now)).collect();
        let mut forward = Vec::new();
        match self.config.logging {
            Logging::Relaxed => {
                let mut all = disclaimers;
                all.extend(events);
                all.extend(extra);
                if !all.is_empty() {
                    match self.recorder.mode() {
                        SpoolMode::Express => self.recorder.submit(all),
                        // A failure becomes a gap event in the recorder.
                        SpoolMode::Recoverable => drop(self.recorder.record(all, true).await),
                    }
                }
                units.into_iter().for_each(|u| forward.extend(u.bytes));
            }
            Logging::Strict => {
                if !disclaimers.is_empty() {
                    self.recorder.submit(disclaimers);
                }
                let has_chat = units.iter().any(|u| u.captures.iter().any(Capture::is_chat));
                let recorded = if events.is_empty() {
                    Ok(())
                } else if has_chat {
                    self.durable(events).await
                } else {
                    self.recorder.submit(events);
                    Ok(())
                };
                if let Err(e) = &recorded {
                    tracing::warn!(user, "withholding chat that could not be recorded: {e}");
                }
                for u in units {
                    let chat = u.captures.iter().any(Capture::is_chat);
                    if u.opaque {
                        if u.undecoded.is_some() {
                            notices.push("Verbatim: a line too long to record was not sent.".to_owned());
                        }
                    } else if chat && recorded.is_err() {
                        let text = withheld_notice(flow, &u.captures);
                        refusals.push(lock(&self.session).refuse(flow, &u.captures, &text));
                    } else {
                        forward.extend(u.bytes);
                    }
                }
                if !extra.is_empty() {
                    self.recorder.submit(extra);
                }
            }
        }
        if !notices.is_empty() || !refusals.is_empty() {
            let mut c = client.lock().await;
            for n in &notices {
                let bytes = lock(&self.session).notice(n);
                c.write_all(&bytes).await?;
            }
            for r in &refusals {
                c.write_all(r).await?;
            }
            c.flush().await?;
        }
        if !forward.is_empty() {
            let mut w = to.lock().await;
            w.write_all(&forward).await?;
            w.flush().await?;
        }
        Ok(())
    }

    /// Strict mode's wait: in the spool and fsynced (recoverable), or
    /// acknowledged by the server (express).
    async fn durable(&self, events: Vec<WireEvent>) -> Result<(), RecordError> {
        let wait = self.config.strict_wait;
        // Only express mode needs the events again (to mark them withheld).
        let express = (self.recorder.mode() == SpoolMode::Express).then(|| events.clone());
        let seq = tokio::time::timeout(wait, self.recorder.record(events, false))
            .await
            .map_err(|_| RecordError::NotAcked(wait))??;
        if let Some(events) = express {
            if let Err(err) = self.recorder.wait_acked(seq, wait).await {
                // Spooled but not delivered: say so beside it in the archive.
                let withheld = events
                    .into_iter()
                    .filter(|e| e.kind == "message")
                    .map(|mut e| {
                        e.kind = "withheld".into();
                        e.attrs.insert("withheld.reason".into(), err.to_string());
                        e
                    })
                    .collect();
                self.recorder.submit(withheld);
                return Err(err);
            }
        }
        Ok(())
    }

    /// The first chat of each conversation on this connection gets the
    /// disclaimer, shown to the user and recorded.
    fn disclaimers(
        &self,
        units: &[Unit],
        user: &str,
        now: UnixNanos,
        notices: &mut Vec<String>,
        out: &mut Vec<WireEvent>,
    ) {
        let Some(text) = &self.config.disclaimer else { return };
        let mut seen = lock(&self.seen);
        for c in units.iter().flat_map(|u| &u.captures).filter(|c| c.is_chat()) {
            if !seen.insert(c.conversation_key()) {
                continue;
            }
            notices.push(text.clone());
            let mut d = Capture::new(&c.network, "disclaimer", user).attr("disclaimer.shown_to", user);
            d.channel.clone_from(&c.channel);
            d.to = c.to.iter().chain([&c.from]).filter(|p| p.as_str() != user).cloned().collect();
            d.body = Some(text.clone());
            out.push(d.into_wire(now));
        }
    }
}

fn withheld_notice(flow: Flow, captures: &[Capture]) -> String {
    let c = captures.iter().find(|c| c.is_chat());
    let to = c.map(|c| c.channel.clone().unwrap_or_else(|| c.to.join(","))).unwrap_or_default();
    match flow {
        Flow::Outbound => {
            format!("Verbatim: your message to {to} was NOT sent: the archive cannot record it right now.")
        }
        Flow::Inbound => {
            let from = c.map(|c| c.from.as_str()).unwrap_or("");
            format!("Verbatim: a message from {from} to {to} was withheld: the archive cannot record it right now.")
        }
    }
}
