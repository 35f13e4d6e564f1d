//! Rewrite: byte-exact header edits, borrowed bodies, DKIM refuse/forward/resign, sender notices.

use std::borrow::Cow;
use std::path::PathBuf;

use bccguard::config::{Action, DkimOnRewrite, PolicyConfig, RewriteTo, RuleConfig};
use bccguard::message::Message;
use bccguard::policy::{Decision, Policy, Visible};
use bccguard::rewrite::{Outgoing, RewriteError, Rewriter};

/// The message value the rewriter takes (leaked: test data lives for the whole test run).
fn msg(raw: &[u8]) -> &'static Message {
    Box::leak(Box::new(
        Message::parse(raw.to_vec()).expect("splittable header"),
    ))
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/check")
        .join(name)
}

fn decision(action: Action) -> Decision {
    let cfg = PolicyConfig {
        internal_domains: vec!["example.org".into()],
        rules: vec![RuleConfig {
            min_visible_external: Some(1),
            ..RuleConfig::new("many", action)
        }],
        ..PolicyConfig::default()
    };
    let d = Policy::new(&cfg).unwrap().decide_visible(
        "alice@example.org",
        Visible {
            addresses: ["a@x.net", "b@y.net"].into_iter().collect(),
            bcc_present: true,
            lenient_fields: vec![],
            attendees: vec![],
        },
    );
    assert_eq!(d.action, action);
    d
}

/// The pieces of a deliberately awkward message: each a whole field with its line end.
const RECEIVED: &[u8] =
    b"Received: from pc (pc [192.0.2.1])\r\n\tby mx; Tue, 1 Jan 2030 00:00:00 +0000\r\n";
const FROM: &[u8] = b"From: \"\xc3\x84rger, \xc3\x96laf\" <o@example.org>\r\n";
const TO: &[u8] = b"tO :  a@x.net,\r\n\t\"B b\" <b@y.net>   \r\n";
const SUBJECT: &[u8] = b"Subject: =?utf-8?q?caf=C3=A9?=  trailing  \r\n";
const WEIRD: &[u8] = b"X-Weird:\xff\xfe raw 8bit\t\r\n";
const CC: &[u8] = b"Cc: c@z.net\r\n";
const BCC: &[u8] = b"BCC: secret@q.net,\r\n secret2@q.net\r\n";
const RESENT_CC: &[u8] = b"Resent-Cc: r@s.net\r\n";
const MSGID: &[u8] = b"Message-ID: <1@example.org>\r\n";
const BODY: &[u8] = b"Body mentioning\r\nCc: fake@body.net\r\n.\r\n..\r\n\r\n";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn message(fields: &[&[u8]], body: &[u8]) -> Vec<u8> {
    let mut m = fields.concat();
    m.extend_from_slice(b"\r\n");
    m.extend_from_slice(body);
    m
}

fn awkward() -> Vec<u8> {
    message(
        &[
            RECEIVED, FROM, TO, SUBJECT, WEIRD, CC, BCC, RESENT_CC, MSGID,
        ],
        BODY,
    )
}

/// The body must be the original bytes, borrowed (same address), not a copy.
fn assert_body_borrowed(raw: &[u8], out: &Outgoing<'_>) {
    let offset = raw.len() - out.body.len();
    assert_eq!(&*out.body, &raw[offset..]);
    assert_eq!(out.body.as_ptr(), raw[offset..].as_ptr(), "body was copied");
}

fn rewriter(f: impl FnOnce(&mut PolicyConfig)) -> Rewriter {
    let mut cfg = PolicyConfig::default();
    f(&mut cfg);
    Rewriter::new(&cfg).unwrap()
}

