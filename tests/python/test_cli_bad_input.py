"""Bad command lines and files: each is refused at once with a clear one-line error naming the option
or file and exit status 1 (CLI11's own parse errors keep its codes), never "unexpected error" or a
hang. Nothing here loads a model for long or starts a server."""
import os
import subprocess


def run(tool, *args, timeout=60):
    return subprocess.run([str(tool("sparseserve")), *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=timeout)


def test_unknown_log_level_is_refused_not_silenced(tool, tmp_path):
    r = run(tool, "--log-level", "bogus", "info", "--model", tmp_path / "none.gguf")
    assert r.returncode != 0
    assert "--log-level" in r.stderr and "bogus" in r.stderr, r.stderr


def test_model_paths_the_os_cannot_look_up(tool, tmp_path):
    loop1, loop2 = tmp_path / "loop1", tmp_path / "loop2"
    os.symlink(loop2, loop1)
    os.symlink(loop1, loop2)
    for model in (tmp_path / ("a" * 300), loop1):
        r = run(tool, "info", "--model", model)
        assert r.returncode == 1, (model, r.returncode, r.stderr)
        assert "unexpected error" not in r.stderr and str(model) in r.stderr, r.stderr


def test_fifos_and_folders_are_refused_without_blocking(tool, tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    r = run(tool, "info", "--model", fifo, timeout=20)  # opening a FIFO for reading used to block forever
    assert r.returncode == 1 and "not a regular file" in r.stderr, r.stderr
    config_fifo = tmp_path / "server.yaml"
    os.mkfifo(config_fifo)
    for config, message in ((config_fifo, "not a regular file"), (tmp_path, "a folder, not a file")):
        r = run(tool, "serve", "--config", config, timeout=20)
        assert r.returncode == 1, (config, r.stderr)
        assert message in r.stderr and "unexpected error" not in r.stderr, r.stderr


def test_negative_seed_is_refused(tool, model_path):
    r = run(tool, "generate", "--model", model_path, "--prompt", "hi", "--max-tokens", "1", "--seed", "-1")
    assert r.returncode != 0 and "--seed" in r.stderr, r.stderr
