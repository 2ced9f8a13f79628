"""fasttrain microbenchmark suite: kernels, collectives and end-to-end training, each measured
against this machine's limits and the alternatives a user would pick, in the same run."""
