//! IRC (RFC 1459/2812) decoding, both directions of one client connection.
//!
//! - PRIVMSG/NOTICE to a channel is a channel message, to a nick a private
//!   one; CTCP ACTION (`/me`) is a message marked `irc.ctcp=ACTION`; other
//!   CTCP requests are protocol chatter and not recorded.
//! - JOIN is a `join`; PART, KICK and QUIT are `leave`s; NICK is the old
//!   nick's `leave` and the new nick's `join`.
//! - Membership events are taken from the server's side only (the server
//!   echoes the client's own JOIN when it happens), so a refused JOIN is not
//!   recorded as one.
//! - What the client sends is recorded under the nick the server confirmed
//!   (001 and NICK echoes).

use crate::capture::{text_of, trim_eol, Capture, Flow};

pub const NETWORK: &str = "irc";

/// A parsed line: `[@tags] [:prefix] COMMAND params... [:trailing]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub prefix: Option<&'a str>,
    pub command: &'a str,
    pub params: Vec<&'a str>,
}

/// Parses one line (without its terminator). `None` for an empty line.
pub fn parse(line: &str) -> Option<Message<'_>> {
    let mut rest = line.trim_start_matches(' ');
    if let Some(tagged) = rest.strip_prefix('@') {
        rest = tagged.split_once(' ').map_or("", |(_, r)| r).trim_start_matches(' ');
    }
    let mut prefix = None;
    if let Some(p) = rest.strip_prefix(':') {
        let (p, r) = p.split_once(' ').unwrap_or((p, ""));
        prefix = Some(p);
        rest = r.trim_start_matches(' ');
    }
    let (command, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if command.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            break;
        }
        if let Some(trailing) = rest.strip_prefix(':') {
            params.push(trailing);
            break;
        }
        let (p, r) = rest.split_once(' ').unwrap_or((rest, ""));
        params.push(p);
        rest = r;
    }
    Some(Message { prefix, command, params })
}

/// The nick of a `nick!user@host` prefix; `None` for a server name.
fn nick_of(prefix: &str) -> Option<&str> {
    prefix.split_once('!').map(|(n, _)| n).or_else(|| (!prefix.contains('.')).then_some(prefix))
}

pub fn is_channel(target: &str) -> bool {
    target.starts_with(['#', '&', '+', '!'])
}

/// The per-connection decoder.
#[derive(Debug, Default)]
pub struct Decoder {
    nick: Option<String>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The user's nick as far as it is known.
    pub fn nick(&self) -> Option<&str> {
        self.nick.as_deref()
    }

    /// Decodes one line (with or without its terminator).
    pub fn decode(&mut self, flow: Flow, line: &[u8]) -> Vec<Capture> {
        let (text, encoding) = text_of(trim_eol(line));
        let Some(m) = parse(&text) else { return Vec::new() };
        let mut out = match flow {
            Flow::Outbound => self.client_line(&m),
            Flow::Inbound => self.server_line(&m),
        };
        for c in &mut out {
            c.direction = Some(flow);
            if let Some(enc) = encoding {
                c.attrs.insert("irc.encoding".into(), enc.into());
            }
        }
        out
    }

    fn client_line(&mut self, m: &Message<'_>) -> Vec<Capture> {
        let cmd = m.command.to_ascii_uppercase();
        match cmd.as_str() {
            "NICK" if self.nick.is_none() => {
                self.nick = m.params.first().map(|n| (*n).to_owned());
                Vec::new()
            }
            "PRIVMSG" | "NOTICE" => {
                let me = self.nick.clone().unwrap_or_else(|| "*".to_owned());
                chat(&cmd, &me, m)
            }
            _ => Vec::new(),
        }
    }

