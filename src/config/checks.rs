//! Load-time checks on single values that end up on the wire or guard secrets: the hostname we
//! announce, and who may read or change the users file.

use std::path::Path;

/// `server.hostname` goes into the greeting, EHLO reply and `Received:` lines verbatim, so a CR/LF
/// would let the config inject protocol lines or header fields. Accepts a DNS name in ASCII (the
/// A-label form of an IDN), or an address literal such as `[192.0.2.1]`.
pub fn hostname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{name:?} contains {c:?}; a hostname is one word without spaces, line breaks or control characters"
        ));
    }
    if name.len() > 255 {
        return Err(format!("is {} characters long; at most 255", name.len()));
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        let ok = inner.parse::<std::net::Ipv4Addr>().is_ok()
            || inner
                .strip_prefix("IPv6:")
                .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok());
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "`{name}` is not an address literal (e.g. [192.0.2.1] or [IPv6:2001:db8::1])"
            ))
        };
    }
    if !name.is_ascii() {
        return Err(format!(
            "`{name}` is not ASCII: write an internationalised name in its xn-- (A-label) form"
        ));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "`{name}` is not a host name: labels of letters, digits and inner hyphens, separated by dots"
            ));
        }
    }
    Ok(())
}

/// What the users file's permissions allow others to do.
#[derive(Debug, PartialEq, Eq)]
pub enum FileExposure {
    /// Only the owner may read or write it.
    Private,
    /// Group or others may read the password hashes (mode in octal).
    Readable(u32),
    /// Group or others may change it, i.e. add themselves an account (mode in octal).
    Writable(u32),
}

/// Checks a secret file's mode bits. `None` when the file cannot be inspected (a missing file is
/// reported by whoever reads it, with better context).
///
/// Policy for the users file: *writable* by group/others is refused, since anyone who can add a
/// line can log in and relay. *Readable* only warns, like the audit HMAC key: the hashes are
/// argon2id (slow to attack offline) and refusing would stop all mail over a permission slip.
#[cfg(unix)]
pub fn exposure(path: &Path) -> Option<FileExposure> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    Some(if mode & 0o022 != 0 {
        FileExposure::Writable(mode)
    } else if mode & 0o044 != 0 {
        FileExposure::Readable(mode)
    } else {
        FileExposure::Private
    })
}

#[cfg(not(unix))]
pub fn exposure(_path: &Path) -> Option<FileExposure> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in [
            "relay.example.org",
            "localhost",
            "mx-1.example.org.",
            "xn--bcher-kva.example",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "host_1.corp",
        ] {
            hostname(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "relay.example.org\r\nX-Injected: 1",
            "relay example.org",
            "relay\texample",
            "relay\x1b[2J",
            "bücher.example",
            "a..b",
            "-a.example",
            "[300.1.1.1]",
            "a<b>.example",
        ] {
            assert!(hostname(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[cfg(unix)]
    #[test]
    fn file_exposure() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("bccguard-exposure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("users");
        std::fs::write(&f, "x").unwrap();
        let set = |m| std::fs::set_permissions(&f, std::fs::Permissions::from_mode(m)).unwrap();
        set(0o600);
        assert_eq!(exposure(&f), Some(FileExposure::Private));
        set(0o640);
        assert_eq!(exposure(&f), Some(FileExposure::Readable(0o640)));
        set(0o666);
        assert_eq!(exposure(&f), Some(FileExposure::Writable(0o666)));
        assert_eq!(exposure(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
