//! XMPP client-to-server (RFC 6120/6121, cleartext) decoding.
//!
//! A small framer cuts each direction into the stream header, whole
//! top-level stanzas and the closing tag, without building a tree; each
//! `<message>` stanza is then read with quick-xml. Chat and groupchat
//! messages with a `<body>` are recorded, both directions.
//!
//! STARTTLS policy: `block` removes the `<starttls/>` offer from the
//! server's stream features so the stream stays recordable (the server
//! must not require TLS); `allow` lets TLS through, after which the stream
//! is passed on undecoded and a `gap` event says the content could not be
//! captured.

use std::collections::HashMap;

use quick_xml::events::Event;

use crate::capture::{Capture, Flow};
use crate::relay::{Session, Unit};
use framer::{tag_end, FrameError};
pub use framer::{Frame, Framer};

mod framer;

pub const NETWORK: &str = "xmpp";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartTls {
    Block,
    Allow,
}

impl std::str::FromStr for StartTls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "block" => Ok(Self::Block),
            "allow" => Ok(Self::Allow),
            _ => Err(format!("STARTTLS policy `{s}`: expected block or allow")),
        }
    }
}

/// A parsed `<message>`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Message {
    kind: String,
    from: Option<String>,
    to: Option<String>,
    id: Option<String>,
    body: Option<String>,
}