    fn server_line(&mut self, m: &Message<'_>) -> Vec<Capture> {
        let cmd = m.command.to_ascii_uppercase();
        if cmd == "001" {
            self.nick = m.params.first().map(|n| (*n).to_owned());
            return Vec::new();
        }
        let Some(who) = m.prefix.and_then(nick_of) else { return Vec::new() };
        let param = |i: usize| m.params.get(i).copied().unwrap_or("");
        match cmd.as_str() {
            // The server's echo of our own message (IRCv3 echo-message) was
            // recorded when it left.
            "PRIVMSG" | "NOTICE" if Some(who) == self.nick.as_deref() => Vec::new(),
            "PRIVMSG" | "NOTICE" => chat(&cmd, who, m),
            "JOIN" if !param(0).is_empty() => {
                let mut c = Capture::new(NETWORK, "join", who);
                c.channel = Some(param(0).to_owned());
                vec![c]
            }
            "PART" if !param(0).is_empty() => {
                let mut c = Capture::new(NETWORK, "leave", who).attr("irc.command", "PART");
                c.channel = Some(param(0).to_owned());
                if m.params.len() > 1 {
                    c = c.attr("irc.reason", param(1));
                }
                vec![c]
            }
            "KICK" if m.params.len() >= 2 => {
                let mut c =
                    Capture::new(NETWORK, "leave", param(1)).attr("irc.command", "KICK").attr("irc.kicked_by", who);
                c.channel = Some(param(0).to_owned());
                if m.params.len() > 2 {
                    c = c.attr("irc.reason", param(2));
                }
                vec![c]
            }
            "QUIT" => {
                vec![Capture::new(NETWORK, "leave", who).attr("irc.command", "QUIT").attr("irc.reason", param(0))]
            }
            "NICK" if !param(0).is_empty() => {
                let new = param(0);
                if Some(who) == self.nick.as_deref() {
                    self.nick = Some(new.to_owned());
                }
                vec![
                    Capture::new(NETWORK, "leave", who).attr("irc.command", "NICK").attr("irc.new_nick", new),
                    Capture::new(NETWORK, "join", new).attr("irc.command", "NICK").attr("irc.old_nick", who),
                ]
            }
            _ => Vec::new(),
        }
    }
}

/// PRIVMSG/NOTICE `targets :text` from `from`, one capture per target.
fn chat(cmd: &str, from: &str, m: &Message<'_>) -> Vec<Capture> {
    let (Some(targets), Some(text)) = (m.params.first(), m.params.get(1)) else { return Vec::new() };
    let (body, ctcp) = match text.strip_prefix('\u{1}') {
        Some(inner) => {
            let inner = inner.strip_suffix('\u{1}').unwrap_or(inner);
            match inner.split_once(' ') {
                Some((verb, rest)) if verb.eq_ignore_ascii_case("ACTION") => (rest.to_owned(), Some("ACTION")),
                None if inner.eq_ignore_ascii_case("ACTION") => (String::new(), Some("ACTION")),
                // VERSION, PING, DCC …: client chatter, not conversation.
                _ => return Vec::new(),
            }
        }
        None => ((*text).to_owned(), None),
    };
    targets
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|target| {
            let mut c = Capture::new(NETWORK, "message", from);
            if is_channel(target) {
                c.channel = Some(target.to_owned());
            } else {
                c.to = vec![target.to_owned()];
            }
            c.body = Some(body.clone());
            if cmd == "NOTICE" {
                c = c.attr("irc.command", "NOTICE");
            }
            if let Some(ctcp) = ctcp {
                c = c.attr("irc.ctcp", ctcp);
            }
            c
        })
        .collect()
}

