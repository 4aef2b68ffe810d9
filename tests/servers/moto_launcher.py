"""``python -m tests.servers.moto_launcher ARGS``: moto's server, with its signature check fixed for
query values holding a ``/``.

moto 5.2 recomputes a request's SigV4 signature from a query string in which ``%2F`` arrived
decoded (``prefix=cas/data/``), while the client signed the encoded form, so with authentication on
every ListObjectsV2 with a prefix containing ``/`` is refused as ``SignatureDoesNotMatch``. This
re-encodes the query the way SigV4 canonicalises it (RFC 3986, ``-_.~`` unreserved) before moto
signs it again. Nothing else changes: a wrong key or a tampered request still fails.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from moto.iam import access_control


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

if __name__ == "__main__":
    from moto.server import main

    main()
