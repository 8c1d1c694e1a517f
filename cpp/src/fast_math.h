// Branch-free exp written so that GCC/Clang vectorise the loops that call it (glibc's expf
// only vectorises under -ffast-math, which would also change the reductions' rounding).
#pragma once

#include <bit>
#include <cstdint>

namespace vpp::detail {

// exp(x) to about 2 ulp on [-87.3, 88]; 0 below, clamped to exp(88) above.
inline float fast_exp(float x) {
    constexpr float kLog2e = 1.44269504088896341f;
    constexpr float kLn2Hi = 0.693359375f;  // exact in float: n * kLn2Hi has no rounding
    constexpr float kLn2Lo = -2.12194440e-4f;
    constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    constexpr float kLowest = -87.3f;
    constexpr float kHighest = 88.0f;  // keeps n <= 127, so 2^n stays finite
    const bool underflows = x < kLowest;
    const float clamped = x < kLowest ? kLowest : (x > kHighest ? kHighest : x);
    const float shifted = clamped * kLog2e + kRoundMagic;
    const float n = shifted - kRoundMagic;
    const float r = (clamped - n * kLn2Hi) - n * kLn2Lo;
    // Taylor series of e^r to r^7 on |r| <= ln2/2: truncation error < 2e-8 relative.
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const std::int32_t exponent = std::bit_cast<std::int32_t>(shifted) - 0x4B400000;
    const float two_to_n = std::bit_cast<float>((exponent + 127) << 23);
    return underflows ? 0.0f : p * two_to_n;
}

inline float silu(float x) { return x / (1.0f + fast_exp(-x)); }

}  // namespace vpp::detail
