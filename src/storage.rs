//! Script storage (RFC 3179 section 2 and 9): one directory the host writes and runtimes
//! only read. SMX passes file names, so every name handed to a runtime is resolved here
//! first and must stay inside the storage: no `..`, no absolute paths, no symlink escapes.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Why a script could not be stored or found.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("script storage {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("script path {0:?} must be relative to the script storage, without `..`")]
    BadPath(String),
    #[error("script {0:?} does not exist in the script storage")]
    NotFound(String),
    #[error("script {0:?} resolves outside the script storage (symlink escape)")]
    Escape(String),
    #[error("script {0:?} is not a regular file")]
    NotAFile(String),
    #[error("script is {size} octets; the limit is {max}")]
    TooLarge { size: u64, max: u64 },
    #[error(
        "owner {owner:?} would use {would} octets of script storage; its quota is {quota} ([host] storage_quota)"
    )]
    QuotaExceeded {
        owner: String,
        would: u64,
        quota: u64,
    },
}

/// No fork while a script is open for writing. A child forked in that window keeps a copy
/// of the write fd until it execs, and executing the script meanwhile fails with ETXTBSY
/// (the same race as golang/go#22315). Writers hold it exclusively while the file is
/// open; the host holds it shared around spawning a runtime (fork to exec).
pub(crate) static FORK_GUARD: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Largest script the host installs.
pub const MAX_SCRIPT_OCTETS: u64 = 16 << 20;

/// The script storage directory.
#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// A temporary storage's lock, held while this process lives (see [`Storage::temporary`]).
    _lock: Option<std::fs::File>,
    /// Octets one owner's scripts may take in all (0: no limit).
    quota: std::sync::atomic::AtomicU64,
}

/// The directory, inside an owner's, of the Script MIB's scripts. `component` never yields
/// it (a `%` is always followed by two hex digits), so no `install`ed file can be it.
const MIB_AREA: &str = "%mib";

/// `[host] storage_quota`'s default: 64 MiB per owner.
pub const DEFAULT_QUOTA: u64 = 64 << 20;

/// Names of temporary storages in the temp directory.
const TEMP_PREFIX: &str = "smx-scripts-";
/// The lock file at the top of a temporary storage (owner directories never start with a
/// dot, see [`component`]).
const TEMP_LOCK: &str = ".smx-lock";

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Encodes an smLaunchOwner or script name as one safe path component, so that different
/// owners' scripts of the same name never share a file (RFC 3165 smScriptName).
pub fn component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() { "%".to_owned() } else { out }
}

