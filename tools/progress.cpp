#include "tools/progress.h"

#include <unistd.h>

#include <cstdio>

namespace kvsim::tools {

namespace {
std::string fmt_seconds(double s) {
  char buf[32];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%dm%02ds", int(s) / 60, int(s) % 60);
  else
    std::snprintf(buf, sizeof buf, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
  return buf;
}
}  // namespace

Progress::Progress(std::string label, std::string unit, int64_t total, bool quiet)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), quiet_(quiet), tty_(isatty(STDERR_FILENO) != 0),
      t0_(std::chrono::steady_clock::now()), last_(t0_) {}

double Progress::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
}

void Progress::advance(int64_t n) {
  done_ += n;
  if (quiet_) return;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_).count();
  if ((tty_ && since >= 0.1) || (!tty_ && since >= 5.0)) {
    last_ = now;
    draw(false);
  }
}

void Progress::finish() {
  if (quiet_ || finished_) return;
  finished_ = true;
  draw(true);
}

void Progress::log(const std::string& line) {
  if (tty_ && !quiet_ && !finished_) std::fprintf(stderr, "\r%*s\r", 100, "");
  std::fprintf(stderr, "%s\n", line.c_str());
  if (tty_ && !quiet_ && !finished_) draw(false);
  std::fflush(stderr);
}

void Progress::draw(bool final_line) {
  const double el = elapsed();
  const double rate = el > 0 ? static_cast<double>(done_) / el : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : 0.0;
  const double frac = total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
  std::string tail = note_.empty() ? "" : ", " + note_;
  if (tty_) {
    constexpr int kWidth = 24;
    std::string bar(kWidth, ' ');
    for (int i = 0; i < static_cast<int>(frac * kWidth + 1e-9) && i < kWidth; ++i) bar[i] = '#';
    std::fprintf(stderr, "\r%s [%s] %lld/%lld %s, %.1f %s/s, %s %s%s   ", label_.c_str(), bar.c_str(), (long long)done_,
                 (long long)total_, unit_.c_str(), rate, unit_.c_str(), final_line ? "took" : "ETA",
                 fmt_seconds(final_line ? el : eta).c_str(), tail.c_str());
    if (final_line) std::fprintf(stderr, "\n");
  } else {
    std::fprintf(stderr, "%s: %lld/%lld %s (%.0f%%), %.1f %s/s, %s %s%s\n", label_.c_str(), (long long)done_,
                 (long long)total_, unit_.c_str(), 100.0 * frac, rate, unit_.c_str(), final_line ? "took" : "ETA",
                 fmt_seconds(final_line ? el : eta).c_str(), tail.c_str());
  }
  std::fflush(stderr);
}

}  // namespace kvsim::tools
