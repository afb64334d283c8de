"""``bench gpu``: refuses clearly without CUDA; its steps run (on the CPU here) and give a complete report."""

from __future__ import annotations

import json

import pytest
import torch

from bcc_utils.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_it_says_so_in_one_line(data_dir, capsys):
    assert main(["bench", "gpu", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and len(err.strip().splitlines()) == 1


def test_the_same_steps_run_on_the_cpu_and_report_both_limits(data_dir, tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--device", "cpu", "--data-dir", str(data_dir), "--models", "mobilenetv3_small_050",
                 "--img-size", "48", "--steps", "2", "--batch-size", "4", "--batches", "3", "--workers", "0",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    (m,) = r["models"]
    assert m["model"] == "mobilenetv3_small_050" and m["train_img_per_s"] > 0 and m["amp"] == "off"
    assert r["loader"][0]["workers"] == 0 and r["loader"][0]["cached_img_per_s"] > 0
    assert r["limits"]["mobilenetv3_small_050"] in ("model", "data loader")
    assert "an epoch is limited by" in capsys.readouterr().out
