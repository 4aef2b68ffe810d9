"""The bridge's contract, run inside a real AIFlow environment (Python 3.7 or 3.8), through AIFlow's factory.

usage: bridge_contract.py WORKDIR CAS_EXECUTABLE OLD_CAS_EXECUTABLE
Prints one JSON line of facts for the pytest side; any broken promise raises (exit status 1).
"""
import hashlib
import json
import os
import sys
import threading

import cas_aiflow_bridge as bridge

try:  # AIFlow 0.3
    from ai_flow.plugin_interface.blob_manager_interface import BlobManager, BlobManagerFactory

    def create(class_name, config):
        return BlobManagerFactory.create_blob_manager(class_name, config)

    INTERFACE = "ai_flow.plugin_interface.blob_manager_interface"
except ModuleNotFoundError:  # ai-flow-nightly
    from ai_flow.blob_manager.blob_manager_interface import BlobManager, BlobManagerConfig, BlobManagerFactory

    def create(class_name, config):
        return BlobManagerFactory.create_blob_manager(
            BlobManagerConfig({"blob_manager_class": class_name, "blob_manager_config": config}))

    INTERFACE = "ai_flow.blob_manager.blob_manager_interface"


def expect(exc_type, fn, *args):
    try:
        fn(*args)
    except exc_type as exc:
        message = str(exc)
        assert "\n" not in message and "Traceback" not in message, message
        return message
    raise AssertionError(f"expected {exc_type.__name__} from {fn}")


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def bytes_under(root):
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(root) for n in names)


def main():
    work, cas_exe, old_cas = sys.argv[1:4]
    facts = {"interface": INTERFACE, "python": sys.version.split()[0]}
    root = os.path.join(work, "blobs")
    config = {"root_directory": root, "cas_executable": cas_exe}
    manager = create("cas_aiflow_bridge.LocalBlobManager", config)
    assert isinstance(manager, BlobManager) and isinstance(manager, bridge.LocalBlobManager)
    assert manager.root_dir == root and manager.log.name.endswith("LocalBlobManager")
    facts["cas_version"] = manager.cas_version

    # Upload: content-addressed, the caller's file untouched; same bytes, same URI.
    src = os.path.join(work, "src", "workflow_train_0123.zip")
    os.makedirs(os.path.dirname(src))
    with open(src, "wb") as f:
        f.write(os.urandom(400000) + b"z" * 600000)
    before = os.stat(src)
    uri = manager.upload(local_file_path=src)
    after = os.stat(src)
    assert (before.st_ino, before.st_size, before.st_mtime_ns) == (after.st_ino, after.st_size, after.st_mtime_ns)
    assert uri.startswith(root + "/cas/file-") and uri.endswith("/workflow_train_0123.zip"), uri
    stored = bytes_under(root)
    assert manager.upload(src) == uri and bytes_under(root) == stored  # nothing new stored

    # Concurrent downloads of one URI into one directory, each by its own manager: one fetch.
    out = os.path.join(work, "shared")
    workers = 6
    managers = [create("cas_aiflow_bridge.LocalBlobManager", config) for _ in range(workers)]
    barrier = threading.Barrier(workers)
    results, errors = [], []

    def run(m):
        try:
            barrier.wait(60)
            path = m.download(remote_file_path=uri, local_dir=out)
            results.append((path, m.last_result["fetched"], sha(path)))
        except BaseException as exc:  # noqa: BLE001 - whatever a thread meets is reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(m,)) for m in managers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted({p for p, _, _ in results}) == [os.path.join(out, "workflow_train_0123.zip")]
    assert {h for _, _, h in results} == {sha(src)}
    facts["concurrent_fetches"] = sum(1 for _, fetched, _ in results if fetched)
    assert facts["concurrent_fetches"] == 1, results
    assert os.listdir(out) == ["workflow_train_0123.zip"], os.listdir(out)

    # The 0.2 interface: a project tree.
    project = os.path.join(work, "my_project")
    os.makedirs(os.path.join(project, "workflows", "train"))
    with open(os.path.join(project, "workflows", "train", "train.py"), "w") as f:
        f.write("print('train')\n")
    puri = manager.upload_project("7", project)
    restored = manager.download_project("7", puri, os.path.join(work, "projects"))
    assert restored == os.path.join(work, "projects", "workflow_7_project", "my_project"), restored
    with open(os.path.join(restored, "workflows", "train", "train.py")) as f:
        assert f.read() == "print('train')\n"

    # Bad input: one line each, the right exception, nothing presented as whole.
    facts["errors"] = {
        "foreign_uri": expect(bridge.CasConfigurationError, manager.download, "/etc/passwd", out),
        "unknown_uri": expect(bridge.CasNotFound, manager.download, root + "/cas/file-" + "ab" * 32 + "/x.zip", out),
        "missing_file": expect(bridge.CasNotFound, manager.upload, os.path.join(work, "nope.zip")),
        "missing_key": expect(bridge.CasConfigurationError, create, "cas_aiflow_bridge.LocalBlobManager",
                              {"cas_executable": cas_exe}),
        "missing_cas": expect(bridge.CasNotInstalled, create, "cas_aiflow_bridge.LocalBlobManager",
                              {"root_directory": root, "cas_executable": os.path.join(work, "no", "cas")}),
        "old_cas": expect(bridge.CasNotInstalled, create, "cas_aiflow_bridge.LocalBlobManager",
                          {"root_directory": root, "cas_executable": old_cas}),
    }
    assert os.listdir(out) == ["workflow_train_0123.zip"], os.listdir(out)

    # Corrupt stored data: the download raises and leaves nothing.
    bad_root = os.path.join(work, "bad-blobs")
    bad = create("cas_aiflow_bridge.LocalBlobManager", {"root_directory": bad_root, "cas_executable": cas_exe})
    bad_uri = bad.upload(src)
    for dirpath, _, names in os.walk(os.path.join(bad_root, "cas", "data")):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                raw = bytearray(f.read())
            for i in range(len(raw) // 4, len(raw) // 2, 997):
                raw[i] ^= 0xFF
            os.chmod(path, 0o644)
            with open(path, "wb") as f:
                f.write(bytes(raw))
    corrupt_out = os.path.join(work, "corrupt-out")
    facts["errors"]["corrupt"] = expect(bridge.CasIntegrityError, bad.download, bad_uri, corrupt_out)
    assert os.listdir(corrupt_out) == [], os.listdir(corrupt_out)
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
