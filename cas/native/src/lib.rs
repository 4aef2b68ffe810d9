//! cas's compiled helper: what Python does per file at tens of microseconds, done for a whole
//! directory's files in one call that leaves the interpreter lock (see `cas/native/__init__.py`).

use std::ffi::CString;
use std::io;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;

mod subtree;
mod trees;

/// A file as hashed: inode, size, mtime and ctime (ns), the BLAKE3 of its content in hex, and its
/// permission bits.
type Hashed = (u64, u64, i64, i64, String, u32);

/// Why a file was not hashed, when that stops the whole call.
enum Stop {
    /// Reads that must not wait for the disk are refused here (file system or kernel): errno.
    NoWaitUnsupported(i32),
}

/// Closes a descriptor when dropped.
pub(crate) struct Fd(pub(crate) libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor was opened by this module and is closed once.
        unsafe { libc::close(self.0) };
    }
}

pub(crate) fn ns(sec: i64, nsec: i64) -> i64 {
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

/// `lstat` of `name` in `dir_fd`; None if it fails (vanished, or anything else: the caller asks
/// again the slow way, where the error is told).
pub(crate) fn lstat_at(dir_fd: libc::c_int, name: &CString) -> Option<libc::stat> {
    // SAFETY: `st` is written by fstatat before it is read; `name` is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let done = unsafe { libc::fstatat(dir_fd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    (done == 0).then_some(st)
}

/// The first 16 fields of `os.stat_result` for `st`: mode, inode, device, links, uid, gid,
/// size, the three times in whole seconds, as floats (as `os.stat` computes them) and in ns.
fn stat_fields<'py>(py: Python<'py>, st: &libc::stat) -> PyResult<Bound<'py, pyo3::types::PyTuple>> {
    let times = [(st.st_atime, st.st_atime_nsec), (st.st_mtime, st.st_mtime_nsec), (st.st_ctime, st.st_ctime_nsec)];
    let mut fields: Vec<Bound<'py, PyAny>> = vec![
        (st.st_mode as u32).into_pyobject(py)?.into_any(),
        (st.st_ino as u64).into_pyobject(py)?.into_any(),
        (st.st_dev as u64).into_pyobject(py)?.into_any(),
        (st.st_nlink as u64).into_pyobject(py)?.into_any(),
        (st.st_uid as u32).into_pyobject(py)?.into_any(),
        (st.st_gid as u32).into_pyobject(py)?.into_any(),
        (st.st_size as i64).into_pyobject(py)?.into_any(),
    ];
    for (sec, _) in times {
        fields.push((sec as i64).into_pyobject(py)?.into_any());
    }
    for (sec, nsec) in times {
        fields.push((sec as f64 + nsec as f64 * 1e-9).into_pyobject(py)?.into_any());
    }
    for (sec, nsec) in times {
        fields.push(ns(sec as i64, nsec as i64).into_pyobject(py)?.into_any());
    }
    pyo3::types::PyTuple::new(py, fields)
}

/// stat_names(dir_fd, names)
/// --
///
/// `lstat` of each of `names` in the directory `dir_fd`, without the interpreter lock: for each,
/// in order, an `os.stat_result` (its first 16 fields: no st_blksize, st_blocks or st_rdev), or
/// None where it fails (the name vanished, or anything else: `os.stat` tells why).
#[pyfunction]
#[pyo3(signature = (dir_fd, names))]
fn stat_names<'py>(py: Python<'py>, dir_fd: i32, names: Vec<Vec<u8>>) -> PyResult<Vec<Option<Bound<'py, PyAny>>>> {
    let found: Vec<Option<libc::stat>> = py.detach(|| {
        names.iter().map(|name| CString::new(name.as_slice()).ok().and_then(|name| lstat_at(dir_fd, &name))).collect()
    });
    let stat_result = py.import("os")?.getattr("stat_result")?;
    found
        .iter()
        .map(|st| st.as_ref().map(|st| stat_result.call1((stat_fields(py, st)?,))).transpose())
        .collect()
}

