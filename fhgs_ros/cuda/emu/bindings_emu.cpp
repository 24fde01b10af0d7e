// bindings.cpp built for the CUDA-emulator test extension fhgs_ros._native_cuda_emu: compiled with
// FHGS_WITH_CUDA and FHGS_CUDA_EMU, so that CPU tensors run through the CUDA stages of
// raster_cuda.cu on the CPU harness (see cuda_emu.h). A separate file so that its object does not
// collide with the one of fhgs_ros._native.
#include "../bindings.cpp"
