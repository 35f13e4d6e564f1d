//! One audit record: its fields in their fixed order, its canonical bytes, its hash, and the
//! checks a reader makes on one line. The chain format is documented in the parent module.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Action, Mode};

/// `prev` of the very first record of a log (64 zeros).
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a line of the log is. Lines written before kinds existed have no `kind` member and
/// read as [`Kind::Record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An intervention decided, fsynced before anything went to the upstream.
    Decision,
    /// What became of a decision (refers to it by `decision_seq`).
    Outcome,
    /// A complete one-shot record: the message was refused here, nothing was forwarded.
    #[default]
    Record,
    /// The HMAC key behind the pseudonyms changed from this point on.
    Key,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::Outcome => "outcome",
            Kind::Record => "record",
            Kind::Key => "key",
        }
    }
}

/// Stands in for the full list when the visible recipients are too many to list (the record
/// size is bounded): `recipients` then holds only the first `listed` entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientSummary {
    /// All visible recipients (equals `visible_count`).
    pub count: usize,
    /// How many of them `recipients` lists (the first ones, in first-seen order).
    pub listed: usize,
    /// Lower-case hex SHA-256 over every entry (in its stored form: `hmac:<hex>` or the plain
    /// address), sorted bytewise, each followed by LF.
    pub sha256: String,
}

/// A `decision` or `record` line: every field, in the order written. Serialising this struct
/// with `hash` empty gives the canonical bytes the hash covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub time: String,
    pub seq: u64,
    #[serde(default)]
    pub kind: Kind,
    pub session: String,
    pub client: String,
    pub auth_user: Option<String>,
    pub sender: String,
    pub message_id: Option<String>,
    pub rule: Option<String>,
    pub action: Action,
    pub mode: Mode,
    pub would: bool,
    pub reason: String,
    pub visible_count: usize,
    pub visible_external: usize,
    pub external_domains: usize,
    pub envelope_recipients: usize,
    pub recipients_mode: String,
    /// Absent when `recipients_mode` is `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<String>>,
    /// Present only when `recipients` lists fewer than `visible_count` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients_summary: Option<RecipientSummary>,
    pub upstream: Option<String>,
    pub policy_version: String,
    pub header_digest_original: String,
    pub header_digest_forwarded: Option<String>,
    pub prev: String,
    /// Empty while the canonical bytes are made; never empty in a written line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

/// An `outcome` line: what became of the decision `decision_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub time: String,
    pub seq: u64,
    pub kind: Kind,
    pub session: String,
    pub decision_seq: u64,
    pub result: OutcomeResult,
    pub upstream: Option<String>,
    pub header_digest_forwarded: Option<String>,
    pub prev: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

/// A `key` line: from here on pseudonyms are made under the key with this fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub time: String,
    pub seq: u64,
    pub kind: Kind,
    /// Hex HMAC-SHA256 of `bccguard-key-id` under the key (identifies it, reveals nothing).
    pub key_id: String,
    pub key_file: String,
    pub reason: String,
    pub prev: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

/// How a forwarded (or attempted) intervention ended, as the client was told. A decision may
/// get more than one outcome line (e.g. `spooled`, later `delivered` by the spool): the last
/// one is the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeResult {
    /// The upstream accepted the message (every copy, for a split); the client got 250.
    Delivered,
    /// The upstream refused it (its reply is in `upstream`); the client got that refusal.
    Refused,
    /// Handed (in whole or in part) to the durable spool; the client got 250.
    Spooled,
    /// The transfer failed (connection lost, timeout, local error); the client got a 4xx.
    Failed,
}

impl OutcomeResult {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeResult::Delivered => "delivered",
            OutcomeResult::Refused => "refused",
            OutcomeResult::Spooled => "spooled",
            OutcomeResult::Failed => "failed",
        }
    }
}

/// Serialises `value` (whose `hash` member is empty and so left out) and returns the full line
/// (with its LF) and the hash.
fn seal_any<T: Serialize>(value: &T) -> Result<(Vec<u8>, String), serde_json::Error> {
    let canonical = serde_json::to_vec(value)?;
    let hash = hex::encode(Sha256::digest(&canonical));
    let mut line = canonical;
    // Canonical bytes always end with `}`: put the hash member before it.
    line.pop();
    line.extend_from_slice(b",\"hash\":\"");
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    Ok((line, hash))
}

impl Record {
    /// Sets `hash` and returns the full line (with its LF) to append to the log.
    pub fn seal(&mut self) -> Result<Vec<u8>, serde_json::Error> {
        self.hash.clear();
        let (line, hash) = seal_any(self)?;
        self.hash = hash;
        Ok(line)
    }
}

impl OutcomeRecord {
    pub fn seal(&mut self) -> Result<Vec<u8>, serde_json::Error> {
        self.hash.clear();
        let (line, hash) = seal_any(self)?;
        self.hash = hash;
        Ok(line)
    }
}

impl KeyRecord {
    pub fn seal(&mut self) -> Result<Vec<u8>, serde_json::Error> {
        self.hash.clear();
        let (line, hash) = seal_any(self)?;
        self.hash = hash;
        Ok(line)
    }
}

/// Any line of the log, by its `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyRecord {
    /// `decision` or `record`.
    Event(Box<Record>),
    Outcome(OutcomeRecord),
    Key(KeyRecord),
}

impl AnyRecord {
    pub fn parse(line: &[u8]) -> Result<AnyRecord, String> {
        #[derive(Deserialize)]
        struct KindOnly {
            #[serde(default)]
            kind: Kind,
        }
        let k: KindOnly =
            serde_json::from_slice(line).map_err(|e| format!("not a valid audit record ({e})"))?;
        let parsed = match k.kind {
            Kind::Decision | Kind::Record => serde_json::from_slice(line)
                .map(Box::new)
                .map(AnyRecord::Event),
            Kind::Outcome => serde_json::from_slice(line).map(AnyRecord::Outcome),
            Kind::Key => serde_json::from_slice(line).map(AnyRecord::Key),
        };
        parsed.map_err(|e| format!("not a valid {} record ({e})", k.kind.as_str()))
    }
}