impl Storage {
    /// Opens (creating if needed, mode 0755) the storage at `dir`.
    pub fn open(dir: &Path) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let root = std::fs::canonicalize(dir).map_err(io_err(dir))?;
        Ok(Storage {
            root,
            _temp: None,
            quota: DEFAULT_QUOTA.into(),
            _lock: None,
        })
    }

    /// A private storage removed when dropped, for `smx run` without a configured storage.
    ///
    /// A process killed outright (SIGKILL) drops nothing, so each temporary storage also
    /// holds an flock on its lock file for as long as its process lives (the kernel
    /// releases it however the process ends). Making a new one first removes the ones of
    /// this user whose lock is free: the temp directory does not fill up with the storages
    /// of killed `smx run`s and test processes.
    pub fn temporary() -> Result<Storage, StorageError> {
        let base = std::env::temp_dir();
        remove_stale_temporaries(&base);
        let t = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir()
            .map_err(io_err(&base))?;
        let lock = lock_new(t.path()).map_err(io_err(t.path()))?;
        // Runtimes may run as the invoking user only (no OS profile), but keep it readable
        // for them regardless of umask.
        let _ = std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755));
        let root = std::fs::canonicalize(t.path()).map_err(io_err(t.path()))?;
        Ok(Storage {
            root,
            _temp: Some(t),
            quota: DEFAULT_QUOTA.into(),
            _lock: Some(lock),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stores `content` as script `name` of `owner`, atomically, read-only for others.
    /// Returns the path relative to the storage.
    pub fn install(
        &self,
        owner: &str,
        name: &str,
        content: &[u8],
        executable: bool,
    ) -> Result<String, StorageError> {
        self.install_in(owner, None, name, content, executable)
    }

    /// Stores the code of the Script MIB's script (owner, name) in the owner's MIB area,
    /// apart from the files `install` writes, so that neither can overwrite the other.
    pub fn install_mib(
        &self,
        owner: &str,
        name: &str,
        content: &[u8],
    ) -> Result<String, StorageError> {
        self.install_in(owner, Some(MIB_AREA), name, content, true)
    }

    /// Where `install_mib` keeps (owner, name), relative to the storage.
    pub fn mib_path(owner: &str, name: &str) -> String {
        format!("{}/{MIB_AREA}/{}", component(owner), component(name))
    }

    fn install_in(
        &self,
        owner: &str,
        area: Option<&str>,
        name: &str,
        content: &[u8],
        executable: bool,
    ) -> Result<String, StorageError> {
        if content.len() as u64 > MAX_SCRIPT_OCTETS {
            return Err(StorageError::TooLarge {
                size: content.len() as u64,
                max: MAX_SCRIPT_OCTETS,
            });
        }
        let owner_dir = self.root.join(component(owner));
        let dir = match area {
            Some(a) => owner_dir.join(a),
            None => owner_dir.clone(),
        };
        for d in [&owner_dir, &dir] {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err(d))?;
        }
        let file = component(name);
        let target = dir.join(&file);
        // Unique per install, so concurrent installs of one name never share a file.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{file}.{}.{seq}.tmp", std::process::id()));
        let mode = if executable { 0o755 } else { 0o644 };
        let write = || -> io::Result<()> {
            {
                // Only while the write fd is open: forks wait for a page-cache write, not
                // for the disk. Installs are one at a time here, so the quota holds.
                let _no_fork = FORK_GUARD.write().unwrap_or_else(|e| e.into_inner());
                self.check_quota(owner, &owner_dir, &target, content.len() as u64)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&tmp)?;
                f.write_all(content)?;
                f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            // A read-only fd cannot make an exec fail with ETXTBSY; fsync through it.
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &target)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            if e.get_ref().is_some_and(|i| i.is::<StorageError>()) {
                match e.into_inner().map(|i| i.downcast::<StorageError>()) {
                    Some(Ok(q)) => return *q,
                    _ => unreachable!("checked above"),
                }
            }
            io_err(&target)(e)
        })?;
        Ok(match area {
            Some(a) => format!("{}/{a}/{file}", component(owner)),
            None => format!("{}/{file}", component(owner)),
        })
    }

    /// Fails with `QuotaExceeded` (as an io::Error carrying it) if the owner's scripts (its
    /// files and its MIB area) but `target` plus `size` octets exceed the quota.
    fn check_quota(&self, owner: &str, dir: &Path, target: &Path, size: u64) -> io::Result<()> {
        let quota = self.quota.load(std::sync::atomic::Ordering::Relaxed);
        if quota == 0 {
            return Ok(());
        }
        let files = |d: &Path| -> Vec<(PathBuf, u64)> {
            std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
                .filter(|(_, m)| m.is_file())
                .map(|(p, m)| (p, m.len()))
                .collect()
        };
        let mut all = files(dir);
        all.extend(files(&dir.join(MIB_AREA)));
        let used: u64 = all
            .iter()
            .filter(|(p, _)| p != target)
            .map(|(_, len)| len)
            .sum();
        let would = used + size;
        if would > quota {
            return Err(io::Error::other(StorageError::QuotaExceeded {
                owner: owner.to_owned(),
                would,
                quota,
            }));
        }
        Ok(())
    }

    /// Sets the per-owner quota (0: none).
    pub fn set_quota(&self, octets: u64) {
        self.quota
            .store(octets, std::sync::atomic::Ordering::Relaxed);
    }

    /// Removes a stored script (a destroyed smScriptTable row); a missing one is fine.
    pub fn remove(&self, rel: &str) -> Result<(), StorageError> {
        let path = self.resolve(rel)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Reads a stored script.
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, StorageError> {
        let path = self.resolve(rel)?;
        std::fs::read(&path).map_err(io_err(&path))
    }

    /// Installs the file at `src` (any readable path) for `owner`, keeping its name and
    /// whether it is executable.
    pub fn install_file(&self, owner: &str, src: &Path) -> Result<String, StorageError> {
        let meta = std::fs::metadata(src).map_err(io_err(src))?;
        if !meta.is_file() {
            return Err(StorageError::NotAFile(src.display().to_string()));
        }
        if meta.len() > MAX_SCRIPT_OCTETS {
            return Err(StorageError::TooLarge {
                size: meta.len(),
                max: MAX_SCRIPT_OCTETS,
            });
        }
        let content = std::fs::read(src).map_err(io_err(src))?;
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "script".into());
        self.install(
            owner,
            &name,
            &content,
            meta.permissions().mode() & 0o111 != 0,
        )
    }

    /// Resolves a script name relative to the storage to its canonical absolute path,
    /// refusing anything that would leave the storage.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf, StorageError> {
        let p = Path::new(rel);
        let clean = !rel.is_empty()
            && !rel.contains('\0')
            && p.components().all(|c| matches!(c, Component::Normal(_)));
        if !clean {
            return Err(StorageError::BadPath(rel.to_owned()));
        }
        let joined = self.root.join(p);
        let real = match std::fs::canonicalize(&joined) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound(rel.to_owned()));
            }
            Err(e) => return Err(io_err(&joined)(e)),
        };
        if !real.starts_with(&self.root) {
            return Err(StorageError::Escape(rel.to_owned()));
        }
        let meta = std::fs::metadata(&real).map_err(io_err(&real))?;
        if !meta.is_file() {
            return Err(StorageError::NotAFile(rel.to_owned()));
        }
        Ok(real)
    }
}

