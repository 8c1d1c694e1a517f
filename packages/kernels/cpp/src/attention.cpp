#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu_dispatch.h"
#include "fast_math.h"
#include "parallel.h"
#include "vpp/attention_sampler.h"

namespace vpp {
namespace {

// Keys are visited in blocks: scores for a block are computed first, then one rescale of the
// running accumulator per block instead of per key (the online softmax of Milakov & Gimelshein).
constexpr std::int64_t kKeyBlock = 64;
constexpr float kMinusInfinity = -std::numeric_limits<float>::infinity();

struct RowProblem {
    const float* k;
    const float* v;
    std::int64_t lk;
    std::int64_t d;
    std::int64_t dv;
    float scale;
    const bool* mask_row;  // null when every key is allowed
    std::int64_t mask_stride_k;
    std::int64_t causal_limit;  // keys j < causal_limit are allowed
};

VPP_CPU_CLONES void attend_row(const float* q, float* out, const RowProblem& p, float* scores, float* accum) {
    float running_max = kMinusInfinity;
    float running_sum = 0.0f;
    std::fill(accum, accum + p.dv, 0.0f);
    const std::int64_t key_end = std::min(p.lk, p.causal_limit);
    for (std::int64_t block = 0; block < key_end; block += kKeyBlock) {
        const std::int64_t block_len = std::min(kKeyBlock, key_end - block);
        float block_max = kMinusInfinity;
        for (std::int64_t j = 0; j < block_len; ++j) {
            const std::int64_t key = block + j;
            float score = kMinusInfinity;
            if (!p.mask_row || p.mask_row[key * p.mask_stride_k]) {
                const float* k_row = p.k + key * p.d;
                float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                for (std::int64_t c = 0; c < p.d; ++c) dot += q[c] * k_row[c];
                score = dot * p.scale;
            }
            scores[j] = score;
            block_max = std::max(block_max, score);
        }
        if (block_max == kMinusInfinity) continue;
        const float new_max = std::max(running_max, block_max);
        const float correction = detail::fast_exp(running_max - new_max);
        running_sum *= correction;
#pragma omp simd
        for (std::int64_t c = 0; c < p.dv; ++c) accum[c] *= correction;
#pragma omp simd
        for (std::int64_t j = 0; j < block_len; ++j) scores[j] = detail::fast_exp(scores[j] - new_max);
        for (std::int64_t j = 0; j < block_len; ++j) {
            const float weight = scores[j];
            if (weight == 0.0f) continue;
            running_sum += weight;
            const float* v_row = p.v + (block + j) * p.dv;
#pragma omp simd
            for (std::int64_t c = 0; c < p.dv; ++c) accum[c] += weight * v_row[c];
        }
        running_max = new_max;
    }
    const float inv_sum = running_sum > 0.0f ? 1.0f / running_sum : 0.0f;
#pragma omp simd
    for (std::int64_t c = 0; c < p.dv; ++c) out[c] = accum[c] * inv_sum;
}

}  // namespace

void scaled_dot_product_attention(const float* q, const float* k, const float* v, float* out,
                                  std::int64_t batch, std::int64_t heads, std::int64_t lq,
                                  std::int64_t lk, std::int64_t d, std::int64_t dv, float scale,
                                  const AttentionMask& mask, bool causal) {
    const std::int64_t rows = batch * heads * lq;
    const std::int64_t work = rows * lk * (d + dv);
    detail::parallel_for(rows, work, [&](std::int64_t begin, std::int64_t end) {
        std::vector<float> scores(kKeyBlock);
        std::vector<float> accum(static_cast<std::size_t>(std::max<std::int64_t>(dv, 1)));
        for (std::int64_t row = begin; row < end; ++row) {
            const std::int64_t i = row % lq;
            const std::int64_t bh = row / lq;
            const std::int64_t b = bh / heads;
            const std::int64_t h = bh % heads;
            RowProblem problem{k + bh * lk * d, v + bh * lk * dv, lk, d, dv, scale, nullptr, 0,
                               causal ? i + 1 : lk};
            if (mask.data) {
                problem.mask_row = mask.data + b * mask.stride_b + h * mask.stride_h +
                                   i * mask.stride_q;
                problem.mask_stride_k = mask.stride_k;
            }
            attend_row(q + row * d, out + row * dv, problem, scores.data(), accum.data());
        }
    });
}

}  // namespace vpp
