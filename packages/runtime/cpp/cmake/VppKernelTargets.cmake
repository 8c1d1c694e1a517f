# Build settings of the fused kernels, shared by vpp-runtime's custom-op library (this folder's
# CMakeLists.txt) and vpp-kernels' pybind11 module (packages/kernels/cpp), so that the kernels
# measured there are compiled as the ones ORT runs.

# The CPU kernels' compile options on `target`.
function(vpp_kernel_compile_options target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    # -fopenmp-simd honours the `omp simd` hints (vectorised reductions) without the OpenMP
    # runtime; errno-free maths lets sqrt inline; without trapping maths GCC may turn the
    # clamps in fast_exp into vector selects (else the SiLU and softmax loops stay scalar).
    # No -ffast-math: it would reorder the float reductions.
    target_compile_options(${target} PRIVATE -O3 -fopenmp-simd -fno-math-errno -fno-trapping-math -Wall -Wextra)
    if(VPP_NATIVE_ARCH)
      target_compile_options(${target} PRIVATE -march=native)
    endif()
  endif()
endfunction()

# A static library of CUDA kernels from `sources`, for VPP_CUDA_ARCHITECTURES.
function(vpp_add_cuda_kernels target)
  add_library(${target} STATIC ${ARGN})
  # CMake 3.25 knows no C++20 flag for nvcc; the .cu files need only C++17.
  set_target_properties(${target} PROPERTIES
    CUDA_ARCHITECTURES "${VPP_CUDA_ARCHITECTURES}"
    CUDA_STANDARD 17
    CUDA_STANDARD_REQUIRED ON)
  target_include_directories(${target} PUBLIC ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/../include)
  target_link_libraries(${target} PUBLIC CUDA::cudart_static)
endfunction()
