//! SIP MESSAGE (RFC 3428) listener logic for enterprise IM connectors:
//! parsing requests, turning MESSAGE bodies (`text/plain`, `message/cpim`
//! per RFC 3862) into captures, and building the responses. The socket side
//! lives in the `verbatim-sip` binary.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::capture::Capture;

pub const NETWORK: &str = "sip";

/// A parsed SIP request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub uri: String,
    /// Header name (lower case, compact forms expanded) → values in order.
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.first()).map(String::as_str)
    }
}

/// Why a request cannot be handled; `status` is the SIP answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal { status, reason: reason.into() }
}

/// How much of `buf` one message takes (head, blank line, Content-Length
/// body), for stream transports: `Ok(None)` until it is all there.
pub fn message_len(buf: &[u8], max: usize) -> Result<Option<usize>, Refusal> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
        if buf.len() > max {
            return Err(refuse(413, "Request Entity Too Large"));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| refuse(400, "Bad Request: headers not UTF-8"))?;
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| matches!(k.trim().to_ascii_lowercase().as_str(), "content-length" | "l"))
        .map(|(_, v)| v.trim().parse::<usize>().map_err(|_| refuse(400, "Bad Request: Content-Length")))
        .transpose()?
        .ok_or_else(|| refuse(400, "Bad Request: a stream transport needs Content-Length"))?;
    if head_end + len > max {
        return Err(refuse(413, "Request Entity Too Large"));
    }
    Ok((buf.len() >= head_end + len).then_some(head_end + len))
}

/// Parses one whole request.
pub fn parse(bytes: &[u8]) -> Result<Request, Refusal> {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| bytes.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2)))
        .ok_or_else(|| refuse(400, "Bad Request: no end of headers"))?;
    let head = std::str::from_utf8(&bytes[..head_end.0]).map_err(|_| refuse(400, "Bad Request: headers not UTF-8"))?;
    let mut lines = head.split('\n').map(|l| l.trim_end_matches('\r'));
    let start = lines.next().unwrap_or("");
    let mut parts = start.split(' ');
    let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(400, "Bad Request: request line"));
    };
    if version != "SIP/2.0" || method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(refuse(400, "Bad Request: request line"));
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            // A folded continuation line.
            let Some(v) = last.as_ref().and_then(|k| headers.get_mut(k)).and_then(|v| v.last_mut()) else {
                return Err(refuse(400, "Bad Request: continuation without a header"));
            };
            v.push(' ');
            v.push_str(line.trim());
            continue;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| refuse(400, format!("Bad Request: header line `{line}`")))?;
        let name = expand(&k.trim().to_ascii_lowercase());
        headers.entry(name.clone()).or_default().push(v.trim().to_owned());
        last = Some(name);
    }
    let mut body = bytes[head_end.1..].to_vec();
    if let Some(len) = headers.get("content-length").and_then(|v| v.first()) {
        let len: usize = len.parse().map_err(|_| refuse(400, "Bad Request: Content-Length"))?;
        if len > body.len() {
            return Err(refuse(400, "Bad Request: body shorter than Content-Length"));
        }
        body.truncate(len);
    }
    for required in ["via", "from", "to", "call-id", "cseq"] {
        if !headers.contains_key(required) {
            return Err(refuse(400, format!("Missing Header: {required}")));
        }
    }
    Ok(Request { method: method.to_owned(), uri: uri.to_owned(), headers, body })
}

fn expand(name: &str) -> String {
    match name {
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "l" => "content-length",
        "c" => "content-type",
        "v" => "via",
        other => other,
    }
    .to_owned()
}

/// `user@host` of a From/To value (`"Name" <sip:user@host>;tag=x`).
pub fn address(value: &str) -> Option<String> {
    let uri = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or(value).trim(),
    };
    let uri = uri.strip_prefix("sips:").or_else(|| uri.strip_prefix("sip:")).or_else(|| uri.strip_prefix("im:"))?;
    let uri = uri.split([';', '?']).next().unwrap_or(uri);
    (!uri.is_empty()).then(|| uri.to_ascii_lowercase())
}

/// The text of a MESSAGE and, for CPIM, the sender and recipient it names.
fn message_text(req: &Request) -> Result<(String, Option<String>, Option<String>), Refusal> {
    let ctype = req.header("content-type").unwrap_or("text/plain").to_ascii_lowercase();
    let mime = ctype.split(';').next().unwrap_or("").trim();
    let utf8 = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| refuse(400, "Bad Request: body not UTF-8"));
    match mime {
        "text/plain" => Ok((utf8(&req.body)?, None, None)),
        "message/cpim" => {
            // CPIM headers, blank line, MIME headers, blank line, content.
            let text = utf8(&req.body)?;
            let (cpim, rest) = split_block(&text).ok_or_else(|| refuse(400, "Bad Request: CPIM without headers"))?;
            let (mime_head, content) =
                split_block(rest).ok_or_else(|| refuse(400, "Bad Request: CPIM without a MIME part"))?;
            let inner = mime_head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_ascii_lowercase())
                .unwrap_or_else(|| "text/plain".into());
            if !inner.starts_with("text/plain") {
                return Err(refuse(415, format!("Unsupported Media Type: CPIM content {inner}")));
            }
            let field = |name: &str| {
                cpim.lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim() == name)
                    .and_then(|(_, v)| address(v))
            };
            Ok((content.to_owned(), field("From"), field("To")))
        }
        other => Err(refuse(415, format!("Unsupported Media Type: {other}"))),
    }
}

