// The matching kernels built for avx512: -mavx512f -mavx512dq -mavx512bw -mavx512vl -mavx2 -mfma (CMakeLists.txt).
#define C4RT_ISA avx512
#define C4RT_NAME "avx512"
#define C4RT_LANES 16
#define C4RT_TABLE kAvx512
#include "matching_simd.h"