/// A NOTICE from the proxy to the user (strict-mode refusals, disclaimers).
pub fn notice(nick: &str, text: &str) -> Vec<u8> {
    let text: String = text.chars().filter(|c| !matches!(c, '\r' | '\n' | '\0')).collect();
    format!(":verbatim!verbatim@proxy NOTICE {nick} :{text}\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(d: &mut Decoder, flow: Flow, line: &str) -> Capture {
        let mut got = d.decode(flow, line.as_bytes());
        assert_eq!(got.len(), 1, "{line}: {got:?}");
        got.remove(0)
    }

    #[test]
    fn parses_prefix_params_trailing_and_tags() {
        let m = parse("@time=2026-01-01T00:00:00Z :n!u@h PRIVMSG #chan :hello :world").expect("parse");
        assert_eq!(m, Message { prefix: Some("n!u@h"), command: "PRIVMSG", params: vec!["#chan", "hello :world"] });
        let m = parse("JOIN #a,#b key").expect("parse");
        assert_eq!(m.params, vec!["#a,#b", "key"]);
        assert_eq!(parse("").map(|m| m.command), None);
        assert_eq!(parse("PRIVMSG x :").expect("parse").params, vec!["x", ""]);
    }

    #[test]
    fn messages_both_ways_land_in_the_right_conversations() {
        let mut d = Decoder::new();
        assert!(d.decode(Flow::Outbound, b"NICK alice\r\nUSER a 0 * :A").is_empty());
        assert!(d.decode(Flow::Inbound, b":srv.example 001 alice :Welcome\r\n").is_empty());
        let c = one(&mut d, Flow::Outbound, "PRIVMSG bob :hi bob\r\n");
        assert_eq!((c.from.as_str(), c.to.clone(), c.channel.clone()), ("alice", vec!["bob".to_owned()], None));
        assert_eq!((c.body.as_deref(), c.direction), (Some("hi bob"), Some(Flow::Outbound)));
        let c = one(&mut d, Flow::Inbound, ":bob!b@h PRIVMSG alice :hi alice\n");
        assert_eq!(
            (c.from.as_str(), c.to.clone(), c.direction),
            ("bob", vec!["alice".to_owned()], Some(Flow::Inbound))
        );
        let c = one(&mut d, Flow::Inbound, ":bob!b@h PRIVMSG #desk :morning  all ");
        assert_eq!((c.channel.as_deref(), c.body.as_deref()), (Some("#desk"), Some("morning  all ")));
        let c = one(&mut d, Flow::Outbound, "PRIVMSG #desk :\u{1}ACTION waves\u{1}");
        assert_eq!((c.body.as_deref(), c.attrs.get("irc.ctcp").map(String::as_str)), (Some("waves"), Some("ACTION")));
        assert!(d.decode(Flow::Outbound, b"PRIVMSG bob :\x01VERSION\x01").is_empty());
        let c = one(&mut d, Flow::Outbound, "NOTICE #desk :fyi");
        assert_eq!(c.attrs.get("irc.command").map(String::as_str), Some("NOTICE"));
        assert_eq!(d.decode(Flow::Outbound, b"PRIVMSG #a,bob :both").len(), 2);
        assert!(d.decode(Flow::Inbound, b":alice!a@h PRIVMSG #desk :echo").is_empty(), "echo-message");
        assert!(d.decode(Flow::Inbound, b":srv.example NOTICE * :*** Looking up").is_empty());
    }

    #[test]
    fn membership_and_nick_changes() {
        let mut d = Decoder::new();
        d.decode(Flow::Inbound, b":srv 001 alice :hi");
        assert!(d.decode(Flow::Outbound, b"JOIN #desk").is_empty(), "only the server's echo counts");
        let c = one(&mut d, Flow::Inbound, ":alice!a@h JOIN #desk");
        assert_eq!((c.kind.as_str(), c.channel.as_deref()), ("join", Some("#desk")));
        let c = one(&mut d, Flow::Inbound, ":bob!b@h PART #desk :bye now");
        assert_eq!((c.kind.as_str(), c.from.as_str()), ("leave", "bob"));
        assert_eq!(c.attrs.get("irc.reason").map(String::as_str), Some("bye now"));
        let c = one(&mut d, Flow::Inbound, ":op!o@h KICK #desk carol :spam");
        assert_eq!((c.from.as_str(), c.attrs.get("irc.kicked_by").map(String::as_str)), ("carol", Some("op")));
        let c = one(&mut d, Flow::Inbound, ":dave!d@h QUIT :Quit: gone");
        assert_eq!((c.kind.as_str(), c.channel.clone()), ("leave", None));
        let both = d.decode(Flow::Inbound, b":alice!a@h NICK :alicia");
        assert_eq!(
            both.iter().map(|c| (c.kind.as_str(), c.from.as_str())).collect::<Vec<_>>(),
            vec![("leave", "alice"), ("join", "alicia")]
        );
        assert_eq!(d.nick(), Some("alicia"));
        assert_eq!(one(&mut d, Flow::Outbound, "PRIVMSG bob :x").from, "alicia");
    }

    #[test]
    fn strange_text_is_kept_exactly() {
        let mut d = Decoder::new();
        d.decode(Flow::Inbound, b":s 001 me :hi");
        let c = one(&mut d, Flow::Outbound, "PRIVMSG #x :\u{202e}évil 🎉 \t tab\r\n");
        assert_eq!(c.body.as_deref(), Some("\u{202e}évil 🎉 \t tab"));
        let c = d.decode(Flow::Outbound, b"PRIVMSG #x :caf\xe9").remove(0);
        assert_eq!(
            (c.body.as_deref(), c.attrs.get("irc.encoding").map(String::as_str)),
            (Some("café"), Some("latin1"))
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut d = Decoder::new();
        for line in [&b":"[..], b"@", b"@tag", b": :", b"PRIVMSG", b"PRIVMSG :", b"KICK #a", b"\xff\xfe", b"   "] {
            d.decode(Flow::Inbound, line);
            d.decode(Flow::Outbound, line);
        }
        assert_eq!(notice("me", "a\r\nQUIT"), b":verbatim!verbatim@proxy NOTICE me :aQUIT\r\n".to_vec());
    }
}