#[test]
fn hide_recipients_changes_exactly_the_recipient_fields() {
    let raw = awkward();
    let m = msg(&raw[..]);
    let out = rewriter(|_| {})
        .hide_recipients(m, "alice@example.org", &decision(Action::Rewrite))
        .unwrap();
    let expected = [
        RECEIVED,
        FROM,
        b"To: undisclosed-recipients:;\r\n",
        SUBJECT,
        WEIRD,
        MSGID,
        b"\r\n",
    ]
    .concat();
    assert_eq!(&*out.header, &expected[..]);
    assert_eq!(&*out.body, BODY);
    assert_body_borrowed(m.raw(), &out);
}

#[test]
fn hide_recipients_can_show_the_sender_instead() {
    let raw = awkward();
    let rw = rewriter(|c| c.rewrite_to = RewriteTo::Sender);
    let d = decision(Action::Rewrite);
    let out = rw
        .hide_recipients(msg(&raw[..]), "alice@example.org", &d)
        .unwrap();
    let expected = [
        RECEIVED,
        FROM,
        b"To: <alice@example.org>\r\n",
        SUBJECT,
        WEIRD,
        MSGID,
        b"\r\n",
    ]
    .concat();
    assert_eq!(&*out.header, &expected[..]);
    // A null sender (bounce) has no address to show: fall back to undisclosed.
    let out = rw.hide_recipients(msg(&raw[..]), "", &d).unwrap();
    assert!(contains(&out.header, b"To: undisclosed-recipients:;\r\n"));
}

#[test]
fn trace_header_follows_the_new_to() {
    let raw = awkward();
    let rw = rewriter(|c| c.trace_header = Some("X-BCCGuard".into()));
    let out = rw
        .hide_recipients(
            msg(&raw[..]),
            "alice@example.org",
            &decision(Action::Rewrite),
        )
        .unwrap();
    let expected = [
        RECEIVED,
        FROM,
        b"To: undisclosed-recipients:;\r\nX-BCCGuard: rewritten by bccguard rule 'many'\r\n",
        SUBJECT,
        WEIRD,
        MSGID,
        b"\r\n",
    ]
    .concat();
    assert_eq!(&*out.header, &expected[..]);
    let out = rw
        .for_recipient(msg(&raw[..]), "b@y.net", &decision(Action::Split))
        .unwrap();
    assert!(contains(
        &out.header,
        b"To: <b@y.net>\r\nX-BCCGuard: split by bccguard rule 'many'\r\n"
    ));
}

#[test]
fn for_recipient_addresses_each_copy_to_one_recipient() {
    let raw = awkward();
    let m = msg(&raw[..]);
    let rw = rewriter(|_| {});
    let d = decision(Action::Split);
    for rcpt in ["a@x.net", "\"B b\"@y.net", "c@z.net"] {
        let out = rw.for_recipient(m, rcpt, &d).unwrap();
        let to = format!("To: <{rcpt}>\r\n");
        let expected = [
            RECEIVED,
            FROM,
            to.as_bytes(),
            SUBJECT,
            WEIRD,
            MSGID,
            b"\r\n",
        ]
        .concat();
        assert_eq!(&*out.header, &expected[..]);
        assert_body_borrowed(m.raw(), &out);
    }
    // An envelope address with a line break would inject header fields: refused.
    assert!(matches!(
        rw.for_recipient(m, "x@y.net>\r\nBcc: <z@q.net", &d),
        Err(RewriteError::Unreadable(_))
    ));
}

#[test]
fn pass_through_only_removes_blind_copies() {
    let rw = rewriter(|_| {});
    let clean = message(&[RECEIVED, FROM, TO, SUBJECT, WEIRD, CC, MSGID], BODY);
    let out = rw.pass_through(msg(&clean[..])).unwrap();
    assert!(
        matches!(out.header, Cow::Borrowed(_)),
        "no Bcc: nothing to copy"
    );
    assert_eq!([&*out.header, &*out.body].concat(), clean);

    let resent_bcc: &[u8] = b"Resent-bcc:\r\n";
    let raw = message(
        &[
            RECEIVED, BCC, FROM, TO, resent_bcc, SUBJECT, WEIRD, CC, MSGID,
        ],
        BODY,
    );
    let m = msg(&raw[..]);
    let out = rw.pass_through(m).unwrap();
    let expected = [RECEIVED, FROM, TO, SUBJECT, WEIRD, CC, MSGID, b"\r\n"].concat();
    assert_eq!(&*out.header, &expected[..]);
    assert_body_borrowed(m.raw(), &out);
}

