// Splits an index range over a small pool of persistent std::threads. The calling thread
// always works too and never waits for a helper to wake up: helpers take chunks only if they
// get scheduled in time, so on a busy machine (a robot PC running its control loop, a shared
// CI box) a parallel call degrades to the serial speed instead of stalling for a scheduler
// time slice, as barrier-based OpenMP loops do there.
#pragma once

#include <cstdint>
#include <functional>

namespace vpp::detail {

// fn(begin, end) is called on disjoint sub-ranges of [0, count) covering it exactly once,
// possibly from several threads at once. total_work is the caller's estimate of the whole
// problem's cost (e.g. elements touched); below kMinParallelWork everything runs inline.
void parallel_for(std::int64_t count, std::int64_t total_work,
                  const std::function<void(std::int64_t, std::int64_t)>& fn);

// Below this much work (elements or multiply-adds) waking helpers costs more than they save.
inline constexpr std::int64_t kMinParallelWork = std::int64_t{1} << 17;

}  // namespace vpp::detail
