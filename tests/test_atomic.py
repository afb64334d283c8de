"""Atomic files and locked JSON updates: concurrent writers lose nothing and never collide."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys

import pytest

from bcc_utils.atomic import _host, atomic_path, remove_stale_temps, temp_name, update_json, write_json


def _append_many(path: str, who: int, n: int) -> None:
    for i in range(n):
        update_json(path, lambda d: d.setdefault("records", []).append(f"{who}-{i}"))


def test_concurrent_updates_of_one_json_lose_no_record(tmp_path):
    """Four processes append 25 records each to one file (as parallel ``ablate`` invocations do)."""
    path = tmp_path / "ablation.json"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = json.loads(path.read_text())["records"]
    assert sorted(records) == sorted(f"{w}-{i}" for w in range(4) for i in range(25))
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".bcc-tmp")]


def test_temporary_names_are_unique_per_writer(tmp_path):
    names = {temp_name(tmp_path / "a.json") for _ in range(100)}
    assert len(names) == 100 and all(n.name.startswith(".a.json.") for n in names)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json({"ok": 1}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["metrics.json"]


def test_nan_is_not_written_as_a_result(tmp_path):
    with pytest.raises(ValueError):
        write_json({"accuracy": float("nan")}, tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_stale_temporaries_of_dead_processes_only_are_removed(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    host = _host()
    ours_dead = tmp_path / f".cache.u8.{host}.{dead}.deadbeef.bcc-tmp"
    ours_alive = tmp_path / f".cache.u8.{host}.{os.getpid()}.deadbeef.bcc-tmp"
    foreign = tmp_path / ".cache.u8.tmp-123"
    for f in (ours_dead, ours_alive, foreign):
        f.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [ours_dead]
    assert ours_alive.exists() and foreign.exists()


def test_another_machines_temporaries_are_left_alone(tmp_path):
    """On a shared folder a PID means nothing on another host: its temporaries may be alive."""
    other = tmp_path / ".cache.u8.other-host.999999.deadbeef.bcc-tmp"
    other.write_bytes(b"x")
    mine = temp_name(tmp_path / "cache.u8")
    assert mine.name.count(".") >= 5  # .name.host.pid.token.bcc-tmp
    assert remove_stale_temps(tmp_path) == [] and other.exists()


def test_a_temporary_that_vanished_is_an_error_not_a_silent_success(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(FileNotFoundError, match="not written or has disappeared"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            tmp.unlink()  # e.g. removed by a cleaner that thought its writer dead
    assert not target.exists()


def test_two_takeovers_of_one_dead_claim_give_one_winner(tmp_path):
    import socket
    import threading

    from bcc_utils.atomic import try_claim

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    wins = []
    for _ in range(20):
        claim = tmp_path / "run.claim"
        claim.write_text(json.dumps({"host": socket.gethostname(), "pid": dead}))
        results = []
        threads = [threading.Thread(target=lambda: results.append(try_claim(claim))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wins.append(sum(results))
        claim.unlink()
    assert wins == [1] * 20