/// Splits at the first blank line (CRLF or LF).
fn split_block(s: &str) -> Option<(&str, &str)> {
    let crlf = s.find("\r\n\r\n").map(|i| (i, i + 4));
    let lf = s.find("\n\n").map(|i| (i, i + 2));
    let (a, b) = match (crlf, lf) {
        (Some(c), Some(l)) => std::cmp::min_by_key(c, l, |x| x.0),
        (c, l) => c.or(l)?,
    };
    Some((&s[..a], &s[b..]))
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Record this, then answer 200 (or 503 if it cannot be recorded).
    Record(Capture),
    /// Answer at once.
    Answer(u16, String),
}

/// Decides on a parsed request.
pub fn handle(req: &Request) -> Action {
    match req.method.as_str() {
        "OPTIONS" => Action::Answer(200, "OK".into()),
        "MESSAGE" => {
            let (text, cpim_from, cpim_to) = match message_text(req) {
                Ok(t) => t,
                Err(r) => return Action::Answer(r.status, r.reason),
            };
            let from = cpim_from.or_else(|| req.header("from").and_then(address));
            let to = cpim_to.or_else(|| req.header("to").and_then(address));
            let (Some(from), Some(to)) = (from, to) else {
                return Action::Answer(400, "Bad Request: From/To without a SIP URI".into());
            };
            let mut c = Capture::new(NETWORK, "message", &from);
            c.to = vec![to];
            c.body = Some(text);
            c = c.attr("sip.call_id", req.header("call-id").unwrap_or(""));
            c = c.attr("sip.request_uri", req.uri.clone());
            if let Some(ct) = req.header("content-type") {
                c = c.attr("sip.content_type", ct);
            }
            Action::Record(c)
        }
        "ACK" => Action::Answer(0, String::new()),
        _ => Action::Answer(405, "Method Not Allowed".into()),
    }
}

/// The response to `req` (Via, From, To, Call-ID and CSeq copied).
pub fn response(req: &Request, status: u16, reason: &str, to_tag: &str) -> Vec<u8> {
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    for via in req.headers.get("via").into_iter().flatten() {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    let to = req.header("to").unwrap_or("");
    let to = if to.contains(";tag=") { to.to_owned() } else { format!("{to};tag={to_tag}") };
    out.push_str(&format!("From: {}\r\nTo: {to}\r\n", req.header("from").unwrap_or("")));
    out.push_str(&format!(
        "Call-ID: {}\r\nCSeq: {}\r\n",
        req.header("call-id").unwrap_or(""),
        req.header("cseq").unwrap_or("")
    ));
    if matches!(status, 200 | 405 | 415) {
        out.push_str("Allow: MESSAGE, OPTIONS\r\nAccept: text/plain, message/cpim\r\n");
    }
    if status == 503 {
        out.push_str("Retry-After: 5\r\n");
    }
    out.push_str("Server: verbatim-sip\r\nContent-Length: 0\r\n\r\n");
    out.into_bytes()
}

/// A refusal for bytes that did not parse: the headers a response needs
/// are taken from whatever lines look like them.
pub fn refusal(bytes: &[u8], status: u16, reason: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(16 << 10)]);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.split('\n').skip(1).map(|l| l.trim_end_matches('\r')).take_while(|l| !l.is_empty()) {
        if let Some((k, v)) = line.split_once(':') {
            headers.entry(expand(&k.trim().to_ascii_lowercase())).or_default().push(v.trim().to_owned());
        }
    }
    let req = Request { method: String::new(), uri: String::new(), headers, body: Vec::new() };
    response(&req, status, reason, "refused")
}

/// Answers already given, by (Call-ID, CSeq, From), so a retransmitted
/// request gets the same answer and is not recorded twice.
#[derive(Debug, Default)]
pub struct Answered {
    map: HashMap<(String, String, String), Vec<u8>>,
    order: VecDeque<(String, String, String)>,
}

impl Answered {
    const KEEP: usize = 65_536;

    pub fn key(req: &Request) -> (String, String, String) {
        let get = |h: &str| req.header(h).unwrap_or("").to_owned();
        (get("call-id"), get("cseq"), get("from"))
    }

    pub fn get(&self, req: &Request) -> Option<&Vec<u8>> {
        self.map.get(&Self::key(req))
    }