/// Every name of the directory `dir_fd` but `.` and `..`, in the order `readdir` gives them,
/// read through a descriptor of its own (the caller's keeps its position).
pub(crate) fn list_names(dir_fd: libc::c_int) -> io::Result<Vec<CString>> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: the path is a NUL-terminated literal; the descriptor is owned by the DIR stream.
    let fd = unsafe { libc::openat(dir_fd, c".".as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a directory descriptor this function opened; on success the stream owns it.
    let stream = unsafe { libc::fdopendir(fd) };
    if stream.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `fd` is still ours to close.
        unsafe { libc::close(fd) };
        return Err(err);
    }
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is this thread's; readdir sets it only on failure.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is open until closedir below.
        let item = unsafe { libc::readdir(stream) };
        if item.is_null() {
            let code = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            break if code == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(code)) };
        }
        // SAFETY: d_name is NUL-terminated within the record readdir returned.
        let name = unsafe { std::ffi::CStr::from_ptr((*item).d_name.as_ptr()) };
        if !matches!(name.to_bytes(), b"." | b"..") {
            names.push(name.to_owned());
        }
    };
    // SAFETY: closes the stream and the descriptor it owns, once.
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}

/// Directories of at least this many names are stat'ed without the interpreter lock. A smaller
/// one takes less time than winning the lock back from a busy thread would.
const DETACH_NAMES: usize = 64;

/// scan_dir(dir_fd)
/// --
///
/// Every entry of the directory `dir_fd` (but `.` and `..`) with its `lstat`, listed and stat'ed
/// in one call without the interpreter lock: (name, `os.stat_result` of its first 16 fields, or
/// None where `lstat` failed: the name vanished, or anything else, which `os.stat` tells), names
/// decoded as `os.fsdecode` decodes them. Raises OSError if the directory cannot be read.
#[pyfunction]
#[pyo3(signature = (dir_fd))]
fn scan_dir<'py>(py: Python<'py>, dir_fd: i32) -> PyResult<Vec<(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)>> {
    let stat_all = |names: Vec<CString>| -> Vec<(CString, Option<libc::stat>)> {
        names.into_iter().map(|name| {
            let st = lstat_at(dir_fd, &name);
            (name, st)
        }).collect()
    };
    let names = list_names(dir_fd)?;
    let found = if names.len() >= DETACH_NAMES { py.detach(|| stat_all(names)) } else { stat_all(names) };
    let stat_result = py.import("os")?.getattr("stat_result")?;
    found
        .iter()
        .map(|(name, st)| {
            let bytes = name.to_bytes();
            // SAFETY: `bytes` is valid for its length; the function returns a new reference or
            // NULL with an exception set, which `from_owned_ptr_or_err` turns into the error.
            let text = unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    pyo3::ffi::PyUnicode_DecodeFSDefaultAndSize(bytes.as_ptr().cast(), bytes.len() as pyo3::ffi::Py_ssize_t),
                )
            }?;
            let st = st.as_ref().map(|st| stat_result.call1((stat_fields(py, st)?,))).transpose()?;
            Ok((text, st))
        })
        .collect()
}

/// A file as `lstat` saw it: inode, device, size, mtime and ctime (ns).
type Seen = (u64, u64, u64, i64, i64);

/// Read the file `name` of `dir_fd` whole onto the end of `arena` if it is still the regular file
/// `seen` says (never following a symlink) and held still while read; its BLAKE3 (hex), or None.
fn read_one(dir_fd: libc::c_int, name: &CString, seen: &Seen, arena: &mut Vec<u8>) -> Option<String> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    // SAFETY: `name` is NUL-terminated; the descriptor returned is owned by `Fd`.
    let raw = unsafe { libc::openat(dir_fd, name.as_ptr(), flags) };
    if raw < 0 {
        return None;
    }
    let fd = Fd(raw);
    let fstat = || -> Option<libc::stat> {
        // SAFETY: as in `lstat_at`.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd.0, &mut st) } == 0).then_some(st)
    };
    let key = |st: &libc::stat| -> Seen {
        (st.st_ino as u64, st.st_dev as u64, st.st_size as u64, ns(st.st_mtime, st.st_mtime_nsec), ns(st.st_ctime, st.st_ctime_nsec))
    };
    let before = fstat()?;
    if before.st_mode & libc::S_IFMT != libc::S_IFREG || key(&before) != *seen {
        return None;
    }
    let size = seen.2 as usize;
    let start = arena.len();
    arena.resize(start + size + 1, 0); // one byte more, to see that it did not grow
    let got = if size == 0 { Ok(0) } else { read_once(fd.0, &mut arena[start..], false) };
    arena.truncate(start + size);
    if got.ok()? != size || key(&fstat()?) != *seen {
        arena.truncate(start);
        return None; // it changed while read, or could not be read
    }
    Some(blake3::hash(&arena[start..]).to_hex().to_string())
}

