"""``/docs`` (Swagger UI) and ``/redoc`` work offline: their pages name no other host, and every file they load
is served by the server itself."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from vlaser.serve.app import create_app

#: what a page loads or links: src/href attributes and the url fields of Swagger UI's inline settings
REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url\s*:\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def client():
    # no lifespan runs (no `with`), so the engine is never started: the docs need none
    return TestClient(create_app(scheduler=None, model_name="m"))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_another_host(client, page):
    response = client.get(page)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    html = response.text
    assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.IGNORECASE), html  # no host at all
    references = [a or b for a, b in REFERENCE.findall(html)]
    assert any(r.endswith(".js") for r in references), references
    for reference in references:
        fetched = client.get(reference)
        assert fetched.status_code == 200 and fetched.content, reference
