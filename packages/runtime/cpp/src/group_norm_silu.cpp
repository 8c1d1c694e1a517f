#include <cmath>
#include <cstdint>

#include "cpu_dispatch.h"
#include "fast_math.h"
#include "parallel.h"
#include "vpp/kernels.h"

namespace vpp {
namespace {

struct Moments {
    double mean;
    double variance;
};

// One pass over the group in double, shifted by the first value so that a large common
// offset does not cancel E[x^2] - E[x]^2 away.
VPP_CPU_CLONES Moments group_moments(const float* values, std::int64_t count) {
    const double shift = values[0];
    double sum = 0.0;
    double sum_squares = 0.0;
#pragma omp simd reduction(+ : sum, sum_squares)
    for (std::int64_t i = 0; i < count; ++i) {
        const double centred = static_cast<double>(values[i]) - shift;
        sum += centred;
        sum_squares += centred * centred;
    }
    const double mean_centred = sum / static_cast<double>(count);
    const double variance = sum_squares / static_cast<double>(count) - mean_centred * mean_centred;
    return {mean_centred + shift, variance > 0.0 ? variance : 0.0};
}

VPP_CPU_CLONES void normalise_channel(const float* x, float* y, std::int64_t spatial, float scale, float shift,
                       bool apply_silu) {
    if (apply_silu) {
#pragma omp simd
        for (std::int64_t i = 0; i < spatial; ++i) y[i] = detail::silu(x[i] * scale + shift);
    } else {
#pragma omp simd
        for (std::int64_t i = 0; i < spatial; ++i) y[i] = x[i] * scale + shift;
    }
}

}  // namespace

void group_norm_silu_items(const float* x, const float* weight, const float* bias, float* y,
                           std::int64_t channels, std::int64_t spatial, std::int64_t num_groups,
                           float eps, bool apply_silu, std::int64_t begin, std::int64_t end) {
    const std::int64_t channels_per_group = channels / num_groups;
    const std::int64_t group_size = channels_per_group * spatial;
    if (group_size == 0) return;
    for (std::int64_t item = begin; item < end; ++item) {
        const std::int64_t group = item % num_groups;
        const std::int64_t offset = item * group_size;
        const Moments moments = group_moments(x + offset, group_size);
        const double inv_std = 1.0 / std::sqrt(moments.variance + static_cast<double>(eps));
        for (std::int64_t local = 0; local < channels_per_group; ++local) {
            const std::int64_t channel = group * channels_per_group + local;
            const double gamma = weight ? weight[channel] : 1.0;
            const double beta = bias ? bias[channel] : 0.0;
            const double scale = inv_std * gamma;
            const double shift = beta - moments.mean * scale;
            const std::int64_t channel_offset = offset + local * spatial;
            normalise_channel(x + channel_offset, y + channel_offset, spatial,
                              static_cast<float>(scale), static_cast<float>(shift), apply_silu);
        }
    }
}

void group_norm_silu(const float* x, const float* weight, const float* bias, float* y,
                     std::int64_t batch, std::int64_t channels, std::int64_t spatial,
                     std::int64_t num_groups, float eps, bool apply_silu) {
    if (channels / num_groups * spatial == 0) return;
    detail::parallel_for(
        batch * num_groups, batch * channels * spatial, [&](std::int64_t begin, std::int64_t end) {
            group_norm_silu_items(x, weight, bias, y, channels, spatial, num_groups, eps,
                                  apply_silu, begin, end);
        });
}

}  // namespace vpp