/// read_files(dir_fd, names, seen)
/// --
///
/// The files `names` of the directory `dir_fd`, each still the regular file its `seen` ((inode,
/// device, size, mtime_ns, ctime_ns), as `lstat` gave them) says: opened (never following a
/// symlink), checked with `fstat`, read whole in one call, checked again, and hashed, without the
/// interpreter lock. For each, in order, (content, BLAKE3 hex) or None (no longer that file, not
/// readable, or changed while read: the caller reads it the slow way, which tells why).
#[pyfunction]
#[pyo3(signature = (dir_fd, names, seen))]
fn read_files<'py>(
    py: Python<'py>, dir_fd: i32, names: Vec<Vec<u8>>, seen: Vec<Seen>,
) -> PyResult<Vec<Option<(Bound<'py, pyo3::types::PyBytes>, String)>>> {
    if names.len() != seen.len() {
        return Err(pyo3::exceptions::PyValueError::new_err("names and seen differ in length"));
    }
    let (arena, found) = py.detach(|| {
        let mut arena = Vec::with_capacity(seen.iter().map(|s| s.2 as usize).sum::<usize>() + 1);
        let found: Vec<Option<(usize, usize, String)>> = names
            .iter()
            .zip(&seen)
            .map(|(name, seen)| {
                let name = CString::new(name.as_slice()).ok()?;
                let start = arena.len();
                read_one(dir_fd, &name, seen, &mut arena).map(|digest| (start, arena.len(), digest))
            })
            .collect();
        (arena, found)
    });
    Ok(found
        .into_iter()
        .map(|f| f.map(|(start, end, digest)| (pyo3::types::PyBytes::new(py, &arena[start..end]), digest)))
        .collect())
}

/// A file to write whole: its name, content, mode, mtime (ns), and whether to give its identity.
type WholeFile = (Vec<u8>, PyBackedBytes, u32, i64, bool);

/// What became of a file written whole: named (with its inode and ctime once named, if asked
/// for: for the files cache), under a temporary name because its name was taken (that name), or
/// an error (errno and message).
enum Written {
    Named(Option<(u64, i64)>),
    Temporary(Vec<u8>),
    Failed(i32, String),
}

impl<'py> IntoPyObject<'py> for Written {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self {
            Written::Named(None) => py.None().into_bound(py),
            Written::Named(Some(identity)) => identity.into_pyobject(py)?.into_any(),
            Written::Temporary(name) => pyo3::types::PyBytes::new(py, &name).into_any(),
            Written::Failed(code, message) => PyOSError::new_err((code, message)).into_value(py).into_bound(py).into_any(),
        })
    }
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 { Err(last_error()) } else { Ok(result) }
}

