"""Jobs shared through Redis (the compose `scale` profile): two apps, one real redis-server on a Unix socket."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from service.jobs import Job
from service.redis_jobs import DEAD_REPLICA, RedisJobStore
from tests.support import demo_png, make_client, wait_ready

redis = pytest.importorskip("redis", reason="the redis client is not installed (pip install -e '.[redis]')")
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (Debian redis-server; .ci/run installs it)")


@pytest.fixture(scope="module")
def redis_url():
    folder = Path(tempfile.mkdtemp(prefix="xaas-redis-"))
    sock = folder / "redis.sock"
    # port 0: no TCP listener at all, only the socket in a private folder
    server = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
                               "--save", "", "--appendonly", "no", "--dir", str(folder)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"unix://{sock}"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.05)
    yield url
    server.terminate()
    server.wait(10)
    shutil.rmtree(folder, ignore_errors=True)


def test_a_job_accepted_by_one_app_is_polled_read_and_deleted_through_another(redis_url):
    with make_client(job_store="redis", redis_url=redis_url) as a, \
            make_client(job_store="redis", redis_url=redis_url) as b:
        wait_ready(a)
        wait_ready(b)
        r = a.post("/explain/rise", files={"image": ("x.png", demo_png(4242), "image/png")}, data={"masks": "200"},
                   headers={"Prefer": "respond-async"})
        assert r.status_code == 202
        location = r.headers["location"]
        deadline = time.monotonic() + 60
        while (body := b.get(location).json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert body["status"] == "done" and body["result"]["explanations"]   # computed by a, read through b
        assert b.delete(location).status_code == 204
        assert a.get(location).status_code == 404 and b.get(location).status_code == 404


def test_a_job_whose_replica_lost_its_lease_fails(redis_url):
    client = redis.Redis.from_url(redis_url)
    dead = RedisJobStore(client, owner="dead-replica", lease=0.3)
    dead._stop.set()  # it stops renewing: as a crashed replica would
    dead.add(Job("j-dead", "explanation", "demo", status="running"), max_active=8)
    alive = RedisJobStore(client, owner="live-replica", lease=30)
    try:
        assert alive.get("j-dead").status == "running"
        time.sleep(0.5)
        job = alive.get("j-dead")
        assert job.status == "failed" and job.error == DEAD_REPLICA
        assert dead.active() == []
    finally:
        alive.close()


def test_admission_counts_the_submitting_replicas_jobs(redis_url):
    client = redis.Redis.from_url(redis_url)
    first, second = RedisJobStore(client, owner="r1"), RedisJobStore(client, owner="r2")
    try:
        first.add(Job("r1-a", "explanation", "demo"), max_active=1)
        with pytest.raises(Exception) as refused:
            first.add(Job("r1-b", "explanation", "demo"), max_active=1)
        assert refused.value.status == 429 and refused.value.headers["Retry-After"]
        second.add(Job("r2-a", "explanation", "demo"), max_active=1)   # another replica has room
        assert [j.id for j in first.active()] == ["r1-a"]
        first.update("r1-a", status="done", finished=time.time() - 100)
        first.purge(time.time() - 10)
        assert first.get("r1-a") is None and second.get("r2-a") is not None
    finally:
        first.close()
        second.close()


def test_an_unreachable_redis_is_a_one_line_configuration_error(tmp_path):
    from service.config import Settings
    from service.errors import ConfigError

    settings = Settings(job_store="redis", redis_url=f"unix://:s3cret@{tmp_path}/none.sock")
    with pytest.raises(ConfigError, match="XAAS_REDIS_URL: cannot use Redis") as failed:
        RedisJobStore.from_settings(settings)
    assert "s3cret" not in str(failed.value)
    with pytest.raises(ConfigError, match="needs XAAS_REDIS_URL"):
        RedisJobStore.from_settings(Settings(job_store="redis"))
