// Splits an index range over worker threads: OpenMP when the compiler has it (a persistent
// pool, so small calls stay cheap), std::thread otherwise. Problems under min_parallel_work
// run inline because waking threads costs more than they save there.
#pragma once

#include <cstdint>
#include <functional>

namespace vpp::detail {

// fn(begin, end) is called on disjoint sub-ranges of [0, count) covering it exactly once.
// total_work is the caller's estimate of the whole problem's cost (e.g. elements touched).
void parallel_for(std::int64_t count, std::int64_t total_work,
                  const std::function<void(std::int64_t, std::int64_t)>& fn);

// Below this much work (elements or multiply-adds) a kernel runs on the calling thread.
inline constexpr std::int64_t kMinParallelWork = std::int64_t{1} << 16;

}  // namespace vpp::detail
