//! The plan for one message: what leaves the relay, given the policy's decision. Either a
//! refusal (with the exact reply the client gets) or the outgoing messages: one on the
//! client's own transaction, or one single-recipient copy per envelope recipient for a split.
//! Pure (no I/O), so `bccguard check` reports exactly what `serve` does, refusals included.

use super::{Outgoing, RewriteError, Rewriter};
use crate::config::Action;
use crate::message::{Envelope, Message, Unreadable};
use crate::policy::Decision;
use crate::reply::Reply;

/// Why the relay itself refuses a message (as opposed to the upstream refusing it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCause {
    /// A rule with `action = "reject"`.
    Policy,
    /// A rewrite or split would break a DKIM signature over To/Cc (`dkim.on_rewrite = "reject"`).
    Dkim,
    /// A header that cannot be read for sure (it could hide recipients).
    Unreadable,
    /// The relay's own DKIM key failed: our fault, so temporary.
    Signing,
}

impl RefusalCause {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCause::Policy => "policy",
            RefusalCause::Dkim => "dkim",
            RefusalCause::Unreadable => "unreadable",
            RefusalCause::Signing => "signing",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reply: Reply,
    pub cause: RefusalCause,
}

impl Refusal {
    /// The refusal for a header the relay cannot read for sure.
    pub fn unreadable(u: &Unreadable) -> Refusal {
        Refusal {
            reply: Reply::new(550, (5, 6, 0), format!("Message refused: {u}")),
            cause: RefusalCause::Unreadable,
        }
    }

    fn from_rewrite(e: RewriteError) -> Refusal {
        match e {
            RewriteError::DkimRefused(text) => Refusal {
                reply: Reply::new(550, (5, 7, 1), text),
                cause: RefusalCause::Dkim,
            },
            RewriteError::Unreadable(why) => Refusal {
                reply: Reply::new(550, (5, 6, 0), format!("Message refused: {why}")),
                cause: RefusalCause::Unreadable,
            },
            RewriteError::Signing(why) => {
                tracing::error!("DKIM signing with the relay's key failed: {why}");
                Refusal {
                    reply: Reply::new(
                        451,
                        (4, 3, 0),
                        "Message not accepted: the relay could not sign it; please try again later",
                    ),
                    cause: RefusalCause::Signing,
                }
            }
        }
    }
}

/// Where one outgoing message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// On the client's transaction, to every envelope recipient the upstream accepted.
    Transaction,
    /// A single-recipient transaction of its own (a split copy).
    Single(String),
}

pub struct Send<'m> {
    pub route: Route,
    pub message: Outgoing<'m>,
}

pub enum Plan<'m> {
    Refuse(Refusal),
    /// At least one message; a split has one per envelope recipient, in envelope order.
    Send(Vec<Send<'m>>),
}

/// What policy's decision means for these bytes and this envelope.
pub fn plan<'m>(
    rw: &Rewriter,
    d: &Decision,
    message: &'m Message,
    envelope: &Envelope,
) -> Plan<'m> {
    let whole = |out: Result<Outgoing<'m>, RewriteError>| match out {
        Ok(message) => Plan::Send(vec![Send {
            route: Route::Transaction,
            message,
        }]),
        Err(e) => Plan::Refuse(Refusal::from_rewrite(e)),
    };
    match d.effective_action() {
        Action::Reject => Plan::Refuse(Refusal {
            reply: Reply::new(
                550,
                (5, 7, 1),
                d.reject_text.clone().unwrap_or_else(|| d.reason.clone()),
            ),
            cause: RefusalCause::Policy,
        }),
        Action::Accept => whole(rw.pass_through_for(message, &d.org)),
        Action::Rewrite => whole(rw.hide_recipients(message, &envelope.sender, d)),
        Action::Split => {
            // Every copy is prepared before any leaves: a refusal must stop the whole message.
            let mut copies = Vec::with_capacity(envelope.recipients.len());
            let invitation = !d.visible_attendees.is_empty();
            for rcpt in &envelope.recipients {
                let copy = if invitation {
                    invitee_copy(rw, d, message, rcpt)
                } else {
                    rw.for_recipient(message, rcpt, d)
                };
                match copy {
                    Ok(out) => copies.push(Send {
                        route: Route::Single(rcpt.clone()),
                        message: out,
                    }),
                    Err(e) => return Plan::Refuse(Refusal::from_rewrite(e)),
                }
            }
            Plan::Send(copies)
        }
    }
}

/// A split copy of a calendar invitation whose calendar parts list only the organizer and
/// `rcpt` (RFC 5546: the same UID and sequence, so updates and cancellations still match). The
/// copy owns its bytes: its body differs from the received one.
fn invitee_copy<'m>(
    rw: &Rewriter,
    d: &Decision,
    message: &Message,
    rcpt: &str,
) -> Result<Outgoing<'m>, RewriteError> {
    let edited = Message::parse(crate::policy::calendar::copy_for_invitee(
        message.raw(),
        rcpt,
    ))
    .map_err(|r| RewriteError::Unreadable(r.why.reason))?;
    let out = rw.for_invitee(&edited, rcpt, d)?;
    Ok(Outgoing {
        header: std::borrow::Cow::Owned(out.header.into_owned()),
        body: std::borrow::Cow::Owned(out.body.into_owned()),
    })
}
