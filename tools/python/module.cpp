// kvsim._core: the C++ side of the Python module (tools/python/kvsim/__init__.py wraps it into
// DataFrames). Every replay returns the JSON text that `kvsim run --json` prints (tools/report_json.h),
// so a notebook gets exactly the CLI's numbers; the GIL is released while a replay runs, and
// kvsim::Error subclasses become Python exceptions carrying the same one-line message.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "sim/base/error.h"
#include "sim/kernels/backend.h"
#include "sim/replay.h"
#include "sim/strategies/allocator.h"
#include "sim/strategies/quant_codecs.h"
#include "sim/strategies/strategy.h"
#include "tools/commands.h"
#include "tools/report_json.h"
#include "tools/sweep.h"
#include "tools/version.h"
#include "traces/reader.h"
#include "traces/schema.h"

namespace py = pybind11;

namespace kvsim::tools {
namespace {

using Array = py::array_t<float, py::array::c_style>;

struct Strategies {
  std::vector<std::unique_ptr<Strategy>> owned;
  std::vector<const Strategy*> ptrs;
  explicit Strategies(const std::vector<std::string>& specs) {
    if (specs.empty()) throw UsageError("no strategy given");
    for (const auto& s : specs) {
      owned.push_back(make_strategy(s));
      ptrs.push_back(owned.back().get());
    }
  }
};

struct RunArgs {
  std::string prefill, protocol, backend, max_memory;
  int64_t stride = 1, bins = 16;
  double eps = 1e-6;
  bool per_head = false;
};

ReplayOptions options_of(const RunArgs& a) {
  ReplayOptions opt;
  opt.prefill = parse_prefill(a.prefill, "prefill");
  opt.stride = a.stride, opt.bins = a.bins, opt.eps = a.eps;
  opt.backend = parse_replay_backend(a.backend);
  opt.protocol = parse_protocol(a.protocol);
  opt.max_memory = parse_memory(a.max_memory, "max_memory");
  if (!(a.eps > 0 && a.eps < 1)) throw UsageError("eps " + std::to_string(a.eps) + " must be in (0, 1)");
  if (a.bins <= 0) throw UsageError("bins " + std::to_string(a.bins) + " must be >= 1");
  return opt;
}

// Progress: the callable gets (layers done, layers in all) on the calling thread, under the GIL.
void set_progress(ReplayOptions& opt, const py::object& progress, int64_t layers) {
  if (progress.is_none()) return;
  auto done = std::make_shared<int64_t>(0);
  opt.progress = [progress, done, layers](const std::string&) {
    py::gil_scoped_acquire gil;
    progress(++*done, layers);
  };
}

// As `kvsim run`: degeneracies and a rebuilt sidecar as warnings on stderr, and a configuration
// whose metric came out non-finite fails the call (the CLI exits 1) rather than returning NaNs.
std::string finish(const ReplayResult& r, bool per_head, const std::string& who) {
  {
    py::gil_scoped_acquire gil;  // stderr is Python's too
    py::module_::import("sys").attr("stderr").attr("flush")();
  }
  warn_degeneracies(r, who);
  for (const ConfigResult& c : r.configs)
    if (const std::string bad = non_finite_metric(c); !bad.empty())
      throw Error(r.trace + ": " + c.spec + ": the metric " + bad + " is not finite: the run failed");
  return json_text(run_json(r, per_head));
}

std::string run_trace_json(const std::string& trace, const std::vector<std::string>& specs, const RunArgs& a,
                           const std::string& sequence, const std::string& stats_cache, const py::object& progress) {
  Strategies s(specs);
  ReplayOptions opt = options_of(a);
  opt.stats_cache = stats_cache;
  traces::TraceReader reader(trace);
  if (reader.sequences().empty()) throw FormatError(trace + ": the trace has no sequences");
  if (!sequence.empty()) opt.seq = reader.find_sequence(sequence);
  set_progress(opt, progress, reader.header().n_layers);
  py::gil_scoped_release nogil;
  return finish(replay_trace(reader, s.ptrs, opt), a.per_head, "kvsim.run");
}

// One layer's tensors: [H, T, D] (q) or [Hkv, T, D] (k, v, k_pre), float32, C order.
void check_layer(const Array& x, const char* what, int64_t layer, int64_t heads, int64_t T, int64_t D) {
  auto shape = [&] {
    std::string s;
    for (py::ssize_t i = 0; i < x.ndim(); ++i) s += (i ? ", " : "") + std::to_string(x.shape(i));
    return "[" + s + "]";
  };
  if (x.ndim() != 3)
    throw ShapeMismatch(std::string(what) + " of layer " + std::to_string(layer) + ": shape " + shape() +
                        " is not 3-dimensional [heads, T, D]");
  if (x.shape(0) != heads || x.shape(1) != T || x.shape(2) != D)
    throw ShapeMismatch(std::string(what) + " of layer " + std::to_string(layer) + ": shape " + shape() + " where [" +
                        std::to_string(heads) + ", " + std::to_string(T) + ", " + std::to_string(D) +
                        "] is expected (from layer 0's q and k)");
}

void check_values(const Array& x, const char* what, int64_t layer) {
  const float* p = x.data();
  const int64_t T = x.shape(1), D = x.shape(2), n = x.shape(0) * T * D;
  for (int64_t i = 0; i < n; ++i)
    if (!(std::fabs(p[i]) <= traces::kMaxAbsValue))
      throw NumericError(std::string(what) + " of layer " + std::to_string(layer) + ": value " + std::to_string(p[i]) +
                         " at [head " + std::to_string(i / (T * D)) + ", token " + std::to_string(i / D % T) +
                         ", dim " + std::to_string(i % D) +
                         "]: values must be finite with |x| <= 65504, as in a trace");
}

std::string run_arrays_json(const std::vector<Array>& q, const std::vector<Array>& k, const std::vector<Array>& v,
                            const std::vector<Array>& k_pre, const std::vector<std::string>& specs, const RunArgs& a,
                            int64_t prefill_len, double rope_theta, const std::string& rope_style,
                            const std::string& name, const py::object& progress) {
  if (q.empty()) throw UsageError("run_arrays: no layer given");
  if (k.size() != q.size() || v.size() != q.size() || (!k_pre.empty() && k_pre.size() != q.size()))
    throw ShapeMismatch("run_arrays: " + std::to_string(q.size()) + " layers of q, " + std::to_string(k.size()) +
                        " of k, " + std::to_string(v.size()) + " of v" +
                        (k_pre.empty() ? std::string() : ", " + std::to_string(k_pre.size()) + " of k_pre"));
  if (q[0].ndim() != 3 || k[0].ndim() != 3) check_layer(q[0].ndim() != 3 ? q[0] : k[0], "q or k", 0, 0, 0, 0);
  LayerSource src;
  src.name = name, src.sequence = "arrays";
  src.L = static_cast<int64_t>(q.size());
  src.H = q[0].shape(0), src.T = q[0].shape(1), src.D = q[0].shape(2), src.Hkv = k[0].shape(0);
  if (src.H <= 0 || src.T <= 0 || src.D <= 0 || src.Hkv <= 0 || src.H % src.Hkv != 0)
    throw ShapeMismatch("run_arrays: H = " + std::to_string(src.H) + " query heads, Hkv = " + std::to_string(src.Hkv) +
                        " KV heads, T = " + std::to_string(src.T) + ", D = " + std::to_string(src.D) +
                        ": all must be >= 1 and Hkv must divide H");
  for (int64_t l = 0; l < src.L; ++l) {
    check_layer(q[l], "q", l, src.H, src.T, src.D);
    check_layer(k[l], "k", l, src.Hkv, src.T, src.D);
    check_layer(v[l], "v", l, src.Hkv, src.T, src.D);
    if (!k_pre.empty()) check_layer(k_pre[l], "k_pre", l, src.Hkv, src.T, src.D);
  }
  src.prefill_len = prefill_len;
  src.rope_theta = rope_theta, src.rope_style = parse_rope_style(rope_style);
  src.has_k_pre = !k_pre.empty();
  src.read = [&](int64_t l, bool want_pre) {
    return LayerTensors{q[l].data(), k[l].data(), v[l].data(), want_pre ? k_pre[l].data() : nullptr};
  };
  Strategies s(specs);
  ReplayOptions opt = options_of(a);
  set_progress(opt, progress, src.L);
  py::gil_scoped_release nogil;
  for (int64_t l = 0; l < src.L; ++l) {  // the rule a trace's values obey (traces/FORMAT.md "Values")
    check_values(q[l], "q", l);
    check_values(k[l], "k", l);
    check_values(v[l], "v", l);
    if (!k_pre.empty()) check_values(k_pre[l], "k_pre", l);
  }
  return finish(replay_source(src, s.ptrs, opt), a.per_head, "kvsim.run_arrays");
}

std::string info_json(const std::string& trace) { return json_text(trace_info_json(traces::TraceReader(trace))); }

// The registry: every strategy and codec with its resolved default parameters. A strategy that
// cannot be built from its name alone (a budget is required) is described at budget=64, with the
// bare name's error as `required` and the budget left out of the defaults; one that needs more than a
// budget (headkv's scores file) is listed with `required` alone.
std::string strategies_json() {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& n : strategy_names()) {
    nlohmann::json j{{"name", n}};
    std::unique_ptr<Strategy> s;
    try {
      s = make_strategy(n);
    } catch (const UsageError& e) {
      j["required"] = e.what();
      try {
        s = make_strategy(n + ":budget=64");
      } catch (const UsageError& e2) {
        j["required"] = e2.what();
        j["kind"] = "cache";
        j["params"] = nlohmann::json::object();
        out.push_back(j);
        continue;
      }
    }
    auto params = s->params();
    if (j.contains("required")) params.erase("budget");
    j["kind"] = s->is_selector() ? "selector" : "cache";
    j["params"] = params;
    j["needs_k_pre"] = s->needs_pre_rope();
    j["needs_q_pre"] = s->needs_q_pre();
    j["needs_vo_norm"] = s->needs_vo_norm();
    j["needs_kvzip_score"] = s->needs_kvzip_score();
    j["needs_queries"] = s->needs_queries();
    j["layer_coupled"] = s->layer_coupled();
    j["takes_codec"] = s->takes_codec();
    out.push_back(j);
  }
  // A wrapper (WRAPPER.BASE) is described around snapkv at budget=64; `bases` lists the scorers it wraps.
  std::vector<std::string> bases;
  for (const auto& n : strategy_names()) {
    std::unique_ptr<Strategy> s;
    try {
      s = make_strategy(n + ":budget=64");
    } catch (const UsageError&) {
      continue;
    }
    if (s->exposes_prompt_scores()) bases.push_back(n);
  }
  for (const auto& w : allocator_names()) {
    std::unique_ptr<Strategy> s;
    try {
      s = make_strategy(w + ".snapkv:budget=64");
    } catch (const UsageError& e) {  // it needs more than a budget (headkv.BASE: scores=FILE)
      out.push_back({{"name", w + ".BASE"},
                     {"kind", "wrapper"},
                     {"params", nlohmann::json::object()},
                     {"bases", bases},
                     {"required", e.what()}});
      continue;
    }
    auto params = s->params();
    params.erase("budget");
    out.push_back({{"name", w + ".BASE"},
                   {"kind", "wrapper"},
                   {"params", params},
                   {"bases", bases},
                   {"layer_coupled", s->layer_coupled()},
                   {"takes_codec", s->takes_codec()}});
  }
  for (const auto& n : codec_names()) {
    std::map<std::string, std::string> params;
    make_codec(parse_spec(n), &params);
    out.push_back({{"name", n}, {"kind", "codec"}, {"params", params}});
  }
  return out.dump();
}

int sweep(const std::string& config, const std::string& db, const std::string& backend, int64_t batch,
          const std::string& shard, const std::string& stats_cache, bool quiet) {
  SweepOptions opt;
  opt.config = config, opt.db = db, opt.backend = backend, opt.batch = batch, opt.shard = shard;
  opt.stats_cache = stats_cache, opt.quiet = quiet;
  py::gil_scoped_release nogil;
  return run_sweep(opt);
}

}  // namespace
}  // namespace kvsim::tools

