//! One run at a time: a lock file created exclusively, holding the owner's
//! pid. A lock whose pid is gone (a run killed with -9) is stale and taken over.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    pub fn acquire(path: &Path) -> Result<RunLock> {
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id())
                        .with_context(|| format!("{}: cannot write", path.display()))?;
                    return Ok(RunLock {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(path).unwrap_or_default();
                    let pid: Option<u32> = owner.trim().parse().ok();
                    if let Some(pid) = pid.filter(|p| alive(*p)) {
                        bail!(
                            "another pipeline run (pid {pid}) holds {}; wait for it to finish",
                            path.display()
                        );
                    }
                    // Stale: its owner died without cleaning up.
                    let _ = std::fs::remove_file(path);
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("{}: cannot create", path.display()))
                }
            }
        }
        bail!("{}: could not take the lock", path.display())
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_refuses_and_stale_lock_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.lock");
        let first = RunLock::acquire(&path).unwrap();
        let err = RunLock::acquire(&path).err().unwrap().to_string();
        assert!(err.contains("another pipeline run"), "{err}");
        drop(first);
        assert!(!path.exists());
        // A pid that cannot exist: stale.
        std::fs::write(&path, "4294967\n").unwrap();
        let _again = RunLock::acquire(&path).unwrap();
    }
}
