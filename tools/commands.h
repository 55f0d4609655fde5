// Subcommand registration: each tools/cmd_*.cpp adds one subcommand to the app. A subcommand's
// callback stores its exit status in exit_status(); errors are thrown as kvsim::Error and turned
// into one line on stderr by main().
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace kvsim::tools {

int& exit_status();

// `--json` output, indented: a string that is not UTF-8 (a trace's name or attribute is the file's
// bytes) prints with U+FFFD in place of each bad byte instead of failing the whole report.
std::string json_text(const nlohmann::json& j);

// A CLI11 check for a count whose default (-1) means "not given": a negative value is an error,
// never the default in disguise (`--prefill -5`).
std::string not_negative(const std::string& value);

void add_info(CLI::App& app);
void add_synth(CLI::App& app);
void add_generate(CLI::App& app);
void add_record(CLI::App& app);
void add_convert(CLI::App& app);
void add_run(CLI::App& app);
void add_plot(CLI::App& app);
void add_validate(CLI::App& app);
void add_sweep(CLI::App& app);
void add_best(CLI::App& app);
void add_ppl(CLI::App& app);
void add_capacity(CLI::App& app);
void add_prefix(CLI::App& app);
void add_heads(CLI::App& app);

}  // namespace kvsim::tools
