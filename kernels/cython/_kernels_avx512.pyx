# The kernels of _kernels.pyx compiled for x86-64 CPUs with AVX-512 (setup.py adds -mavx2
# -mfma -mavx512f -mavx512vl -mavx512bw -mavx512dq): 16-wide float loops in the activations,
# gradients, losses and optimizer steps. fastnn.kernels.cython imports this module where the
# CPU has all of them.
include "_kernels.pyx"
