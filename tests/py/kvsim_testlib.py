"""Shared helpers for kvsim's Python tests (run with Debian's /usr/bin/python3)."""
import argparse
import subprocess
import sys
import tempfile
import traceback


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvsim", required=True, help="path to the kvsim executable")
    return ap.parse_args()


# ctest's SKIP_RETURN_CODE for every py.* test (tests/CMakeLists.txt): a script that cannot run here
# (no ../shared/models, no MPI) says why and exits with it; ctest reports it as Skipped, not Passed.
SKIP_RETURN_CODE = 77


def skip(why):
    print(f"skipped: {why}")
    sys.exit(SKIP_RETURN_CODE)


def sanitized(kvsim):
    """Whether the kvsim binary is built with AddressSanitizer (KVSIM_SANITIZE=address,...): its
    allocator reserves terabytes of shadow address space and aborts, rather than failing the
    allocation, under an address-space or data limit, so memory-limit checks must use its own options."""
    with open(kvsim, "rb") as f:
        return b"__asan_init" in f.read()


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def check_usage_error(r, needle, args=()):
    """A refused bad input: exit code 2, one line on stderr that contains `needle`, nothing on stdout."""
    assert r.returncode == 2, (list(args), r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr, (needle, r.stderr)
    assert r.stdout == "", r.stdout


def one_line_error(r, *needles, code=2):
    """Exit code `code`, exactly one line on stderr, containing every needle."""
    assert r.returncode == code, (r.returncode, r.stderr)
    assert r.stderr.count("\n") == 1, f"expected one line, got: {r.stderr!r}"
    for n in needles:
        assert n in r.stderr, f"{n!r} not in {r.stderr!r}"


class Suite:
    """A tiny runner: each check is a function; prints 'N passed, N failed' at the end."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, fn):
        try:
            fn()
            self.passed += 1
            print(f"ok    {name}")
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            self.failed += 1
            print(f"FAIL  {name}: {e}")
            traceback.print_exc(file=sys.stdout)

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        sys.exit(1 if self.failed else 0)


def tempdir():
    return tempfile.TemporaryDirectory(prefix="kvsim-py-")