PYBIND11_MODULE(_core, m) {
  using namespace kvsim::tools;
  m.doc() = "kvsim's C++ core; use the kvsim package (tools/python/kvsim), which wraps it";
  m.attr("__version__") = KVSIM_VERSION;
  // kvsim.Error (RuntimeError) is the base of every kvsim error; UsageError and FormatError are
  // also ValueErrors, IoError an OSError, so both `except kvsim.Error` and the builtin classes catch them.
  static py::exception<kvsim::Error> error(m, "Error", PyExc_RuntimeError);
  auto subclass = [&](const char* name, PyObject* builtin) {
    py::tuple bases = py::make_tuple(error, py::handle(builtin));
    PyObject* t = PyErr_NewException((std::string("kvsim._core.") + name).c_str(), bases.ptr(), nullptr);
    if (!t) throw py::error_already_set();
    m.add_object(name, py::handle(t));
    return t;
  };
  static PyObject* usage = subclass("UsageError", PyExc_ValueError);
  static PyObject* format = subclass("FormatError", PyExc_ValueError);
  static PyObject* io = subclass("IoError", PyExc_OSError);
  static PyObject* not_compiled = subclass("NotCompiled", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const kvsim::UsageError& e) {
      PyErr_SetString(usage, e.what());
    } catch (const kvsim::FormatError& e) {
      PyErr_SetString(format, e.what());
    } catch (const kvsim::IoError& e) {
      PyErr_SetString(io, e.what());
    } catch (const kvsim::NotCompiled& e) {
      PyErr_SetString(not_compiled, e.what());
    } catch (const kvsim::Error& e) {
      error(e.what());
    }
  });
  m.def(
      "run_json",
      [](const std::string& trace, const std::vector<std::string>& strategies, const std::string& prefill,
         int64_t stride, const std::string& protocol, const std::string& backend, const std::string& sequence,
         int64_t bins, double eps, const std::string& stats_cache, bool per_head, const std::string& max_memory,
         const py::object& progress) {
        return run_trace_json(trace, strategies,
                              RunArgs{prefill, protocol, backend, max_memory, stride, bins, eps, per_head}, sequence,
                              stats_cache, progress);
      },
      py::arg("trace"), py::arg("strategies"), py::arg("prefill"), py::arg("stride"), py::arg("protocol"),
      py::arg("backend"), py::arg("sequence"), py::arg("bins"), py::arg("eps"), py::arg("stats_cache"),
      py::arg("per_head"), py::arg("max_memory"), py::arg("progress"));
  m.def(
      "run_arrays_json",
      [](const std::vector<Array>& q, const std::vector<Array>& k, const std::vector<Array>& v,
         const std::vector<Array>& k_pre, const std::vector<std::string>& strategies, int64_t prefill, int64_t stride,
         const std::string& protocol, const std::string& backend, int64_t bins, double eps, bool per_head,
         double rope_theta, const std::string& rope_style, const std::string& name, const std::string& max_memory,
         const py::object& progress) {
        return run_arrays_json(
            q, k, v, k_pre, strategies,
            RunArgs{std::to_string(prefill), protocol, backend, max_memory, stride, bins, eps, per_head}, prefill,
            rope_theta, rope_style, name, progress);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("k_pre"), py::arg("strategies"), py::arg("prefill"),
      py::arg("stride"), py::arg("protocol"), py::arg("backend"), py::arg("bins"), py::arg("eps"), py::arg("per_head"),
      py::arg("rope_theta"), py::arg("rope_style"), py::arg("name"), py::arg("max_memory"), py::arg("progress"));
  m.def("info_json", &info_json, py::arg("trace"));
  m.def("strategies_json", &strategies_json);
  m.def("backends", [] {
    std::vector<std::string> names;
    for (kvsim::Backend b : kvsim::available_backends()) names.emplace_back(kvsim::backend_name(b));
    return names;
  });
  m.def("sweep", &sweep, py::arg("config"), py::arg("db"), py::arg("backend"), py::arg("batch"), py::arg("shard"),
        py::arg("stats_cache"), py::arg("quiet"));
}
