// flash_attn_rocm::kernel_family: which kernels a call runs, as the dispatch decides it
// (csrc/kernels/dispatch.cu), and for the portable kernels why not the Hopper ones.
#include <string>
#include <vector>

#include "attention_params.h"
#include "ops.h"

namespace flash_api {

// q, k, v (and dout for a backward) are optional [b, s, h, d] views of the call's operands: with
// them the answer covers their strides (TMA must describe them); without them it leaves them out.
// paged: K/V through a block table (k, v then [num_pages, page_size, h_k, d]). extras: softcap,
// ALiBi or dropout; dropout: dropout among them.
std::vector<std::string> kernel_family(bool backward, int64_t head_dim, bool bf16, bool extras,
                                       const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k,
                                       const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& dout,
                                       bool paged, bool dropout) {
  TORCH_CHECK(!(backward && paged), "kernel_family: paged K/V has no backward");
  flash::BwdParams params{};
  const bool with_operands = q.has_value() && k.has_value() && v.has_value() && (!backward || dout.has_value());
  if (with_operands) {
    for (const at::Tensor* t : {&*q, &*k, &*v}) TORCH_CHECK(t->dim() == 4, "kernel_family: operands must be 4-D");
    const at::Tensor no_lse = at::empty({0}, q->options().dtype(at::kFloat));
    set_attention_params(params, *q, *k, *v, *q, no_lse, 1.0);
    if (backward) {
      TORCH_CHECK(dout->sizes() == q->sizes(), "kernel_family: dout must have the shape of q");
      params.dout = dout->data_ptr();
      params.do_batch_stride = dout->stride(0), params.do_row_stride = dout->stride(1);
      params.do_head_stride = dout->stride(2);
    }
  }
  const flash::KernelChoice choice =
      flash::kernel_family(backward, static_cast<int>(head_dim), bf16 ? flash::DType::kBFloat16 : flash::DType::kFloat16,
                           extras, dropout, paged, with_operands ? &params : nullptr);
  const std::string family = choice.head_dim == 0 ? std::string(choice.family)
                                                  : std::string(choice.family) + ":hdim" + std::to_string(choice.head_dim);
  return {family, choice.not_hopper == nullptr ? "" : choice.not_hopper};
}

}  // namespace flash_api
