//! Tree nodes in their canonical form, decoded into `cas.format.trees.Entry` objects (see
//! `cas/format/trees.py`, whose decoder is the reference: this one accepts a subset of what that
//! one accepts and gives the same entries for it).
//!
//! A node is parsed (serde_json, strings borrowed from the node where they have no escapes)
//! without the interpreter lock, checked as `trees._decode_entry` checks it, and only then turned
//! into Python objects. Anything this decoder does not accept, whether the Python decoder would
//! or not (a name that is not UTF-8, a duplicated or unknown key, a number out of range, an
//! invalid entry), gives None: the caller decodes it again in Python, which accepts it or says
//! exactly what is wrong.

use std::borrow::Cow;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use serde::Deserialize;

/// The format's limits (`cas/format/trees.py`: the names are the same there).
const MAX_NODE_BYTES: usize = 64 * 1024 * 1024;
const MAX_ENTRIES: usize = 10_000_000;
const MAX_PARTS: usize = MAX_ENTRIES;
const MAX_NAME_BYTES: usize = 4096;
const MAX_TARGET_BYTES: usize = 65536;
const MAX_FILE_SIZE: i64 = 1 << 62;
const MAX_MODE: i64 = 0o7777;
const TREE_VERSION: i64 = 1;
/// Nodes at least this large are parsed and checked without the interpreter lock. A smaller one
/// takes less time than winning the lock back from a busy thread would (the restore's threads
/// take and leave it constantly), so it keeps the lock.
const DETACH_BYTES: usize = 256 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntriesNode<'a> {
    #[serde(borrow)]
    entries: Vec<RawEntry<'a>>,
    v: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartsNode<'a> {
    #[serde(borrow)]
    parts: Vec<&'a str>,
    v: i64,
}

/// An entry as stored. Digests and the type are hex or ASCII words, never escaped in canonical
/// form, so they are borrowed (an escape fails the parse: the Python decoder takes over); names
/// and targets are escaped whenever they are not ASCII.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: &'a str,
    mode: i64,
    mtime_ns: i64,
    size: Option<i64>,
    digest: Option<&'a str>,
    #[serde(borrow)]
    chunks: Option<Vec<&'a str>>,
    #[serde(borrow)]
    target: Option<Cow<'a, str>>,
    tree: Option<&'a str>,
}

#[derive(Clone, Copy)]
enum Kind {
    File,
    Dir,
    Symlink,
}

fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn name_ok(name: &str) -> bool {
    !matches!(name, "" | "." | "..") && !name.contains(['/', '\0']) && name.len() <= MAX_NAME_BYTES
}

/// The checks of `trees._decode_entry`, with the names' bytes (UTF-8: the caller decodes here
/// only where that is the file system's encoding) strictly increasing.
fn check(raw: &RawEntry<'_>) -> Option<Kind> {
    if !name_ok(&raw.name) || !(0..=MAX_MODE).contains(&raw.mode) {
        return None;
    }
    let kind = match raw.kind {
        "file" => Kind::File,
        "dir" => Kind::Dir,
        "symlink" => Kind::Symlink,
        _ => return None,
    };
    let ok = match kind {
        Kind::File => {
            let (size, digest, chunks) = (raw.size?, raw.digest?, raw.chunks.as_ref()?);
            (0..=MAX_FILE_SIZE).contains(&size)
                && is_digest(digest)
                && chunks.iter().all(|c| is_digest(c))
                && chunks.len() as i64 <= size
                && (size == 0 || !chunks.is_empty())
        }
        Kind::Symlink => {
            let target = raw.target.as_ref()?;
            !target.is_empty() && !target.contains('\0') && target.len() <= MAX_TARGET_BYTES
        }
        Kind::Dir => is_digest(raw.tree?),
    };
    ok.then_some(kind)
}

