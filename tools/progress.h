// Progress of long work on stderr (design.md §6): a bar redrawn in place with ETA and rate when
// stderr is a terminal, otherwise one line every few seconds; nothing when quiet.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace kvsim::tools {

class Progress {
 public:
  // label: "kvsim sweep"; unit: "runs" (shown with the rate).
  Progress(std::string label, std::string unit, int64_t total, bool quiet);
  void advance(int64_t n = 1);
  void set_note(std::string note) { note_ = std::move(note); }  // appended to the line, e.g. "1 failed"
  void finish();                                                // final line (and newline on a terminal)
  // Prints one line on stderr without tearing the bar (even when quiet: warnings are not progress).
  void log(const std::string& line);
  double elapsed() const;
  int64_t done() const { return done_; }

 private:
  void draw(bool final_line);
  std::string label_, unit_, note_;
  int64_t total_ = 0, done_ = 0;
  bool quiet_ = false, tty_ = false, finished_ = false;
  std::chrono::steady_clock::time_point t0_, last_;
};

}  // namespace kvsim::tools
