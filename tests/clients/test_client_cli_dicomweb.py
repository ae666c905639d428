"""``xaas-client dicomweb explain|localize`` against a live ``xaas serve`` whose PACS is a scripted one on loopback
(tests/fake_pacs.py: pydicom's CT for any UIDs, STOW-RS kept), so the command's whole round trip runs without Orthanc;
PACS failures end it with the problem's status on stderr and exit 1."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("dicomweb_client")

from bench._server import running_server  # noqa: E402
from service.cli import main as xaas_main  # noqa: E402
from tests.fake_pacs import FakePacs, closed_port  # noqa: E402
from xaas_client.cli import main  # noqa: E402

PM, SEG, SR = "1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"
UIDS = ["1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.2", "1.2.826.0.1.3680043.2.1125.3"]


@pytest.fixture(scope="module")
def pacs():
    with FakePacs() as fake:
        yield fake


@pytest.fixture(scope="module")
def pacs_server(pacs) -> str:
    env = {"XAAS_DEVICE": "cpu", "XAAS_DICOMWEB_URL": pacs.url, "XAAS_DICOMWEB_TIMEOUT": "5"}
    with running_server(env=env) as server:
        yield server.url


@pytest.fixture()
def fresh(pacs):
    """The scripted PACS working and empty, again after the test."""
    pacs.mode = "ok"
    pacs.stored.clear()
    yield pacs
    pacs.mode = "ok"
    pacs.stored.clear()


def test_explain_stores_the_results_prints_their_uids_and_writes_them(pacs_server, fresh, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["dicomweb", "explain", *UIDS, "--server", pacs_server, "--outputs", "dicom-pm,dicom-seg",
                 "--top-k", "1", "--store", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"instance {UIDS[2]}: gradcam on demo")
    assert lines[1].split() == ["index", "label", "score", "map"]
    received = [pydicom.dcmread(io.BytesIO(blob)) for blob in fresh.stored]
    assert sorted(str(ds.SOPClassUID) for ds in received) == sorted([PM, SEG])
    uids = [str(ds.SOPInstanceUID) for ds in received]
    assert lines[-3:] == ["stored 2 object(s) in the PACS (SOP Instance UIDs):", *(f"  {uid}" for uid in uids)]
    index = lines[2].split()[0]
    written = {path.name: pydicom.dcmread(path) for path in out.iterdir()}
    assert sorted(written) == [f"pm-{index}.dcm", f"seg-{index}.dcm"]
    assert {str(ds.SOPInstanceUID) for ds in written.values()} == set(uids)  # the very objects the PACS holds
    assert str(written[f"pm-{index}.dcm"].SOPClassUID) == PM
    assert f"wrote {out / f'pm-{index}.dcm'}" in captured.err


def test_localize_without_store_sends_nothing_back(pacs_server, fresh, capsys):
    assert main(["dicomweb", "localize", *UIDS, "--server", pacs_server, "--threshold", "0.3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # the method is the model's calibrated one
    assert re.match(rf"instance {UIDS[2]}: [a-z-]+ boxes on demo \(threshold 0\.3\), 128x128$", lines[0]), lines[0]
    assert lines[-1] == "stored nothing in the PACS (add --store)"
    assert fresh.stored == []

    assert main(["dicomweb", "localize", *UIDS, "--server", pacs_server, "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["stored"] == [] and "boxes" in body
    assert str(pydicom.dcmread(io.BytesIO(base64.b64decode(body["dicom"]["sr"]))).SOPClassUID) == SR


@pytest.mark.parametrize(("mode", "status"), [("missing", "404"), ("broken", "502"), ("store-fails", "502")])
def test_pacs_failures_are_the_problem_on_stderr_and_exit_1(pacs_server, fresh, mode, status, capsys):
    fresh.mode = mode
    assert main(["dicomweb", "explain", *UIDS, "--server", pacs_server, "--store", "--retries", "0"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"xaas: {status} ")
    assert "PACS" in captured.err or "instance" in captured.err


def test_request_connection_and_usage_errors(pacs_server, fresh, tmp_path, capsys):
    assert main(["dicomweb", "explain", "1.2", "1..3", "1.2.3", "--server", pacs_server]) == 1
    assert capsys.readouterr().err.startswith("xaas: 400 ")  # a malformed UID, refused before any PACS request
    assert main(["dicomweb", "localize", *UIDS, "--server", pacs_server, "--outputs", "dicom-pm"]) == 1
    assert capsys.readouterr().err.startswith("xaas: 422 ")  # localize makes only the SR
    assert main(["dicomweb", "explain", *UIDS, "--server", f"http://127.0.0.1:{closed_port()}",
                 "--retries", "0"]) == 3
    assert capsys.readouterr().err.startswith("xaas: cannot connect")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert main(["dicomweb", "explain", *UIDS, "--server", pacs_server, "--out", str(not_a_folder)]) == 2
    assert "--out must be a folder" in capsys.readouterr().err
    for argv in (["dicomweb", "explain", "1.2", "1.2.3"], ["dicomweb", "predict", *UIDS],
                 ["dicomweb", "explain", *UIDS, "--outputs", ","]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert fresh.stored == []


def test_the_xaas_alias_runs_the_same_command(pacs_server, fresh, capsys):
    assert xaas_main(["dicomweb", "localize", *UIDS, "--server", pacs_server]) == 0
    assert re.match(rf"instance {UIDS[2]}: [a-z-]+ boxes on demo", capsys.readouterr().out)


def test_without_a_pacs_configured_the_command_says_so(tmp_path, capsys):
    with running_server(env={"XAAS_DEVICE": "cpu"}) as server:
        assert main(["dicomweb", "explain", *UIDS, "--server", server.url, "--retries", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("xaas: 503 ") and "XAAS_DICOMWEB_URL" in err
