// kvsim synth --shape NAME --tokens T --seed S --out F: a synthetic trace with realistic structure.
#include <cstdio>

#include "sim/base/error.h"
#include "tools/commands.h"
#include "traces/synth.h"

namespace kvsim::tools {

void add_synth(CLI::App& app) {
  struct Args {
    std::string shape = "tiny", out, dtype = "float32";
    traces::SynthOptions opt;
    bool compress = false, force = false, quiet = false;
  };
  auto a = std::make_shared<Args>();
  std::string shapes;
  for (const auto& s : traces::synth_shapes()) shapes += (shapes.empty() ? "" : ", ") + s.name;
  CLI::App* c = app.add_subcommand(
      "synth", "Write a synthetic trace (marked synthetic = 1: for tests and benchmarks, not fidelity claims)");
  c->add_option("--shape", a->shape, "model shape: " + shapes)->capture_default_str();
  c->add_option("--tokens", a->opt.tokens, "tokens per sequence (T)")->capture_default_str();
  c->add_option("--seed", a->opt.seed, "random seed (same seed, same file contents)")->capture_default_str();
  c->add_option("--out", a->out, "output trace path (.h5)")->required();
  c->add_option("--prefill", a->opt.prefill, "prefill length P recorded in the trace (default T/2)")
      ->check(not_negative);
  c->add_option("--sequences", a->opt.sequences, "number of sequences")->capture_default_str();
  c->add_option("--layers", a->opt.layers, "write only the first N layers (a slice of a big model)")
      ->check(not_negative);
  c->add_option("--dtype", a->dtype, "stored dtype: float32, float16, bfloat16")->capture_default_str();
  c->add_flag("--compress", a->compress, "gzip + shuffle compression");
  c->add_flag("--pre", a->opt.write_pre, "also write q_pre and k_pre (before RoPE)");
  c->add_flag("--force", a->force, "replace an existing output file");
  c->add_option("--sinks", a->opt.sinks, "attention-sink tokens")->capture_default_str();
  c->add_option("--sink-logit", a->opt.sink_logit, "logit advantage of sink tokens")->capture_default_str();
  c->add_option("--local-logit", a->opt.local_logit, "RoPE locality logit at distance 0")->capture_default_str();
  c->add_option("--heavy-frac", a->opt.heavy_frac, "fraction of heavy-hitter tokens")->capture_default_str();
  c->add_option("--heavy-logit", a->opt.heavy_logit, "logit advantage of heavy hitters")->capture_default_str();
  c->add_option("--outlier-channels", a->opt.outlier_channels, "outlier key channels per KV head")
      ->capture_default_str();
  c->add_option("--outlier-scale", a->opt.outlier_scale, "outlier channel offset (x noise)")->capture_default_str();
  c->add_flag("--quiet", a->quiet, "print nothing on success");
  c->callback([a] {
    a->opt.dtype = traces::parse_dtype(a->dtype);
    traces::WriterOptions w;
    w.compress = a->compress;
    w.overwrite = a->force;
    traces::write_synthetic_trace(a->out, traces::find_synth_shape(a->shape), a->opt, w);
    if (!a->quiet)
      std::fprintf(stderr, "kvsim synth: wrote %s (shape %s, %lld tokens x %lld sequences, %s)\n", a->out.c_str(),
                   a->shape.c_str(), (long long)a->opt.tokens, (long long)a->opt.sequences, a->dtype.c_str());
    exit_status() = 0;
  });
}

}  // namespace kvsim::tools
