// OpenBLAS runs its parallel GEMM jobs on our OpenMP pool instead of its own pthread pool
// (openblas_set_threads_callback_function, OpenBLAS >= 0.3.27, from OpenBLAS PR #2255): on a
// small machine two busy-waiting pools (libgomp's and OpenBLAS's) would fight for the same cores
// whenever an OpenMP kernel follows a GEMM or the other way round.
#include <omp.h>

#include "blas.h"

namespace ft::blas {
namespace {

// OpenBLAS's level-3 jobs wait on each other's progress, so all `numjobs` must run at the same
// time: the region asks for exactly that many threads. Callers never reach here from inside one
// of our own parallel regions (there OpenBLAS is set to one thread, see SingleThreaded), where
// OpenMP would grant only one thread.
void run_on_openmp(int /*sync*/, openblas_dojob_callback dojob, int numjobs, size_t jobdata_elsize,
                   void* jobdata, int dojob_data) {
#pragma omp parallel for num_threads(numjobs) schedule(static, 1)
  for (int i = 0; i < numjobs; ++i)
    dojob(omp_get_thread_num(), static_cast<char*>(jobdata) + static_cast<size_t>(i) * jobdata_elsize,
          dojob_data);
}

struct Register {
  Register() { scipy_openblas_set_threads_callback_function(run_on_openmp); }
} register_at_load;

}  // namespace
}  // namespace ft::blas
