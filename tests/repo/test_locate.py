"""Repository.locate: where the index says each blob is, field for field."""

from __future__ import annotations

import os
from pathlib import Path

from cas import Store
from cas.format.trees import DIR
from cas.types import BlobLocation


def test_a_location_carries_every_field_of_the_index_row_under_its_own_name(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "small").write_bytes(b"some bytes")
    (src / "big").write_bytes(os.urandom(300_000) + bytes(300_000))
    store.snapshot(src, "v1")
    ids: list[str] = []
    trees = [store.get("v1").root]
    while trees:  # every tree node and chunk of the execution
        tree = trees.pop()
        ids.append(tree)
        for entry in store.repo.read_tree(tree):
            if entry.type == DIR:
                trees.append(entry.tree)
            ids.extend(entry.chunks)
    rows = store.repo.index.locate(ids)
    locations = store.repo.locate(ids)
    assert set(locations) == set(ids) == set(rows)
    for blob_id, location in locations.items():
        assert isinstance(location, BlobLocation)
        row = rows[blob_id]
        assert {f: getattr(location, f) for f in BlobLocation._fields} == {f: getattr(row, f) for f in BlobLocation._fields}
    assert len({loc.offset for loc in locations.values()}) > 1  # not all at one place: offsets differ
