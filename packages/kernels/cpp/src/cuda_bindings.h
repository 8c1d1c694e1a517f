// Python bindings of the CUDA kernels (built only with VPP_WITH_CUDA).
#pragma once

#include <pybind11/pybind11.h>

namespace vpp {

// Adds cuda_device_count() and cuda_* twins of the CPU functions that take and return numpy
// arrays, staging them through device memory: the parity tests' entry point, not a fast path.
void bind_cuda_kernels(pybind11::module_& module);

}  // namespace vpp
