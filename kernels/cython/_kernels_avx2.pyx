# The kernels of _kernels.pyx compiled for x86-64 CPUs with AVX2 and FMA (setup.py adds
# -mavx2 -mfma): 8-wide float loops and fused multiply-adds in the activations, losses and
# optimizer steps. fastnn.kernels.cython imports this module where the CPU has both.
include "_kernels.pyx"