#[test]
fn keeps_lf_line_ends_and_handles_missing_recipient_fields() {
    let rw = rewriter(|_| {});
    let raw = b"From: a@example.org\nCC: b@y.net,\n c@z.net\nSubject: s\n\nbody\n";
    let out = rw
        .hide_recipients(msg(&raw[..]), "a@example.org", &decision(Action::Rewrite))
        .unwrap();
    assert_eq!(
        &*out.header,
        b"From: a@example.org\nTo: undisclosed-recipients:;\nSubject: s\n\n"
    );

    // No To/Cc at all: the new To goes at the end of the header section.
    let raw = b"From: a@example.org\r\nBcc: b@y.net\r\nSubject: s\r\n\r\nbody\r\n";
    let out = rw
        .for_recipient(msg(&raw[..]), "b@y.net", &decision(Action::Split))
        .unwrap();
    assert_eq!(
        &*out.header,
        b"From: a@example.org\r\nSubject: s\r\nTo: <b@y.net>\r\n\r\n"
    );
    assert_eq!(&*out.body, b"body\r\n");
}

#[test]
fn unreadable_header_never_reaches_the_rewriter() {
    // The message value refuses it once, before any stage: there is nothing to rewrite.
    let raw = b"From: a@example.org\r\nT o b@y.net\r\n\r\nbody\r\n";
    let refused = Message::parse(raw.to_vec()).expect_err("unsplittable header");
    assert!(
        refused.why.reason.contains("header line 2"),
        "{}",
        refused.why.reason
    );
}

const SIG_OVER_TO: &[u8] = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=mail;\r\n\tc=relaxed/relaxed; h=From:Subject:\r\n\t TO:Date; bh=AAAA; b=BBBB\r\n";
const SIG_NOT_TO: &[u8] = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=mail; h=from:subject:date; bh=AAAA; b=BBBB\r\n";
const SIG_OVER_RESENT: &[u8] =
    b"dkim-signature: v=1; d=example.org; s=mail; h=from:Resent-Cc; bh=AAAA; b=BBBB\r\n";

#[test]
fn dkim_over_recipients_is_refused_by_default() {
    let rw = rewriter(|_| {});
    let d = decision(Action::Rewrite);
    for sig in [SIG_OVER_TO, SIG_OVER_RESENT] {
        let raw = message(&[sig, FROM, TO, SUBJECT, RESENT_CC, MSGID], BODY);
        match rw.hide_recipients(msg(&raw[..]), "alice@example.org", &d) {
            Err(RewriteError::DkimRefused(text)) => {
                assert!(text.is_ascii() && !text.contains('\n') && !text.contains('\r'));
                assert!(text.contains("Bcc"), "{text}");
            }
            other => panic!(
                "expected DkimRefused, got {:?}",
                other.map(|o| o.header.into_owned())
            ),
        }
        assert!(matches!(
            rw.for_recipient(msg(&raw[..]), "a@x.net", &decision(Action::Split)),
            Err(RewriteError::DkimRefused(_))
        ));
        // Passing through unchanged breaks nothing.
        assert!(rw.pass_through(msg(&raw[..])).is_ok());
    }
    // A signature that covers neither To nor Cc survives the rewrite: no refusal, bytes kept.
    let raw = message(&[SIG_NOT_TO, FROM, TO, SUBJECT, CC, MSGID], BODY);
    let out = rw
        .hide_recipients(msg(&raw[..]), "alice@example.org", &d)
        .unwrap();
    let expected = [
        SIG_NOT_TO,
        FROM,
        b"To: undisclosed-recipients:;\r\n",
        SUBJECT,
        MSGID,
        b"\r\n",
    ]
    .concat();
    assert_eq!(&*out.header, &expected[..]);
}