fn check_entries(entries: &[RawEntry<'_>]) -> Option<Vec<Kind>> {
    if entries.len() > MAX_ENTRIES {
        return None;
    }
    let mut previous: Option<&[u8]> = None;
    let mut out = Vec::with_capacity(entries.len());
    for raw in entries {
        let key = raw.name.as_bytes();
        if previous.is_some_and(|p| key <= p) {
            return None;
        }
        previous = Some(key);
        out.push(check(raw)?);
    }
    Some(out)
}

fn check_parts(parts: &[&str]) -> bool {
    if parts.is_empty() || parts.len() > MAX_PARTS || !parts.iter().all(|p| is_digest(p)) {
        return false;
    }
    let mut seen: Vec<&str> = parts.to_vec();
    seen.sort_unstable();
    seen.windows(2).all(|w| w[0] != w[1])
}

/// What every entry object of a node is made with.
struct Maker<'py> {
    py: Python<'py>,
    entry_type: Bound<'py, PyAny>,
    object_new: Bound<'py, PyAny>,
    kinds: [Bound<'py, PyAny>; 3],
    empty: Bound<'py, PyString>,
    no_chunks: Bound<'py, PyTuple>,
}

impl<'py> Maker<'py> {
    /// The entry object: `entry_type.__new__` and its `__dict__` set whole, as `trees.new_entry`
    /// does (no `__init__`: a frozen dataclass's sets each field through `object.__setattr__`).
    fn entry(&self, raw: &RawEntry<'_>, kind: Kind) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py;
        let fields = PyDict::new(py);
        fields.set_item(intern!(py, "name"), raw.name.as_ref())?;
        fields.set_item(intern!(py, "type"), &self.kinds[kind as usize])?;
        fields.set_item(intern!(py, "mode"), raw.mode)?;
        fields.set_item(intern!(py, "mtime_ns"), raw.mtime_ns)?;
        match kind {
            Kind::File => {
                fields.set_item(intern!(py, "size"), raw.size.unwrap_or(0))?;
                fields.set_item(intern!(py, "digest"), raw.digest.unwrap_or(""))?;
                let chunks = raw.chunks.as_deref().unwrap_or(&[]);
                fields.set_item(intern!(py, "chunks"), PyTuple::new(py, chunks)?)?;
            }
            _ => {
                fields.set_item(intern!(py, "size"), 0)?;
                fields.set_item(intern!(py, "digest"), &self.empty)?;
                fields.set_item(intern!(py, "chunks"), &self.no_chunks)?;
            }
        }
        match (kind, raw.target.as_deref()) {
            (Kind::Symlink, Some(target)) => fields.set_item(intern!(py, "target"), target)?,
            _ => fields.set_item(intern!(py, "target"), &self.empty)?,
        }
        match (kind, raw.tree) {
            (Kind::Dir, Some(tree)) => fields.set_item(intern!(py, "tree"), tree)?,
            _ => fields.set_item(intern!(py, "tree"), &self.empty)?,
        }
        let object = self.object_new.call1((&self.entry_type,))?;
        let dict_name = intern!(py, "__dict__");
        // SAFETY: the three pointers are live objects held by this function; GenericSetAttr is
        // what `object.__setattr__` calls, bypassing the frozen dataclass's own `__setattr__`.
        let done = unsafe { pyo3::ffi::PyObject_GenericSetAttr(object.as_ptr(), dict_name.as_ptr(), fields.as_ptr()) };
        if done != 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(object)
    }
}

enum Decoded<'a> {
    Entries(EntriesNode<'a>, Vec<Kind>),
    Parts(PartsNode<'a>),
}

/// The node parsed and checked: an entries node with each entry's kind, or a parts node.
fn parse(bytes: &[u8]) -> Option<Decoded<'_>> {
    if bytes.starts_with(b"{\"parts\":") {
        let node: PartsNode<'_> = serde_json::from_slice(bytes).ok()?;
        return (node.v == TREE_VERSION && check_parts(&node.parts)).then_some(Decoded::Parts(node));
    }
    let node: EntriesNode<'_> = serde_json::from_slice(bytes).ok()?;
    if node.v != TREE_VERSION {
        return None;
    }
    let kinds = check_entries(&node.entries)?;
    Some(Decoded::Entries(node, kinds))
}

/// decode_canonical_node(data, entry_type, kinds)
/// --
///
/// The tree node `data` as `cas.format.trees.decode_node` gives it (a list of `entry_type`
/// objects, their `type` taken from `kinds`, the (file, dir, symlink) values; or a parts node's
/// part IDs as a tuple), if this decoder accepts it, else None (see the module's comment). Names
/// are taken as UTF-8, so the caller uses it only where that is the file system's encoding.
#[pyfunction]
#[pyo3(signature = (data, entry_type, kinds))]
pub fn decode_canonical_node<'py>(
    py: Python<'py>, data: PyBackedBytes, entry_type: Bound<'py, PyAny>, kinds: (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>),
) -> PyResult<Option<Bound<'py, PyAny>>> {
    if data.len() > MAX_NODE_BYTES {
        return Ok(None);
    }
    let bytes: &[u8] = &data;
    let decoded = if bytes.len() >= DETACH_BYTES { py.detach(|| parse(bytes)) } else { parse(bytes) };
    let (node, checked) = match decoded {
        None => return Ok(None),
        Some(Decoded::Parts(node)) => return Ok(Some(PyTuple::new(py, &node.parts)?.into_any())),
        Some(Decoded::Entries(node, checked)) => (node, checked),
    };
    let maker = Maker {
        py,
        entry_type,
        object_new: py.import("builtins")?.getattr("object")?.getattr("__new__")?,
        kinds: [kinds.0, kinds.1, kinds.2],
        empty: PyString::new(py, ""),
        no_chunks: PyTuple::empty(py),
    };
    let list = PyList::empty(py);
    for (raw, kind) in node.entries.iter().zip(checked) {
        list.append(maker.entry(raw, kind)?)?;
    }
    Ok(Some(list.into_any()))
}
