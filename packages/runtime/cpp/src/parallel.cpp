#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "vpp/kernels.h"

namespace vpp {
namespace {

std::atomic<int> requested_threads{0};

// Cached: hardware_concurrency() reads /sys on Linux, microseconds a call.
int hardware_threads() {
    static const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    return threads;
}

struct Job {
    const std::function<void(std::int64_t)>* run_chunk;
    std::int64_t chunks;
    std::atomic<std::int64_t> next_chunk{0};
    std::atomic<std::int64_t> finished_chunks{0};

    // Returns once no chunk is left to claim; chunks claimed by others may still be running.
    void work() {
        for (std::int64_t chunk = next_chunk.fetch_add(1); chunk < chunks; chunk = next_chunk.fetch_add(1)) {
            (*run_chunk)(chunk);
            finished_chunks.fetch_add(1, std::memory_order_release);
        }
    }
};

class HelperPool {
  public:
    explicit HelperPool(int helpers) {
        for (int i = 0; i < helpers; ++i) threads_.emplace_back([this] { serve(); });
    }

    int helpers() const { return static_cast<int>(threads_.size()); }

    // One job at a time: a second concurrent caller (another Python thread) runs inline.
    bool try_run(std::int64_t chunks, const std::function<void(std::int64_t)>& run_chunk) {
        std::unique_lock<std::mutex> running(run_mutex_, std::try_to_lock);
        if (!running.owns_lock()) return false;
        auto job = std::make_shared<Job>();
        job->run_chunk = &run_chunk;
        job->chunks = chunks;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            job_ = job;
            ++generation_;
        }
        wake_.notify_all();
        job->work();
        // Only chunks a helper already claimed are waited for; they are short by construction.
        while (job->finished_chunks.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
        std::lock_guard<std::mutex> lock(mutex_);
        job_.reset();
        return true;
    }

  private:
    void serve() {
        std::uint64_t seen = 0;
        for (;;) {
            std::shared_ptr<Job> job;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_ != seen; });
                seen = generation_;
                job = job_;
            }
            // A job that finished before this helper woke has no chunks left: nothing runs.
            if (job) job->work();
        }
    }

    std::mutex run_mutex_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::uint64_t generation_ = 0;
    std::shared_ptr<Job> job_;
    std::vector<std::thread> threads_;
};

HelperPool& helper_pool() {
    // Deliberately never destroyed: joining threads during interpreter shutdown can hang,
    // and the helpers hold no resources beyond their stacks.
    static HelperPool* pool = new HelperPool(hardware_threads() - 1);
    return *pool;
}

}  // namespace

void set_num_threads(int num_threads) { requested_threads.store(std::max(0, num_threads)); }

int num_threads() {
    const int requested = requested_threads.load();
    return requested > 0 ? std::min(requested, hardware_threads()) : hardware_threads();
}

namespace detail {

void parallel_for(std::int64_t count, std::int64_t total_work,
                  const std::function<void(std::int64_t, std::int64_t)>& fn) {
    if (count <= 0) return;
    const int threads = num_threads();
    if (threads <= 1 || count == 1 || total_work < kMinParallelWork) {
        fn(0, count);
        return;
    }
    // A few chunks per thread, so that a helper arriving late still finds work to share.
    const std::int64_t chunks = std::min<std::int64_t>(count, std::int64_t{4} * threads);
    const std::function<void(std::int64_t)> run_chunk = [&](std::int64_t chunk) {
        fn(count * chunk / chunks, count * (chunk + 1) / chunks);
    };
    if (!helper_pool().try_run(chunks, run_chunk)) fn(0, count);
}

}  // namespace detail
}  // namespace vpp
