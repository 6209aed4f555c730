//! Deterministic, realistic chat: every event is a function of (seed, client,
//! seq), so a run can resume after a crash and `check` can regenerate exactly
//! what was sent. Users and channels are Zipf-distributed, conversations have
//! Zipf-distributed lengths and interleave in bursts, 80 % are private (some
//! three-way), 20 % are channel chat with joins, and about one message in ten
//! carries multi-byte text (accents, CJK, Thai, Arabic, emoji, ZWJ sequences).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Zipf};
use serde_json::{json, Value};

const NETWORKS: &[(&str, u32)] = &[("irc", 30), ("xmpp", 30), ("sip", 20), ("msn", 10), ("sametime", 10)];
const WORDS: &[&str] = &[
    "the",
    "rates",
    "desk",
    "call",
    "price",
    "bid",
    "offer",
    "size",
    "ok",
    "thanks",
    "later",
    "lunch",
    "can",
    "you",
    "send",
    "me",
    "the",
    "file",
    "quarter",
    "numbers",
    "look",
    "fine",
    "client",
    "wants",
    "a",
    "quote",
    "on",
    "ten",
    "year",
    "bund",
    "meeting",
    "moved",
    "to",
    "three",
    "pm",
    "please",
    "confirm",
    "trade",
    "booked",
    "settle",
    "tomorrow",
    "risk",
    "limit",
    "hello",
    "morning",
    "any",
    "news",
    "from",
    "legal",
    "compliance",
    "review",
    "done",
    "yes",
    "no",
    "maybe",
    "check",
    "this",
];
const EXOTIC: &[&str] = &[
    "café déjà vu",
    "価格は明日確認します",
    "ราคาพรุ่งนี้",
    "السعر غدا",
    "👍",
    "🚀📈",
    "👩\u{200D}💻 on it",
    "naïve résumé",
    "Grüße",
    "이번 분기",
    "\u{202E}reversed\u{202C}",
    "e\u{301}\u{302}",
];

struct Conversation {
    network: &'static str,
    people: Vec<u64>,
    channel: Option<u64>,
    left: u32,
}

/// One client's event stream.
pub struct Generator {
    rng: StdRng,
    client: u32,
    users: Zipf<f64>,
    channels: Zipf<f64>,
    lengths: Zipf<f64>,
    gap: Exp<f64>,
    active: Vec<Conversation>,
    clock_ms: i64,
    seq: u64,
}

impl Generator {
    pub fn new(seed: u64, client: u32) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed ^ (u64::from(client) << 32) ^ 0x5eed_c0de),
            client,
            users: Zipf::new(5000.0, 1.07).expect("zipf"),
            channels: Zipf::new(300.0, 1.2).expect("zipf"),
            lengths: Zipf::new(200.0, 1.3).expect("zipf"),
            gap: Exp::new(1.0 / 1500.0).expect("exp"),
            active: Vec::new(),
            clock_ms: 1_795_856_400_000 + i64::from(client) * 7,
            seq: 0,
        }
    }

    fn user(&mut self) -> u64 {
        self.users.sample(&mut self.rng) as u64
    }

    fn network(&mut self) -> &'static str {
        let total: u32 = NETWORKS.iter().map(|n| n.1).sum();
        let mut pick = self.rng.random_range(0..total);
        for (n, w) in NETWORKS {
            if pick < *w {
                return n;
            }
            pick -= w;
        }
        "irc"
    }

    fn new_conversation(&mut self) -> Conversation {
        let network = self.network();
        let left = self.lengths.sample(&mut self.rng) as u32;
        if self.rng.random_bool(0.2) {
            let channel = self.channels.sample(&mut self.rng) as u64;
            let people = (0..self.rng.random_range(2..8)).map(|_| self.user()).collect();
            return Conversation { network, people, channel: Some(channel), left };
        }
        let mut people = vec![self.user()];
        let n = if self.rng.random_bool(0.1) { 3 } else { 2 };
        while people.len() < n {
            let u = self.user();
            if !people.contains(&u) {
                people.push(u);
            }
        }
        Conversation { network, people, channel: None, left }
    }

    fn body(&mut self) -> String {
        let words = self.rng.random_range(1..25);
        let mut s = String::new();
        for i in 0..words {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(WORDS[self.rng.random_range(0..WORDS.len())]);
        }
        if self.rng.random_bool(0.1) {
            s.push(' ');
            s.push_str(EXOTIC[self.rng.random_range(0..EXOTIC.len())]);
        }
        s
    }

    fn handle(network: &str, user: u64) -> String {
        match network {
            "xmpp" => format!("user{user}@chat.firm.example"),
            "sip" | "sametime" => format!("sip:user{user}@firm.example"),
            _ => format!("user{user}"),
        }
    }

    /// The next event as the JSON object that is sent.
    pub fn next_event(&mut self) -> Value {
        if self.active.len() < 8 || self.rng.random_bool(0.05) {
            let c = self.new_conversation();
            self.active.push(c);
        }
        let i = self.rng.random_range(0..self.active.len());
        self.clock_ms += self.gap.sample(&mut self.rng) as i64;
        let body = self.body();
        let c = &mut self.active[i];
        c.left = c.left.saturating_sub(1);
        let network = c.network;
        let from_user = c.people[self.rng.random_range(0..c.people.len())];
        let from = Self::handle(network, from_user);
        let seq = self.seq;
        self.seq += 1;
        let secs = self.clock_ms.div_euclid(1000);
        let ts = chrono::DateTime::from_timestamp(secs, (self.clock_ms.rem_euclid(1000) * 1_000_000) as u32)
            .expect("valid time")
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut e = json!({"source": format!("loadgen-{}", self.client), "seq": seq, "network": network, "kind": "message", "ts": ts, "from": from});
        if let Some(ch) = c.channel {
            e["channel"] = json!(format!("#desk-{ch}"));
            if self.rng.random_bool(0.03) {
                e["kind"] = json!("join");
            } else {
                e["body"] = json!(body);
            }
        } else {
            let to: Vec<String> =
                c.people.iter().filter(|&&p| p != from_user).map(|&p| Self::handle(network, p)).collect();
            e["to"] = json!(to);
            e["body"] = json!(body);
            e["direction"] = json!(if self.rng.random_bool(0.3) { "outbound" } else { "internal" });
        }
        if c.left == 0 {
            self.active.swap_remove(i);
        }
        e
    }

    /// Fast-forwards to `seq` (events are a function of their predecessors).
    pub fn skip_to(&mut self, seq: u64) {
        while self.seq < seq {
            self.next_event();
        }
    }
}
