//! A directory's whole subtree as one digest of its entries' identities, computed from one walk
//! without the interpreter lock (see `cas/ops/restore/records.py`, "Subtree records").
//!
//! The digest of a directory is the BLAKE3 of `subtree-v1`, a NUL and the policy byte the caller
//! gives, then, for each entry in the byte order of their names: `f` (a regular file) or `d` (a
//! directory), the name, a NUL, and the entry's inode (u64), ctime and mtime (i64, ns), size (u64;
//! 0 for a directory) and permission bits (u32), little-endian; a directory's own digest follows
//! its identity. Any other kind of entry (a symlink, a device, a socket), a subdirectory on another
//! device, or a walk deeper than `MAX_DEPTH` gives no digest. `cas.repo.filescache.subtree_digest`
//! computes the same bytes from identities a restore knows.

use std::ffi::CString;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::{list_names, lstat_at, ns, Fd};

/// Directories nested deeper than this below the one asked about give no digest (a subtree that
/// deep is walked as usual; the bound keeps the recursion's stack small).
const MAX_DEPTH: usize = 128;

const TAG: &[u8] = b"subtree-v1\0";

/// What a walk found below a directory: its digest, and the regular files, directories (below it)
/// and file bytes it holds.
struct Walked {
    digest: [u8; 32],
    files: u64,
    dirs: u64,
    bytes: u64,
}

fn identity(out: &mut Vec<u8>, st: &libc::stat, size: u64) {
    out.extend_from_slice(&(st.st_ino as u64).to_le_bytes());
    out.extend_from_slice(&ns(st.st_ctime as i64, st.st_ctime_nsec as i64).to_le_bytes());
    out.extend_from_slice(&ns(st.st_mtime as i64, st.st_mtime_nsec as i64).to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&((st.st_mode as u32) & 0o7777).to_le_bytes());
}

fn fstat(fd: libc::c_int) -> Option<libc::stat> {
    // SAFETY: `st` is written by fstat before it is read.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st)
}

fn walk(dir_fd: libc::c_int, dev: u64, policy: u8, depth: usize) -> Option<Walked> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut names: Vec<CString> = list_names(dir_fd).ok()?;
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut data = Vec::with_capacity(TAG.len() + 1 + names.len() * 64);
    data.extend_from_slice(TAG);
    data.push(policy);
    let (mut files, mut dirs, mut bytes) = (0u64, 0u64, 0u64);
    for name in &names {
        let st = lstat_at(dir_fd, name)?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                data.push(b'f');
                data.extend_from_slice(name.as_bytes_with_nul());
                identity(&mut data, &st, st.st_size as u64);
                files += 1;
                bytes += st.st_size as u64;
            }
            libc::S_IFDIR => {
                let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
                // SAFETY: `name` is NUL-terminated; the descriptor returned is owned by `Fd`.
                let raw = unsafe { libc::openat(dir_fd, name.as_ptr(), flags) };
                if raw < 0 {
                    return None;
                }
                let sub = Fd(raw);
                let opened = fstat(sub.0)?;
                // The directory listed is the one opened, and on the same device (no mount below).
                if (opened.st_dev as u64, opened.st_ino) != (st.st_dev as u64, st.st_ino) || opened.st_dev as u64 != dev {
                    return None;
                }
                let below = walk(sub.0, dev, policy, depth + 1)?;
                data.push(b'd');
                data.extend_from_slice(name.as_bytes_with_nul());
                identity(&mut data, &opened, 0);
                data.extend_from_slice(&below.digest);
                files += below.files;
                dirs += below.dirs + 1;
                bytes += below.bytes;
            }
            _ => return None,
        }
    }
    Some(Walked { digest: *blake3::hash(&data).as_bytes(), files, dirs, bytes })
}

/// subtree_digest(dir_fd, policy)
/// --
///
/// The digest of everything below the directory `dir_fd` (see the module's comment), with the
/// regular files, the directories and the file bytes it holds below it: `(digest, files, dirs,
/// bytes)`; or None where there is none (an entry of another kind, a subdirectory on another
/// device or deeper than the bound, or anything that could not be listed, stat'ed or opened).
/// Walked in one call without the interpreter lock; `policy` (0-255) is digested first.
#[pyfunction]
#[pyo3(signature = (dir_fd, policy))]
pub fn subtree_digest<'py>(py: Python<'py>, dir_fd: i32, policy: u8) -> PyResult<Option<(Bound<'py, PyBytes>, u64, u64, u64)>> {
    let walked = py.detach(|| fstat(dir_fd).and_then(|st| walk(dir_fd, st.st_dev as u64, policy, 0)));
    Ok(walked.map(|w| (PyBytes::new(py, &w.digest), w.files, w.dirs, w.bytes)))
}
