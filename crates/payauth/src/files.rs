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

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
