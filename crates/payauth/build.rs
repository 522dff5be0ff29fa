//! Records the git commit the library was built from (`PAYAUTH_COMMIT`, "unknown" outside a git
//! checkout), for `payauth --version` and the `payauth_build_info` metric.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PAYAUTH_COMMIT={commit}");
    // Run again when HEAD moves: the HEAD file (a checkout) and the branch it names (a commit).
    // Only files that exist are named, or cargo would rerun this on every build.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = std::path::Path::new(&dir);
        let mut files = vec![dir.join("HEAD"), dir.join("packed-refs")];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            files.push(dir.join(branch));
        }
        for file in files.iter().filter(|f| f.exists()) {
            println!("cargo:rerun-if-changed={}", file.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