#[test]
fn dkim_forward_keeps_the_broken_signature() {
    let rw = rewriter(|c| c.dkim.on_rewrite = DkimOnRewrite::Forward);
    let raw = message(&[SIG_OVER_TO, FROM, TO, SUBJECT, CC, MSGID], BODY);
    let out = rw
        .hide_recipients(
            msg(&raw[..]),
            "alice@example.org",
            &decision(Action::Rewrite),
        )
        .unwrap();
    let expected = [
        SIG_OVER_TO,
        FROM,
        b"To: undisclosed-recipients:;\r\n",
        SUBJECT,
        MSGID,
        b"\r\n",
    ]
    .concat();
    assert_eq!(&*out.header, &expected[..]);
}

fn resign_config(key: &str) -> PolicyConfig {
    let mut c = PolicyConfig::default();
    c.dkim.on_rewrite = DkimOnRewrite::Resign;
    c.dkim.private_key = Some(fixture(key));
    c.dkim.domain = Some("relay.example.org".into());
    c.dkim.selector = Some("bccguard".into());
    c
}

#[test]
fn rewriter_refuses_unusable_dkim_settings() {
    let mut c = resign_config("no-such-key.pem");
    let err = format!("{:#}", Rewriter::new(&c).unwrap_err());
    assert!(
        err.contains("policy.dkim.private_key") && err.contains("no-such-key.pem"),
        "{err}"
    );
    c.dkim.private_key = Some(fixture("dkim-ec.pem"));
    let err = format!("{:#}", Rewriter::new(&c).unwrap_err());
    assert!(err.contains("dkim-ec.pem"), "{err}");
    c.dkim.private_key = None;
    assert!(Rewriter::new(&c).is_err());
    for key in [
        "dkim-rsa-pkcs1.pem",
        "dkim-rsa-pkcs8.pem",
        "dkim-ed25519.pem",
    ] {
        Rewriter::new(&resign_config(key)).unwrap_or_else(|e| panic!("{key}: {e:#}"));
    }
}

mod verify {
    //! Offline DKIM verification with mail-auth: the public key comes from a pre-filled TXT cache.
    use std::borrow::Borrow;
    use std::collections::HashMap;
    use std::hash::Hash;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
    use mail_auth::common::parse::TxtRecordParser;
    use mail_auth::common::verify::DomainKey;
    use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
    use mail_auth::{
        AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
    };
    use rustls::pki_types::PrivateKeyDer;

    #[derive(Default)]
    pub struct Keys(Mutex<HashMap<Box<str>, Txt>>);

    impl Keys {
        pub fn add(&self, selector: &str, domain: &str, record: &str) {
            let key = Txt::DomainKey(Arc::new(DomainKey::parse(record.as_bytes()).unwrap()));
            let mut m = self.0.lock().unwrap();
            m.insert(
                format!("{selector}._domainkey.{domain}.").into(),
                key.clone(),
            );
            m.insert(format!("{selector}._domainkey.{domain}").into(), key);
        }
    }

