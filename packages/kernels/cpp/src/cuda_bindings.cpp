#include "cuda_bindings.h"

#include <cuda_runtime_api.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "vpp/cuda_attention_sampler.h"

namespace py = pybind11;

namespace vpp {
namespace {

void check(cudaError_t status, const char* what) {
    if (status != cudaSuccess) {
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
    }
}

// Device copy of a host buffer, freed when it goes out of scope.
class DeviceBuffer {
  public:
    explicit DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
        if (bytes_) check(cudaMalloc(&data_, bytes_), "cudaMalloc");
    }
    DeviceBuffer(const void* host, std::size_t bytes) : DeviceBuffer(bytes) {
        if (bytes_) check(cudaMemcpy(data_, host, bytes_, cudaMemcpyHostToDevice), "cudaMemcpy to device");
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() {
        if (data_) cudaFree(data_);
    }
    float* floats() const { return static_cast<float*>(data_); }
    void copy_to_host(void* host) const {
        if (bytes_) check(cudaMemcpy(host, data_, bytes_, cudaMemcpyDeviceToHost), "cudaMemcpy to host");
    }

  private:
    void* data_ = nullptr;
    std::size_t bytes_;
};

// The CPU bindings have validated shapes and dtypes before these are reached from Python
// (vpp.kernels routes backend="cuda" here after its own checks).
void require_float32_contiguous(const py::array& array, const char* name) {
    if (!array.dtype().is(py::dtype::of<float>()) || !(array.flags() & py::array::c_style)) {
        throw py::value_error(std::string(name) + " must be a C-contiguous float32 array");
    }
}

std::size_t float_bytes(const py::array& array) { return static_cast<std::size_t>(array.size()) * sizeof(float); }

py::array_t<float> empty_like(const py::array& reference) {
    return py::array_t<float>(std::vector<py::ssize_t>(reference.shape(), reference.shape() + reference.ndim()));
}

Parameterisation parse(const std::string& name) {
    if (name == "edm") return Parameterisation::kEdm;
    if (name == "v") return Parameterisation::kV;
    throw py::value_error("parameterisation must be 'edm' or 'v', got '" + name + "'");
}

py::array group_norm_silu_staged(const py::array& x, const std::optional<py::array>& weight,
                          const std::optional<py::array>& bias, std::int64_t num_groups, float eps,
                          bool apply_silu) {
    require_float32_contiguous(x, "x");
    if (x.ndim() < 2 || num_groups <= 0 || x.shape(1) % num_groups != 0) {
        throw py::value_error("x must be (N, C, ...) with C divisible by num_groups");
    }
    const std::int64_t channels = x.shape(1);
    std::int64_t spatial = 1;
    for (py::ssize_t axis = 2; axis < x.ndim(); ++axis) spatial *= x.shape(axis);
    for (const auto* param : {&weight, &bias}) {
        if (*param && (require_float32_contiguous(**param, "weight/bias"), (*param)->size() != channels)) {
            throw py::value_error("weight and bias must have C elements");
        }
    }
    DeviceBuffer device_x(x.data(), float_bytes(x));
    std::optional<DeviceBuffer> device_weight, device_bias;
    if (weight) device_weight.emplace(weight->data(), float_bytes(*weight));
    if (bias) device_bias.emplace(bias->data(), float_bytes(*bias));
    DeviceBuffer device_y(float_bytes(x));
    check(cuda::group_norm_silu(device_x.floats(), device_weight ? device_weight->floats() : nullptr,
                                device_bias ? device_bias->floats() : nullptr, device_y.floats(),
                                x.shape(0), channels, spatial, num_groups, eps, apply_silu, nullptr),
          "group_norm_silu launch");
    py::array_t<float> y = empty_like(x);
    device_y.copy_to_host(y.mutable_data());
    return y;
}

py::array geglu_staged(const py::array& value, const py::array& gate) {
    require_float32_contiguous(value, "value");
    require_float32_contiguous(gate, "gate");
    if (gate.size() != value.size()) throw py::value_error("gate must have the shape of value");
    DeviceBuffer device_value(value.data(), float_bytes(value));
    DeviceBuffer device_gate(gate.data(), float_bytes(gate));
    check(cuda::geglu(device_value.floats(), device_gate.floats(), device_value.floats(), value.size(), nullptr),
          "geglu launch");
    py::array_t<float> out = empty_like(value);
    device_value.copy_to_host(out.mutable_data());
    return out;
}

template <typename Launch>
py::array sampler_update(const py::array& x, const py::array& f, const std::optional<py::array>& out,
                         Launch launch) {
    require_float32_contiguous(x, "x");
    require_float32_contiguous(f, "f");
    if (f.size() != x.size()) throw py::value_error("f must have the shape of x");
    py::array result = out ? *out : py::array(empty_like(x));
    require_float32_contiguous(result, "out");
    if (result.size() != x.size()) throw py::value_error("out must have the shape of x");
    DeviceBuffer device_x(x.data(), float_bytes(x));
    DeviceBuffer device_f(f.data(), float_bytes(f));
    check(launch(device_x.floats(), device_f.floats(), device_x.floats(), x.size()), "sampler launch");
    device_x.copy_to_host(result.mutable_data());
    return result;
}

py::array attention_staged(const py::array& q, const py::array& k, const py::array& v,
                    const std::optional<py::array>& mask, bool causal, std::optional<double> scale) {
    for (const auto& [array, name] : {std::pair{&q, "q"}, std::pair{&k, "k"}, std::pair{&v, "v"}}) {
        require_float32_contiguous(*array, name);
        if (array->ndim() != 4) throw py::value_error(std::string(name) + " must be 4-D");
    }
    const std::int64_t batch = q.shape(0), heads = q.shape(1), lq = q.shape(2), d = q.shape(3);
    const std::int64_t lk = k.shape(2), dv = v.shape(3);
    if (k.shape(0) != batch || k.shape(1) != heads || k.shape(3) != d || v.shape(0) != batch ||
        v.shape(1) != heads || v.shape(2) != lk) {
        throw py::value_error("q, k, v shapes do not match (B, H, Lq, d), (B, H, Lk, d), (B, H, Lk, dv)");
    }
    // The mask goes to the device dense, so its strides there are the contiguous ones.
    std::optional<DeviceBuffer> device_mask;
    AttentionMask device_mask_view;
    if (mask) {
        py::array_t<bool, py::array::c_style | py::array::forcecast> dense(*mask);
        if (dense.ndim() != 4 || dense.shape(0) != batch || dense.shape(1) != heads ||
            dense.shape(2) != lq || dense.shape(3) != lk) {
            throw py::value_error("mask must have shape (B, H, Lq, Lk)");
        }
        device_mask.emplace(dense.data(), static_cast<std::size_t>(dense.size()));
        device_mask_view.data = reinterpret_cast<const bool*>(device_mask->floats());
        device_mask_view.stride_b = heads * lq * lk;
        device_mask_view.stride_h = lq * lk;
        device_mask_view.stride_q = lk;
        device_mask_view.stride_k = 1;
    }
    DeviceBuffer device_q(q.data(), float_bytes(q));
    DeviceBuffer device_k(k.data(), float_bytes(k));
    DeviceBuffer device_v(v.data(), float_bytes(v));
    py::array_t<float> out({batch, heads, lq, dv});
    DeviceBuffer device_out(float_bytes(out));
    const float softmax_scale = static_cast<float>(scale ? *scale : 1.0 / std::sqrt(static_cast<double>(d)));
    check(cuda::scaled_dot_product_attention(device_q.floats(), device_k.floats(), device_v.floats(),
                                             device_out.floats(), batch, heads, lq, lk, d, dv,
                                             softmax_scale, device_mask_view, causal, nullptr),
          "attention launch");
    device_out.copy_to_host(out.mutable_data());
    return out;
}

}  // namespace

void bind_cuda_kernels(py::module_& module) {
    module.def("cuda_device_count", [] {
        int count = 0;
        return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
    });
    module.def("cuda_group_norm_silu", &group_norm_silu_staged);
    module.def("cuda_geglu", &geglu_staged, py::arg("value"), py::arg("gate"));
    module.def("cuda_edm_denoise", [](const py::array& x, const py::array& f, double sigma, double sigma_data,
                                      const std::string& param, const std::optional<py::array>& out) {
        return sampler_update(x, f, out, [&](const float* dx, const float* df, float* dout, std::int64_t n) {
            return cuda::edm_denoise(dx, df, dout, n, sigma, sigma_data, parse(param), nullptr);
        });
    });
    module.def("cuda_ddim_step", [](const py::array& x, const py::array& f, double sigma, double sigma_next,
                                    double sigma_data, const std::string& param, const std::optional<py::array>& out) {
        return sampler_update(x, f, out, [&](const float* dx, const float* df, float* dout, std::int64_t n) {
            return cuda::ddim_step(dx, df, dout, n, sigma, sigma_next, sigma_data, parse(param), nullptr);
        });
    });
    module.def("cuda_euler_step", [](const py::array& x, const py::array& f, double sigma, double sigma_next,
                                     double sigma_data, const std::string& param, const std::optional<py::array>& out) {
        return sampler_update(x, f, out, [&](const float* dx, const float* df, float* dout, std::int64_t n) {
            return cuda::euler_step(dx, df, dout, n, sigma, sigma_next, sigma_data, parse(param), nullptr);
        });
    });
    module.def("cuda_scaled_dot_product_attention", &attention_staged, py::arg("q"), py::arg("k"), py::arg("v"),
               py::arg("mask") = py::none(), py::arg("causal") = false, py::arg("scale") = py::none());
}

}  // namespace vpp
