// Stand-in for <cuda_runtime.h> when raster_cuda.cu is compiled by the host compiler against the
// CPU harness (this directory is on the include path of that build only). See cuda_emu.h.
#pragma once
#include "cuda_emu.h"
