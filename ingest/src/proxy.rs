//! The capture proxy: SOCKS and routed listeners, the way out (direct or
//! through a corporate proxy), protocol choice by destination port, and a
//! connection record for every connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use verbatim_schema::UnixNanos;

use crate::capture::{Capture, Flow, Lines, Piece};
use crate::frontend::lock;
use crate::irc;
use crate::recorder::Recorder;
use crate::relay::{Conn, Opaque, RelayConfig, Session, Unit};
use crate::socks::{self, Failure, Target, Users};
use crate::xmpp::{StartTls, XmppSession};

/// How connections leave the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    Direct,
    /// A corporate SOCKS5 proxy (`host:port`).
    Socks5(String),
    /// A corporate HTTP proxy, by `CONNECT` (`host:port`).
    HttpConnect(String),
}

impl std::str::FromStr for Via {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(a) = s.strip_prefix("socks5://") {
            Ok(Via::Socks5(a.trim_end_matches('/').to_owned()))
        } else if let Some(a) = s.strip_prefix("http://") {
            Ok(Via::HttpConnect(a.trim_end_matches('/').to_owned()))
        } else {
            Err(format!("upstream proxy `{s}`: expected socks5://HOST:PORT or http://HOST:PORT"))
        }
    }
}

/// One allow-list entry: `HOST[:PORT]`, where HOST is a name, an address,
/// `*`, or `*.suffix`, and PORT a number or `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow {
    host: String,
    port: Option<u16>,
}

impl std::str::FromStr for Allow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, "*")) => (h, None),
            Some((h, p)) if !h.ends_with(':') && !h.is_empty() => {
                (h, Some(p.parse().map_err(|_| format!("allow `{s}`: port `{p}` is not a number or *"))?))
            }
            _ => (s, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        Ok(Allow { host, port })
    }
}

impl Allow {
    pub fn matches(&self, t: &Target) -> bool {
        let host = t.host().to_ascii_lowercase();
        let host_ok = match self.host.strip_prefix("*.") {
            _ if self.host == "*" => true,
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => host == self.host,
        };
        host_ok && self.port.is_none_or(|p| p == t.port())
    }
}

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub relay: Arc<RelayConfig>,
    pub irc_ports: Vec<u16>,
    pub xmpp_ports: Vec<u16>,
    /// Longest IRC line decoded (longer ones pass as undecodable).
    pub max_irc_line: usize,
    /// Largest XMPP stanza decoded.
    pub max_stanza: usize,
    pub starttls: StartTls,
    /// Destinations SOCKS clients may reach; empty allows any.
    pub allow: Vec<Allow>,
    pub users: Option<Users>,
    pub via: Via,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
}

/// The proxy: listeners share it.
#[derive(Debug)]
pub struct Proxy {
    pub config: ProxyConfig,
    pub recorder: Recorder,
}

/// How a connection came in.
#[derive(Clone, Debug)]
enum Entry {
    Socks { version: u8, user: Option<String> },
    Routed,
}