    impl ResolverCache<Box<str>, Txt> for Keys {
        fn get<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.lock().unwrap().get(name).cloned()
        }
        fn remove<Q>(&self, name: &Q) -> Option<Txt>
        where
            Box<str>: Borrow<Q>,
            Q: Hash + Eq + ?Sized,
        {
            self.0.lock().unwrap().remove(name)
        }
        fn insert(&self, _: Box<str>, _: Txt, _: Instant) {}
    }

    /// The DNS record for a fixture key.
    pub fn record(pem_path: &std::path::Path) -> String {
        use base64::Engine;
        let pem = std::fs::read(pem_path).unwrap();
        use rustls::pki_types::pem::PemObject;
        let der = PrivateKeyDer::from_pem_slice(&pem).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let bytes = match &der {
            PrivateKeyDer::Pkcs1(_) => None,
            PrivateKeyDer::Pkcs8(p) => Some(p.secret_pkcs8_der().to_vec()),
            _ => panic!("unexpected key"),
        };
        match RsaKey::<Sha256>::from_key_der(der) {
            Ok(k) => format!("v=DKIM1; k=rsa; p={}", b64.encode(k.public_key())),
            Err(_) => {
                let k = Ed25519Key::from_pkcs8_maybe_unchecked_der(&bytes.unwrap()).unwrap();
                format!("v=DKIM1; k=ed25519; p={}", b64.encode(k.public_key()))
            }
        }
    }

    /// DKIM results (domain, pass?) for every signature in `message`.
    pub fn results(message: &[u8], keys: &Keys) -> Vec<(String, bool)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let auth = MessageAuthenticator::new(
                ResolverConfig::from_name_servers(vec![]),
                ResolverOpts::default(),
            )
            .unwrap();
            let msg = AuthenticatedMessage::parse(message).unwrap();
            let out = auth
                .verify_dkim(Parameters::new(&msg).with_txt_cache(keys))
                .await;
            out.iter()
                .map(|o| {
                    (
                        o.signature().map(|s| s.d.clone()).unwrap_or_default(),
                        matches!(o.result(), DkimResult::Pass),
                    )
                })
                .collect()
        })
    }
}

fn resign_and_verify(key: &str) {
    let rw = Rewriter::new(&resign_config(key)).unwrap();
    let raw = message(&[SIG_OVER_TO, FROM, TO, SUBJECT, CC, BCC, MSGID], BODY);
    let m = msg(&raw[..]);
    let out = rw
        .hide_recipients(m, "alice@example.org", &decision(Action::Rewrite))
        .unwrap();
    assert_body_borrowed(m.raw(), &out);
    let header = String::from_utf8_lossy(&out.header).into_owned();
    assert!(header.starts_with("DKIM-Signature: v=1; a="), "{header}");
    // Everything after the new signature is the plain rewrite, old signature included.
    let sig_end = header
        .find("\r\nDKIM-Signature: v=1; a=rsa-sha256; d=example.org")
        .unwrap()
        + 2;
    let expected = [
        SIG_OVER_TO,
        FROM,
        b"To: undisclosed-recipients:;\r\n",
        SUBJECT,
        MSGID,
        b"\r\n",
    ]
    .concat();
    assert_eq!(&out.header[sig_end..], &expected[..]);

    let new_sig: String = header[..sig_end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let h = new_sig
        .split(";h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_ascii_lowercase();
    let names: Vec<&str> = h.split(':').collect();
    for n in ["from", "to", "cc", "subject", "message-id"] {
        assert!(names.contains(&n), "h= lacks {n}: {h}");
    }
    assert!(
        !names.contains(&"bcc") && !names.contains(&"dkim-signature"),
        "{h}"
    );
    // bh= is the relaxed body hash: trailing empty lines dropped, the rest as is (no WSP here).
    use base64::Engine;
    use sha2::Digest;
    let canonical = b"Body mentioning\r\nCc: fake@body.net\r\n.\r\n..\r\n";
    let bh = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(canonical));
    assert!(new_sig.contains(&format!(";bh={bh};")), "{new_sig} vs {bh}");

    let keys = verify::Keys::default();
    keys.add(
        "bccguard",
        "relay.example.org",
        &verify::record(&fixture(key)),
    );
    // The sender's old signature gets a key too (any key): it must fail, ours must pass, no DNS.
    keys.add(
        "mail",
        "example.org",
        &verify::record(&fixture("dkim-ed25519.pem")),
    );
    let full = [&*out.header, &*out.body].concat();
    let results = verify::results(&full, &keys);
    assert!(
        results.contains(&("relay.example.org".to_string(), true)),
        "{results:?}"
    );
    assert!(
        results.contains(&("example.org".to_string(), false)),
        "{results:?}"
    );

    // Each split copy is signed on its own and verifies too.
    let copy = rw
        .for_recipient(m, "c@z.net", &decision(Action::Split))
        .unwrap();
    let full = [&*copy.header, &*copy.body].concat();
    assert!(verify::results(&full, &keys).contains(&("relay.example.org".to_string(), true)));
}

#[test]
fn dkim_resign_with_rsa_pkcs1() {
    resign_and_verify("dkim-rsa-pkcs1.pem");
}

#[test]
fn dkim_resign_with_rsa_pkcs8() {
    resign_and_verify("dkim-rsa-pkcs8.pem");
}

#[test]
fn dkim_resign_with_ed25519() {
    resign_and_verify("dkim-ed25519.pem");
}

#[test]
fn sender_notice_says_what_and_why_without_recipients() {
    let raw = awkward();
    let d = decision(Action::Rewrite);
    let n = bccguard::generated::notice::sender_notice(
        "relay.example.org",
        "alice@example.org",
        &d,
        &raw[..raw.len() - BODY.len()],
    );
    let text = String::from_utf8(n).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("From: \"Mail relay\" <MAILER-DAEMON@relay.example.org>"));
    assert!(head.contains("\r\nTo: <alice@example.org>"));
    assert!(head.contains("\r\nSubject: Your message was sent with recipients hidden"));
    assert!(head.contains("\r\nAuto-Submitted: auto-replied"));
    assert!(head.contains("\r\nIn-Reply-To: <1@example.org>"));
    assert!(body.contains("Subject: =?utf-8?q?caf=C3=A9?= trailing"));
    assert!(body.contains("Message-ID: <1@example.org>"));
    assert!(body.contains(&d.reason));
    for addr in ["a@x.net", "b@y.net", "c@z.net", "secret@q.net", "r@s.net"] {
        assert!(!text.contains(addr), "notice leaks {addr}");
    }
    let split = bccguard::generated::notice::sender_notice(
        "relay.example.org",
        "alice@example.org",
        &decision(Action::Split),
        b"Subject: x\r\n",
    );
    assert!(String::from_utf8(split)
        .unwrap()
        .contains("Subject: Your message was sent as separate copies"));
}

