"""cas.aiflow.config: AIFlow's config keys -> repository, backend options and URI root, without a server.

The OSS credentials' environment fallback is checked here against backends.oss_config, whose table the
adapter asks (``environment_fallbacks``) instead of keeping its own.
"""

from __future__ import annotations

import pytest

from backends import oss_config as oss
from cas.aiflow.config import hdfs_location, local_location, oss_location, s3_location
from cas.errors import ConfigurationError

OSS_VARS = ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_ENDPOINT")


@pytest.fixture(autouse=True)
def no_oss_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OSS_VARS:
        monkeypatch.delenv(name, raising=False)


def test_oss_credentials_from_config_are_passed_to_the_backend() -> None:
    config = {"bucket": "b", "root_directory": "/tmp/", "access_key_id": "i", "access_key_secret": "s",
              "endpoint": "e", "part_size": 1 << 20}  # fmt: skip
    location = oss_location(config, "OssBlobManager")
    assert location.repo == "oss://b/tmp/cas" and location.uri_root == "oss://b/tmp"
    assert location.options == {"access_key_id": "i", "access_key_secret": "s", "endpoint": "e", "part_size": 1 << 20}


def test_oss_credentials_left_to_the_environment_the_backend_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [env for env, _ in oss.environment_fallbacks().values()] == list(OSS_VARS)
    for name in OSS_VARS:
        monkeypatch.setenv(name, "from-env")
    location = oss_location({"bucket": "b", "root_directory": "/"}, "OssBlobManager")
    assert location.options == {}  # the backend takes them from the environment itself
    assert location.repo == "oss://b/cas" and location.uri_root == "oss://b"


@pytest.mark.parametrize(("key", "env"), [("access_key_id", "OSS_ACCESS_KEY_ID"),
                                          ("access_key_secret", "OSS_ACCESS_KEY_SECRET"),
                                          ("endpoint", "OSS_ENDPOINT")])  # fmt: skip
def test_oss_credential_missing_from_both_names_key_and_variable(
    monkeypatch: pytest.MonkeyPatch, key: str, env: str
) -> None:
    config = {"bucket": "b", "root_directory": "t", "access_key_id": "i", "access_key_secret": "s", "endpoint": "e"}
    del config[key]
    for name in OSS_VARS:
        if name != env:
            monkeypatch.setenv(name, "from-env")
    with pytest.raises(ConfigurationError, match=rf"^OssBlobManager: .*'{key}' \(or set \${env}\)$"):
        oss_location(config, "OssBlobManager")


def test_local_hdfs_s3_locations() -> None:
    local = local_location({"root_directory": "/data/blobs/"}, "LocalBlobManager")
    assert (local.repo, local.options, local.uri_root) == ("/data/blobs/cas", {}, "/data/blobs")
    hdfs = hdfs_location({"hdfs_url": "http://nn:50070", "root_directory": "//x//y/"}, "HDFSBlobManager")
    assert (hdfs.repo, hdfs.options, hdfs.uri_root) == ("hdfs:///x/y/cas", {"hdfs_url": "http://nn:50070"}, "//x//y")
    s3 = s3_location({"bucket_name": "b", "region_name": "r", "config": {"s3": {"addressing_style": "path"}}},
                     "S3BlobManager")  # fmt: skip
    assert (s3.repo, s3.options, s3.uri_root) == ("s3://b/cas", {"region_name": "r", "addressing_style": "path"}, "s3://b")
