// kvsim convert --model M --out DIR: writes a model (e.g. a llama2.c checkpoint) in the Hugging
// Face layout, config.json + model.safetensors, with the RoPE row permutation, and copies its
// tokenizer next to it so `--model DIR` finds it.
#include <cstdio>
#include <filesystem>

#include "sim/base/error.h"
#include "tools/commands.h"
#include "traces/model/model.h"

namespace kvsim::tools {

void add_convert(CLI::App& app) {
  struct Args {
    std::string model, out, dtype = "float32", tokenizer;
    bool quiet = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("convert", "Write a model in the Hugging Face layout (config.json + safetensors)");
  c->add_option("--model", a->model, "llama2.c checkpoint (.bin) or Hugging Face directory")->required();
  c->add_option("--out", a->out, "output directory")->required();
  c->add_option("--dtype", a->dtype, "float32, float16 or bfloat16")->capture_default_str();
  c->add_option("--tokenizer", a->tokenizer,
                "tokenizer to copy (default: tok512.bin or tokenizer.bin next to the model)");
  c->add_flag("--quiet", a->quiet, "print nothing on success");
  c->callback([a] {
    namespace fs = std::filesystem;
    const model::Model m = model::load_model(a->model);
    model::save_hf(m, a->out, a->dtype);
    std::string tok = a->tokenizer;
    if (tok.empty()) {
      const fs::path dir = fs::path(a->model).parent_path();
      for (const char* n : {"tok512.bin", "tokenizer.bin", "tokenizer.model"})
        if (fs::exists(dir / n)) {
          tok = (dir / n).string();
          break;
        }
    }
    if (!tok.empty()) {
      const fs::path dst =
          fs::path(a->out) / (fs::path(tok).extension() == ".model" ? "tokenizer.model" : "tokenizer.bin");
      std::error_code ec;
      fs::remove(dst, ec);
      fs::copy_file(tok, dst, fs::copy_options::overwrite_existing, ec);
      if (ec) throw IoError(dst.string() + ": cannot copy tokenizer (" + ec.message() + ")");
      fs::permissions(
          dst, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read, ec);
    }
    if (!a->quiet)
      std::fprintf(stderr, "kvsim convert: wrote %s (config.json, model.safetensors %s%s)\n", a->out.c_str(),
                   a->dtype.c_str(), tok.empty() ? ", no tokenizer found to copy" : ", tokenizer");
    exit_status() = 0;
  });
}

}  // namespace kvsim::tools
