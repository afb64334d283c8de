"""``python -m bcc_utils audit | split | download`` on the real sample."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from bcc_utils.cli import main
from bcc_utils.data import audit, load_manifest

pytestmark = pytest.mark.filterwarnings("ignore::bcc_utils.data.locate.DataWarning")


def test_audit_command_prints_and_writes_json(data_dir, tmp_path, capsys):
    out = tmp_path / "reports" / "audit.json"
    assert main(["audit", str(data_dir), "--json", str(out)]) == 0
    printed, errors = capsys.readouterr()
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report == json.loads(json.dumps(audit(data_dir)))
    assert {"n_files", "n_images", "skipped", "class_counts", "size_counts", "duplicate_groups",
            "label_conflicts", "prefix_counts"} <= set(report)
    assert "label conflicts (identical files, different classes): 1" in printed
    assert f"decodable images: {report['n_images']}" in printed
    assert "warning:" in errors and ".DS_169665.jpg" in errors


def test_split_command_is_reproducible(data_dir, tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["split", str(data_dir), "--out", str(a)]) == 0
    printed = capsys.readouterr().out
    assert main(["split", str(data_dir), "--seed", "42", "--out", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    df = load_manifest(a)
    for label in ("basophil", "platelet"):
        row = next(line.split() for line in printed.splitlines() if line.startswith(label))
        n = [(df["label"] == label) & (df["split"] == s) for s in ("train", "val", "test")]
        assert [int(x) for x in row[1:]] == [int(m.sum()) for m in n] + [int((df["label"] == label).sum())]
    assert "neutrophil/BNE_191112.jpg: label conflict" in printed
    assert "basophil/BA_809918.jpg: duplicate of basophil/BA_20201.jpg" in printed
    assert "no image content occurs in two splits" in printed


def test_errors_are_one_line_messages(tmp_path, capsys, monkeypatch):
    assert main(["audit", str(tmp_path / "nowhere")]) == 2
    assert "error: " in capsys.readouterr().err
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/pbc.zip"  # nothing listens there: as if offline
    assert main(["download", "pbc", "--dest", str(tmp_path / "d"), "--url", url, "--retries", "0"]) == 2
    err = capsys.readouterr().err
    assert "error: Could not download the PBC archive" in err and "BCC_DATA_DIR=" in err
    assert "Traceback" not in err


def test_module_entry_point(data_dir):
    proc = subprocess.run([sys.executable, "-m", "bcc_utils", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("audit", "split", "download"):
        assert command in proc.stdout
