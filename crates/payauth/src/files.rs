//! Small file helpers shared by the guard, the token store, the sidecar and config checks.

use std::io::{self, Write};
use std::path::Path;

#[cfg(feature = "sidecar")]
use crate::secret::Secret;

/// Reads a secret file: surrounding whitespace (the newline editors and `echo` add) is trimmed;
/// an empty file is an error.
#[cfg(feature = "sidecar")]
pub(crate) fn read_secret(path: &Path) -> io::Result<Secret<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(Secret::new(trimmed.to_owned()))
}

/// Writes `bytes` to `path` atomically: a temporary file of its own in the same directory
/// (a unique name, so processes sharing a state dir never write through each other's), fsync,
/// rename, then the directory synced. The file is readable by its owner only.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    // tempfile creates it with mode 0600 and removes it if anything below fails.
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::write_atomically;

    /// Two writers of one state file at once (two processes sharing a state dir, or two
    /// threads): every write succeeds, a reader only ever sees one whole version, and no
    /// temporary file is left behind.
    #[test]
    fn concurrent_writers_never_write_through_each_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("guard-number.json");
        let versions = [vec![b'a'; 64 << 10], vec![b'b'; 3]];
        std::thread::scope(|scope| {
            for version in &versions {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..200 {
                        write_atomically(path, version).expect("every write succeeds");
                    }
                });
            }
            scope.spawn(|| {
                for _ in 0..400 {
                    if let Ok(seen) = std::fs::read(&path) {
                        assert!(
                            versions.contains(&seen),
                            "a torn file of {} bytes",
                            seen.len()
                        );
                    }
                }
            });
        });
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["guard-number.json"], "no temporary file left");
    }

    #[cfg(unix)]
    #[test]
    fn a_state_file_is_its_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token-number.json");
        write_atomically(&path, b"{}").expect("write");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).expect("read"), b"{}");
    }
}
