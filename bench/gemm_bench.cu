// cuBLASLt GEMM wrapper (kernels/cuda/gemm.h) at Llama-3-8B linear-layer shapes: decode (M = 1, 16)
// and prefill (M = 4096) × (K → N) = 4096→4096 (q/o proj), 4096→14336 (gate/up), 14336→4096 (down),
// 4096→128256 (lm_head). bf16 in/out, fp32 accumulation.
//
// Method (GPU.md "How to measure"): random inputs (never zeros); enough copies of (x, W, y) that one
// round of them exceeds 2× L2, rotated every call, so weights come from HBM as in a real forward;
// warm-up (--warmup-ms: sustained load first, so that clocks have settled); then
//   eager: each call timed with its own pair of CUDA events, median over --reps calls;
//   graph: --graph-calls calls (rotating) captured in one CUDA graph, each replay timed, median / calls
//          (no launch overhead: what decode under CUDA graphs sees).
// Reports TFLOP/s (2·M·N·K) and TB/s (bytes that must move: x, W and y once).
// Usage: gemm_bench [--reps N] [--graph-calls N] [--warmup-ms N] [--csv] [--only NAME:M]   (--csv: one line per
// shape, read by bench/gemm_peer.py)
//        [--tuning timed|heuristic] (GemmTuning; default timed) [--m 1,8,...] (rows; default 1,16,4096)
//        [--engine-shapes] (the forward pass's fused shapes instead: qkv 4096→6144, o 4096→4096,
//        gate_up 4096→28672, down 14336→4096, lm_head 4096→128256)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/gemm.h"

namespace {

using sparseserve::kernels::cuda::DeviceBuffer;
using sparseserve::kernels::cuda::Gemm;
using sparseserve::kernels::cuda::GemmArgs;

// Fills with uniform values in [-scale, scale) from a per-element hash (deterministic, no RNG state).
__global__ void fill_random_kernel(__nv_bfloat16* p, size_t n, uint32_t salt, float scale) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B9u ^ salt ^ static_cast<uint32_t>(i >> 32) * 0x85EBCA6Bu;
    h ^= h >> 16;
    h *= 0x7FEB352Du;
    h ^= h >> 15;
    h *= 0x846CA68Bu;
    h ^= h >> 16;
    p[i] = __float2bfloat16_rn((static_cast<float>(h >> 8) * (1.0f / 8388608.0f) - 1.0f) * scale);
  }
}

void fill_random(DeviceBuffer<__nv_bfloat16>& b, uint32_t salt, float scale) {
  fill_random_kernel<<<1024, 256>>>(b.data(), b.size(), salt, scale);
  CUDA_CHECK_LAUNCH();
}

struct Shape {
  int64_t M, K, N;
  const char* name;
};

