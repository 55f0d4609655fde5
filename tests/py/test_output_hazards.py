"""Outputs never clobber what is already there (issue 20, items 10 to 14).

- Two writers on one --out (synth; the second started while the first writes, with or without
  --force, and both started at once): exactly one succeeds, the other exits 2 with one line, and the
  trace written equals an uninterrupted write's tensor for tensor.
- A symbolic link (dangling or not) or a hard link planted at NAME.h5.partial is refused with exit 2;
  the link's target keeps its bytes and NAME.h5 is not created. A plain partial left by a killed
  writer is taken over.
- plot --name with a directory (../x, an absolute path) exits 2 and writes nothing anywhere.
- convert into an existing non-empty directory exits 2 and leaves it as it was; --force replaces
  config.json and model.safetensors (equal to a conversion into a fresh directory) and replaces a
  link planted at config.json instead of writing through it; the input model's own directory is
  refused even with --force.
- A results store that cannot be written (the file and its folder a-w, run as an unprivileged user
  when this test runs as root, since root writes through a-w): best and plot read it and succeed;
  the store's bytes are unchanged.
Run: /usr/bin/python3 tests/py/test_output_hazards.py --kvsim build/kvsim"""
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvsim_testlib import Suite, parse_args, run, tempdir  # noqa: E402
from test_model_errors import tiny_llama2c  # noqa: E402


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def one_line_error(r, needle):
    err = r.stderr.rstrip("\n")
    assert r.returncode == 2, f"exit {r.returncode}, expected 2: {r.stderr}"
    assert err.count("\n") == 0, f"not one line: {r.stderr!r}"
    assert needle in err, f"{needle!r} not in {err!r}"


def same_tensors(path, reference):
    import h5py
    import numpy as np
    with h5py.File(path, "r") as a, h5py.File(reference, "r") as b:
        assert a.attrs["complete"] == 1
        n = 0
        for name, seq in b["sequences"].items():
            for l, layer in seq["layers"].items():
                for kind, ds in layer.items():
                    assert np.array_equal(a[f"sequences/{name}/layers/{l}/{kind}"][...], ds[...]), (name, l, kind)
                    n += 1
        assert n > 0


def wait_for(path, seconds=30.0):
    t0 = time.monotonic()
    while not os.path.lexists(path):
        if time.monotonic() - t0 > seconds:
            raise AssertionError(f"{path} did not appear within {seconds} s")
        time.sleep(0.005)