impl Proxy {
    /// Serves SOCKS4/4a/5 clients until the listener fails.
    pub async fn serve_socks(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((mut client, peer)) = listener.accept().await else { continue };
            let proxy = self.clone();
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let users = proxy.config.users.as_ref();
                let req = match tokio::time::timeout(proxy.config.handshake_timeout, socks::accept(&mut client, users))
                    .await
                {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => return tracing::info!(%peer, "SOCKS handshake refused: {e}"),
                    Err(_) => return tracing::info!(%peer, "SOCKS handshake timed out"),
                };
                let entry = Entry::Socks { version: req.version, user: req.user.clone() };
                if !proxy.allowed(&req.target) {
                    let _ = socks::reply(&mut client, req.version, Err(Failure::NotAllowed)).await;
                    proxy.record_connection(&entry, peer, &req.target, None, "refused: not on the allow-list", (0, 0));
                    return;
                }
                let upstream = match proxy.connect(&req.target).await {
                    Ok(u) => u,
                    Err(e) => {
                        let _ = socks::reply(&mut client, req.version, Err(failure_of(&e))).await;
                        proxy.record_connection(&entry, peer, &req.target, None, &format!("failed: {e}"), (0, 0));
                        return;
                    }
                };
                let bound = upstream.local_addr().unwrap_or(peer);
                if socks::reply(&mut client, req.version, Ok(bound)).await.is_err() {
                    return;
                }
                proxy.relay(entry, client, peer, upstream, req.target).await;
            });
        }
    }

    /// Serves a routed listener: every client is relayed to `upstream`, as
    /// when DNS sends the network's host name to the proxy.
    pub async fn serve_routed(self: Arc<Self>, listener: TcpListener, upstream: Target) {
        loop {
            let Ok((client, peer)) = listener.accept().await else { continue };
            let (proxy, target) = (self.clone(), upstream.clone());
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                match proxy.connect(&target).await {
                    Ok(up) => proxy.relay(Entry::Routed, client, peer, up, target).await,
                    Err(e) => {
                        tracing::warn!(%peer, %target, "routed connection failed: {e}");
                        proxy.record_connection(&Entry::Routed, peer, &target, None, &format!("failed: {e}"), (0, 0));
                    }
                }
            });
        }
    }

    fn allowed(&self, t: &Target) -> bool {
        self.config.allow.is_empty() || self.config.allow.iter().any(|a| a.matches(t))
    }

    fn session_for(&self, t: &Target) -> Box<dyn Session> {
        let port = t.port();
        if self.config.irc_ports.contains(&port) {
            Box::new(IrcSession::new(self.config.max_irc_line))
        } else if self.config.xmpp_ports.contains(&port) {
            Box::new(XmppSession::new(self.config.starttls, self.config.max_stanza))
        } else {
            Box::new(Opaque)
        }
    }

    async fn relay(&self, entry: Entry, client: TcpStream, peer: SocketAddr, upstream: TcpStream, target: Target) {
        let _ = upstream.set_nodelay(true);
        let fallback = match &entry {
            Entry::Socks { user: Some(u), .. } => u.clone(),
            _ => peer.ip().to_string(),
        };
        let started = UnixNanos::now();
        let conn =
            Arc::new(Conn::new(self.config.relay.clone(), self.recorder.clone(), self.session_for(&target), fallback));
        let bytes = conn.clone().run(client, upstream).await;
        let network = lock(&conn.session).network();
        let user = conn.user();
        let mut c = connection(&entry, peer, &target, started, "closed", bytes);
        c.network = network.to_owned();
        c.from = user;
        self.recorder.submit(vec![c.into_wire(started)]);
    }

    fn record_connection(
        &self,
        entry: &Entry,
        peer: SocketAddr,
        target: &Target,
        started: Option<UnixNanos>,
        outcome: &str,
        bytes: (u64, u64),
    ) {
        let started = started.unwrap_or_else(UnixNanos::now);
        let c = connection(entry, peer, target, started, outcome, bytes);
        self.recorder.submit(vec![c.into_wire(started)]);
    }

    async fn connect(&self, t: &Target) -> std::io::Result<TcpStream> {
        let timeout = self.config.connect_timeout;
        let dial = |addr: String| async move {
            tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
        };
        match &self.config.via {
            Via::Direct => match t {
                Target::Addr(a) => dial(a.to_string()).await,
                Target::Domain(d, p) => dial(format!("{d}:{p}")).await,
            },
            Via::Socks5(proxy) => {
                let mut s = dial(proxy.clone()).await?;
                socks::connect_via(&mut s, t).await?;
                Ok(s)
            }
            Via::HttpConnect(proxy) => {
                let mut s = dial(proxy.clone()).await?;
                http_connect(&mut s, t).await?;
                Ok(s)
            }
        }
    }
}

/// The record every connection leaves: who, where, bytes, start and end.
fn connection(
    entry: &Entry,
    peer: SocketAddr,
    target: &Target,
    started: UnixNanos,
    outcome: &str,
    (up, down): (u64, u64),
) -> Capture {
    let (via, user) = match entry {
        Entry::Socks { version, user } => (format!("socks{version}"), user.clone()),
        Entry::Routed => ("routed".to_owned(), None),
    };
    let mut c = Capture::new("tcp", "connection", &user.unwrap_or_else(|| peer.ip().to_string()))
        .attr("conn.client", peer.to_string())
        .attr("conn.target", target.to_string())
        .attr("conn.via", via)
        .attr("conn.outcome", outcome)
        .attr("conn.bytes_up", up.to_string())
        .attr("conn.bytes_down", down.to_string())
        .attr("conn.started", started.to_rfc3339())
        .attr("conn.ended", UnixNanos::now().to_rfc3339());
    c.direction = Some(Flow::Outbound);
    c
}

fn failure_of(e: &std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Failure::ConnectionRefused,
        std::io::ErrorKind::TimedOut => Failure::HostUnreachable,
        _ => Failure::General,
    }
}

/// `CONNECT host:port` through a corporate HTTP proxy.
async fn http_connect(s: &mut TcpStream, t: &Target) -> std::io::Result<()> {
    let authority = match t {
        Target::Addr(a) => a.to_string(),
        Target::Domain(d, p) => format!("{d}:{p}"),
    };
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes()).await?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).await?;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if line.len() > 8192 {
            return Err(std::io::Error::other("corporate HTTP proxy: header line too long"));
        }
    }
    if !r.buffer().is_empty() {
        return Err(std::io::Error::other("corporate HTTP proxy: data after the CONNECT answer"));
    }
    match status.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        _ => Err(std::io::Error::other(format!("corporate HTTP proxy answered `{}`", status.trim_end()))),
    }
}

/// IRC over one connection: line framing both ways and the decoder.
#[derive(Debug)]
pub struct IrcSession {
    lines: [Lines; 2],
    decoder: irc::Decoder,
    max_line: usize,
    /// Inside a line past `max_line`, per direction.
    in_oversize: [bool; 2],
}

