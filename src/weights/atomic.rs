//! Writing output files so that nothing is lost and nothing half-written is left behind, and
//! checking inputs and output paths before any work is done (native only).
//!
//! Every file `disa` writes goes through [`write_atomic_with`]: the bytes go to a temporary file
//! in the target's folder, are flushed and synced, and the temporary file is renamed over the
//! target. A failed write (full disk, `/dev/full`, a vanished folder) leaves the old file intact,
//! removes the temporary one and is an I/O error naming the file.
//!
//! For tests of crash consistency, [`arm_fault`] makes the N-th write/rename point of this
//! thread fail as a `kill -9` there would: without any clean-up.

use crate::error::{DisaError, Result};
use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

fn io_error(path: &Path, source: std::io::Error) -> DisaError {
    DisaError::Io {
        path: path.display().to_string(),
        source,
    }
}

thread_local! {
    /// Write/rename points left before the injected fault fires (`None`: never).
    static FAULT_IN: Cell<Option<usize>> = const { Cell::new(None) };
    /// Whether the armed fault fired.
    static FAULT_FIRED: Cell<bool> = const { Cell::new(false) };
}

/// The message of an injected fault (tests look for it).
pub const INJECTED_FAULT: &str = "injected fault (test hook)";

/// Test hook: the `n`-th write/rename point (1-based) reached by this thread from now on fails
/// as if the process had been killed there (partial files stay); `None` disarms. Returns
/// whether the previously armed fault fired.
#[doc(hidden)]
pub fn arm_fault(n: Option<usize>) -> bool {
    FAULT_IN.with(|c| c.set(n));
    FAULT_FIRED.with(|f| f.replace(false))
}

/// A write/rename point: fails when the armed fault is due.
pub(crate) fn fault_point() -> std::io::Result<()> {
    FAULT_IN.with(|c| match c.get() {
        Some(1) => {
            c.set(None);
            FAULT_FIRED.with(|f| f.set(true));
            Err(std::io::Error::other(INJECTED_FAULT))
        }
        Some(n) => {
            c.set(Some(n - 1));
            Ok(())
        }
        None => Ok(()),
    })
}

/// Whether an error is the injected fault (then nothing is cleaned up, as after a kill).
fn is_injected(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Other && e.to_string() == INJECTED_FAULT
}

/// A fresh name beside `path` for its temporary file.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}-{n}.partial", std::process::id()))
}

/// Writes `bytes` to `path` atomically (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| {
        // Two halves, with a fault point between: a crash can leave a truncated temporary file.
        let half = bytes.len() / 2;
        file.write_all(&bytes[..half])?;
        fault_point()?;
        file.write_all(&bytes[half..])
    })
}

/// Writes the file `write` produces to `path` atomically. An existing target that is not a
/// regular file (`/dev/stdout`, `/dev/full`, a FIFO) is written in place instead, every error
/// still reported: renaming over a device would replace it.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    // A symbolic link is followed: its target is replaced, the link kept.
    let path = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    };
    if let Ok(meta) = std::fs::metadata(&path) {
        if meta.is_dir() {
            return Err(io_error(
                &path,
                std::io::Error::other("is a folder; a file name is needed here"),
            ));
        }
        if !meta.is_file() {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_error(&path, e))?;
            return write(&mut file)
                .and_then(|()| file.flush())
                .map_err(|e| io_error(&path, e));
        }
    }
    let tmp = temp_path(&path);
    fault_point().map_err(|e| io_error(&path, e))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io_error(&path, e))?;
    let result = write(&mut file)
        .and_then(|()| file.flush())
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            // What was written is what the file holds (a short write is an error).
            let len = file.metadata()?.len();
            let pos = std::io::Seek::stream_position(&mut file)?;
            if len < pos {
                return Err(std::io::Error::other(format!(
                    "only {len} of {pos} bytes reached the disk"
                )));
            }
            Ok(())
        })
        .and_then(|()| fault_point())
        .and_then(|()| std::fs::rename(&tmp, &path));
    drop(file);
    match result {
        Ok(()) => {
            // The rename itself is made durable with the folder.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            }
            Ok(())
        }
        Err(e) => {
            if !is_injected(&e) {
                let _ = std::fs::remove_file(&tmp);
            }
            Err(io_error(&path, e))
        }
    }
}

/// The folder a file path lives in (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Checks that a folder exists and that files can be created in it (by creating one), so a
/// command fails before its work, not after.
fn check_writable_dir(dir: &Path, flag: &str, what: &str) -> Result<()> {
    let setting = |reason: String| DisaError::InvalidSetting(format!("{flag}: {reason}; {what}"));
    match std::fs::metadata(dir) {
        Err(_) => {
            return Err(setting(format!(
                "the folder {} does not exist",
                dir.display()
            )));
        }
        Ok(m) if !m.is_dir() => {
            return Err(setting(format!("{} is not a folder", dir.display())));
        }
        Ok(_) => {}
    }
    let probe = temp_path(&dir.join("write-test"));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(setting(format!(
            "cannot create files in {} ({e})",
            dir.display()
        ))),
    }
}