def writers(s, k, d):
    # About a second of writing on this machine (test_writer_kill.py uses the same command).
    synth = [k, "synth", "--shape", "llama3-8b", "--layers", "4", "--tokens", "512", "--seed", "3", "--quiet"]
    ref = os.path.join(d, "ref.h5")
    assert run(synth + ["--out", ref]).returncode == 0

    def second_while_first_writes(force):
        out = os.path.join(d, f"two{int(force)}.h5")
        first = subprocess.Popen(synth + ["--out", out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(out + ".partial")
        second = run(synth + ["--out", out] + (["--force"] if force else []))
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, f"the first writer failed: {err}"
        one_line_error(second, "another writer is writing this trace")
        assert out + ".partial" in second.stderr
        same_tensors(out, ref)
        assert not os.path.lexists(out + ".partial")
        assert run([k, "info", out, "--check"]).returncode == 0
    s.check("writers: a second writer while the first writes: refused, the first's trace intact",
            lambda: second_while_first_writes(False))
    s.check("writers: a second writer with --force while the first writes: refused, the first's trace intact",
            lambda: second_while_first_writes(True))

    def both_at_once():
        for i in range(3):
            out = os.path.join(d, f"race{i}.h5")
            ps = [subprocess.Popen(synth + ["--out", out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True) for _ in range(2)]
            res = [(p.wait(timeout=120), p.stderr.read()) for p in ps]
            codes = sorted(rc for rc, _ in res)
            assert codes == [0, 2], res
            loser = [e for rc, e in res if rc == 2][0]
            assert loser.count("\n") == 1 and ("another writer" in loser or "already exists" in loser), loser
            same_tensors(out, ref)
            assert not os.path.lexists(out + ".partial")
    s.check("writers: two started at once: one writes, the other exits 2, the trace intact", both_at_once)


def planted_partials(s, k, d):
    tiny = [k, "synth", "--shape", "tiny", "--tokens", "64", "--seed", "1", "--quiet"]
    precious = os.path.join(d, "precious.bin")
    with open(precious, "wb") as f:
        f.write(b"not a trace, and must stay so\n" * 100)
    before = digest(precious)

    def symlink_partial():
        out = os.path.join(d, "sym.h5")
        os.symlink(precious, out + ".partial")
        r = run(tiny + ["--out", out])
        one_line_error(r, "is a symbolic link")
        assert out + ".partial" in r.stderr
        assert digest(precious) == before, "the link's target changed"
        assert not os.path.lexists(out), "NAME.h5 was created"
        assert os.path.islink(out + ".partial")
        r = run(tiny + ["--out", out, "--force"])
        one_line_error(r, "is a symbolic link")
        assert digest(precious) == before
    s.check("partial: a symlink at NAME.h5.partial is refused, its target unchanged", symlink_partial)

    def dangling_symlink_partial():
        out = os.path.join(d, "dangling.h5")
        target = os.path.join(d, "would-be-created.h5")
        os.symlink(target, out + ".partial")
        one_line_error(run(tiny + ["--out", out]), "is a symbolic link")
        assert not os.path.lexists(target), "the link's target was created"
        assert not os.path.lexists(out)
    s.check("partial: a dangling symlink at NAME.h5.partial creates nothing", dangling_symlink_partial)

    def hardlink_partial():
        out = os.path.join(d, "hard.h5")
        os.link(precious, out + ".partial")
        one_line_error(run(tiny + ["--out", out]), "hard links")
        assert digest(precious) == before
        assert not os.path.lexists(out)
    s.check("partial: a hard link at NAME.h5.partial is refused, the other name's bytes unchanged", hardlink_partial)

    def stale_partial_taken_over():
        out = os.path.join(d, "stale.h5")
        with open(out + ".partial", "wb") as f:
            f.write(b"\x89HDF leftovers of a killed writer" * 50)
        r = run(tiny + ["--out", out])
        assert r.returncode == 0, r.stderr
        assert not os.path.lexists(out + ".partial")
        assert run([k, "info", out, "--check"]).returncode == 0
    s.check("partial: a plain partial left by a killed writer is taken over", stale_partial_taken_over)


def plot_names(s, k, d):
    out = os.path.join(d, "figs", "inner")
    os.makedirs(out)
    for name, escapes in (("../escaped", os.path.join(d, "figs", "escaped")),
                          ("../../escaped2", os.path.join(d, "escaped2")),
                          (os.path.join(d, "absolute"), os.path.join(d, "absolute")),
                          ("sub/x", os.path.join(out, "sub", "x")),
                          ("", os.path.join(out, ""))):
        def refused(name=name, escapes=escapes):
            r = run([k, "plot", "memory", "--out", out, "--name", name, "--format", "png", "--quiet"])
            assert r.returncode == 2, f"exit {r.returncode}: {r.stderr}"
            assert r.stderr.count("\n") == 1 and "--name" in r.stderr, r.stderr
            for ext in ("png", "pdf", "csv"):
                assert not os.path.lexists(f"{escapes}.{ext}"), f"{escapes}.{ext} written"
            assert os.listdir(out) == [], os.listdir(out)
        s.check(f"plot: --name {name!r} is refused, nothing written", refused)


def convert(s, k, d):
    model = os.path.join(d, "tiny.bin")
    tiny_llama2c(model)
    fresh = os.path.join(d, "fresh")
    r = run([k, "convert", "--model", model, "--out", fresh, "--quiet"])
    assert r.returncode == 0, r.stderr
    want = {n: digest(os.path.join(fresh, n)) for n in ("config.json", "model.safetensors")}

    def snapshot(folder):
        return {n: (os.path.islink(os.path.join(folder, n)), digest(os.path.join(folder, n)))
                for n in sorted(os.listdir(folder))}

    def existing_without_force():
        for i, names in enumerate((["notes.txt"], ["config.json", "model.safetensors"])):
            out = os.path.join(d, f"existing{i}")
            os.makedirs(out)
            for n in names:
                with open(os.path.join(out, n), "w") as f:
                    f.write(f"the user's own {n}\n")
            before = snapshot(out)
            one_line_error(run([k, "convert", "--model", model, "--out", out]), "--force")
            assert snapshot(out) == before, "the existing directory changed"
    s.check("convert: into an existing non-empty directory without --force: refused, unchanged",
            existing_without_force)

    def empty_dir_ok():
        out = os.path.join(d, "empty")
        os.makedirs(out)
        r = run([k, "convert", "--model", model, "--out", out, "--quiet"])
        assert r.returncode == 0, r.stderr
        assert {n: digest(os.path.join(out, n)) for n in want} == want
    s.check("convert: into an empty directory: written", empty_dir_ok)

    def force_replaces_and_never_writes_through_links():
        out = os.path.join(d, "forced")
        shutil.copytree(fresh, out)
        victim = os.path.join(d, "victim.json")
        with open(victim, "w") as f:
            f.write('{"keep": "me"}\n')
        v = digest(victim)
        os.remove(os.path.join(out, "config.json"))
        os.symlink(victim, os.path.join(out, "config.json"))
        os.symlink(victim, os.path.join(out, "model.safetensors.partial"))
        with open(os.path.join(out, "model.safetensors"), "wb") as f:
            f.write(b"old weights")
        r = run([k, "convert", "--model", model, "--out", out, "--force", "--quiet"])
        assert r.returncode == 0, r.stderr
        assert digest(victim) == v, "convert wrote through a link"
        for n in want:
            assert not os.path.islink(os.path.join(out, n)) and digest(os.path.join(out, n)) == want[n], n
        assert not os.path.lexists(os.path.join(out, "model.safetensors.partial"))
        g = run([k, "generate", "--model", out, "--ids", "--prompt", "1 5 7", "--steps", "2", "--quiet"])
        assert g.returncode == 0, g.stderr
    s.check("convert --force: replaces the model, never writes through a planted link",
            force_replaces_and_never_writes_through_links)

    def own_directory():
        before = snapshot(fresh)
        one_line_error(run([k, "convert", "--model", fresh, "--out", fresh, "--force"]), "directory of the input")
        assert snapshot(fresh) == before
        folder = os.path.join(d, "bin_dir")
        os.makedirs(folder)
        shutil.copy(model, os.path.join(folder, "m.bin"))
        with open(os.path.join(folder, "tokenizer.bin"), "wb") as f:
            f.write(b"a tokenizer")
        before = snapshot(folder)
        one_line_error(run([k, "convert", "--model", os.path.join(folder, "m.bin"), "--out", folder, "--force"]),
                       "directory of the input")
        assert snapshot(folder) == before
    s.check("convert --force: the input model's own directory is refused, unchanged", own_directory)

    def out_is_a_file():
        f = os.path.join(d, "plainfile")
        with open(f, "w") as fh:
            fh.write("x\n")
        one_line_error(run([k, "convert", "--model", model, "--out", f]), "not a directory")
        with open(f) as fh:
            assert fh.read() == "x\n"
    s.check("convert: --out naming a file: refused, unchanged", out_is_a_file)


def read_only_store(s, k, d):
    trace = os.path.join(d, "t.h5")
    assert run([k, "synth", "--shape", "tiny", "--tokens", "96", "--seed", "2", "--out", trace, "--quiet"]).returncode == 0
    folder = os.path.join(d, "ro")
    os.makedirs(folder)
    db = os.path.join(folder, "s.db")
    for spec in ("window:budget=16", "window:budget=48"):
        r = run([k, "run", "--trace", trace, "--strategy", spec, "--db", db, "--stats-cache", "off"])
        assert r.returncode == 0, r.stderr
    figs = os.path.join(d, "ro_figs")
    os.makedirs(figs)
    os.chmod(figs, 0o777)
    os.chmod(db, 0o444)
    os.chmod(folder, 0o555)
    os.chmod(d, 0o755)  # the unprivileged user below must reach the store
    as_user = []
    if os.geteuid() == 0:  # root writes through a-w: read as nobody, who cannot
        if not shutil.which("setpriv"):
            print("note: running as root without setpriv: the store is read-only only by its mode bits")
        else:
            as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
            probe = run(as_user + [k, "--version"])
            assert probe.returncode == 0, f"{k} cannot run as nobody: {probe.stderr}"
    before = digest(db)
    env = dict(os.environ, MPLCONFIGDIR=figs, HOME=figs)
    plots = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "plots")
    if as_user and run(as_user + ["test", "-r", os.path.join(plots, "kvsim_plot.py")]).returncode != 0:
        # a checkout nobody cannot read (a private temporary clone): the plot scripts from a copy nobody can
        shutil.copytree(plots, os.path.join(d, "plots"))
        env["KVSIM_PLOTS_DIR"] = os.path.join(d, "plots")

    def best_reads():
        r = run(as_user + [k, "best", "--db", db, "--metric", "mass", "--max-ratio", "0.9"], env=env)
        assert r.returncode == 0, f"exit {r.returncode}: {r.stderr}"
        assert "window" in r.stdout, r.stdout
        assert digest(db) == before
        assert sorted(os.listdir(folder)) == ["s.db"], os.listdir(folder)
    s.check("read-only store: best reads it", best_reads)

    def plot_reads():
        r = run(as_user + [k, "plot", "pareto", "--db", db, "--out", figs, "--format", "png", "--metric", "mass",
                           "--quiet"], env=env)
        assert r.returncode == 0, f"exit {r.returncode}: {r.stderr}"
        assert os.path.exists(os.path.join(figs, "pareto.png"))
        assert digest(db) == before
    s.check("read-only store: plot reads it", plot_reads)

    def sweep_still_refused_in_one_line():
        r = run(as_user + [k, "run", "--trace", trace, "--strategy", "full", "--db", db, "--stats-cache", "off"],
                env=env)
        if as_user or os.geteuid() != 0:
            assert r.returncode in (1, 2) and r.stderr.count("\n") == 1, r.stderr
        assert digest(db) == before
    s.check("read-only store: a writing command fails in one line, the store unchanged",
            sweep_still_refused_in_one_line)
    os.chmod(folder, 0o755)


def main():
    args = parse_args()
    k = os.path.abspath(args.kvsim)
    s = Suite()
    with tempdir() as d:
        writers(s, k, d)
        planted_partials(s, k, d)
        plot_names(s, k, d)
        convert(s, k, d)
        read_only_store(s, k, d)
        for root, dirs, _ in os.walk(d):
            for x in dirs:
                os.chmod(os.path.join(root, x), stat.S_IRWXU)
    s.finish()


if __name__ == "__main__":
    main()
