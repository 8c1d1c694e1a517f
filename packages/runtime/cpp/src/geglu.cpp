#include <cstdint>

#include "cpu_dispatch.h"
#include "fast_math.h"
#include "parallel.h"
#include "vpp/kernels.h"

namespace vpp {

VPP_CPU_CLONES void geglu_range(const float* value, const float* gate, float* out, std::int64_t begin,
                                std::int64_t end) {
#pragma omp simd
    for (std::int64_t i = begin; i < end; ++i) out[i] = value[i] * detail::gelu(gate[i]);
}

void geglu(const float* value, const float* gate, float* out, std::int64_t count) {
    // Work estimate for parallel_for (whether helpers are worth waking): the erf makes each
    // value cost about 16 plain operations.
    detail::parallel_for(count, count * 16, [&](std::int64_t begin, std::int64_t end) {
        geglu_range(value, gate, out, begin, end);
    });
}

}  // namespace vpp