fn cstring(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The state of one call of `write_whole_files`: where temporaries are named from, and whether
/// files may still be created unnamed.
struct Creator {
    dir_fd: libc::c_int,
    prefix: Vec<u8>,
    next_number: u64,
    tmpfile: bool,
    umask: Option<u32>,
    /// Whether `linkat` may be given the descriptor itself (see `link_as`).
    empty_path: bool,
}

impl Creator {
    fn temporary_name(&mut self) -> Vec<u8> {
        let mut name = self.prefix.clone();
        name.extend_from_slice(self.next_number.to_string().as_bytes());
        self.next_number += 1;
        name
    }

    /// A new file in the directory, unnamed where the file system can, else under a temporary
    /// name (returned); and whether `mode` was given at creation (see `FileWriter.create`).
    fn create(&mut self, mode: u32) -> io::Result<(Fd, Option<Vec<u8>>, bool)> {
        const SPECIAL: u32 = 0o7000;
        let at_create = matches!(self.umask, Some(umask) if mode & SPECIAL == 0 && mode & umask == 0);
        let create_mode = if at_create { mode } else { 0o600 } as libc::c_uint;
        if self.tmpfile {
            // SAFETY: a NUL-terminated path; the descriptor is owned by `Fd`.
            let raw = unsafe {
                libc::openat(self.dir_fd, c".".as_ptr(), libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC, create_mode)
            };
            if raw >= 0 {
                return Ok((Fd(raw), None, at_create));
            }
            let err = last_error();
            match err.raw_os_error() {
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOENT) => self.tmpfile = false,
                _ => return Err(err),
            }
        }
        let tmp = self.temporary_name();
        let path = cstring(&tmp)?;
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: as above.
        let raw = check(unsafe { libc::openat(self.dir_fd, path.as_ptr(), flags, create_mode) })?;
        Ok((Fd(raw), Some(tmp), at_create))
    }

    /// Give a finished unnamed file its name, or a temporary one (returned) if the name is taken.
    fn link(&mut self, fd: &Fd, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match self.link_as(fd, name) {
            Ok(()) => Ok(None),
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                let tmp = self.temporary_name();
                self.link_as(fd, &tmp)?;
                Ok(Some(tmp))
            }
            Err(err) => Err(err),
        }
    }

    /// Link the file `fd` as `target` in the directory: by the descriptor itself (`AT_EMPTY_PATH`:
    /// Linux 6.10 allows it to the process that opened the file, and earlier kernels to one with
    /// `CAP_DAC_READ_SEARCH`), else through its `/proc/self/fd` path, a path walk through procfs
    /// for every file (about a fifth of `linkat`'s time on ext4).
    fn link_as(&mut self, fd: &Fd, target: &[u8]) -> io::Result<()> {
        let target = cstring(target)?;
        if self.empty_path {
            // SAFETY: both paths are NUL-terminated.
            let linked = check(unsafe {
                libc::linkat(fd.0, c"".as_ptr(), self.dir_fd, target.as_ptr(), libc::AT_EMPTY_PATH)
            });
            match linked {
                Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::EPERM | libc::EINVAL)) => {
                    self.empty_path = false; // not allowed here: by the path from now on
                }
                other => return other.map(|_| ()),
            }
        }
        let proc_path = CString::new(format!("/proc/self/fd/{}", fd.0)).expect("no NUL in a number");
        // SAFETY: both paths are NUL-terminated.
        check(unsafe {
            libc::linkat(libc::AT_FDCWD, proc_path.as_ptr(), self.dir_fd, target.as_ptr(), libc::AT_SYMLINK_FOLLOW)
        })
        .map(|_| ())
    }

    /// One file written whole: created, filled (a file of zeros is a hole), its
    /// mode and mtime set by descriptor, and named only then.
    fn write_whole(&mut self, name: &[u8], data: &[u8], mode: u32, mtime_ns: i64, identify: bool) -> Written {
        let (fd, mut tmp, mode_set) = match self.create(mode) {
            Ok(created) => created,
            Err(err) => return failed(err),
        };
        let result = (|| -> io::Result<Option<(u64, i64)>> {
            if !data.is_empty() && data.iter().all(|&b| b == 0) {
                check(unsafe { libc::ftruncate(fd.0, data.len() as libc::off_t) })?;
            } else {
                let mut at = 0usize;
                while at < data.len() {
                    // SAFETY: the source is inside `data`.
                    let n = unsafe { libc::write(fd.0, data[at..].as_ptr().cast(), data.len() - at) };
                    if n < 0 {
                        let err = last_error();
                        if err.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        return Err(err);
                    }
                    at += n as usize;
                }
            }
            if !mode_set {
                check(unsafe { libc::fchmod(fd.0, mode as libc::mode_t) })?;
            }
            let time = libc::timespec {
                tv_sec: mtime_ns.div_euclid(1_000_000_000) as libc::time_t,
                tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as libc::c_long,
            };
            let times = [time, time];
            // SAFETY: two timespecs, as futimens reads.
            check(unsafe { libc::futimens(fd.0, times.as_ptr()) })?;
            if tmp.is_none() {
                tmp = self.link(&fd, name)?;
            }
            if tmp.is_some() || !identify {
                return Ok(None);
            }
            // Named: its identity now (linking gave it its last ctime), which a later write changes;
            // if fstat fails, the file is whole and named all the same, only not identified.
            let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
            // SAFETY: fstat fills the buffer it is given.
            if unsafe { libc::fstat(fd.0, st.as_mut_ptr()) } != 0 {
                return Ok(None);
            }
            // SAFETY: fstat succeeded.
            let st = unsafe { st.assume_init() };
            Ok(Some((st.st_ino as u64, ns(st.st_ctime as i64, st.st_ctime_nsec as i64))))
        })();
        drop(fd);
        match (result, tmp) {
            (Ok(identity), None) => Written::Named(identity),
            (Ok(_), Some(tmp)) => Written::Temporary(tmp),
            (Err(err), tmp) => {
                if let Some(tmp) = tmp {
                    if let Ok(path) = cstring(&tmp) {
                        // SAFETY: a NUL-terminated path.
                        unsafe { libc::unlinkat(self.dir_fd, path.as_ptr(), 0) };
                    }
                }
                failed(err)
            }
        }
    }
}

