#include <algorithm>
#include <cmath>
#include <cstdint>

#include "vpp/cuda_attention_sampler.h"

namespace vpp::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void axpby_kernel(const float* x, const float* f, float* out, std::int64_t count,
                             float a, float b) {
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
         i < count; i += stride) {
        out[i] = a * x[i] + b * f[i];
    }
}

cudaError_t launch_axpby(const float* x, const float* f, float* out, std::int64_t count,
                         double a, double b, cudaStream_t stream) {
    if (count == 0) return cudaSuccess;
    // Enough blocks to fill any current GPU; the grid-stride loop covers the rest.
    const std::int64_t blocks = std::min<std::int64_t>((count + kThreads - 1) / kThreads, 65535);
    axpby_kernel<<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
        x, f, out, count, static_cast<float>(a), static_cast<float>(b));
    return cudaGetLastError();
}

// Same derivations as the CPU kernels (sampler_step.cpp), kept here so the .cu files compile
// on their own.
void precondition(double sigma, double sigma_data, Parameterisation param, double& c_skip,
                  double& c_out) {
    const double total = sigma * sigma + sigma_data * sigma_data;
    c_skip = sigma_data * sigma_data / total;
    c_out = sigma * sigma_data / std::sqrt(total);
    if (param == Parameterisation::kV) c_out = -c_out;
}

}  // namespace

cudaError_t edm_denoise(const float* x, const float* f, float* out, std::int64_t count,
                        double sigma, double sigma_data, Parameterisation param,
                        cudaStream_t stream) {
    double c_skip, c_out;
    precondition(sigma, sigma_data, param, c_skip, c_out);
    return launch_axpby(x, f, out, count, c_skip, c_out, stream);
}

cudaError_t ddim_step(const float* x, const float* f, float* out, std::int64_t count,
                      double sigma, double sigma_next, double sigma_data, Parameterisation param,
                      cudaStream_t stream) {
    double c_skip, c_out;
    precondition(sigma, sigma_data, param, c_skip, c_out);
    const double ratio = sigma_next / sigma;
    return launch_axpby(x, f, out, count, ratio + (1.0 - ratio) * c_skip, (1.0 - ratio) * c_out,
                        stream);
}

cudaError_t euler_step(const float* x, const float* f, float* out, std::int64_t count,
                       double sigma, double sigma_next, double sigma_data, Parameterisation param,
                       cudaStream_t stream) {
    double c_skip, c_out;
    precondition(sigma, sigma_data, param, c_skip, c_out);
    const double step = (sigma_next - sigma) / sigma;
    return launch_axpby(x, f, out, count, 1.0 + step * (1.0 - c_skip), -step * c_out, stream);
}

}  // namespace vpp::cuda
