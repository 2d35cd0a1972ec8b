// The matching kernels built for generic: portable: SSE2 on x86-64, NEON on aarch64.
#define C4RT_ISA generic
#define C4RT_NAME "generic"
#define C4RT_LANES 4
#define C4RT_TABLE kGeneric
#include "matching_simd.h"
