"""Serving a large file that ships in a Python package (plotly.js from the plotly
wheel) compressed and cacheable, without a build or collectstatic step.

WhiteNoise would serve a precompressed ``.gz`` beside a collected static file,
but static files here come straight from the finders (no collectstatic), and a
package's own files are not static files at all. So the gzip form is made once
per process, on first request (about 0.15 s for plotly's 4.8 MB, which become
1.5 MB), kept in memory, and served to clients that accept it; others get the
file as it is. Each form has its own ETag, so a revalidation answers 304.
"""

from __future__ import annotations

import functools
import gzip
import re
from pathlib import Path

from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase
from django.utils.cache import get_conditional_response, patch_vary_headers

_CODING = re.compile(r"^\s*([\w*-]+)\s*(?:;\s*q\s*=\s*([\d.]+))?\s*$", re.IGNORECASE)


def accepts_gzip(request: HttpRequest) -> bool:
    """Whether the request's Accept-Encoding takes gzip (``gzip;q=0`` refuses it)."""
    for part in request.headers.get("Accept-Encoding", "").split(","):
        match = _CODING.match(part)
        if match and match.group(1).lower() in ("gzip", "x-gzip"):
            try:
                return float(match.group(2) or 1) > 0
            except ValueError:
                return False
    return False


@functools.cache
def _gzipped(path: Path, mtime_ns: int) -> bytes:
    # mtime_ns is part of the key: an upgraded package is compressed afresh.
    # mtime=0 keeps the bytes (and so the ETag's meaning) the same on every run.
    return gzip.compress(path.read_bytes(), compresslevel=9, mtime=0)


def compressed_file_response(
    request: HttpRequest, path: Path, *, content_type: str, cache_control: str
) -> HttpResponseBase:
    """``path`` gzip-compressed when the client accepts it, else as it is, with
    ``cache_control``, an ETag per form and ``Vary: Accept-Encoding``; a 304 when
    the client already holds the form it would get."""
    stat = path.stat()
    use_gzip = accepts_gzip(request)
    etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}{"-gz" if use_gzip else ""}"'
    conditional = get_conditional_response(request, etag=etag)
    if conditional is not None:
        response: HttpResponseBase = conditional
    elif use_gzip:
        response = HttpResponse(_gzipped(path, stat.st_mtime_ns), content_type=content_type)
        response["Content-Encoding"] = "gzip"
    else:
        response = FileResponse(path.open("rb"), content_type=content_type)
    response["ETag"] = etag
    response["Cache-Control"] = cache_control
    patch_vary_headers(response, ["Accept-Encoding"])
    return response