/// What the chain needs from a line; everything else is covered by the hash.
#[derive(Debug, Deserialize)]
struct ChainFields {
    seq: u64,
    #[serde(default)]
    kind: Kind,
    #[serde(default)]
    decision_seq: Option<u64>,
    prev: String,
    hash: String,
}

/// A line that passed the per-line checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub seq: u64,
    pub kind: Kind,
    /// For an outcome: the decision it closes.
    pub decision_seq: Option<u64>,
    pub prev: String,
    pub hash: String,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks one line (without its LF) on its own: it is a record, the hash member is last and
/// the hash matches the bytes before it. Returns what the chain check needs, or what is wrong.
pub fn check_line(line: &[u8]) -> Result<Checked, String> {
    let fields: ChainFields =
        serde_json::from_slice(line).map_err(|e| format!("not a valid audit record ({e})"))?;
    if !is_hex64(&fields.hash) {
        return Err("`hash` is not 64 lower-case hex digits".to_string());
    }
    if !is_hex64(&fields.prev) {
        return Err("`prev` is not 64 lower-case hex digits".to_string());
    }
    let suffix = format!(",\"hash\":\"{}\"}}", fields.hash);
    let Some(body) = line.strip_suffix(suffix.as_bytes()) else {
        return Err("`hash` is not the last member: the line is not in canonical form".to_string());
    };
    let mut hasher = Sha256::new();
    hasher.update(body);
    hasher.update(b"}");
    let actual = hex::encode(hasher.finalize());
    if actual != fields.hash {
        return Err(format!(
            "content does not match its hash (record edited): stored {}, computed {}",
            fields.hash, actual
        ));
    }
    if fields.kind == Kind::Outcome && fields.decision_seq.is_none() {
        return Err("outcome record without `decision_seq`".to_string());
    }
    Ok(Checked {
        seq: fields.seq,
        kind: fields.kind,
        decision_seq: fields.decision_seq,
        prev: fields.prev,
        hash: fields.hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            time: "2024-05-01T10:00:00.000000Z".into(),
            seq: 1,
            kind: Kind::Record,
            session: "s1".into(),
            client: "192.0.2.1:1234".into(),
            auth_user: None,
            sender: "alice@example.org".into(),
            message_id: Some("<m@x>".into()),
            rule: Some("many".into()),
            action: Action::Rewrite,
            mode: Mode::Enforce,
            would: false,
            reason: "r \"quoted\"\nnewline".into(),
            visible_count: 2,
            visible_external: 1,
            external_domains: 1,
            envelope_recipients: 2,
            recipients_mode: "none".into(),
            recipients: None,
            recipients_summary: None,
            upstream: Some("250 ok".into()),
            policy_version: "pv".into(),
            header_digest_original: "d".into(),
            header_digest_forwarded: None,
            prev: GENESIS.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn sealed_line_checks_and_round_trips() {
        let mut r = sample();
        let line = r.seal().unwrap();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let body = &line[..line.len() - 1];
        let c = check_line(body).unwrap();
        assert_eq!(c.hash, r.hash);
        assert_eq!(c.seq, 1);
        let back: Record = serde_json::from_slice(body).unwrap();
        assert_eq!(back, r);
        assert!(!String::from_utf8_lossy(body).contains("\"recipients\":"));
    }

    #[test]
    fn lines_from_before_kinds_read_as_records() {
        let mut r = sample();
        let line = r.seal().unwrap();
        let text = String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
        // The same record as an older writer made it: no `kind` member, hash over those bytes.
        let old = text.replace(",\"kind\":\"record\"", "");
        let body = old
            .strip_suffix(&format!(",\"hash\":\"{}\"}}", r.hash))
            .unwrap();
        let hash = hex::encode(Sha256::digest(format!("{body}}}").as_bytes()));
        let old = format!("{body},\"hash\":\"{hash}\"}}");
        let c = check_line(old.as_bytes()).unwrap();
        assert_eq!(c.kind, Kind::Record);
        match AnyRecord::parse(old.as_bytes()).unwrap() {
            AnyRecord::Event(e) => assert_eq!(e.kind, Kind::Record),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn outcome_needs_its_decision_seq() {
        let mut o = OutcomeRecord {
            time: "t".into(),
            seq: 2,
            kind: Kind::Outcome,
            session: "s".into(),
            decision_seq: 1,
            result: OutcomeResult::Spooled,
            upstream: None,
            header_digest_forwarded: None,
            prev: GENESIS.into(),
            hash: String::new(),
        };
        let line = o.seal().unwrap();
        let body = &line[..line.len() - 1];
        assert_eq!(check_line(body).unwrap().decision_seq, Some(1));
        assert!(matches!(AnyRecord::parse(body), Ok(AnyRecord::Outcome(_))));
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("\"result\":\"spooled\""), "{text}");
    }

    #[test]
    fn any_edit_is_caught() {
        let mut r = sample();
        let line = r.seal().unwrap();
        let text = String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
        let edited = text.replace("\"visible_count\":2", "\"visible_count\":3");
        assert_ne!(edited, text);
        let err = check_line(edited.as_bytes()).unwrap_err();
        assert!(err.contains("does not match its hash"), "{err}");
        let moved = text.replace(",\"hash\":", ",\"x\":1,\"hash\":");
        assert!(check_line(moved.as_bytes()).is_err());
        assert!(check_line(b"{\"seq\":1").is_err());
    }
}