fn parse_message(stanza: &[u8]) -> Option<Message> {
    let mut r = quick_xml::Reader::from_reader(stanza);
    r.config_mut().trim_text(false);
    let mut m = Message::default();
    let mut depth = 0;
    let mut in_body = false;
    let mut body = String::new();
    loop {
        match r.read_event().ok()? {
            Event::Start(e) if depth == 0 => {
                root(&e, &mut m)?;
                depth = 1;
            }
            Event::Empty(e) if depth == 0 => {
                root(&e, &mut m)?;
                break;
            }
            Event::Start(e) => {
                depth += 1;
                in_body = depth == 2 && e.local_name().as_ref() == b"body" && m.body.is_none();
            }
            Event::End(_) => {
                if in_body && depth == 2 {
                    m.body = Some(std::mem::take(&mut body));
                    in_body = false;
                }
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Event::Empty(e) if depth == 1 && e.local_name().as_ref() == b"body" && m.body.is_none() => {
                m.body = Some(String::new());
            }
            Event::Text(t) if in_body => body.push_str(&t.unescape().ok()?),
            Event::CData(c) if in_body => body.push_str(std::str::from_utf8(&c.into_inner()).ok()?),
            Event::Eof => break,
            _ => {}
        }
    }
    if m.kind.is_empty() {
        m.kind = "normal".into();
    }
    Some(m)
}

/// Reads the `<message>` element's attributes.
fn root(e: &quick_xml::events::BytesStart<'_>, m: &mut Message) -> Option<()> {
    if e.local_name().as_ref() != b"message" {
        return None;
    }
    for a in e.attributes().flatten() {
        let v = a.unescape_value().ok()?.into_owned();
        match a.key.local_name().as_ref() {
            b"type" => m.kind = v,
            b"from" => m.from = Some(v),
            b"to" => m.to = Some(v),
            b"id" => m.id = Some(v),
            _ => {}
        }
    }
    Some(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn bare(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(b, _)| b)
}

fn resource(jid: &str) -> Option<&str> {
    jid.split_once('/').map(|(_, r)| r)
}

/// XMPP over one client connection.
#[derive(Debug)]
pub struct XmppSession {
    framers: [Framer; 2],
    starttls: StartTls,
    /// The user's full JID once the server bound it; the domain before that.
    jid: Option<String>,
    domain: Option<String>,
    /// Rooms joined and the user's nick in each.
    rooms: HashMap<String, String>,
    /// Undecodable from here on (TLS, broken XML, a stanza too large).
    opaque: bool,
    tls_requested: bool,
}

impl XmppSession {
    pub fn new(starttls: StartTls, max_stanza: usize) -> Self {
        XmppSession {
            framers: [Framer::new(max_stanza), Framer::new(max_stanza)],
            starttls,
            jid: None,
            domain: None,
            rooms: HashMap::new(),
            opaque: false,
            tls_requested: false,
        }
    }

    fn me(&self) -> String {
        self.jid.as_deref().map(bare).map(str::to_owned).or_else(|| self.domain.clone()).unwrap_or_else(|| "*".into())
    }

    fn frame(&mut self, flow: Flow, frame: Frame) -> Unit {
        match frame {
            Frame::Header(bytes) => {
                if flow == Flow::Outbound {
                    if let Some(to) = attr_of(&bytes, "stream:stream", "to") {
                        self.domain = Some(to);
                    }
                }
                Unit::pass(bytes)
            }
            Frame::Other(bytes) => Unit::pass(bytes),
            Frame::Stanza(bytes) => self.stanza(flow, bytes),
        }
    }

    fn stanza(&mut self, flow: Flow, bytes: Vec<u8>) -> Unit {
        let name = element_name(&bytes);
        match (flow, name.as_str()) {
            (Flow::Inbound, "stream:features") if self.starttls == StartTls::Block => {
                return Unit::pass(remove_element(&bytes, "starttls"));
            }
            (Flow::Outbound, "starttls") => self.tls_requested = true,
            (Flow::Inbound, "proceed") if self.tls_requested => {
                self.opaque = true;
                let gap = Capture::new(NETWORK, "gap", &self.me());
                let why = "XMPP STARTTLS: the stream is encrypted from here on; its content could not be captured";
                return Unit { bytes, captures: vec![Capture { body: Some(why.into()), ..gap }], ..Unit::default() };
            }
            (Flow::Inbound, "success") => {
                // SASL success: both sides open a new stream.
                self.framers.iter_mut().for_each(Framer::restart);
            }
            (Flow::Inbound, "iq") => {
                if let Some(jid) = inner_text(&bytes, "jid") {
                    self.jid = Some(jid);
                }
            }
            (Flow::Outbound, "presence") => {
                if let Some(to) = attr_of(&bytes, "presence", "to") {
                    if let Some(nick) = resource(&to) {
                        let room = bare(&to).to_owned();
                        if attr_of(&bytes, "presence", "type").as_deref() == Some("unavailable") {
                            self.rooms.remove(&room);
                        } else if contains(&bytes, b"http://jabber.org/protocol/muc") {
                            self.rooms.insert(room, nick.to_owned());
                        }
                    }
                }
            }
            (_, "message") => return self.message(flow, bytes),
            _ => {}
        }
        Unit::pass(bytes)
    }

    fn message(&mut self, flow: Flow, bytes: Vec<u8>) -> Unit {
        let Some(m) = parse_message(&bytes) else {
            return Unit {
                bytes,
                undecoded: Some("an XMPP message that is not well-formed".into()),
                ..Unit::default()
            };
        };
        let Some(body) = m.body.clone() else { return Unit::pass(bytes) };
        if !matches!(m.kind.as_str(), "chat" | "normal" | "groupchat") {
            return Unit::pass(bytes);
        }
        let me = self.me();
        let mut c = Capture::new(NETWORK, "message", "");
        match (flow, m.kind.as_str()) {
            (Flow::Outbound, "groupchat") => {
                c.from = me;
                c.channel = m.to.as_deref().map(bare).map(str::to_owned);
            }
            (Flow::Inbound, "groupchat") => {
                let from = m.from.clone().unwrap_or_default();
                let room = bare(&from).to_owned();
                let nick = resource(&from).unwrap_or(&room).to_owned();
                // The room reflects our own messages back: recorded when sent.
                if self.rooms.get(&room) == Some(&nick) {
                    return Unit::pass(bytes);
                }
                c.from = nick;
                c.channel = Some(room);
            }
            (Flow::Outbound, _) => {
                c.from = me;
                c.to = m.to.as_deref().map(bare).map(str::to_owned).into_iter().collect();
            }
            (Flow::Inbound, _) => {
                c.from = m.from.as_deref().map(bare).unwrap_or("*").to_owned();
                c.to = vec![m.to.as_deref().map(bare).map(str::to_owned).unwrap_or(me)];
            }
        }
        if c.to.is_empty() && c.channel.is_none() {
            return Unit::pass(bytes);
        }
        c.body = Some(body);
        c.direction = Some(flow);
        c = c.attr("xmpp.type", m.kind.clone());
        for (k, v) in [("xmpp.from", &m.from), ("xmpp.to", &m.to), ("xmpp.id", &m.id)] {
            if let Some(v) = v {
                c = c.attr(k, v.clone());
            }
        }
        Unit { bytes, captures: vec![c], ..Unit::default() }
    }
}

impl Session for XmppSession {
    fn feed(&mut self, flow: Flow, data: &[u8]) -> Vec<Unit> {
        if self.opaque {
            return vec![Unit::pass(data.to_vec())];
        }
        let side = usize::from(flow == Flow::Inbound);
        let (frames, err) = self.framers[side].push(data);
        let mut units: Vec<Unit> = frames.into_iter().map(|f| self.frame(flow, f)).collect();
        if let Some(e) = err {
            // From here the stream cannot be followed: pass it on (the server
            // will judge it) and say so once.
            self.opaque = true;
            let why = match e {
                FrameError::TooLarge(max) => {
                    format!("an XMPP stanza over {max} bytes; the rest of the stream was not decoded")
                }
                FrameError::Malformed(m) => format!("XMPP stream not well-formed ({m}); the rest was not decoded"),
            };
            let bytes = self.framers[side].rest();
            tracing::debug!(flow = flow.as_str(), "{why}: {}", String::from_utf8_lossy(&bytes));
            units.push(Unit { bytes, opaque: true, undecoded: Some(why), ..Unit::default() });
        }
        units
    }

    fn notice(&self, text: &str) -> Vec<u8> {
        let to = self.jid.clone().unwrap_or_else(|| self.me());
        let from = self.domain.clone().unwrap_or_else(|| "verbatim".into());
        format!(
            "<message type='headline' from='{}' to='{}'><body>{}</body></message>",
            escape(&from),
            escape(&to),
            escape(text)
        )
        .into_bytes()
    }

    /// A message the user sent that was withheld is answered as the network
    /// would answer an undeliverable one: an error stanza from the recipient
    /// with the message's id (RFC 6120 §8.3), `wait` / resource-constraint.
    fn refuse(&self, flow: Flow, captures: &[Capture], text: &str) -> Vec<u8> {
        let chat = captures.iter().find(|c| c.is_chat());
        let (Flow::Outbound, Some(c)) = (flow, chat) else { return self.notice(text) };
        let from = c.attrs.get("xmpp.to").cloned().or_else(|| c.channel.clone()).unwrap_or_default();
        let to = self.jid.clone().unwrap_or_else(|| self.me());
        let id = c.attrs.get("xmpp.id").map(|i| format!(" id='{}'", escape(i))).unwrap_or_default();
        format!(
            "<message type='error' from='{}' to='{}'{id}><body>{}</body><error type='wait'>\
             <resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>{}</text></error></message>",
            escape(&from),
            escape(&to),
            escape(c.body.as_deref().unwrap_or("")),
            escape(text)
        )
        .into_bytes()
    }

    fn user(&self) -> Option<String> {
        self.jid.as_deref().map(|j| bare(j).to_owned())
    }

    fn network(&self) -> &'static str {
        NETWORK
    }
}

fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// The qualified name of the element a stanza starts with.
fn element_name(stanza: &[u8]) -> String {
    let s = stanza.strip_prefix(b"<").unwrap_or(stanza);
    let end = s.iter().position(|b| b.is_ascii_whitespace() || *b == b'>' || *b == b'/').unwrap_or(s.len());
    String::from_utf8_lossy(&s[..end]).into_owned()
}

/// The value of `attr` on the first `element` tag in `bytes`.
fn attr_of(bytes: &[u8], element: &str, attr: &str) -> Option<String> {
    let mut r = quick_xml::Reader::from_reader(bytes);
    loop {
        match r.read_event() {
            Ok(Event::Start(e) | Event::Empty(e)) if e.name().as_ref() == element.as_bytes() => {
                return e
                    .attributes()
                    .flatten()
                    .find(|a| a.key.as_ref() == attr.as_bytes())
                    .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()));
            }
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

/// The text of the first `local` element anywhere in `bytes`.
fn inner_text(bytes: &[u8], local: &str) -> Option<String> {
    let mut r = quick_xml::Reader::from_reader(bytes);
    let mut inside = false;
    loop {
        match r.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == local.as_bytes() => inside = true,
            Ok(Event::Text(t)) if inside => return t.unescape().ok().map(|t| t.into_owned()),
            Ok(Event::End(_)) if inside => return None,
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

/// `bytes` without the child element(s) named `local` (with any prefix).
fn remove_element(bytes: &[u8], local: &str) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let open = format!("<{local}");
    while let Some(start) = out.windows(open.len()).position(|w| w == open.as_bytes()) {
        let after = &out[start + open.len()..];
        if !after.first().is_some_and(|b| b.is_ascii_whitespace() || *b == b'/' || *b == b'>') {
            break;
        }
        let Ok(Some(tag_len)) = tag_end(&out[start..]) else { break };
        let end = if out[start..start + tag_len].ends_with(b"/>") {
            start + tag_len
        } else {
            let close = format!("</{local}>");
            match out[start..].windows(close.len()).position(|w| w == close.as_bytes()) {
                Some(i) => start + i + close.len(),
                None => break,
            }
        };
        out.drain(start..end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_OPEN: &str = "<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client' \
                               xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

    /// A session whose streams are open and whose user is bound as alice@example.test/desk.
    fn bound_session() -> XmppSession {
        let mut s = XmppSession::new(StartTls::Block, 1 << 16);
        s.feed(Flow::Outbound, CLIENT_OPEN.as_bytes());
        s.feed(Flow::Inbound, b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' from='example.test'>");
        s.feed(Flow::Inbound, b"<iq type='result' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>alice@example.test/desk</jid></bind></iq>");
        s
    }

    #[test]
    fn messages_both_ways_and_groupchat() {
        let mut s = bound_session();
        let u = s.feed(
            Flow::Outbound,
            "<message to='bob@example.test/x' type='chat' id='m1'><body>hé &amp; 🎉\n2nd line</body></message>"
                .as_bytes(),
        );
        let c = &u[0].captures[0];
        assert_eq!(
            (c.from.as_str(), c.to.clone(), c.body.as_deref()),
            ("alice@example.test", vec!["bob@example.test".to_owned()], Some("hé & 🎉\n2nd line"))
        );
        let u = s.feed(
            Flow::Inbound,
            b"<message from='bob@example.test/x' to='alice@example.test/desk' type='chat'><body>back</body></message>",
        );
        let c = &u[0].captures[0];
        assert_eq!(
            (c.from.as_str(), c.to[0].as_str(), c.direction),
            ("bob@example.test", "alice@example.test", Some(Flow::Inbound))
        );
        assert!(s.feed(Flow::Inbound, b"<message from='bob@example.test/x' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>")[0].captures.is_empty(), "no body, no message");
        s.feed(
            Flow::Outbound,
            b"<presence to='desk@rooms.example.test/alice'><x xmlns='http://jabber.org/protocol/muc'/></presence>",
        );
        let u = s
            .feed(Flow::Outbound, b"<message to='desk@rooms.example.test' type='groupchat'><body>all</body></message>");
        assert_eq!(u[0].captures[0].channel.as_deref(), Some("desk@rooms.example.test"));
        let echo = s.feed(
            Flow::Inbound,
            b"<message from='desk@rooms.example.test/alice' type='groupchat'><body>all</body></message>",
        );
        assert!(echo[0].captures.is_empty(), "the room's echo of our own message");
        let u = s.feed(
            Flow::Inbound,
            b"<message from='desk@rooms.example.test/bob' type='groupchat'><body>hi</body></message>",
        );
        assert_eq!(
            (u[0].captures[0].from.as_str(), u[0].captures[0].channel.as_deref()),
            ("bob", Some("desk@rooms.example.test"))
        );
    }

    #[test]
    fn starttls_block_removes_the_offer_and_allow_records_a_gap() {
        let features = b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>";
        let open = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
        let mut s = XmppSession::new(StartTls::Block, 1 << 16);
        s.feed(Flow::Inbound, open);
        let u = s.feed(Flow::Inbound, features);
        let out = String::from_utf8(u[0].bytes.clone()).expect("utf8");
        assert!(!out.contains("starttls") && out.contains("<mechanism>PLAIN</mechanism>"), "{out}");

        let mut s = XmppSession::new(StartTls::Allow, 1 << 16);
        s.feed(Flow::Outbound, CLIENT_OPEN.as_bytes());
        s.feed(Flow::Inbound, open);
        assert_eq!(s.feed(Flow::Inbound, features)[0].bytes, features.to_vec());
        s.feed(Flow::Outbound, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        let u = s.feed(Flow::Inbound, b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        assert_eq!(u[0].captures[0].kind, "gap");
        assert_eq!(
            s.feed(Flow::Outbound, b"\x16\x03\x01\x00\x05hello")[0].bytes,
            b"\x16\x03\x01\x00\x05hello".to_vec()
        );
    }

    #[test]
    fn a_withheld_message_is_answered_with_an_error_stanza() {
        let mut s = bound_session();
        let u = s.feed(
            Flow::Outbound,
            b"<message to='bob@example.test' type='chat' id='m7'><body>a &lt; b</body></message>",
        );
        let out = String::from_utf8(s.refuse(Flow::Outbound, &u[0].captures, "not recorded")).expect("utf8");
        assert!(
            out.starts_with("<message type='error' from='bob@example.test' to='alice@example.test/desk' id='m7'>"),
            "{out}"
        );
        assert!(
            out.contains("<resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>")
                && out.contains("a &lt; b")
        );
        let inbound = String::from_utf8(s.refuse(Flow::Inbound, &u[0].captures, "withheld")).expect("utf8");
        assert!(inbound.starts_with("<message type='headline'"), "{inbound}");
    }

    #[test]
    fn broken_or_huge_xml_passes_on_undecoded_with_a_reason() {
        for bad in [&b"<a <b>"[..], b"<!DOCTYPE x [<!ENTITY e 'boom'>]>"] {
            let mut s = XmppSession::new(StartTls::Block, 1 << 16);
            s.feed(Flow::Outbound, CLIENT_OPEN.as_bytes());
            let u = s.feed(Flow::Outbound, bad);
            assert!(u[0].undecoded.is_some() && u[0].opaque, "{u:?}");
            assert_eq!(u[0].bytes, bad.to_vec());
        }
        let mut s = XmppSession::new(StartTls::Block, 64);
        s.feed(Flow::Outbound, CLIENT_OPEN.as_bytes());
        let big = format!("<message><body>{}", "x".repeat(100));
        let u = s.feed(Flow::Outbound, big.as_bytes());
        assert!(u[0].undecoded.as_deref().is_some_and(|w| w.contains("over 64 bytes")));
        assert_eq!(u[0].bytes, big.as_bytes());
    }
}
