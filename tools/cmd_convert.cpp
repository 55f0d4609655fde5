// kvsim convert --model M --out DIR: writes a model (e.g. a llama2.c checkpoint) in the Hugging
// Face layout, config.json + model.safetensors, with the RoPE row permutation, and copies its
// tokenizer next to it so `--model DIR` finds it. DIR is new or empty unless --force, and never the
// model's own directory (its files are read while the new ones are written).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "sim/base/error.h"
#include "tools/commands.h"
#include "traces/model/model.h"

namespace kvsim::tools {

namespace {

namespace fs = std::filesystem;

// The files convert writes into --out (the tokenizer is one of the last two).
bool convert_writes(const std::string& name) {
  return name == "config.json" || name == "model.safetensors" || name == "tokenizer.bin" || name == "tokenizer.model";
}

// Refuses an --out that would lose or mix up files: an existing non-empty directory without
// --force; with --force, the model's or the tokenizer's own directory, or one holding other
// checkpoint files (they would load alongside, or instead of, the new model.safetensors).
void check_out_dir(const std::string& out, const std::string& model, const std::string& tokenizer, bool force) {
  std::error_code ec;
  const auto st = fs::symlink_status(out, ec);
  if (ec || st.type() == fs::file_type::not_found) return;
  if (!fs::is_directory(out, ec)) throw UsageError("--out " + out + ": exists and is not a directory");
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out, ec)) names.push_back(e.path().filename().string());
  if (ec) throw IoError("--out " + out + ": cannot list (" + ec.message() + ")");
  if (names.empty()) return;
  std::sort(names.begin(), names.end());
  if (!force)
    throw UsageError("--out " + out + ": already exists and holds " + std::to_string(names.size()) + " files (" +
                     names.front() + (names.size() > 1 ? ", ..." : "") +
                     "); convert writes into a new or empty directory (--force replaces config.json, "
                     "model.safetensors and the tokenizer there)");
  const fs::path model_dir = fs::is_directory(model, ec) ? fs::path(model) : fs::path(model).parent_path();
  for (const fs::path& src : {model_dir, tokenizer.empty() ? fs::path() : fs::path(tokenizer).parent_path()})
    if (fs::equivalent(src.empty() ? fs::path(".") : src, out, ec))
      throw UsageError("--out " + out + ": is the directory of the input " + (src == model_dir ? model : tokenizer) +
                       "; convert into another directory");
  for (const auto& n : names)
    if (!convert_writes(n) && (n == "model.safetensors.index.json" || fs::path(n).extension() == ".safetensors"))
      throw UsageError("--out " + out + ": holds " + n +
                       ", which would be loaded with the new model.safetensors; convert into another directory");
}

}  // namespace

void add_convert(CLI::App& app) {
  struct Args {
    std::string model, out, dtype = "float32", tokenizer;
    bool force = false, quiet = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c = app.add_subcommand("convert", "Write a model in the Hugging Face layout (config.json + safetensors)");
  c->add_option("--model", a->model, "llama2.c checkpoint (.bin) or Hugging Face directory")->required();
  c->add_option("--out", a->out, "output directory")->required();
  c->add_option("--dtype", a->dtype, "float32, float16 or bfloat16")->capture_default_str();
  c->add_option("--tokenizer", a->tokenizer,
                "tokenizer to copy (default: tok512.bin or tokenizer.bin next to the model)");
  c->add_flag("--force", a->force,
              "write into an existing non-empty directory, replacing config.json, model.safetensors and the tokenizer");
  c->add_flag("--quiet", a->quiet, "print nothing on success");
  c->callback([a] {
    std::string tok = a->tokenizer;
    if (tok.empty()) {
      const fs::path dir = fs::path(a->model).parent_path();
      for (const char* n : {"tok512.bin", "tokenizer.bin", "tokenizer.model"})
        if (fs::exists(dir / n)) {
          tok = (dir / n).string();
          break;
        }
    }
    check_out_dir(a->out, a->model, tok, a->force);
    const model::Model m = model::load_model(a->model);
    model::save_hf(m, a->out, a->dtype);
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
