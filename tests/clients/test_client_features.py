"""Feature visualisation through the client: activations, filters, class-impression jobs (sync, async, CLI)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from service.cli import main as xaas_main
from xaas_client import (
    ActivationResponse,
    AsyncClient,
    Client,
    FilterResponse,
    Job,
    JobCancelled,
    JobTimeout,
    NotFound,
)
from xaas_client.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def client(server: str):
    with Client(server) as xaas:
        yield xaas


def test_activations_grid_and_channel(client: Client, sample_png: bytes):
    result = client.activations(sample_png, top=4)
    assert isinstance(result, ActivationResponse) and result.model == "demo"
    assert len(result.channels) == 4 and result.grid_info is not None and result.channel is None
    assert result.grid_png().startswith(PNG_MAGIC)
    grid = result.grid_image()
    info = result.grid_info
    assert grid.mode == "L"
    assert grid.size[0] >= info.cols * info.tile[1] and grid.size[1] >= info.rows * info.tile[0]
    with pytest.raises(ValueError, match="channel"):
        result.channel_png()

    one = client.activations(sample_png, layer=result.layer, channel=result.channels[0].index)
    assert one.grid is None and [c.index for c in one.channels] == [result.channels[0].index]
    assert one.channel_image().size == (result.shape[2], result.shape[1])


def test_filters_default_model_and_layer(client: Client):
    result = client.filters()
    assert isinstance(result, FilterResponse) and result.model == "demo"
    assert result.layer == result.conv_layers[0] and result.count > 0
    image = result.grid_image()
    assert image.mode == ("RGB" if result.mode == "rgb" else "L")
    assert client.filters("demo", layer=result.conv_layers[-1]).layer == result.conv_layers[-1]
    with pytest.raises(NotFound):
        client.filters("no-such-model")


def test_class_impression_sync(client: Client):
    seen: list[Job] = []
    job = client.class_impression("demo", 0, steps=20, seed=1, poll_interval=0.1, timeout=60, on_progress=seen.append)
    assert job.status == "done" and job.target == 0 and job.progress.step == 20
    assert seen[0].status in ("queued", "running", "done") and seen[-1] is job
    with Image.open(io.BytesIO(job.image_png())) as image:
        assert image.format == "PNG"
    assert job.image_image().size[0] > 0
    client.cancel_job(job.id)  # deleting a finished job
    with pytest.raises(NotFound):
        client.job(job.id)


def test_cancel_and_unknown_job(client: Client):
    started = client.start_class_impression(None, "circle", steps=1000)
    assert started.status in ("queued", "running") and started.id
    with pytest.raises(ValueError):  # not done: no image yet
        started.image_png()
    client.cancel_job(started.id)
    with pytest.raises(NotFound):  # a deleted job is gone
        client.job(started.id)
    with pytest.raises(NotFound):
        client.job("no-such-job")
    with pytest.raises(NotFound):
        client.cancel_job("no-such-job")


def test_class_impression_timeout_cancels(client: Client):
    with pytest.raises(JobTimeout) as caught:
        client.class_impression("demo", 1, steps=1000, poll_interval=0.05, timeout=0.2)
    with pytest.raises(NotFound):  # the timed-out job was deleted on the server
        client.job(caught.value.job.id)


def test_async_features(server: str, sample_png: bytes):
    async def scenario():
        async with AsyncClient(server) as xaas:
            acts, filt = await asyncio.gather(xaas.activations(sample_png, top=2), xaas.filters())
            done = await xaas.class_impression(None, "star", steps=20, poll_interval=0.1, timeout=60)
            started = await xaas.start_class_impression("demo", 0, steps=1000)
            await xaas.cancel_job(started.id)
            with pytest.raises(NotFound):
                await xaas.job(started.id)
            with pytest.raises(NotFound):
                await xaas.job("no-such-job")
            return acts, filt, done, started

    acts, filt, done, cancelled = asyncio.run(scenario())
    assert acts.grid_png().startswith(PNG_MAGIC) and len(acts.channels) == 2
    assert filt.grid_png().startswith(PNG_MAGIC)
    assert done.status == "done" and done.label == "star" and done.image_png().startswith(PNG_MAGIC)
    assert cancelled.status in ("queued", "running")


def test_cancelled_while_polling_raises(client: Client):
    def cancel_on_first_poll(job: Job) -> None:
        if not job.finished:
            client.cancel_job(job.id)

    with pytest.raises(JobCancelled):
        client.class_impression("demo", 0, steps=1000, poll_interval=0.05, timeout=30, on_progress=cancel_on_first_poll)


def test_cli_activations(server: str, sample_path: Path, tmp_path: Path, capsys):
    out = tmp_path / "grid.png"
    assert main(["activations", str(sample_path), "--server", server, "--top", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert "of demo:" in text[0] and text[1].split() == ["channel", "mean", "max", "positive"] and len(text) == 5
    with Image.open(out) as image:
        assert image.mode == "L"
    assert main(["activations", str(tmp_path / "missing.png"), "--server", server]) == 2


def test_cli_filters(server: str, tmp_path: Path, capsys):
    out = tmp_path / "filters.png"
    assert main(["filters", "--server", server, "--json", "--out", str(out)]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["model"] == "demo" and out.read_bytes().startswith(PNG_MAGIC)
    assert main(["filters", "--server", server, "--model", "nope"]) == 1
    assert "404" in capsys.readouterr().err


def test_cli_feature_commands_through_the_xaas_alias(server: str, capsys):
    assert xaas_main(["filters", "--server", server, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "demo"
    assert xaas_main(["filters", "--server", server, "--model", "nope"]) == 1
    assert capsys.readouterr().err.startswith("xaas: 404 ")


def test_cli_impression(server: str, tmp_path: Path, capsys):
    out = tmp_path / "impression.png"
    assert main(["impression", "circle", "--server", server, "--steps", "20", "--seed", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "impression of 'circle'" in captured.out and "done" in captured.out
    assert "/20" in captured.err  # progress lines
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert main(["impression", "circle", "--server", "http://127.0.0.1:9", "--retries", "0"]) == 3
