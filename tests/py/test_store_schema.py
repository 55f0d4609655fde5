"""The results store has one schema, sim/store/schema.sql: kvsim embeds it at build time and
plots/synth_store.py reads the file. A store made by `kvsim run --db` and one made by synth_store must
therefore agree table by table and column by column (names, types, keys, constraints, indexes, the
view), and carry the same meta schema and schema_version as plots/kvsim_store.py reads. A stale build
or a second copy of the schema creeping back into the Python side fails here.

Run as: /usr/bin/python3 tests/py/test_store_schema.py --kvsim PATH"""
import os
import sqlite3
import sys

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "plots"))

from kvsim_testlib import Suite, parse_args, run, tempdir  # noqa: E402
import kvsim_store  # noqa: E402
import synth_store  # noqa: E402


def describe(path):
    """Every schema object of a store: {name: {field: value}}, tables with their columns, foreign keys
    and indexes as SQLite reports them."""
    con = sqlite3.connect(path)
    out = {}
    for typ, name, tbl, sql in con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"):
        obj = {"type": typ, "table": tbl, "sql": sql}
        if typ == "table":
            obj["columns"] = con.execute(f"PRAGMA table_xinfo('{name}')").fetchall()
            obj["foreign_keys"] = con.execute(f"PRAGMA foreign_key_list('{name}')").fetchall()
            obj["indexes"] = [(row[1:], con.execute(f"PRAGMA index_xinfo('{row[1]}')").fetchall())
                              for row in con.execute(f"PRAGMA index_list('{name}')")]
        if typ == "view":
            obj["columns"] = con.execute(f"PRAGMA table_xinfo('{name}')").fetchall()
        out[name] = obj
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    con.close()
    return out, meta


def differences(a, b):
    """One line per schema object or field that differs between describe() results a and b."""
    lines = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            lines.append(f"{name}: only in the {'second' if name not in a else 'first'} store")
            continue
        for field in sorted(set(a[name]) | set(b[name])):
            if a[name].get(field) != b[name].get(field):
                lines.append(f"{name}.{field}: {a[name].get(field)!r} != {b[name].get(field)!r}")
    return lines


def main():
    args = parse_args()
    suite = Suite()
    with tempdir() as d:
        trace = os.path.join(d, "tiny.h5")
        r = run([args.kvsim, "synth", "--shape", "tiny", "--tokens", "40", "--seed", "1", "--out", trace, "--quiet"])
        assert r.returncode == 0, r.stderr
        real = os.path.join(d, "real.db")
        r = run([args.kvsim, "run", "--trace", trace, "--strategy", "h2o:budget=8", "--db", real, "--quiet",
                 "--stats-cache", "off"])
        assert r.returncode == 0, r.stderr
        synth_empty, synth_full = os.path.join(d, "synth-empty.db"), os.path.join(d, "synth.db")
        synth_store.build(synth_empty, empty=True)
        synth_store.build(synth_full, tokens=64, sequences=1)
        real_schema, real_meta = describe(real)

        def same_as_kvsim(path):
            def fn():
                schema, meta = describe(path)
                diff = differences(real_schema, schema)
                assert not diff, "kvsim's store vs synth_store's:\n  " + "\n  ".join(diff)
                for key in ("schema", "schema_version"):
                    got, want = meta.get(key), real_meta.get(key)
                    assert got == want, f"meta {key}: {got!r}, kvsim writes {want!r}"
            return fn

        def kvsim_wrote_the_schema():
            want = {"meta", "traces", "configs", "runs", "summaries", "curves", "results"}
            assert want <= set(real_schema), sorted(real_schema)
            cols = [c[1] for c in real_schema["runs"]["columns"]]
            assert cols[:3] == ["id", "config_id", "trace_id"] and "kvsim_version" in cols, cols
            n = sqlite3.connect(real).execute("SELECT count(*) FROM runs WHERE status = 'done'").fetchone()[0]
            assert n == 1, f"{n} done runs, expected 1"

        def versions_agree():
            assert real_meta.get("schema") == "kvsim-results", real_meta
            assert real_meta.get("schema_version") == kvsim_store.SCHEMA_VERSION, \
                f"kvsim writes schema_version {real_meta.get('schema_version')!r}, plots read " \
                f"{kvsim_store.SCHEMA_VERSION!r}"

        def comparison_sees_a_changed_column():
            # The comparison itself: one column type changed in a copy of the schema is reported.
            changed = os.path.join(d, "changed.db")
            con = sqlite3.connect(changed)
            con.executescript(synth_store.schema().replace("head_dim INTEGER", "head_dim REAL"))
            con.close()
            diff = differences(real_schema, describe(changed)[0])
            assert any(line.startswith("traces.columns:") for line in diff), diff
            assert any(line.startswith("traces.sql:") for line in diff), diff

        suite.check("kvsim run --db creates every table and the view", kvsim_wrote_the_schema)
        suite.check("synth_store's empty store has kvsim's schema", same_as_kvsim(synth_empty))
        suite.check("synth_store's full store has kvsim's schema", same_as_kvsim(synth_full))
        suite.check("schema_version: kvsim's = plots/kvsim_store.py's", versions_agree)
        suite.check("the comparison reports a changed column", comparison_sees_a_changed_column)
    suite.finish()


if __name__ == "__main__":
    main()
