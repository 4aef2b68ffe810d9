"""Setting up: ``init`` (a repository), ``key`` (its passphrases), ``cache`` (this host's caches)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from typing import TYPE_CHECKING

from cas import passphrase
from cas.cli.common import emit
from cas.terminal import escape, human_size

if TYPE_CHECKING:
    from cas.store import Store


def cmd_init(args: argparse.Namespace) -> int:
    from cas.store import Store

    password = passphrase.source(args.password_file, prompt="new repository passphrase", confirm=True)
    chunker = {} if args.chunker is None else {"chunker": args.chunker}
    with Store.open(args.repo, index=args.index, exclusive=True, encrypt=args.encrypt, password=password,
                    kdf_cost=args.kdf_cost, **chunker) as store:
        config = store.repo.config
        data = {"location": store.repo.describe(), "repo_id": config.repo_id, "version": config.version,
                "encrypted": config.encrypted}
        text = (f"created {'an encrypted' if config.encrypted else 'a'} repository {config.repo_id} "
                f"at {escape(store.repo.describe())}")
        emit(args, data, text)
    return 0

def cmd_key(store: Store, args: argparse.Namespace) -> int:
    if args.key_action == "list":
        keys = store.list_keys()
        lines = [f"{'*' if k.current else ' '} {k.key_id}  scrypt 2^{k.kdf_cost}  created "
                 f"{dt.datetime.fromtimestamp(k.created_ns / 1e9, dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
                 for k in keys]
        emit(args, [k.to_dict() for k in keys], "\n".join(lines))
    elif args.key_action == "add":
        store.list_keys()  # refuses an unencrypted repository before asking for a new passphrase
        new = passphrase.source(args.new_password_file, env=passphrase.NEW_ENV, prompt="new passphrase",
                                confirm=True)
        key_id = store.add_key(new, kdf_cost=args.kdf_cost)
        emit(args, {"added": key_id}, f"added key {key_id}")
    else:
        store.remove_key(args.key_id)
        emit(args, {"removed": args.key_id}, f"removed key {escape(args.key_id)}")
    return 0

def cmd_cache(args: argparse.Namespace) -> int:
    """``cas cache [prune|clear]``: the chunk cache of ``$CAS_HOME/cache/chunks`` and the files caches."""
    from cas.repo.chunkcache import ChunkCache
    from cas.repo.filescache import expire_files_caches, files_cache_bytes, remove_files_caches
    from cas.repo.repository import default_chunk_cache_dir

    cache_dir = os.path.dirname(default_chunk_cache_dir())
    cache = ChunkCache(default_chunk_cache_dir(), args.cache_max)
    try:
        done: dict[str, object] = {}
        if args.cache_action == "prune":
            done["evicted"] = cache.prune(args.max_size)
            done["files_cache_expired"] = expire_files_caches(cache_dir, args.files_cache_ttl)
        elif args.cache_action == "clear":
            done["removed"] = cache.clear()
            done["files_caches_removed"] = remove_files_caches(cache_dir)
        st = cache.stats()
    finally:
        cache.close()
    files_bytes = files_cache_bytes(cache_dir)
    data = {**st.to_dict(), "files_cache_bytes": files_bytes, **done}
    share = f" ({100 * st.bytes / st.max_bytes:.0f}%)" if st.max_bytes else ""
    rate = f"{100 * st.hit_rate:.1f}%" if st.hit_rate is not None else "-"
    lines = []
    if "evicted" in done:
        lines.append(f"evicted {done['evicted']} chunks; forgot {done['files_cache_expired']} files-cache entries")
    if "removed" in done:
        lines.append(f"removed {done['removed']} chunks and {done['files_caches_removed']} files caches")
    lines += [
        f"chunk cache   {escape(st.root)}",
        f"size          {human_size(st.bytes)} of {human_size(st.max_bytes)} cap{share}",
        f"entries       {st.entries}",
        f"hit rate      {rate}  ({st.hits} hits, {st.misses} misses)",
        f"files cache   {human_size(files_bytes)}",
    ]
    emit(args, data, "\n".join(lines))
    return 0
