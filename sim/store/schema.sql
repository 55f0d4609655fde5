-- kvsim results store, schema version 3 (version 1 had no runs.protocol, version 2 no runs.warnings; ResultsStore migrates both) (sim/store/STORE.md documents every column).
-- The one copy of the schema: CMake embeds this file in sim/store/store.cpp at build time
-- (kStoreSchemaSql in the generated sim/store/schema_sql.h), and plots/synth_store.py reads it.
-- A change here is a new schema version: bump kStoreSchemaVersion (sim/store/store.h) and
-- SCHEMA_VERSION (plots/kvsim_store.py), which tests/py/test_store_schema.py checks are equal.
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS traces(id INTEGER PRIMARY KEY, path TEXT, content_hash TEXT UNIQUE, model TEXT,
  synthetic INTEGER, n_layers INTEGER, n_heads INTEGER, n_kv_heads INTEGER, head_dim INTEGER);
CREATE TABLE IF NOT EXISTS configs(id INTEGER PRIMARY KEY, strategy TEXT, spec TEXT, params_json TEXT,
  content_hash TEXT UNIQUE);
CREATE TABLE IF NOT EXISTS runs(id INTEGER PRIMARY KEY, config_id INTEGER REFERENCES configs(id),
  trace_id INTEGER REFERENCES traces(id), sequence TEXT, prefill INTEGER, stride INTEGER, n_tokens INTEGER,
  status TEXT, error TEXT, seconds REAL, host TEXT, kvsim_version TEXT, backend TEXT, finished TEXT,
  protocol TEXT NOT NULL DEFAULT 'evict', warnings TEXT NOT NULL DEFAULT '',
  UNIQUE(config_id, trace_id, sequence, prefill, stride, protocol));
CREATE TABLE IF NOT EXISTS summaries(run_id INTEGER REFERENCES runs(id) ON DELETE CASCADE, layer INTEGER,
  head INTEGER, metric TEXT, mean REAL, p5 REAL, p50 REAL, p95 REAL, worst REAL, n INTEGER,
  PRIMARY KEY(run_id, layer, head, metric));
CREATE TABLE IF NOT EXISTS curves(run_id INTEGER REFERENCES runs(id) ON DELETE CASCADE, metric TEXT,
  bin INTEGER, pos_lo INTEGER, pos_hi INTEGER, value REAL, PRIMARY KEY(run_id, metric, bin));
CREATE VIEW IF NOT EXISTS results AS
  SELECT r.id AS run_id, c.strategy, c.spec, c.params_json, t.path AS trace, t.model, r.sequence,
         r.prefill, r.stride, r.protocol, s.metric, s.mean, s.p5, s.p50, s.p95, s.worst
  FROM runs r JOIN configs c ON c.id = r.config_id JOIN traces t ON t.id = r.trace_id
  JOIN summaries s ON s.run_id = r.id
  WHERE r.status = 'done' AND s.layer = -1;
