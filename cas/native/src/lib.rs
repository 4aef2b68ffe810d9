//! cas's compiled helper: what Python does per file at tens of microseconds, done for a whole
//! directory's files in one call that leaves the interpreter lock (see `cas/native/__init__.py`).

use std::ffi::CString;
use std::io;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

/// A file as hashed: inode, size, mtime and ctime (ns), the BLAKE3 of its content in hex, and its
/// permission bits.
type Hashed = (u64, u64, i64, i64, String, u32);

/// Why a file was not hashed, when that stops the whole call.
enum Stop {
    /// Reads that must not wait for the disk are refused here (file system or kernel): errno.
    NoWaitUnsupported(i32),
}

/// Closes a descriptor when dropped.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor was opened by this module and is closed once.
        unsafe { libc::close(self.0) };
    }
}

fn ns(sec: i64, nsec: i64) -> i64 {
    sec * 1_000_000_000 + nsec
}

/// Read up to `buffer.len()` bytes from offset 0, in one call; with `nowait` the read fails with
/// EAGAIN rather than wait for the disk.
fn read_once(fd: libc::c_int, buffer: &mut [u8], nowait: bool) -> io::Result<usize> {
    let iov = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() };
    let flags = if nowait { libc::RWF_NOWAIT } else { 0 };
    loop {
        // SAFETY: `iov` points into `buffer`, which outlives the call.
        let got = unsafe { libc::preadv2(fd, &iov, 1, 0, flags) };
        if got >= 0 {
            return Ok(got as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Hash the file `name` of `dir_fd` if it is a regular file of at most `max_size` bytes whose
/// ctime is at most `ctime_before`, read whole in one call (and, with `nowait`, all of it in
/// memory). None when it is not (or cannot be opened, or changed size while read).
fn hash_one(
    dir_fd: libc::c_int, name: &CString, max_size: u64, ctime_before: i64, nowait: bool, buffer: &mut Vec<u8>,
) -> Result<Option<Hashed>, Stop> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    // SAFETY: `name` is NUL-terminated; the descriptor returned is owned by `Fd`.
    let raw = unsafe { libc::openat(dir_fd, name.as_ptr(), flags) };
    if raw < 0 {
        return Ok(None);
    }
    let fd = Fd(raw);
    // SAFETY: `st` is written by fstat before it is read.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.0, &mut st) } != 0 {
        return Ok(None);
    }
    let size = st.st_size as u64;
    let ctime = ns(st.st_ctime, st.st_ctime_nsec);
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || size > max_size || ctime > ctime_before {
        return Ok(None);
    }
    let wanted = size as usize + 1; // one byte more, to see that it did not grow
    if buffer.len() < wanted {
        buffer.resize(wanted, 0);
    }
    let got = if size == 0 {
        0
    } else {
        match read_once(fd.0, &mut buffer[..wanted], nowait) {
            Ok(got) => got,
            Err(err) => match err.raw_os_error() {
                Some(code) if nowait && matches!(code, libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
                    return Err(Stop::NoWaitUnsupported(code));
                }
                _ => return Ok(None), // not all in memory (EAGAIN), or unreadable
            },
        }
    };
    if got as u64 != size {
        return Ok(None); // partly in memory, or it grew
    }
    let digest = blake3::hash(&buffer[..got]).to_hex().to_string();
    let mode = st.st_mode & 0o7777;
    Ok(Some((st.st_ino as u64, size, ns(st.st_mtime, st.st_mtime_nsec), ctime, digest, mode)))
}

/// hash_files(dir_fd, names, max_size, ctime_before, nowait)
/// --
///
/// The files `names` of the directory `dir_fd`, each opened (never following a symlink), checked
/// to be a regular file of at most `max_size` bytes whose ctime (ns) is at most `ctime_before`,
/// read whole in one call and hashed: for each name, in order, (inode, size, mtime_ns, ctime_ns,
/// BLAKE3 hex, permission bits) or None (not such a file, not readable, changed size while read, or with `nowait`
/// not all in memory: such reads never wait for the disk). The interpreter lock is left for the
/// whole call. Raises OSError (its errno) if `nowait` reads are refused here (file system or
/// kernel): nothing can be hashed that way.
#[pyfunction]
#[pyo3(signature = (dir_fd, names, max_size, ctime_before, nowait))]
fn hash_files(
    py: Python<'_>, dir_fd: i32, names: Vec<Vec<u8>>, max_size: u64, ctime_before: i64, nowait: bool,
) -> PyResult<Vec<Option<Hashed>>> {
    let names: Vec<Option<CString>> = names.into_iter().map(|n| CString::new(n).ok()).collect();
    let found = py.detach(|| {
        let mut buffer = Vec::new();
        let mut out = Vec::with_capacity(names.len());
        for name in &names {
            out.push(match name {
                Some(name) => hash_one(dir_fd, name, max_size, ctime_before, nowait, &mut buffer)?,
                None => None, // a NUL in the name: no such file
            });
        }
        Ok(out)
    });
    found.map_err(|Stop::NoWaitUnsupported(code)| PyOSError::new_err((code, "reads that do not wait are refused here")))
}

/// The BLAKE3 (hex) of `lengths.len()` consecutive ranges of `fd` from offset 0, each `length`
/// bytes long; None for a range the file does not hold whole (it ended before). Ranges read and
/// hashed by `threads` threads, each over a contiguous share of them with a buffer of its own.
fn digests_of_ranges(fd: libc::c_int, lengths: &[u64], threads: usize) -> io::Result<Vec<Option<String>>> {
    let mut starts = Vec::with_capacity(lengths.len());
    let mut offset = 0u64;
    for &length in lengths {
        starts.push(offset);
        offset += length;
    }
    let total = offset;
    // Shares of about equal bytes: a new share starts once the current one holds its part.
    let mut bounds = vec![0usize];
    let part = total / threads as u64 + 1;
    let mut taken = 0u64;
    for (i, &length) in lengths.iter().enumerate() {
        taken += length;
        if taken >= part * bounds.len() as u64 && i + 1 < lengths.len() {
            bounds.push(i + 1);
        }
    }
    bounds.push(lengths.len());
    let share = |from: usize, to: usize| -> io::Result<Vec<Option<String>>> {
        let mut buffer = Vec::new();
        let mut out = Vec::with_capacity(to - from);
        for i in from..to {
            let length = lengths[i] as usize;
            if buffer.len() < length {
                buffer.resize(length, 0);
            }
            let mut got = 0usize;
            while got < length {
                // SAFETY: the destination is inside `buffer`, which outlives the call.
                let n = unsafe {
                    libc::pread(fd, buffer[got..].as_mut_ptr().cast(), length - got, (starts[i] + got as u64) as libc::off_t)
                };
                if n < 0 {
                    let err = io::Error::last_os_error();
                    if err.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(err);
                }
                if n == 0 {
                    break;
                }
                got += n as usize;
            }
            out.push((got == length).then(|| blake3::hash(&buffer[..length]).to_hex().to_string()));
        }
        Ok(out)
    };
    let results: Vec<io::Result<Vec<Option<String>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = bounds.windows(2).skip(1).map(|w| scope.spawn(move || share(w[0], w[1]))).collect();
        let first = share(bounds[0], bounds[1]);
        std::iter::once(first).chain(handles.into_iter().map(|h| h.join().expect("a hashing thread panicked"))).collect()
    });
    let mut out = Vec::with_capacity(lengths.len());
    for result in results {
        out.extend(result?);
    }
    Ok(out)
}

/// range_digests(fd, lengths, threads)
/// --
///
/// The BLAKE3 (hex) of the consecutive ranges of the open file `fd` from offset 0 whose sizes are
/// `lengths` (a file's chunks, by the tree's sizes): for each, in order, its digest, or None where
/// the file ended before the range did. Read with `pread` (the descriptor's position is left as
/// it is) and hashed by up to `threads` threads over contiguous shares of about equal bytes,
/// without the interpreter lock. Raises OSError if a read fails.
#[pyfunction]
#[pyo3(signature = (fd, lengths, threads))]
fn range_digests(py: Python<'_>, fd: i32, lengths: Vec<u64>, threads: usize) -> PyResult<Vec<Option<String>>> {
    let threads = threads.clamp(1, lengths.len().max(1));
    py.detach(|| digests_of_ranges(fd, &lengths, threads)).map_err(PyErr::from)
}

#[pymodule]
fn files(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(hash_files, m)?)?;
    m.add_function(wrap_pyfunction!(range_digests, m)?)?;
    Ok(())
}