struct Timing {
  double eager_us, graph_us;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

Timing time_shape(Gemm& gemm, const Shape& s, int reps, int graph_calls, int warmup_ms, size_t l2_bytes,
                  cudaStream_t stream) {
  const size_t set_bytes = 2 * size_t(s.M * s.K + s.N * s.K + s.M * s.N);
  const int copies = static_cast<int>(std::max<size_t>(1, (2 * l2_bytes + set_bytes - 1) / set_bytes));
  std::vector<DeviceBuffer<__nv_bfloat16>> xs, ws, ys;
  for (int c = 0; c < copies; ++c) {
    xs.emplace_back(size_t(s.M * s.K));
    ws.emplace_back(size_t(s.N * s.K));
    ys.emplace_back(size_t(s.M * s.N));
    fill_random(xs.back(), 2 * c + 1, 1.0f);
    fill_random(ws.back(), 2 * c + 2, 0.02f);
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto args = [&](int c) {
    return GemmArgs{.x = xs[size_t(c)].data(), .w = ws[size_t(c)].data(), .y = ys[size_t(c)].data(), .M = s.M,
                    .N = s.N, .K = s.K};
  };
  for (int i = 0; i < std::max(10, copies); ++i) gemm.run(args(i % copies), stream);  // warm-up + plans
  // Sustained load before timing, so the clocks have settled where a peer measured the same way
  // finds them (the H200 runs large GEMMs slower after a second of load than from idle).
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(warmup_ms); ++i) {
    for (int j = 0; j < 4; ++j) gemm.run(args((4 * i + j) % copies), stream);
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> samples;
  for (int i = 0; i < reps; ++i) {
    CUDA_CHECK(cudaEventRecord(start, stream));
    gemm.run(args(i % copies), stream);
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    samples.push_back(1000.0 * ms);
  }
  Timing t{median(samples), 0.0};

  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < graph_calls; ++i) gemm.run(args(i % copies), stream);
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_CHECK(cudaGraphLaunch(exec, stream));  // warm-up replay
  samples.clear();
  for (int i = 0; i < std::max(5, reps / 10); ++i) {
    CUDA_CHECK(cudaEventRecord(start, stream));
    CUDA_CHECK(cudaGraphLaunch(exec, stream));
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    samples.push_back(1000.0 * ms / graph_calls);
  }
  t.graph_us = median(samples);
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 100, graph_calls = 20, warmup_ms = 0;
  bool csv = false;
  std::string only;  // "name:M", one shape
  auto tuning = sparseserve::kernels::cuda::GemmTuning::kTimed;
  std::vector<int64_t> ms{1, 16, 4096};
  bool engine_shapes = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) {
      reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--graph-calls" && i + 1 < argc) {
      graph_calls = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--warmup-ms" && i + 1 < argc) {
      warmup_ms = std::max(0, std::atoi(argv[++i]));
    } else if (a == "--csv") {
      csv = true;
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else if (a == "--tuning" && i + 1 < argc) {
      const std::string t = argv[++i];
      tuning = t == "heuristic" ? sparseserve::kernels::cuda::GemmTuning::kHeuristic
                                : sparseserve::kernels::cuda::GemmTuning::kTimed;
    } else if (a == "--m" && i + 1 < argc) {
      ms.clear();
      for (const char* p = argv[++i]; *p != 0;) {
        char* end = nullptr;
        ms.push_back(std::max<int64_t>(1, std::strtoll(p, &end, 10)));
        p = *end == ',' ? end + 1 : end;
      }
    } else if (a == "--engine-shapes") {
      engine_shapes = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--reps N] [--graph-calls N] [--warmup-ms N] [--csv] [--only NAME:M] "
                   "[--tuning timed|heuristic] [--m 1,8,...] [--engine-shapes]\n",
                   argv[0]);
      return 2;
    }
  }
  try {
    if (sparseserve::kernels::cuda::cuda_device_count() == 0) {
      std::fprintf(stderr, "gemm_bench: no CUDA device\n");
      return 1;
    }
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    const size_t l2 = size_t(prop.l2CacheSize);
    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    Gemm gemm(Gemm::kDefaultWorkspaceBytes, tuning);

    struct Layer {
      int64_t K, N;
      const char* name;
    };
    const std::vector<Layer> layers =
        engine_shapes ? std::vector<Layer>{{4096, 6144, "qkv"},
                                           {4096, 4096, "o_proj"},
                                           {4096, 28672, "gate_up"},
                                           {14336, 4096, "down"},
                                           {4096, 128256, "lm_head"}}
                      : std::vector<Layer>{{4096, 4096, "qo_proj"},
                                           {4096, 14336, "gate_up"},
                                           {14336, 4096, "down"},
                                           {4096, 128256, "lm_head"}};
    if (csv) {
      std::printf("name,M,K,N,eager_us,graph_us\n");
    } else {
      std::printf("# %s, %d SMs, L2 %zu MB; median of %d calls (eager), %d-call graphs\n", prop.name,
                  prop.multiProcessorCount, l2 >> 20, reps, graph_calls);
      std::printf("%-8s %5s %6s %6s | %10s %8s %7s | %10s %8s %7s\n", "layer", "M", "K", "N", "eager us", "TFLOP/s",
                  "TB/s", "graph us", "TFLOP/s", "TB/s");
    }
    for (const int64_t M : ms) {
      for (const auto& l : layers) {
        const Shape s{M, l.K, l.N, l.name};
        if (!only.empty() && only != std::string(l.name) + ":" + std::to_string(M)) continue;
        const Timing t = time_shape(gemm, s, reps, graph_calls, warmup_ms, l2, stream);
        const double flop = 2.0 * double(M) * double(l.N) * double(l.K);
        const double bytes = 2.0 * double(M * l.K + l.N * l.K + M * l.N);
        if (csv) {
          std::printf("%s,%lld,%lld,%lld,%.3f,%.3f\n", l.name, static_cast<long long>(M),
                      static_cast<long long>(l.K), static_cast<long long>(l.N), t.eager_us, t.graph_us);
        } else {
          std::printf("%-8s %5lld %6lld %6lld | %10.2f %8.1f %7.2f | %10.2f %8.1f %7.2f\n", l.name,
                      static_cast<long long>(M), static_cast<long long>(l.K), static_cast<long long>(l.N), t.eager_us,
                      flop / t.eager_us * 1e-6, bytes / t.eager_us * 1e-6, t.graph_us, flop / t.graph_us * 1e-6,
                      bytes / t.graph_us * 1e-6);
        }
        std::fflush(stdout);
      }
    }
    CUDA_CHECK(cudaStreamDestroy(stream));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gemm_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
