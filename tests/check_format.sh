#!/usr/bin/env bash
# The C++/CUDA sources follow .clang-format (applied once over the tree): clang-format --dry-run
# reports every line that does not, and the test fails. Run: tests/check_format.sh CLANG_FORMAT
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(find sim traces tools cuda tests -name '*.h' -o -name '*.cpp' -o -name '*.cu' | sort)
"$1" --dry-run -Werror "${files[@]}"
echo "format: ${#files[@]} files follow .clang-format"
