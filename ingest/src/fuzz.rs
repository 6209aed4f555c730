//! Fuzz targets for the three decoders, run as property tests on stable
//! Rust (arbitrary bytes, cut into arbitrary reads): no panic, and every byte
//! read is handed on exactly once, in order — a decoder may fail to
//! understand a stream, never lose or reorder it.

use proptest::prelude::*;

use crate::capture::Flow;
use crate::proxy::IrcSession;
use crate::relay::Session;
use crate::xmpp::{StartTls, XmppSession};

/// Bytes that look like the protocol often enough to reach deep states.
fn stream(alphabet: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![prop::sample::select(alphabet).prop_map(<[u8]>::to_vec), prop::collection::vec(any::<u8>(), 0..8)],
        0..64,
    )
    .prop_map(|parts| parts.concat())
}

const IRC: &[&[u8]] = &[
    b"PRIVMSG ",
    b"NOTICE ",
    b"#chan",
    b"nick",
    b" :",
    b"\r\n",
    b"\n",
    b":n!u@h ",
    b"JOIN ",
    b"PART ",
    b"KICK ",
    b"QUIT",
    b"NICK ",
    b"001 ",
    b"\x01ACTION ",
    b"\x01",
    b"@tag=x ",
    b",",
    b" ",
];

const XML: &[&[u8]] = &[
    b"<stream:stream to='x'>",
    b"</stream:stream>",
    b"<message to='a@b' type='chat'>",
    b"</message>",
    b"<body>",
    b"</body>",
    b"<presence/>",
    b"<![CDATA[",
    b"]]>",
    b"<!--",
    b"-->",
    b"<?xml version='1.0'?>",
    b"'",
    b"\"",
    b"&amp;",
    b"&bogus;",
    b"<stream:features><starttls/></stream:features>",
    b"<success/>",
    b"<proceed/>",
    b"<iq><bind><jid>a@b/c</jid></bind></iq>",
    b"<",
    b">",
    b"/>",
];

const SIP: &[&[u8]] = &[
    b"MESSAGE sip:a@b SIP/2.0\r\n",
    b"OPTIONS sip:a SIP/2.0\r\n",
    b"Via: SIP/2.0/UDP h\r\n",
    b"From: <sip:a@b>\r\n",
    b"To: <sip:c@d>\r\n",
    b"Call-ID: x\r\n",
    b"CSeq: 1 MESSAGE\r\n",
    b"Content-Type: message/cpim\r\n",
    b"Content-Type: text/plain\r\n",
    b"Content-Length: 5\r\n",
    b"l: 99999999999999999999\r\n",
    b"\r\n",
    b"\n",
    b" folded\r\n",
];

fn feed_all(s: &mut dyn Session, data: &[u8], cuts: &[usize], flow: Flow) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain([&data.len()]) {
        let c = c.min(data.len()).max(at);
        for u in s.feed(flow, &data[at..c]) {
            out.extend(u.bytes);
        }
        at = c;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn irc_never_panics_and_forwards_every_complete_line(data in stream(IRC), mut cuts in prop::collection::vec(0usize..600, 0..6), out_first in any::<bool>()) {
        cuts.sort_unstable();
        let mut s = IrcSession::new(64);
        let flow = if out_first { Flow::Outbound } else { Flow::Inbound };
        let forwarded = feed_all(&mut s, &data, &cuts, flow);
        // Bytes after the last newline wait for the rest of their line
        // (unless already passed on as part of an oversize line).
        prop_assert!(data.starts_with(&forwarded));
        let tail = &data[forwarded.len()..];
        prop_assert!(!tail.contains(&b'\n'), "a whole line was held back");
        prop_assert!(tail.len() <= 64 + 1);
    }

    #[test]
    fn xmpp_never_panics_and_forwards_bytes_in_order(data in stream(XML), mut cuts in prop::collection::vec(0usize..800, 0..6), allow in any::<bool>()) {
        cuts.sort_unstable();
        let policy = if allow { StartTls::Allow } else { StartTls::Block };
        let mut s = XmppSession::new(policy, 256);
        let forwarded = feed_all(&mut s, &data, &cuts, Flow::Outbound);
        // Outbound bytes are never rewritten, only held until a stanza ends.
        prop_assert!(data.starts_with(&forwarded), "reordered or rewritten");
        prop_assert!(data.len() - forwarded.len() <= 256 + 64, "held more than the limit");
        let mut s = XmppSession::new(policy, 256);
        let _ = feed_all(&mut s, &data, &cuts, Flow::Inbound);
    }

    #[test]
    fn sip_never_panics_and_answers_every_parse_failure(data in stream(SIP), body in ".{0,40}") {
        let mut bytes = data.clone();
        bytes.extend_from_slice(body.as_bytes());
        let _ = crate::sip::message_len(&bytes, 1 << 12);
        match crate::sip::parse(&bytes) {
            Ok(req) => {
                let _ = crate::sip::handle(&req);
                let answer = crate::sip::response(&req, 200, "OK", "t");
                prop_assert!(answer.starts_with(b"SIP/2.0 200 OK\r\n"));
            }
            Err(r) => {
                prop_assert!((400..500).contains(&r.status));
                prop_assert!(crate::sip::refusal(&bytes, r.status, &r.reason).starts_with(b"SIP/2.0 4"));
            }
        }
    }
}