/// Checks an output file path before any work: a known extension (one of `extensions`,
/// case-insensitive, when not empty), not a folder, in an existing writable folder. `flag` names
/// the option in messages (`--out`).
pub fn check_output_file(path: &Path, flag: &str, extensions: &[&str]) -> Result<()> {
    let listed = extensions
        .iter()
        .map(|e| format!(".{e}"))
        .collect::<Vec<_>>()
        .join(", ");
    let what = if extensions.is_empty() {
        format!("{flag} must be a file path in an existing, writable folder")
    } else {
        format!("{flag} must be a {listed} file in an existing, writable folder")
    };
    if !extensions.is_empty() {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if !ext
            .as_deref()
            .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
        {
            return Err(DisaError::InvalidSetting(format!(
                "{flag} {}: unknown file type; accepted: {listed}",
                path.display()
            )));
        }
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_dir() {
            return Err(DisaError::InvalidSetting(format!(
                "{flag} {} is a folder; {what}",
                path.display()
            )));
        }
        if !meta.is_file() {
            // A device or FIFO is written in place (e.g. /dev/stdout); errors are reported then.
            return Ok(());
        }
    }
    check_writable_dir(parent_of(path), flag, &what)
}

/// Checks an output folder before any work: an existing writable folder, or a path whose
/// parent folder exists and is writable (the folder is created then).
pub fn check_output_dir(path: &Path, flag: &str) -> Result<()> {
    let what = format!("{flag} must be a folder, or a new folder's path in a writable folder");
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => check_writable_dir(path, flag, &what),
        Ok(_) => Err(DisaError::InvalidSetting(format!(
            "{flag} {} is a file, not a folder; {what}",
            path.display()
        ))),
        Err(_) => check_writable_dir(parent_of(path), flag, &what),
    }
}

/// Checks that an input path is a regular file (not a folder, FIFO or device, which could block
/// or never end) and returns its size.
pub fn regular_file_len(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if meta.is_dir() {
        return Err(io_error(
            path,
            std::io::Error::other("is a folder, not a file"),
        ));
    }
    if !meta.is_file() {
        return Err(io_error(
            path,
            std::io::Error::other(
                "is not a regular file (a device, FIFO or socket); give a file on disk",
            ),
        ));
    }
    Ok(meta.len())
}

/// Opens an input file after checking it is a regular one; returns it with its size.
pub fn open_regular(path: &Path) -> Result<(std::fs::File, u64)> {
    let len = regular_file_len(path)?;
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    Ok((file, len))
}

/// Reads a whole regular file of at most `limit` bytes (`what` says what the limit is for).
pub fn read_regular(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let (file, len) = open_regular(path)?;
    if len > limit {
        return Err(io_error(
            path,
            std::io::Error::other(format!(
                "{len} bytes is too large for {what} (at most {limit})"
            )),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(io_error(
            path,
            std::io::Error::other(format!("grew beyond {limit} bytes while read")),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("disa-atomic-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn leftovers(d: &Path) -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect()
    }

    #[test]
    fn writes_replace_and_failures_keep_the_old_file() {
        let d = dir("replace");
        let p = d.join("a.bin");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let err = write_atomic_with(&p, |f| {
            f.write_all(b"par")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("a.bin"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn dev_full_is_an_error() {
        if Path::new("/dev/full").exists() {
            let err = write_atomic(Path::new("/dev/full"), &[0u8; 1 << 16]).unwrap_err();
            assert!(err.to_string().contains("/dev/full"), "{err}");
            assert!(
                Path::new("/dev/full")
                    .metadata()
                    .unwrap()
                    .file_type()
                    .is_char_device_like(),
                "/dev/full is still a device"
            );
        }
    }

    trait CharDevice {
        fn is_char_device_like(&self) -> bool;
    }
    impl CharDevice for std::fs::FileType {
        fn is_char_device_like(&self) -> bool {
            !self.is_file() && !self.is_dir()
        }
    }

    #[test]
    fn injected_faults_leave_partial_files_like_a_kill() {
        let d = dir("fault");
        let p = d.join("b.bin");
        write_atomic(&p, b"old").unwrap();
        for n in 1..=3 {
            arm_fault(Some(n));
            assert!(write_atomic(&p, b"new!").is_err(), "point {n}");
            assert!(arm_fault(None), "fired at {n}");
            assert_eq!(std::fs::read(&p).unwrap(), b"old", "point {n}");
        }
        arm_fault(Some(4));
        write_atomic(&p, b"new!").unwrap();
        assert!(!arm_fault(None), "three points per write");
        assert_eq!(std::fs::read(&p).unwrap(), b"new!");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn output_paths_are_checked_up_front() {
        let d = dir("check");
        assert!(check_output_file(&d.join("x.png"), "--out", &["png", "ppm"]).is_ok());
        let e = check_output_file(&d.join("x.jpg"), "--out", &["png", "ppm"]).unwrap_err();
        assert!(e.to_string().contains(".png, .ppm"), "{e}");
        let e = check_output_file(&d.join("no/x.png"), "--out", &["png"]).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        std::fs::create_dir_all(d.join("f.png")).unwrap();
        assert!(check_output_file(&d.join("f.png"), "--out", &["png"]).is_err());
        std::fs::write(d.join("file"), b"").unwrap();
        assert!(check_output_file(&d.join("file/x.png"), "--out", &["png"]).is_err());
        assert!(check_output_dir(&d.join("file"), "--out").is_err());
        assert!(check_output_dir(&d.join("new"), "--out").is_ok());
        assert!(check_output_dir(&d.join("no/new"), "--out").is_err());
        assert!(regular_file_len(Path::new("/dev/zero")).is_err());
        assert!(regular_file_len(&d).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