impl IrcSession {
    pub fn new(max_line: usize) -> Self {
        IrcSession {
            lines: [Lines::new(max_line), Lines::new(max_line)],
            decoder: irc::Decoder::new(),
            max_line,
            in_oversize: [false; 2],
        }
    }
}

impl Session for IrcSession {
    fn feed(&mut self, flow: Flow, data: &[u8]) -> Vec<Unit> {
        let side = usize::from(flow == Flow::Inbound);
        let pieces = self.lines[side].push(data);
        pieces
            .into_iter()
            .map(|piece| match piece {
                Piece::Line(bytes) => {
                    let captures = self.decoder.decode(flow, &bytes);
                    Unit { bytes, captures, ..Unit::default() }
                }
                Piece::Oversize { bytes, end } => {
                    let why = (!self.in_oversize[side])
                        .then(|| format!("an IRC line over {} bytes was not decoded", self.max_line));
                    self.in_oversize[side] = !end;
                    Unit { bytes, opaque: true, undecoded: why, ..Unit::default() }
                }
            })
            .collect()
    }

    fn notice(&self, text: &str) -> Vec<u8> {
        irc::notice(self.decoder.nick().unwrap_or("*"), text)
    }

    fn user(&self) -> Option<String> {
        self.decoder.nick().map(str::to_owned)
    }

    fn network(&self) -> &'static str {
        irc::NETWORK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_rules() {
        let t = |h: &str, p| Target::Domain(h.into(), p);
        let a: Allow = "*.libera.chat:6697".parse().expect("rule");
        assert!(a.matches(&t("irc.libera.chat", 6697)));
        assert!(!a.matches(&t("libera.chat.evil", 6697)));
        assert!(!a.matches(&t("irc.libera.chat", 6667)));
        let a: Allow = "127.0.0.1:*".parse().expect("rule");
        assert!(a.matches(&Target::Addr("127.0.0.1:1".parse().expect("addr"))));
        let a: Allow = "[::1]:5222".parse().expect("rule");
        assert!(a.matches(&Target::Addr("[::1]:5222".parse().expect("addr"))));
        assert!("*".parse::<Allow>().expect("rule").matches(&t("x", 1)));
        assert!("host:port".parse::<Allow>().is_err());
    }

    /// A stand-in corporate HTTP proxy: answers CONNECT with `status`,
    /// then echoes.
    async fn http_proxy(status: &'static str) -> SocketAddr {
        use tokio::io::AsyncReadExt;
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read_exact(&mut b).await.is_ok() {
                head.push(b[0]);
            }
            assert!(head.starts_with(b"CONNECT irc.example:6667 HTTP/1.1\r\n"), "{}", String::from_utf8_lossy(&head));
            s.write_all(format!("HTTP/1.1 {status}\r\nProxy-Agent: test\r\n\r\n").as_bytes()).await.expect("answer");
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                s.write_all(&buf[..n]).await.expect("echo");
            }
        });
        addr
    }

    #[tokio::test]
    async fn leaves_through_a_corporate_http_proxy() {
        use tokio::io::AsyncReadExt;
        let target = Target::Domain("irc.example".into(), 6667);
        let mut s = TcpStream::connect(http_proxy("200 Connection established").await).await.expect("connect");
        http_connect(&mut s, &target).await.expect("CONNECT accepted");
        s.write_all(b"NICK a\r\n").await.expect("write");
        let mut back = [0u8; 8];
        s.read_exact(&mut back).await.expect("echo");
        assert_eq!(&back, b"NICK a\r\n");
        let mut s = TcpStream::connect(http_proxy("403 Forbidden").await).await.expect("connect");
        let err = http_connect(&mut s, &target).await.expect_err("refused");
        assert!(err.to_string().contains("403 Forbidden"), "{err}");
    }

    #[tokio::test]
    async fn leaves_through_a_corporate_socks5_proxy() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let req = socks::accept(&mut s, None).await.expect("handshake");
            socks::reply(&mut s, 5, Ok("127.0.0.1:1".parse().expect("addr"))).await.expect("reply");
            req.target
        });
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let target = Target::Domain("irc.example".into(), 6667);
        socks::connect_via(&mut s, &target).await.expect("CONNECT through SOCKS5");
        assert_eq!(server.await.expect("server"), target);
    }

    #[test]
    fn an_oversize_irc_line_is_named_once() {
        let mut s = IrcSession::new(32);
        let mut units = s.feed(Flow::Outbound, &[b'a'; 100]);
        units.extend(s.feed(Flow::Outbound, &[b'b'; 100]));
        units.extend(s.feed(Flow::Outbound, b"\r\nPRIVMSG #a :ok\r\n"));
        assert_eq!(units.iter().filter(|u| u.undecoded.is_some()).count(), 1, "{units:?}");
        assert!(units[..units.len() - 1].iter().all(|u| u.opaque));
        assert_eq!(units.last().map(|u| u.captures.len()), Some(1));
        assert_eq!(units.iter().map(|u| u.bytes.len()).sum::<usize>(), 218);
    }
}
