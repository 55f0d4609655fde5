// Compute backends (design.md §8): `ref` plain loops (ground truth), `omp` OpenMP, `cuda` GPU.
// Asking for a backend that is not built, or has no device, is an error, never a fallback.
#pragma once

#include <string>
#include <vector>

namespace kvsim {

enum class Backend { ref, omp, cuda };

const char* backend_name(Backend b);
// Parses "ref" | "omp" | "cuda" | "auto"; "auto" picks fastest_backend(). Throws UsageError.
Backend parse_backend(const std::string& s);
// Throws NotCompiled with the reason if `b` cannot run here.
void require_backend(Backend b);
bool backend_available(Backend b, std::string* why_not = nullptr);
std::vector<Backend> available_backends();
Backend fastest_backend();
// The backend of a replay (`run`, `sweep`) from --backend: as parse_backend, but "auto" picks omp
// (ref without OpenMP) even where a GPU exists: the replay's cuda path is explicit (--backend cuda)
// until its benchmark (tools/scripts/bench_sweep.sh --backend cuda vs omp) shows it faster.
// Throws UsageError for an unknown name and NotCompiled when the backend cannot run here.
Backend parse_replay_backend(const std::string& s);
// Threads the omp backend uses (1 when built without OpenMP).
int omp_threads();

}  // namespace kvsim
