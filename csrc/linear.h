// The torch side of the packed-weight linear layers (csrc/linear.cpp); the layout, packing
// and kernels are torch-free in cpu/linear.h.
#pragma once

#include <ATen/core/Tensor.h>

#include "cpu/linear.h"

namespace llm {
// Checks that `packed` (+ `scales`) came from pack_linear_weight for an [n, k] weight and
// returns its view; errors name `op`.
PackedView packed_view(const at::Tensor& packed, const at::Tensor& scales, int64_t n, int64_t k, const char* op);
std::tuple<at::Tensor, at::Tensor> pack_linear_weight(const at::Tensor& weight, c10::string_view format);
}  // namespace llm
