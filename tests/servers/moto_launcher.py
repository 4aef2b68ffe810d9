"""``python -m tests.servers.moto_launcher ARGS``: moto's server, with two of its departures from S3
mended.

* Its signature check of query values holding a ``/``: moto 5.2 recomputes a request's SigV4
  signature from a query string in which ``%2F`` arrived decoded (``prefix=cas/data/``), while the
  client signed the encoded form, so with authentication on every ListObjectsV2 with a prefix
  containing ``/`` is refused as ``SignatureDoesNotMatch``. This re-encodes the query the way SigV4
  canonicalises it (RFC 3986, ``-_.~`` unreserved) before moto signs it again. Nothing else changes:
  a wrong key or a tampered request still fails.
* Its conditional writes: S3 makes a ``PutObject`` with ``If-None-Match: *`` atomic (of writers
  racing for one key, one wins), moto checks the key and then writes it, on threads of a threaded
  server, so two racing writers could both win (the backends' contract test of that race failed so
  in CI). Object PUTs are made one at a time here.
"""

from __future__ import annotations

import threading
from urllib.parse import quote, unquote

from moto.iam import access_control
from moto.s3.responses import S3Response


def _canonical_query(url: str) -> str:
    path, sep, query = url.partition("?")
    if not sep:
        return url
    pairs = []
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        pairs.append(quote(unquote(key), safe="-_.~") + eq + quote(unquote(value), safe="-_.~"))
    return path + "?" + "&".join(pairs)


_original = access_control.IAMRequestBase._create_aws_request


def _create_aws_request(self):  # type: ignore[no-untyped-def]
    request = _original(self)
    request.url = _canonical_query(request.url)
    return request


access_control.IAMRequestBase._create_aws_request = _create_aws_request  # type: ignore[method-assign]

_put_lock = threading.Lock()
_original_put = S3Response.put_object


def _put_object(self):  # type: ignore[no-untyped-def]
    with _put_lock:  # the check of If-None-Match and the write, as one
        return _original_put(self)


S3Response.put_object = _put_object  # type: ignore[method-assign]

if __name__ == "__main__":
    from moto.server import main

    main()
