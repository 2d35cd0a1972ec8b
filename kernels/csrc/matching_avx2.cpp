// The matching kernels built for avx2: -mavx2 -mfma (CMakeLists.txt).
#define C4RT_ISA avx2
#define C4RT_NAME "avx2"
#define C4RT_LANES 8
#define C4RT_TABLE kAvx2
#include "matching_simd.h"