/// Creates and locks the lock file of a new temporary storage. It gets its final name only
/// once it is locked, so that no sweep ever finds it unlocked while its process lives.
fn lock_new(dir: &Path) -> io::Result<std::fs::File> {
    let fresh = dir.join(".smx-lock.new");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&fresh)?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } == -1 {
        return Err(io::Error::last_os_error());
    }
    std::fs::rename(&fresh, dir.join(TEMP_LOCK))?;
    Ok(f)
}

/// Removes this user's temporary storages in `base` whose lock is free: their process has
/// ended without removing them. Ones without a lock file (being made right now, or made by
/// an older smx) are left alone. Best effort.
fn remove_stale_temporaries(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let uid = nix::unistd::geteuid().as_raw();
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let dir = e.path();
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() && m.uid() == uid => {}
            _ => continue,
        }
        let Ok(lock) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(TEMP_LOCK))
        else {
            continue;
        };
        // SAFETY: flock on an fd we own.
        let free = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } == 0;
        if free {
            tracing::debug!("removing stale temporary storage {}", dir.display());
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_never_collide_or_escape() {
        assert_eq!(component("noc"), "noc");
        assert_eq!(component(".."), "%2E.");
        assert_eq!(component("a/b"), "a%2Fb");
        assert_eq!(component(""), "%");
        assert_ne!(component("a b"), component("a_b"));
    }

    /// `[host] storage_quota`: an install over the owner's quota fails clearly and leaves
    /// nothing behind; replacing a script counts only its new size; owners are apart.
    #[test]
    fn the_quota_is_per_owner_and_nothing_is_half_written() {
        let s = Storage::temporary().unwrap();
        s.set_quota(100);
        s.install("a", "one", &[b'x'; 60], false).unwrap();
        let e = s.install("a", "two", &[b'y'; 50], false).unwrap_err();
        assert!(
            matches!(
                &e,
                StorageError::QuotaExceeded {
                    would: 110,
                    quota: 100,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("storage_quota"), "{e}");
        let files: Vec<_> = std::fs::read_dir(s.root().join("a"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(files.len(), 1, "no partial or temporary file left");
        s.install("a", "one", &[b'z'; 90], false).unwrap();
        s.install("b", "two", &[b'y'; 100], false).unwrap();
        s.set_quota(0);
        s.install("a", "big", &[b'x'; 1000], false).unwrap();
    }

    /// The Script MIB's scripts live apart from `install`ed files: `smx run --daemon x`
    /// cannot overwrite the MIB's script x of the same owner, nor the other way round. The
    /// quota counts both.
    #[test]
    fn mib_scripts_and_installed_files_never_share_a_path() {
        let s = Storage::temporary().unwrap();
        let mib = s.install_mib("a", "x.sh", b"mib").unwrap();
        let file = s.install("a", "x.sh", b"file", true).unwrap();
        assert_ne!(mib, file);
        assert_eq!(mib, Storage::mib_path("a", "x.sh"));
        assert_eq!(s.read(&mib).unwrap(), b"mib");
        assert_eq!(s.read(&file).unwrap(), b"file");
        // No name `install` accepts reaches the MIB area.
        let sneaky = s.install("a", "%mib", b"x", false).unwrap();
        assert_ne!(sneaky, "a/%mib");
        s.set_quota(10);
        let e = s.install("a", "y", b"123", false).unwrap_err();
        assert!(
            matches!(e, StorageError::QuotaExceeded { would: 11, .. }),
            "{e}"
        );
    }

    #[test]
    fn install_and_resolve_refuse_escapes() {
        let s = Storage::temporary().unwrap();
        let rel = s.install("noc", "x.sh", b"#!/bin/sh\n", true).unwrap();
        assert_eq!(rel, "noc/x.sh");
        let abs = s.resolve(&rel).unwrap();
        assert!(abs.starts_with(s.root()));
        let mode = std::fs::metadata(&abs).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(matches!(
            s.resolve("../etc/passwd"),
            Err(StorageError::BadPath(_))
        ));
        assert!(matches!(
            s.resolve("/etc/passwd"),
            Err(StorageError::BadPath(_))
        ));
        assert!(s.resolve("noc/./x.sh").is_ok());
        assert!(matches!(
            s.resolve("noc/missing"),
            Err(StorageError::NotFound(_))
        ));
        std::os::unix::fs::symlink("/etc/passwd", s.root().join("noc/link")).unwrap();
        assert!(matches!(
            s.resolve("noc/link"),
            Err(StorageError::Escape(_))
        ));
        assert!(matches!(s.resolve("noc"), Err(StorageError::NotAFile(_))));
    }

    #[test]
    fn temporaries_of_ended_processes_are_removed() {
        let base = tempfile::tempdir().unwrap();
        // A storage whose process is gone: its lock file exists but nobody holds it.
        let stale = base.path().join(format!("{TEMP_PREFIX}dead"));
        std::fs::create_dir(&stale).unwrap();
        drop(lock_new(&stale).unwrap());
        // A live one (its lock held), one being made (no lock file yet), and others'.
        let live = base.path().join(format!("{TEMP_PREFIX}live"));
        std::fs::create_dir(&live).unwrap();
        let held = lock_new(&live).unwrap();
        let young = base.path().join(format!("{TEMP_PREFIX}young"));
        std::fs::create_dir(&young).unwrap();
        let other = base.path().join("smx-other");
        std::fs::create_dir(&other).unwrap();
        remove_stale_temporaries(base.path());
        assert!(!stale.exists());
        assert!(live.exists() && young.exists() && other.exists());
        drop(held);
        remove_stale_temporaries(base.path());
        assert!(!live.exists() && young.exists());
    }
}
