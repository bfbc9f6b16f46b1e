/* cblas_sgemm for a runner's MLX: a product with one row goes to cblas_sgemv.
 *
 * Why: MLX's CPU backend calls cblas_sgemm for every matmul, and a decode step multiplies
 * one row of activations by each weight matrix. OpenBLAS before 0.3.27 (Debian 12 ships
 * 0.3.21) runs such a call through its general GEMM, which packs the whole weight matrix
 * on every call; sgemv reads it once (the bundled model's 49152 x 576 head: 17 ms as
 * sgemm, 7 ms as sgemv on a 2-core Xeon; decode figures in docs/benchmarks.md). Newer
 * OpenBLAS builds forward such calls themselves.
 *
 * Preloaded before OpenBLAS (exo/engine/blas.py): every other call, and every call when
 * the next library has no cblas_sgemv, goes on to the next cblas_sgemm unchanged.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int,
                         const float *, int, float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *,
                         int, float, float *, int);

static sgemm_fn next_sgemm;
static sgemv_fn next_sgemv;

__attribute__((constructor)) static void find_next(void) {
  next_sgemm = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
  next_sgemv = (sgemv_fn)dlsym(RTLD_NEXT, "cblas_sgemv");
}

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c,
                 int ldc) {
  if (next_sgemm == NULL) {
    fprintf(stderr, "exo gemv forward: no cblas_sgemm after this library\n");
    abort();
  }
  if (order == ROW_MAJOR && m == 1 && next_sgemv != NULL) {
    /* c (1 x n) = a (1 x k) * op(b): the vector a steps by lda when stored transposed. */
    int step_a = trans_a == TRANS ? lda : 1;
    if (trans_b == TRANS) /* b is n x k: c = b a */
      next_sgemv(ROW_MAJOR, NO_TRANS, n, k, alpha, b, ldb, a, step_a, beta, c, 1);
    else /* b is k x n: c = b^T a */
      next_sgemv(ROW_MAJOR, TRANS, k, n, alpha, b, ldb, a, step_a, beta, c, 1);
    return;
  }
  next_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
