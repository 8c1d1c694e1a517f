#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "vpp/kernels.h"

#ifdef VPP_HAVE_OPENMP
#include <omp.h>
#endif

namespace vpp {
namespace {
std::atomic<int> requested_threads{0};

int default_threads() {
#ifdef VPP_HAVE_OPENMP
    return omp_get_max_threads();
#else
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
#endif
}
}  // namespace

void set_num_threads(int num_threads) { requested_threads.store(std::max(0, num_threads)); }

int num_threads() {
    const int requested = requested_threads.load();
    return requested > 0 ? requested : default_threads();
}

bool built_with_openmp() {
#ifdef VPP_HAVE_OPENMP
    return true;
#else
    return false;
#endif
}

namespace detail {

void parallel_for(std::int64_t count, std::int64_t total_work,
                  const std::function<void(std::int64_t, std::int64_t)>& fn) {
    if (count <= 0) return;
    const std::int64_t workers =
        std::min<std::int64_t>(count, total_work < kMinParallelWork ? 1 : num_threads());
    if (workers <= 1) {
        fn(0, count);
        return;
    }
#ifdef VPP_HAVE_OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(static_cast<int>(workers))
    for (std::int64_t worker = 0; worker < workers; ++worker) {
        fn(count * worker / workers, count * (worker + 1) / workers);
    }
#else
    std::vector<std::thread> threads;
    threads.reserve(static_cast<std::size_t>(workers - 1));
    for (std::int64_t worker = 1; worker < workers; ++worker) {
        threads.emplace_back(fn, count * worker / workers, count * (worker + 1) / workers);
    }
    fn(0, count / workers);
    for (auto& thread : threads) thread.join();
#endif
}

}  // namespace detail
}  // namespace vpp
