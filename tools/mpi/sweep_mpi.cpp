#include "tools/mpi/sweep_mpi.h"

#include <mpi.h>

#include <cstdio>
#include <cstring>
#include <set>

#include "sim/base/error.h"
#include "tools/progress.h"

namespace kvsim::tools {

namespace {

enum Tag : int { kReady = 1, kWork = 2, kResult = 3, kStop = 4 };

// Flat binary messages: int64, double and length-prefixed strings, native byte order (the ranks
// of one job run the same binary).
class Packer {
 public:
  void i(int64_t v) { put(&v, sizeof v); }
  void d(double v) { put(&v, sizeof v); }
  void s(const std::string& v) {
    i(static_cast<int64_t>(v.size()));
    put(v.data(), v.size());
  }
  std::vector<char> buf;

 private:
  void put(const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    buf.insert(buf.end(), c, c + n);
  }
};

class Unpacker {
 public:
  explicit Unpacker(const std::vector<char>& b) : b_(b) {}
  int64_t i() {
    int64_t v;
    get(&v, sizeof v);
    return v;
  }
  double d() {
    double v;
    get(&v, sizeof v);
    return v;
  }
  std::string s() {
    const int64_t n = i();
    KVSIM_ASSERT(n >= 0 && pos_ + static_cast<size_t>(n) <= b_.size());
    std::string v(b_.data() + pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return v;
  }

 private:
  void get(void* p, size_t n) {
    KVSIM_ASSERT(pos_ + n <= b_.size());
    std::memcpy(p, b_.data() + pos_, n);
    pos_ += n;
  }
  const std::vector<char>& b_;
  size_t pos_ = 0;
};

std::vector<char> pack(const std::vector<SweepOutcome>& outs) {
  Packer p;
  p.i(static_cast<int64_t>(outs.size()));
  for (const auto& o : outs) {
    const StoreRun& r = o.run;
    p.i(o.group), p.i(o.config);
    p.s(r.sequence), p.i(r.prefill), p.i(r.stride), p.i(r.n_tokens), p.s(r.status), p.s(r.error), p.d(r.seconds);
    p.s(r.host), p.s(r.kvsim_version), p.s(r.backend), p.s(r.protocol);
    p.i(static_cast<int64_t>(r.summaries.size()));
    for (const auto& x : r.summaries) {
      p.i(x.layer), p.i(x.head), p.s(x.metric), p.d(x.mean), p.d(x.p5), p.d(x.p50), p.d(x.p95), p.d(x.worst);
      p.i(x.n);
    }
    p.i(static_cast<int64_t>(r.curves.size()));
    for (const auto& c : r.curves) p.s(c.metric), p.i(c.bin), p.i(c.pos_lo), p.i(c.pos_hi), p.d(c.value);
  }
  return std::move(p.buf);
}

std::vector<SweepOutcome> unpack(const std::vector<char>& buf) {
  Unpacker u(buf);
  std::vector<SweepOutcome> outs(static_cast<size_t>(u.i()));
  for (auto& o : outs) {
    StoreRun& r = o.run;
    o.group = u.i(), o.config = u.i();
    r.sequence = u.s(), r.prefill = u.i(), r.stride = u.i(), r.n_tokens = u.i(), r.status = u.s(), r.error = u.s();
    r.seconds = u.d();
    r.host = u.s(), r.kvsim_version = u.s(), r.backend = u.s(), r.protocol = u.s();
    r.summaries.resize(static_cast<size_t>(u.i()));
    for (auto& x : r.summaries) {
      x.layer = u.i(), x.head = u.i(), x.metric = u.s(), x.mean = u.d(), x.p5 = u.d(), x.p50 = u.d();
      x.p95 = u.d(), x.worst = u.d(), x.n = u.i();
    }
    r.curves.resize(static_cast<size_t>(u.i()));
    for (auto& c : r.curves) c.metric = u.s(), c.bin = u.i(), c.pos_lo = u.i(), c.pos_hi = u.i(), c.value = u.d();
  }
  return outs;
}

std::vector<char> recv_bytes(int source, int tag, MPI_Status* st) {
  MPI_Probe(source, tag, MPI_COMM_WORLD, st);
  int n = 0;
  MPI_Get_count(st, MPI_BYTE, &n);
  std::vector<char> buf(static_cast<size_t>(n));
  MPI_Recv(buf.data(), n, MPI_BYTE, st->MPI_SOURCE, st->MPI_TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  return buf;
}

void worker(const SweepWork& w, const SweepOptions& opt) {
  MPI_Send(nullptr, 0, MPI_BYTE, 0, kReady, MPI_COMM_WORLD);
  for (;;) {
    MPI_Status st;
    std::vector<char> msg = recv_bytes(0, MPI_ANY_TAG, &st);
    if (st.MPI_TAG == kStop) return;
    std::vector<int64_t> ids(msg.size() / sizeof(int64_t));
    std::memcpy(ids.data(), msg.data(), ids.size() * sizeof(int64_t));
    SweepBatch b;
    b.group = ids.at(0);
    b.configs.assign(ids.begin() + 1, ids.end());
    std::vector<char> out;
    try {
      out = pack(run_batch(w, b, opt.stats_cache));
    } catch (const std::exception& e) {
      // run_batch turns trace and strategy problems into failed runs; anything else (out of
      // memory) would leave rank 0 waiting forever: take the job down, the store stays consistent.
      std::fprintf(stderr, "kvsim: error: %s\n", e.what());
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Send(out.data(), static_cast<int>(out.size()), MPI_BYTE, 0, kResult, MPI_COMM_WORLD);
  }
}

int coordinator(const SweepWork& w, const SweepOptions& opt, int n_ranks) {
  const auto [shard, n_shards] = parse_shard(opt.shard);
  const std::string db = opt.db.empty() ? default_db_path(opt.config) : opt.db;
  ResultsStore store(db);
  int64_t skipped = 0;
  std::vector<int64_t> trace_ids, config_ids;
  const auto batches = pending_batches(w, store, shard, n_shards, opt.batch, &skipped, &trace_ids, &config_ids);
  int64_t pending = 0;
  for (const auto& b : batches) pending += static_cast<int64_t>(b.configs.size());
  Progress progress("kvsim sweep (MPI, " + std::to_string(n_ranks) + " ranks)", "runs", pending, opt.quiet);
  int64_t done = 0, failed = 0;
  std::set<std::string> reported;
  auto commit = [&](std::vector<SweepOutcome> outs) {
    for (auto& o : outs) {
      o.run.config_id = config_ids.at(o.config);
      o.run.trace_id = trace_ids.at(w.groups.at(o.group).trace);
      store.commit_run(o.run);
      if (o.run.status == "done") {
        ++done;
      } else {
        ++failed;
        if (reported.insert(o.run.error).second) progress.log("kvsim sweep: run failed: " + o.run.error);
      }
      progress.set_note(failed ? std::to_string(failed) + " failed" : "");
      progress.advance();
    }
  };
  size_t next = 0;
  if (n_ranks == 1) {
    for (; next < batches.size() && !stop_requested(); ++next) commit(run_batch(w, batches[next], opt.stats_cache));
  } else {
    int active = n_ranks - 1;
    while (active > 0) {
      MPI_Status st;
      std::vector<char> msg = recv_bytes(MPI_ANY_SOURCE, MPI_ANY_TAG, &st);
      if (st.MPI_TAG == kResult) commit(unpack(msg));
      if (next < batches.size() && !stop_requested()) {
        std::vector<int64_t> ids = {batches[next].group};
        ids.insert(ids.end(), batches[next].configs.begin(), batches[next].configs.end());
        ++next;
        MPI_Send(ids.data(), static_cast<int>(ids.size() * sizeof(int64_t)), MPI_BYTE, st.MPI_SOURCE, kWork,
                 MPI_COMM_WORLD);
      } else {
        MPI_Send(nullptr, 0, MPI_BYTE, st.MPI_SOURCE, kStop, MPI_COMM_WORLD);
        --active;
      }
    }
  }
  progress.finish();
  std::printf(
      "sweep %s: %lld runs done, %lld failed, %lld already done (shard %lld/%lld of %lld runs, %d MPI ranks); "
      "store %s\n",
      w.plan.name.c_str(), (long long)done, (long long)failed, (long long)skipped, (long long)shard,
      (long long)n_shards, (long long)w.total_runs, n_ranks, db.c_str());
  std::fflush(stdout);
  if (next < batches.size()) {
    std::fprintf(stderr, "kvsim sweep: interrupted; %lld runs committed, rerun the same command to resume\n",
                 (long long)(done + failed));
    return stop_exit_status();
  }
  return failed ? 1 : 0;
}

}  // namespace

int run_sweep_mpi(const SweepOptions& opt) {
  int rank = 0, n_ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n_ranks);
  install_stop_handler();
  // Every rank parses the config and lists the traces itself (the same, deterministic result), so
  // a batch travels as (group, config indices) only. A bad input stops every rank with one line.
  SweepWork w;
  int code = 0;
  std::string err;
  try {
    parse_shard(opt.shard);
    w = prepare_sweep(opt);
  } catch (const Error& e) {
    code = e.exit_code(), err = e.what();
  }
  // Batches travel as indices: every rank must see the same groups and configurations (a trace
  // unreadable on one node would shift them).
  if (code == 0) {
    std::string fp;
    for (const auto& c : w.configs) fp += c.canonical + "\n";
    for (const auto& g : w.groups)
      fp += std::to_string(g.trace) + "/" + g.sequence + "/" + std::to_string(g.prefill) + "/" +
            protocol_name(g.protocol) + "/" + g.error + "\n";
    const std::string mine = content_hash_hex(fp);
    std::vector<char> all(static_cast<size_t>(n_ranks) * 16);
    MPI_Allgather(mine.data(), 16, MPI_CHAR, all.data(), 16, MPI_CHAR, MPI_COMM_WORLD);
    for (int r = 0; r < n_ranks; ++r)
      if (std::string(all.data() + r * 16, 16) != std::string(all.data(), 16)) {
        code = 2;
        err = "MPI rank " + std::to_string(r) +
              " sees other traces, sequences or configurations than rank 0 "
              "(are the config and the traces readable at the same paths on every node?)";
      }
  } else {
    std::vector<char> all(static_cast<size_t>(n_ranks) * 16);
    const std::string none(16, '-');
    MPI_Allgather(none.data(), 16, MPI_CHAR, all.data(), 16, MPI_CHAR, MPI_COMM_WORLD);
  }
  int worst = 0;
  MPI_Allreduce(&code, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (worst != 0) {
    if (rank == 0) std::fprintf(stderr, "kvsim: error: %s\n", err.empty() ? "bad input on another rank" : err.c_str());
    return worst;
  }
  int status = 0;
  if (rank == 0) {
    try {
      status = coordinator(w, opt, n_ranks);
    } catch (const Error& e) {
      // The store could not be opened or written: say so once, and take the job down.
      std::fprintf(stderr, "kvsim: error: %s\n", e.what());
      MPI_Abort(MPI_COMM_WORLD, e.exit_code());
    }
  } else {
    worker(w, opt);
  }
  MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return status;
}

}  // namespace kvsim::tools
