"""plotly.js for the evolution review (4.8 MB as the plotly package ships it):
gzip-compressed for browsers that accept it, cacheable for a year, revalidated
with a 304, and still behind the login."""

from __future__ import annotations

import gzip

import pytest
from django.test import RequestFactory
from django.urls import reverse

from experiments.views import PLOTLY_JS
from kaizen_web.compressed_files import accepts_gzip

URL = "/kaizen/plotly.min.js"


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_the_url_is_the_one_the_review_page_loads():
    assert reverse("experiments-plotly-js") == URL


def test_it_is_gzip_compressed_when_the_browser_accepts_it(logged_in):
    original = PLOTLY_JS.read_bytes()

    response = logged_in.get(URL, headers={"Accept-Encoding": "gzip, deflate, br, zstd"})

    assert response.status_code == 200
    assert response["Content-Encoding"] == "gzip"
    assert response["Content-Type"].startswith("text/javascript")
    compressed = body(response)
    # The package's 4.8 MB come to about 1.5 MB.
    assert len(original) > 4_000_000
    assert len(compressed) < len(original) / 3
    assert gzip.decompress(compressed) == original


def test_it_is_cacheable_for_a_year_and_varies_on_accept_encoding(logged_in):
    response = logged_in.get(URL, headers={"Accept-Encoding": "gzip"})

    assert "max-age=31536000" in response["Cache-Control"]
    assert "immutable" in response["Cache-Control"]
    assert "Accept-Encoding" in response["Vary"]
    assert response["ETag"].startswith('"')


def test_a_client_without_gzip_gets_the_file_as_it_is(logged_in):
    for accept in (None, "identity", "gzip;q=0, br"):
        headers = {"Accept-Encoding": accept} if accept else {}

        response = logged_in.get(URL, headers=headers)

        assert response.status_code == 200
        assert "Content-Encoding" not in response
        assert body(response) == PLOTLY_JS.read_bytes()
        assert "Accept-Encoding" in response["Vary"]


def test_the_two_forms_have_their_own_etag(logged_in):
    plain = logged_in.get(URL)["ETag"]
    gzipped = logged_in.get(URL, headers={"Accept-Encoding": "gzip"})["ETag"]

    assert plain != gzipped


def test_a_browser_holding_it_gets_304_without_the_body(logged_in):
    etag = logged_in.get(URL, headers={"Accept-Encoding": "gzip"})["ETag"]

    response = logged_in.get(URL, headers={"Accept-Encoding": "gzip", "If-None-Match": etag})

    assert response.status_code == 304
    assert response.content == b""
    assert response["ETag"] == etag


def test_it_needs_a_login(client, db):
    response = client.get(URL, headers={"Accept-Encoding": "gzip"})

    assert response.status_code == 302


@pytest.mark.parametrize(
    "header, accepted",
    [
        ("gzip", True),
        ("br, gzip;q=0.5", True),
        ("x-gzip", True),
        ("GZIP", True),
        ("gzip;q=0", False),
        ("gzip;q=0.0", False),
        ("br, deflate", False),
        ("gzipped", False),
        ("", False),
    ],
)
def test_accept_encoding_is_read_with_its_weights(header, accepted):
    request = RequestFactory().get(URL, headers={"Accept-Encoding": header})

    assert accepts_gzip(request) is accepted
