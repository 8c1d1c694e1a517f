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

// 1 + erf(x), branch-free (both ranges are computed and one is selected, so loops vectorise),
// to about 2e-7 absolute everywhere and 2e-6 relative for x < -1, where 1 + erf(x) = erfc(-x)
// is small and computing it as 1 + erf would cancel. |x| <= 1: 1 + x P(x^2); 1 < |x| < 4:
// erfc(|x|) = exp(-x^2) Q(|x| - 2.5); |x| >= 4: erfc(|x|) < 1.6e-8, taken as 0. P (degree 5
// in x^2) and Q (degree 10, no division) are least-squares fits on Chebyshev nodes, made for
// this file (docs/runtime-cpu-profile.md says how).
inline float one_plus_erf(float x) {
    const float a = x < 0.0f ? -x : x;
    const float s = x * x;
    float p = -5.696713342e-04f;
    p = p * s + 4.934519064e-03f;
    p = p * s + -2.672698908e-02f;
    p = p * s + 1.128078923e-01f;
    p = p * s + -3.761241436e-01f;
    p = p * s + 1.128379107e+00f;
    const float near_zero = 1.0f + x * p;
    const float clamped = a < 1.0f ? 1.0f : (a > 4.0f ? 4.0f : a);
    const float u = clamped - 2.5f;
    float q = 1.671801783e-06f;
    q = q * u + -6.386085715e-06f;
    q = q * u + 1.435366266e-05f;
    q = q * u + -5.358580893e-05f;
    q = q * u + 2.129720815e-04f;
    q = q * u + -7.389975945e-04f;
    q = q * u + 2.465982456e-03f;
    q = q * u + -7.999345660e-03f;
    q = q * u + 2.493820339e-02f;
    q = q * u + -7.434760034e-02f;
    q = q * u + 2.108063549e-01f;
    const float tail = a > 4.0f ? 0.0f : fast_exp(-clamped * clamped) * q;  // erfc(|x|)
    const float far = x < 0.0f ? tail : 2.0f - tail;
    return a <= 1.0f ? near_zero : far;
}

// GELU with the exact (erf) form, as torch.nn.functional.gelu(approximate="none").
inline float gelu(float x) { return 0.5f * x * one_plus_erf(x * 0.70710678118654752f); }

}  // namespace vpp::detail
