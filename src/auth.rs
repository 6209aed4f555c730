//! Bearer tokens with roles. A token is `vbt_` and 64 hex digits (256 random
//! bits). Only its SHA-256 is stored, in `<data>/tokens.json`, which is
//! replaced atomically under `<data>/tokens.lock`. That lets `verbatim token`
//! change it whether or not a server runs; the server notices a changed file
//! on the next request. Lookups compare every stored hash in constant time.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::paths::{write_atomic, DataDir};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Append events for the sources the token is bound to; nothing else.
    Ingest,
    /// Read: search, transcripts, SQL, reports.
    Auditor,
    /// Configuration, tokens, holds; no content by default.
    Admin,
    /// Ship one site's log to HQ.
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::Replica => "replica",
        }
    }
}

/// One stored token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Public name of the token: the first 12 hex digits of its hash.
    pub id: String,
    /// SHA-256 of the token, hex.
    pub hash: String,
    pub role: Role,
    /// For `ingest`: the source ids it may write, as patterns (`*` matches any run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// For `replica`: the one site it may ship.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    version: u32,
    tokens: Vec<TokenEntry>,
}

/// Who a request is from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub role: Role,
    pub sources: Vec<String>,
    pub site: Option<String>,
}

impl Principal {
    /// Whether this principal may write events of `source`.
    pub fn may_write(&self, source: &str) -> bool {
        self.role == Role::Ingest && self.sources.iter().any(|p| glob_match(p, source))
    }
}

/// `*` matches any run of characters (also none); everything else itself.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || !s[first.len()..].ends_with(last) || s.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[derive(Default)]
struct Cache {
    stamp: Option<(SystemTime, u64)>,
    tokens: Vec<([u8; 32], Principal)>,
}

/// The token file of one data directory.
pub struct TokenStore {
    path: PathBuf,
    lock_path: PathBuf,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore").field("path", &self.path).finish()
    }
}

impl TokenStore {
    pub fn new(data: &DataDir) -> Self {
        Self { path: data.tokens(), lock_path: data.tokens_lock(), cache: Mutex::new(Cache::default()) }
    }

    fn read(&self) -> anyhow::Result<TokenFile> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile { version: 1, tokens: Vec::new() }),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Runs `f` on the token file under its lock and writes the result back.
    fn update<T>(&self, f: impl FnOnce(&mut TokenFile) -> anyhow::Result<T>) -> anyhow::Result<T> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let lock: File = OpenOptions::new().create(true).truncate(false).write(true).open(&self.lock_path)?;
        lock.lock()?;
        let mut file = self.read()?;
        let out = f(&mut file)?;
        file.version = 1;
        write_atomic(&self.path, &serde_json::to_vec_pretty(&file)?, 0o600)?;
        Ok(out)
    }

    /// Creates a token; returns it (shown once, never stored) and its entry.
    pub fn create(
        &self,
        role: Role,
        sources: Vec<String>,
        site: Option<String>,
    ) -> anyhow::Result<(String, TokenEntry)> {
        match role {
            Role::Ingest => anyhow::ensure!(
                !sources.is_empty(),
                "an ingest token needs --sources (patterns of the source ids it may write)"
            ),
            _ => anyhow::ensure!(sources.is_empty(), "--sources applies to ingest tokens only"),
        }
        match role {
            Role::Replica => anyhow::ensure!(site.is_some(), "a replica token needs --site (the one site it ships)"),
            _ => anyhow::ensure!(site.is_none(), "--site applies to replica tokens only"),
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
        let token = format!("vbt_{}", hex(&secret));
        let h = hash(&token);
        let entry = TokenEntry {
            id: hex(&h[..6]),
            hash: hex(&h),
            role,
            sources,
            site,
            created_at: verbatim_schema::UnixNanos::now().to_rfc3339(),
            revoked_at: None,
        };
        let e = entry.clone();
        self.update(move |f| {
            f.tokens.push(e);
            Ok(())
        })?;
        Ok((token, entry))
    }

    pub fn list(&self) -> anyhow::Result<Vec<TokenEntry>> {
        Ok(self.read()?.tokens)
    }

    /// Revokes the token with this id; an error if there is none.
    pub fn revoke(&self, id: &str) -> anyhow::Result<()> {
        self.update(|f| {
            let t = f.tokens.iter_mut().find(|t| t.id == id).with_context(|| format!("no token with id {id}"))?;
            if t.revoked_at.is_none() {
                t.revoked_at = Some(verbatim_schema::UnixNanos::now().to_rfc3339());
            }
            Ok(())
        })
    }

    /// Whether any unrevoked admin token exists.
    pub fn has_admin(&self) -> anyhow::Result<bool> {
        Ok(self.read()?.tokens.iter().any(|t| t.role == Role::Admin && t.revoked_at.is_none()))
    }

    fn refresh(&self, cache: &mut Cache) -> anyhow::Result<()> {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(m) => Some((m.modified()?, m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        if stamp == cache.stamp && stamp.is_some() {
            return Ok(());
        }
        let file = self.read()?;
        cache.tokens = file
            .tokens
            .into_iter()
            .filter(|t| t.revoked_at.is_none())
            .filter_map(|t| {
                let h = unhex(&t.hash)?;
                Some((h, Principal { token_id: t.id, role: t.role, sources: t.sources, site: t.site }))
            })
            .collect();
        cache.stamp = stamp;
        Ok(())
    }

    /// The principal of a presented token, if it is valid and not revoked.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let h = hash(token);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.refresh(&mut cache) {
            tracing::error!("token file unreadable; refusing every token: {e:#}");
            return None;
        }
        // Compare against every entry, without stopping at a match.
        let mut found = None;
        for (stored, p) in &cache.tokens {
            if bool::from(stored.ct_eq(&h)) {
                found = Some(p.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("proxy-*", "proxy-nyc-1"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(!glob_match("proxy-*", "sip-1"));
        assert!(!glob_match("a*a", "a"));
    }

    #[test]
    fn create_authenticate_revoke() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = TokenStore::new(&DataDir::new(tmp.path()));
        let (token, entry) = store.create(Role::Ingest, vec!["proxy-*".into()], None).expect("create");
        assert!(token.starts_with("vbt_") && token.len() == 68);
        let text = std::fs::read_to_string(tmp.path().join("tokens.json")).expect("file");
        assert!(!text.contains(&token[4..]), "the token itself must not be stored");
        let p = store.authenticate(&token).expect("valid");
        assert_eq!(p.role, Role::Ingest);
        assert!(p.may_write("proxy-nyc-1") && !p.may_write("sip-1"));
        assert_eq!(store.authenticate("vbt_0000"), None);
        store.revoke(&entry.id).expect("revoke");
        assert_eq!(store.authenticate(&token), None, "a revoked token must stop working");
        assert!(store.revoke("nope").is_err());
        assert!(store.create(Role::Ingest, vec![], None).is_err());
        assert!(store.create(Role::Replica, vec![], None).is_err());
        assert!(store.create(Role::Auditor, vec!["x".into()], None).is_err());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(tmp.path().join("tokens.json")).expect("stat").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