// ---------------------------------------------------------------------------------------------
// No recipient traces after a rewrite (issue 13.5)

/// Every place a header section can name recipients besides To/Cc: trace fields, `Received ...
/// for`, a DKIM `z=` copy (=40-encoded), Resent blocks, blind copies.
fn traced_message(z_sig: &[u8]) -> Vec<u8> {
    message(
        &[
            b"Return-Path: <alice@example.org>\r\n",
            b"Received: from mx.example.org (mx [192.0.2.9])\r\n\tby relay.example.org (Postfix) with ESMTPS id 4AbC\r\n\tfor <env1@hidden.example>; Tue, 1 Jan 2030 00:00:02 +0000\r\n",
            b"Received: from pc by mx.example.org with esmtpa (Exim 4.96)\r\n\t(envelope-from <alice@example.org>) id 1r FOR env2@hidden.example; Tue, 1 Jan 2030 00:00:01 +0000\r\n",
            b"Received: by pc (for <Vis1@X.net>, a comment naming a visible one); Tue, 1 Jan 2030 00:00:00 +0000\r\n",
            b"X-Original-To: env1@hidden.example\r\n",
            b"Delivered-To: env2@hidden.example\r\n",
            b"Apparently-To: <env3@hidden.example>\r\n",
            b"X-Envelope-To: env1@hidden.example, env2@hidden.example\r\n",
            b"X-MS-Exchange-Organization-OriginalEnvelopeRecipients: env3@hidden.example\r\n",
            b"Envelope-To: env3@hidden.example\r\n",
            b"Mail-Followup-To: vis1@x.net, vis2@y.net\r\n",
            b"Resent-From: bob@example.org\r\n",
            b"Resent-To: vis3@z.net\r\n",
            b"Resent-Cc: vis4@w.net\r\n",
            b"Resent-Bcc: env4@hidden.example\r\n",
            b"Resent-Date: Tue, 1 Jan 2030 00:00:03 +0000\r\n",
            z_sig,
            FROM,
            b"To: vis1@x.net, \"Two\" <vis2@y.net>\r\n",
            SUBJECT,
            b"Cc: vis5@v.net\r\n",
            b"Bcc: env5@hidden.example\r\n",
            MSGID,
        ],
        BODY,
    )
}

