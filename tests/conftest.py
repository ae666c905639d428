from __future__ import annotations

import io

import pytest

from tests.support import make_client, wait_ready


@pytest.fixture(scope="session")
def client():
    """The app on the shipped registry (demo model), shared by read-only API tests."""
    with make_client() as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="session")
def demo_sample():
    """A synthetic demo image with its known objects."""
    from service.demo.data import generate_sample, sample_rng

    image, objects = generate_sample(sample_rng(777, 0))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), objects
