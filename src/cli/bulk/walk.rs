//! Which files `check` reads when given folders: every regular file of a folder (sorted by name,
//! dot-files skipped, subfolders included), and of a Maildir only `new/` and `cur/` (`tmp/`
//! holds deliveries in progress). Symbolic links to folders are not followed (no loops).

use std::path::{Path, PathBuf};

/// One file to read: a message, or an mbox of many (decided when it is opened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub path: PathBuf,
    /// Size on disk (0 for stdin), for progress.
    pub size: u64,
}

/// A path that could not be listed or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub path: PathBuf,
    pub why: String,
}

pub fn collect(paths: &[PathBuf]) -> (Vec<Source>, Vec<InputError>) {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        if path == Path::new("-") {
            sources.push(Source {
                path: path.clone(),
                size: 0,
            });
            continue;
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => folder(path, &mut sources, &mut errors),
            Ok(m) => sources.push(Source {
                path: path.clone(),
                size: m.len(),
            }),
            Err(e) => errors.push(InputError {
                path: path.clone(),
                why: e.to_string(),
            }),
        }
    }
    (sources, errors)
}

pub fn is_maildir(dir: &Path) -> bool {
    dir.join("cur").is_dir() && dir.join("new").is_dir()
}

fn folder(dir: &Path, sources: &mut Vec<Source>, errors: &mut Vec<InputError>) {
    if is_maildir(dir) {
        for sub in ["new", "cur"] {
            files_of(&dir.join(sub), false, sources, errors);
        }
    } else {
        files_of(dir, true, sources, errors);
    }
}

fn files_of(dir: &Path, recurse: bool, sources: &mut Vec<Source>, errors: &mut Vec<InputError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(InputError {
                path: dir.to_path_buf(),
                why: e.to_string(),
            });
            return;
        }
    };
    let mut names: Vec<(PathBuf, std::fs::FileType)> = Vec::new();
    for entry in entries {
        match entry.and_then(|e| Ok((e.path(), e.file_type()?))) {
            Ok(pair) => names.push(pair),
            Err(e) => errors.push(InputError {
                path: dir.to_path_buf(),
                why: e.to_string(),
            }),
        }
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, kind) in names {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
        if hidden {
            continue;
        }
        if kind.is_dir() {
            if recurse {
                folder(&path, sources, errors);
            }
            continue;
        }
        // A symbolic link to a file counts; one to a folder does not (see the module note).
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => sources.push(Source {
                path,
                size: m.len(),
            }),
            Ok(_) => {}
            Err(e) => errors.push(InputError {
                path,
                why: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maildir_reads_new_and_cur_only_and_folders_recurse() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("Sent");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(md.join(sub)).unwrap();
            std::fs::write(md.join(sub).join("1.x"), b"Subject: a\n").unwrap();
        }
        std::fs::write(dir.path().join("a.eml"), b"Subject: b\n").unwrap();
        std::fs::write(dir.path().join(".hidden"), b"x").unwrap();
        let (sources, errors) = collect(&[dir.path().to_path_buf()]);
        assert!(errors.is_empty());
        let got: Vec<PathBuf> = sources.into_iter().map(|s| s.path).collect();
        // "Sent" sorts before "a.eml"; in a Maildir new/ comes before cur/; tmp/ is skipped.
        assert_eq!(
            got,
            [
                md.join("new").join("1.x"),
                md.join("cur").join("1.x"),
                dir.path().join("a.eml"),
            ]
        );
        let (_, errors) = collect(&[dir.path().join("missing")]);
        assert_eq!(errors.len(), 1);
    }
}
