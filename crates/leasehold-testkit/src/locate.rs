//! Finding the installed server programs.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Directories searched after `PATH`: Debian installs the servers here, and a test run
/// by a tool with a trimmed `PATH` should still find them.
const FALLBACK_DIRS: [&str; 3] = ["/usr/bin", "/usr/local/bin", "/usr/sbin"];

/// The path of executable `name`: the file named by the environment variable `override_var`
/// if set, else the first `name` in `PATH` or the fallback directories.
pub(crate) fn program(name: &str, override_var: &str, install: &'static str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(override_var) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(Error::NotInstalled {
                what: format!("{name} (from {override_var}={})", path.display()),
                install,
            })
        };
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| Error::NotInstalled {
            what: name.to_owned(),
            install,
        })
}

/// `path` if it is a file, else `NotInstalled`.
pub(crate) fn file(path: &Path, install: &'static str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path.to_owned())
    } else {
        Err(Error::NotInstalled {
            what: path.display().to_string(),
            install,
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
