"""Where and how the numbers are computed: device, threads, shards, processes and the own kernels."""
