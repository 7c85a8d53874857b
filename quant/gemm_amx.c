/* gemm_amx.c: the AMX-INT8 kernel (placeholder until written). */
#include "quant/quant_internal.h"
#include "util/util.h"

void q_gemm_amx(const struct q_linear *layer, const struct q_act *act, int t_begin, int t_end,
                float *y, int block_begin, int block_end)
{
    q_gemm_scalar(layer, act, t_begin, t_end, y, block_begin, block_end);
}
