"""The URLs of the API's searchset Bundles, from ``inbound_public_url`` only.

Never from the request's Host header (a client chooses it: Host-header injection would
put its URLs in answers, audit copies and caches). With ``inbound_public_url`` set, the
entries' ``fullUrl`` and the ``self``/``next`` links are absolute under it; unset:

* entries carry no ``fullUrl``: FHIR (Bundle.entry.fullUrl, R5 and the current build)
  lets it be absent when returning the results of a search, and R4 calls it an
  absolute URL, so a relative one would be wrong there; each entry's resource carries
  its ``resourceType`` and ``id``, which the client resolves against the base it
  called, as for any relative reference (R4 references.html);
* links are relative references (path and query): ``Bundle.link.url`` is a ``uri``,
  which may be relative (RFC 3986 section 4.2), resolved against the URL requested.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import URL
from starlette.requests import Request

__all__ = ["entry", "link", "link_of"]


def link(request: Request, public: str | None, **params: Any) -> str:
    """The request's URL (with ``params`` replaced), under ``public`` or relative."""
    return link_of(request.url, public, **params)


def link_of(url: URL, public: str | None, **params: Any) -> str:
    """``url`` (a request's, or a batch entry's GET under ``/fhir``) as :func:`link`."""
    url = url.include_query_params(**params) if params else url
    relative = url.path + (f"?{url.query}" if url.query else "")
    return (public or "") + relative


def entry(public: str | None, reference: str, resource: Any) -> dict[str, Any]:
    """A searchset match: ``fullUrl`` only under the public URL (see above)."""
    found: dict[str, Any] = {"resource": resource, "search": {"mode": "match"}}
    if public:
        found = {"fullUrl": f"{public}/fhir/{reference}", **found}
    return found