const Z_SIG: &[u8] = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=mail; h=from:subject;\r\n\tz=From:o=40example.org|To:vis1=40x.net,=20vis2=40y.net|Subject:hi;\r\n\tbh=AAAA; b=BBBB\r\n";
const ENVELOPE: &[&str] = &[
    "env1@hidden.example",
    "env2@hidden.example",
    "env3@hidden.example",
    "env4@hidden.example",
    "env5@hidden.example",
];

fn envelope() -> bccguard::message::Envelope {
    bccguard::message::Envelope {
        sender: "alice@example.org".into(),
        ..Default::default()
    }
}

fn assert_no_recipient_named(header: &[u8], visible: &[String]) {
    let text = String::from_utf8_lossy(header).to_ascii_lowercase();
    let mut all: Vec<String> = visible.to_vec();
    all.extend(ENVELOPE.iter().map(|s| s.to_string()));
    assert!(all.len() >= 10, "{all:?}");
    for a in &all {
        let (local, domain) = a.rsplit_once('@').unwrap();
        for form in [
            a.to_ascii_lowercase(),
            format!("{local}=40{domain}").to_ascii_lowercase(),
        ] {
            assert!(!text.contains(&form), "{form} still in the header:\n{text}");
        }
        // Even the local part alone (e.g. in an odd encoding) must be gone.
        assert!(
            !text.contains(&local.to_ascii_lowercase()),
            "{local} in:\n{text}"
        );
    }
}

#[test]
fn rewrite_leaves_no_envelope_or_visible_recipient_in_the_header() {
    let raw = traced_message(Z_SIG);
    let m = msg(&raw);
    let cfg = PolicyConfig {
        internal_domains: vec!["example.org".into()],
        rules: vec![RuleConfig {
            min_visible_external: Some(1),
            ..RuleConfig::new("hide", Action::Rewrite)
        }],
        dkim: bccguard::config::DkimConfig {
            on_rewrite: DkimOnRewrite::Forward,
            ..Default::default()
        },
        ..PolicyConfig::default()
    };
    let d = Policy::new(&cfg).unwrap().decide(m, &envelope()).unwrap();
    assert_eq!(d.action, Action::Rewrite);
    assert!(d.bcc_header_stripped);
    assert_eq!(d.visible.len(), 5, "{:?}", d.visible);
    let rw = Rewriter::new(&cfg).unwrap();

    let out = rw.hide_recipients(m, "alice@example.org", &d).unwrap();
    assert_no_recipient_named(&out.header, &d.visible.to_vec());
    assert_body_borrowed(m.raw(), &out);
    let text = String::from_utf8_lossy(&out.header);
    // What stays is byte for byte: the Received fields minus only their `for` clause, the
    // Resent block minus its destinations, the signature minus its z= tag.
    let expected = [
        &b"Return-Path: <alice@example.org>\r\n"[..],
        b"Received: from mx.example.org (mx [192.0.2.9])\r\n\tby relay.example.org (Postfix) with ESMTPS id 4AbC; Tue, 1 Jan 2030 00:00:02 +0000\r\n",
        b"Received: from pc by mx.example.org with esmtpa (Exim 4.96)\r\n\t(envelope-from <alice@example.org>) id 1r; Tue, 1 Jan 2030 00:00:01 +0000\r\n",
        b"Resent-From: bob@example.org\r\n",
        b"Resent-Date: Tue, 1 Jan 2030 00:00:03 +0000\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=mail; h=from:subject;\r\n\tbh=AAAA; b=BBBB\r\n",
        FROM,
        b"To: undisclosed-recipients:;\r\n",
        SUBJECT,
        MSGID,
        b"\r\n",
    ]
    .concat();
    assert_eq!(text, String::from_utf8_lossy(&expected));

    // Each split copy names its own recipient in To: and nobody else anywhere.
    for rcpt in ["vis1@x.net", "env1@hidden.example"] {
        let out = rw.for_recipient(m, rcpt, &d).unwrap();
        let header = String::from_utf8_lossy(&out.header).into_owned();
        let without_own_to = header.replacen(&format!("To: <{rcpt}>\r\n"), "", 1);
        assert_ne!(header, without_own_to, "no To: <{rcpt}>:\n{header}");
        assert_no_recipient_named(without_own_to.as_bytes(), &d.visible.to_vec());
    }
}