fn failed(err: io::Error) -> Written {
    let code = err.raw_os_error().unwrap_or(libc::EIO);
    // SAFETY: strerror's text is read at once, before any other call could change it.
    let message = unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }.to_string_lossy().into_owned();
    Written::Failed(code, message)
}

/// write_whole_files(dir_fd, files, temporary_prefix, first_number, umask, tmpfile)
/// --
///
/// Write `files` ((name, content, mode, mtime_ns, identify) each: content verified already,
/// the whole file) into the directory `dir_fd` (see `FileWriter.write_whole_many`), one after
/// the other, without the interpreter lock: each created unnamed (`O_TMPFILE`, when `tmpfile`) or under a
/// temporary name (`temporary_prefix` and a number, from `first_number` on, one number for each
/// file at most), created with its mode where `umask` (None: unknown) lets it through (else
/// `fchmod`), written in one call (a file of zeros as a hole), its mtime set by descriptor, and
/// named only then. Returns the answers in order (None: named; (inode, ctime_ns): named, as it is
/// then, for a file whose `identify` is true; bytes: the temporary name it has, its name being
/// taken; an OSError: it failed, and nothing of it is left) and whether files may still be
/// created unnamed.
#[pyfunction]
#[pyo3(signature = (dir_fd, files, temporary_prefix, first_number, umask, tmpfile))]
fn write_whole_files(
    py: Python<'_>, dir_fd: i32, files: Vec<WholeFile>, temporary_prefix: Vec<u8>, first_number: u64,
    umask: Option<u32>, tmpfile: bool,
) -> (Vec<Written>, bool) {
    py.detach(|| {
        let mut creator =
            Creator { dir_fd, prefix: temporary_prefix, next_number: first_number, tmpfile, umask, empty_path: true };
        let answers = files
            .iter()
            .map(|(name, data, mode, mtime_ns, identify)| creator.write_whole(name, data, *mode, *mtime_ns, *identify))
            .collect();
        (answers, creator.tmpfile)
    })
}

#[pymodule]
fn files(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(hash_files, m)?)?;
    m.add_function(wrap_pyfunction!(range_digests, m)?)?;
    m.add_function(wrap_pyfunction!(write_whole_files, m)?)?;
    m.add_function(wrap_pyfunction!(stat_names, m)?)?;
    m.add_function(wrap_pyfunction!(scan_dir, m)?)?;
    m.add_function(wrap_pyfunction!(read_files, m)?)?;
    m.add_function(wrap_pyfunction!(trees::decode_canonical_node, m)?)?;
    m.add_function(wrap_pyfunction!(subtree::subtree_digest, m)?)?;
    Ok(())
}