    pub fn insert(&mut self, req: &Request, answer: Vec<u8>) {
        let key = Self::key(req);
        if self.map.insert(key.clone(), answer).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > Self::KEEP {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(extra: &str, ctype: &str, body: &str) -> Vec<u8> {
        format!(
            "MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
             Max-Forwards: 70\r\nFrom: \"Alice\" <sip:Alice@Example.test>;tag=1\r\nTo: <sip:bob@example.test>\r\n\
             Call-ID: c1\r\nCSeq: 1 MESSAGE\r\n{extra}Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn text_plain_and_cpim_messages() {
        let req = parse(&msg("", "text/plain;charset=UTF-8", "hé 🎉\r\nline two")).expect("parse");
        let Action::Record(c) = handle(&req) else { panic!("record") };
        assert_eq!(
            (c.from.as_str(), c.to.clone(), c.body.as_deref()),
            ("alice@example.test", vec!["bob@example.test".to_owned()], Some("hé 🎉\r\nline two"))
        );
        let cpim = "From: Carol <im:carol@example.test>\r\nTo: <im:dave@example.test>\r\nDateTime: 2026-01-01T00:00:00Z\r\n\r\n\
                    Content-Type: text/plain; charset=utf-8\r\n\r\nvia cpim";
        let req = parse(&msg("", "message/cpim", cpim)).expect("parse");
        let Action::Record(c) = handle(&req) else { panic!("record") };
        assert_eq!(
            (c.from.as_str(), c.to[0].as_str(), c.body.as_deref()),
            ("carol@example.test", "dave@example.test", Some("via cpim"))
        );
        let resp = String::from_utf8(response(&req, 200, "OK", "t1")).expect("utf8");
        assert!(resp.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"), "{resp}");
        assert!(resp.contains("To: <sip:bob@example.test>;tag=t1\r\n") && resp.contains("CSeq: 1 MESSAGE\r\n"));
    }

    #[test]
    fn malformed_requests_get_clean_refusals() {
        let no_callid = String::from_utf8(msg("", "text/plain", "x")).expect("utf8").replace("Call-ID: c1\r\n", "");
        assert_eq!(parse(no_callid.as_bytes()), Err(refuse(400, "Missing Header: call-id")));
        assert_eq!(parse(b"HELLO\r\n\r\n").map(|_| ()), Err(refuse(400, "Bad Request: request line")));
        assert_eq!(parse(b"MESSAGE sip:x SIP/2.0\r\nVia x\r\n\r\n").map(|_| ()).expect_err("refused").status, 400);
        assert_eq!(parse(b"garbage").map(|_| ()).expect_err("refused").status, 400);
        let short = String::from_utf8(msg("", "text/plain", "body"))
            .expect("utf8")
            .replace("Content-Length: 4", "Content-Length: 40");
        assert_eq!(parse(short.as_bytes()).map(|_| ()).expect_err("refused").status, 400);
        let req = parse(&msg("", "image/png", "x")).expect("parse");
        assert!(matches!(handle(&req), Action::Answer(415, _)));
        let req = parse(
            &String::from_utf8(msg("", "text/plain", "x")).expect("utf8").replacen("MESSAGE", "INVITE", 1).into_bytes(),
        )
        .expect("parse");
        assert!(matches!(handle(&req), Action::Answer(405, _)));
        let compact = "OPTIONS sip:x SIP/2.0\r\nv: SIP/2.0/TCP h;branch=z9hG4bK2\r\nf: <sip:a@h>;tag=1\r\nt: <sip:x@h>\r\ni: c2\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n";
        assert_eq!(handle(&parse(compact.as_bytes()).expect("compact headers")), Action::Answer(200, "OK".into()));
    }

    #[test]
    fn stream_framing_by_content_length() {
        let one = msg("", "text/plain", "abc");
        let two = [one.clone(), one.clone()].concat();
        assert_eq!(message_len(&two, 1 << 16), Ok(Some(one.len())));
        assert_eq!(message_len(&one[..one.len() - 1], 1 << 16), Ok(None));
        assert_eq!(message_len(&one, 10).map_err(|r| r.status), Err(413));
        assert_eq!(message_len(b"OPTIONS sip:x SIP/2.0\r\nVia: x\r\n\r\n", 1 << 16).map_err(|r| r.status), Err(400));
    }

    #[test]
    fn a_retransmission_gets_the_same_answer() {
        let req = parse(&msg("", "text/plain", "x")).expect("parse");
        let mut seen = Answered::default();
        assert!(seen.get(&req).is_none());
        seen.insert(&req, b"SIP/2.0 200 OK".to_vec());
        assert_eq!(
            seen.get(&parse(&msg("", "text/plain", "x")).expect("parse")).map(Vec::as_slice),
            Some(&b"SIP/2.0 200 OK"[..])
        );
    }
}