#[test]
fn z_tag_naming_recipients_follows_the_dkim_setting() {
    let raw = traced_message(Z_SIG);
    let d = decision(Action::Rewrite);
    // Default (reject): a signature that copies To into z= cannot be kept as it is: refused.
    assert!(matches!(
        rewriter(|_| {}).hide_recipients(msg(&raw), "alice@example.org", &d),
        Err(RewriteError::DkimRefused(_))
    ));
    // Its h= does not cover To/Cc, so without the z= copy the rewrite leaves it alone.
    let no_z = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=mail; h=from:subject; bh=AAAA; b=BBBB\r\n";
    let raw = traced_message(no_z);
    let out = rewriter(|_| {})
        .hide_recipients(msg(&raw), "alice@example.org", &d)
        .unwrap();
    assert!(contains(&out.header, no_z));
}

#[test]
fn new_to_is_not_put_inside_a_resent_block() {
    let rw = rewriter(|_| {});
    let d = decision(Action::Rewrite);
    // A To/Cc between Resent- fields (a client that wrote its own fields into the block): the new
    // To: goes right after the last Resent- field, where the original message's fields start.
    let raw = message(
        &[
            b"Resent-From: bob@example.org\r\n",
            TO,
            b"Resent-To: r@s.net\r\n",
            b"Resent-Date: Tue, 1 Jan 2030 00:00:03 +0000\r\n",
            FROM,
            SUBJECT,
        ],
        BODY,
    );
    let out = rw
        .hide_recipients(msg(&raw), "alice@example.org", &d)
        .unwrap();
    let expected = [
        &b"Resent-From: bob@example.org\r\n"[..],
        b"Resent-Date: Tue, 1 Jan 2030 00:00:03 +0000\r\n",
        b"To: undisclosed-recipients:;\r\n",
        FROM,
        SUBJECT,
        b"\r\n",
    ]
    .concat();
    assert_eq!(
        String::from_utf8_lossy(&out.header),
        String::from_utf8_lossy(&expected)
    );
    // Only a Resent-To: same place, never before or inside the block.
    let raw = message(
        &[
            b"Resent-From: bob@example.org\r\n",
            b"Resent-To: r@s.net\r\n",
            b"Resent-Date: Tue, 1 Jan 2030 00:00:03 +0000\r\n",
            FROM,
            SUBJECT,
        ],
        BODY,
    );
    let out = rw
        .hide_recipients(msg(&raw), "alice@example.org", &d)
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.header),
        String::from_utf8_lossy(&expected)
    );
}

#[test]
fn resent_bcc_alone_counts_as_a_stripped_bcc() {
    let raw = message(&[FROM, b"Resent-Bcc: hidden@q.net\r\n", TO, SUBJECT], BODY);
    let d = Policy::new(&PolicyConfig::default())
        .unwrap()
        .decide(msg(&raw), &envelope())
        .unwrap();
    assert!(d.bcc_header_stripped);
    let out = rewriter(|_| {}).pass_through(msg(&raw)).unwrap();
    assert!(!contains(&out.header, b"hidden@q.net"));
}
