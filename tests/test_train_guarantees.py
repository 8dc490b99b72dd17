"""What a run guarantees about its output dir and its inputs: ownership, fastmae's own files only,
no leftovers after a kill, a schedule that trains something, one-line errors for user mistakes."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fastmae.cli import main as cli_main
from fastmae.train import checkpoint as ckpt
from fastmae.train.pretrain import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "mae_vit_test", "--batch_size", "4", "--epochs", "2", "--warmup_epochs", "1", "--blr", "1e-2",
        "--log_every", "2", "--no_progress", "--device", "cpu", "--num_workers", "0",
        "--loader", "synthetic", "--synthetic_size", "16"]  # 4 optimizer steps per epoch


def run(out: Path, *flags: str) -> int:
    return main([*TINY, "--output_dir", str(out), *flags])


def epochs_logged(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()]


# ------------------------------------------------------------------ 1. a run owns its output dir
def test_second_run_on_a_busy_output_dir_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from fastmae.train.lock import OutputDirLock
            with OutputDirLock({str(out)!r}):
                print("locked", flush=True)
                time.sleep(120)
        """)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run(out, "--max_steps", "1") == 2
        error = capsys.readouterr().err
        assert f"pid {holder.pid}" in error and socket.gethostname() in error and "--output_dir" in error
        assert not ckpt.list_checkpoints(out) and not (out / "log.txt").exists()  # nothing of the other run touched
    finally:
        holder.kill()
        holder.wait()
    assert run(out, "--max_steps", "1") == 0  # the holder was killed (-9): its lock is stale, the dir is free


def test_stale_lock_file_of_a_killed_run_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".fastmae.lock").write_text(json.dumps({"pid": 999999, "host": socket.gethostname(), "started": 0}))
    assert run(out, "--max_steps", "1") == 0
    assert "stale lock" in capsys.readouterr().out


# ------------------------------------------------------------------ 2. only fastmae's own files
def test_foreign_files_with_a_checkpoint_like_name_are_never_pruned_or_resumed(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    backup = out / "my_backup_checkpoint-00000001.pth"
    torch.save({"mine": torch.ones(2)}, backup)
    lookalike = out / "before-lr-change.checkpoint-00000500.pth"
    torch.save({"model": {}, "epoch": 99}, lookalike)
    foreign_exact = out / "checkpoint-00000900.pth"  # the exact name, but not a fastmae file
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 3}, foreign_exact)
    assert run(out, "--max_steps", "4", "--save_every", "1", "--keep_last", "1") == 0
    assert backup.exists() and lookalike.exists() and foreign_exact.exists()
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-00000004.pth"]
    assert run(out, "--max_steps", "6", "--save_every", "1", "--keep_last", "1", "--resume", "auto") == 0
    assert torch.load(ckpt.list_checkpoints(out)[-1], weights_only=True)["global_step"] == 6
    assert backup.exists() and lookalike.exists() and foreign_exact.exists()


# ------------------------------------------------------------------ 3. nothing left behind by a kill
def test_temporaries_of_a_killed_save_are_removed(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    leftovers = [out / ".checkpoint-00000004.pth.tmp-4242", out / ".encoder.pth.tmp-77"]
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    keep = out / ".my-notes.tmp-1"  # not one of ours
    keep.write_text("x")
    assert run(out, "--max_steps", "1") == 0
    assert not any(p.exists() for p in leftovers) and keep.exists()


def test_kill_during_an_epoch_end_save_logs_that_epoch_once(tmp_path):
    out = tmp_path / "run"
    assert run(out, "--keep_last", "3") == 0  # checkpoints at the ends of epochs 0 and 1
    assert epochs_logged(out) == [0, 1]
    # a kill -9 inside the epoch-1 save: log.txt has epoch 1, the checkpoint never reached its name
    ckpt.list_checkpoints(out)[-1].unlink()
    assert run(out, "--keep_last", "3", "--resume", "auto") == 0
    assert epochs_logged(out) == [0, 1]


# ------------------------------------------------------------------ 4. a schedule that trains nothing
@pytest.mark.parametrize("flags, match", [
    (["--start_epoch", "5", "--epochs", "1"], "--start_epoch 5"),
    (["--epochs", "3", "--start_epoch", "1", "--max_steps", "4"], "--max_steps 4"),
])
def test_a_schedule_that_trains_nothing_is_an_error(tmp_path, capsys, flags, match):
    out = tmp_path / "run"
    assert run(out, *flags) == 2
    error = capsys.readouterr().err
    assert match in error and "trains nothing" in error
    assert not (out / "encoder.pth").exists() and not ckpt.list_checkpoints(out)


# ------------------------------------------------------------------ 9. one line for a user's mistake
def one_line_error(capsys, argv: list[str]) -> str:
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_corrupt_foreign_and_mismatched_checkpoints_end_in_one_line(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    foreign = tmp_path / "foreign.pth"
    torch.save(torch.ones(3), foreign)
    other = tmp_path / "other"
    assert run(other, "--max_steps", "1") == 0
    theirs = ckpt.list_checkpoints(other)[-1]
    base = ["pretrain", *TINY]
    for flag, path in (("--resume", corrupt), ("--init_from", corrupt), ("--init_from", foreign)):
        line = one_line_error(capsys, [*base, flag, str(path), "--output_dir", str(tmp_path / "o")])
        assert str(path) in line
    # another input size now loads (the sin-cos tables are rebuilt); another width cannot
    wider = [a if a != "mae_vit_test" else "mae_vit_tiny" for a in base]
    line = one_line_error(capsys, [*wider, "--init_from", str(theirs), "--output_dir", str(tmp_path / "o")])
    assert line.startswith(f"fastmae pretrain: error: --init_from {theirs.parent}"), line
    line = one_line_error(capsys, ["visualize", "--checkpoint", str(corrupt), "--images", str(tmp_path)])
    assert str(corrupt) in line


def test_undecodable_images_and_read_only_output_dir_end_in_one_line(tmp_path, capsys):
    images = tmp_path / "images" / "class_a"
    images.mkdir(parents=True)
    for i in range(4):
        (images / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 20)
    line = one_line_error(capsys, ["pretrain", *TINY[:-4], "--loader", "torch", "--data_path",
                                   str(tmp_path / "images"), "--output_dir", str(tmp_path / "o")])
    assert "bad" in line and "scan-dataset" in line
    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("x")
    line = one_line_error(capsys, ["pretrain", *TINY, "--output_dir", str(not_a_folder / "out")])
    assert str(not_a_folder / "out") in line and "writable --output_dir" in line
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions: the read-only case needs another user")
    locked = tmp_path / "read_only"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = one_line_error(capsys, ["pretrain", *TINY, "--max_steps", "1", "--output_dir", str(locked)])
        assert str(locked) in line
    finally:
        locked.chmod(0o700)


def test_a_real_bug_still_shows_its_traceback(monkeypatch, capsys):
    import fastmae.info

    def broken(argv):
        raise KeyError("a bug")

    monkeypatch.setattr(fastmae.info, "main", broken)
    with pytest.raises(KeyError):
        cli_main(["info"])
    monkeypatch.setattr(fastmae.info, "main", lambda argv: (_ for _ in ()).throw(OSError(5, "I/O error", "f.bin")))
    assert cli_main(["info"]) == 2
    assert "f.bin" in capsys.readouterr().err
    monkeypatch.setenv("FASTMAE_DEBUG", "1")
    with pytest.raises(OSError):
        cli_main(["info"])
    monkeypatch.delenv("FASTMAE_DEBUG")
    with pytest.raises(OSError):
        cli_main(["--verbose", "info"])
