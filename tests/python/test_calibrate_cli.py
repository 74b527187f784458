"""`sparseserve calibrate` end to end on a tiny setting: both scoring methods (ablation, the
default, and output-change) write a 30 x 3 head pattern TSV whose largest gate is 1 (gates are
scores normalized by the largest), ablation reports per-layer progress, and an unknown --method is
rejected with a clear message and a non-zero exit. A window of sink 64 + local 176 on 256-token
prompts leaves only the last ~20 rows outside the band, so the ablation (one resumed pass per head
over those rows) takes seconds."""
import subprocess


def calibrate(tool, model_path, out, *extra):
    return subprocess.run([str(tool("sparseserve")), "calibrate", "--model", str(model_path), "--out", str(out),
                           "--prompts", "1", "--context", "256", "--sink", "64", "--local", "176", *extra],
                          capture_output=True, text=True, timeout=600)


def read_gates(path):
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    return [[float(x) for x in row] for row in rows]


def test_calibrate_methods_write_gates(tool, model_path, tmp_path):
    for method in ("ablation", "output-change"):
        out = tmp_path / f"{method}.tsv"
        # ablation is the default method
        r = calibrate(tool, model_path, out, *(["--method", method] if method != "ablation" else []))
        assert r.returncode == 0, r.stderr + r.stdout
        log = r.stdout + r.stderr
        assert f"by {method}" in log
        assert ("layer 30/30" not in log) and (("layer 1/30 scored" in log) == (method == "ablation")), log
        gates = read_gates(out)
        assert len(gates) == 30 and all(len(row) == 3 for row in gates)
        flat = [g for row in gates for g in row]
        assert all(0.0 <= g <= 1.0 for g in flat)
        assert max(flat) == 1.0
        assert len(set(flat)) > 10  # a ranking, not a constant


def test_calibrate_rejects_unknown_method(tool, model_path, tmp_path):
    out = tmp_path / "x.tsv"
    r = calibrate(tool, model_path, out, "--method", "kl")
    assert r.returncode != 0
    assert "--method" in r.stderr + r.stdout and "ablation" in r.stderr + r.stdout
    assert not out.exists()


def test_calibrate_checks_out_and_needles_before_working(tool, model_path, tmp_path):
    # Both were reported only after the whole calibration (minutes with ablation); now at once.
    cases = [
        (tmp_path, ["--method", "output-change"], "is a folder"),
        (tmp_path / "no" / "such" / "x.tsv", [], "--out: cannot write (creating"),
        (tmp_path / "x.tsv", ["--needles", "2147483647"], "--needles: must be in [1, --context / 8]"),
        (tmp_path / "x.tsv", ["--needles", "0"], "--needles"),
    ]
    # The --out check writes a file of a new name, never an existing one (it once truncated <out>.tmp).
    (tmp_path / "x.tsv.tmp").write_text("keep")
    for out, extra, message in cases:
        r = calibrate(tool, model_path, out, *extra)
        assert r.returncode == 1, (out, extra, r.stderr)
        assert message in r.stderr + r.stdout, (out, extra, r.stderr)
        assert "calibrating" not in r.stderr + r.stdout  # refused before the model loaded
    assert (tmp_path / "x.tsv.tmp").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tsv.tmp"]


def test_calibrate_refuses_a_window_as_long_as_the_prompts(tool, model_path, tmp_path):
    # sink 64 + local 192 = the whole 256-token prompt: every band is dense attention and every score
    # ~0; it once wrote gates normalised from rounding noise (output-change) or all zeros (ablation).
    out = tmp_path / "x.tsv"
    r = subprocess.run([str(tool("sparseserve")), "calibrate", "--model", str(model_path), "--out", str(out),
                        "--prompts", "1", "--context", "256", "--sink", "64", "--local", "192"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr
    assert "--local: the streaming window (sink 64 + local 192 tokens) must be shorter" in r.stderr + r.stdout
    assert "calibrating" not in r.stderr + r.stdout and not out.exists()


def test_calibrate_haystack_makes_the_result_the_same_on_any_host(tool, model_path, tmp_path):
    # The default haystack is this host's /usr/share/common-licenses (other systems: other prompts,
    # other gates); --haystack FILE pins it: same file and seed, same TSV; another text, other gates.
    words = "river stone lantern orchard copper meadow harbour violin quiet thunder".split()
    a = tmp_path / "a.txt"
    a.write_text(" ".join(words[(i * 7) % 10] for i in range(3000)) + ".")
    b = tmp_path / "b.txt"
    b.write_text("The town council met on a quiet evening to discuss the old bridge. " * 60)
    outs = []
    for name, hay in (("a1", a), ("a2", a), ("b", b)):
        out = tmp_path / f"{name}.tsv"
        r = calibrate(tool, model_path, out, "--method", "output-change", "--haystack", hay)
        assert r.returncode == 0, r.stderr
        assert f"haystack {hay}, {hay.stat().st_size} bytes" in r.stderr + r.stdout
        outs.append(out.read_text())
    assert outs[0] == outs[1] and outs[0] != outs[2]
    short = tmp_path / "short.txt"
    short.write_text("too short")
    r = calibrate(tool, model_path, tmp_path / "x.tsv", "--haystack", short)
    assert r.returncode == 1 and "--haystack: " in r.stderr and "at least 1024 are needed" in r.stderr, r.stderr
    assert "] loaded " not in r.stderr
