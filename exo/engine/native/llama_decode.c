/* One decode step of a llama-family decoder, in float32, for one or several sequences at
 * once, as one call.
 *
 * Why: on a CPU, MLX runs a decode step of the bundled model as ~1000 primitives one after
 * another, ~19 ms of dispatch on top of the ~21 ms it takes to read the weights once
 * (docs/benchmarks.md). Here a layer is seven matrix products (cblas_sgemv for one
 * sequence, cblas_sgemm for several, each matrix read once for all of them, from the BLAS
 * loaded in the process: OpenBLAS in a runner) and a few loops over vectors of the
 * hidden size, so a step costs about what reading its weights costs.
 *
 * The weights are the MLX model's own float32 arrays (row-major, out x in, as
 * nn.Linear holds them); the caller keeps them alive. RoPE comes as cos/sin tables made
 * by the model's own rope module, so its frequencies and scaling (llama3, yarn) are
 * the model's; pairs are interleaved ("traditional", as GGUF-converted llamas have) or
 * halves. Keys and values live in caches the caller owns.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);
typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int,
                         const float *, int, float, float *, int);

typedef struct {
  const float *attn_norm, *wq, *wk, *wv, *wo, *mlp_norm, *wgate, *wup, *wdown;
} Layer;

typedef struct {
  int hidden, layers, heads, kv_heads, head_dim, inter, vocab, max_positions;
  int interleaved; /* RoPE pairs (2i, 2i+1), "traditional"; else (i, i + head_dim/2) */
  int slots;       /* sequences with caches of their own */
  int max_rows;    /* sequences fed in one call, at most */
  float eps;
  const float *embed;      /* vocab x hidden */
  const float *head;       /* vocab x hidden (the embedding when tied) */
  const float *final_norm; /* hidden */
  const Layer *layer;      /* layers */
  const float *rope_cos;   /* max_positions x head_dim/2 */
  const float *rope_sin;
  float *keys;   /* slots x layers x kv_heads x max_positions x head_dim */
  float *values; /* same */
  float *work;   /* exo_decode_work_floats(model) floats */
} Model;

static sgemv_fn sgemv;
static sgemm_fn sgemm;

/* The process's cblas_sgemv and cblas_sgemm (0: found; -1: not loaded). */
int exo_decode_init(void) {
  if (sgemv == NULL) sgemv = (sgemv_fn)dlsym(RTLD_DEFAULT, "cblas_sgemv");
  if (sgemm == NULL) sgemm = (sgemm_fn)dlsym(RTLD_DEFAULT, "cblas_sgemm");
  return sgemv == NULL || sgemm == NULL ? -1 : 0;
}

static size_t row_floats(const Model *m) {
  size_t q = (size_t)m->heads * m->head_dim, kv = (size_t)m->kv_heads * m->head_dim;
  /* x, normed, projection out; q, attention out; k, v; gate, up */
  return 3 * (size_t)m->hidden + 2 * q + 2 * kv + 2 * (size_t)m->inter;
}

size_t exo_decode_work_floats(const Model *m) {
  return (size_t)m->max_rows * row_floats(m) + m->max_positions; /* + attention scores */
}

/* y (rows x out) = x (rows x in) w^T, w being out x in: one read of w for every row. */
static void matmul(const float *w, int out, int in, int rows, const float *x, float *y) {
  if (rows == 1)
    sgemv(ROW_MAJOR, NO_TRANS, out, in, 1.0f, w, in, x, 1, 0.0f, y, 1);
  else
    sgemm(ROW_MAJOR, NO_TRANS, TRANS, rows, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
}

static void rms_norm(const float *x, const float *weight, int n, float eps, float *out) {
  double sum = 0.0;
  for (int i = 0; i < n; i++) sum += (double)x[i] * x[i];
  float scale = 1.0f / sqrtf((float)(sum / n) + eps);
  for (int i = 0; i < n; i++) out[i] = x[i] * scale * weight[i];
}

/* RoPE of one head at a position: each pair (a, b) -> (a cos - b sin, b cos + a sin). */
static void rope(float *x, int head_dim, int interleaved, const float *cos_row,
                 const float *sin_row) {
  int half = head_dim / 2, stride = interleaved ? 2 : 1, apart = interleaved ? 1 : half;
  for (int i = 0; i < half; i++) {
    float *pa = x + i * stride, *pb = pa + apart;
    float a = *pa, b = *pb;
    *pa = a * cos_row[i] - b * sin_row[i];
    *pb = b * cos_row[i] + a * sin_row[i];
  }
}

/* Where a slot's keys (or values) of one layer and kv head begin. */
static size_t cache_at(const Model *m, int slot, int layer, int kv_head) {
  size_t per_head = (size_t)m->max_positions * m->head_dim;
  return (((size_t)slot * m->layers + layer) * m->kv_heads + kv_head) * per_head;
}

static void attend(const Model *m, int slot, int layer, int pos, const float *q, float *out,
                   float *scores) {
  int d = m->head_dim, group = m->heads / m->kv_heads;
  float scale = 1.0f / sqrtf((float)d);
  for (int h = 0; h < m->heads; h++) {
    const float *qh = q + (size_t)h * d;
    const float *kh = m->keys + cache_at(m, slot, layer, h / group);
    const float *vh = m->values + cache_at(m, slot, layer, h / group);
    float top = -INFINITY;
    for (int t = 0; t <= pos; t++) {
      const float *k = kh + (size_t)t * d;
      float s = 0.0f;
      for (int i = 0; i < d; i++) s += qh[i] * k[i];
      scores[t] = s * scale;
      if (scores[t] > top) top = scores[t];
    }
    float total = 0.0f;
    for (int t = 0; t <= pos; t++) {
      scores[t] = expf(scores[t] - top);
      total += scores[t];
    }
    float *oh = out + (size_t)h * d;
    memset(oh, 0, sizeof(float) * d);
    for (int t = 0; t <= pos; t++) {
      const float *v = vh + (size_t)t * d;
      float p = scores[t] / total;
      for (int i = 0; i < d; i++) oh[i] += p * v[i];
    }
  }
}

/* Feed one token to each of `rows` sequences: row r's token `tokens[r]` at position
 * `positions[r]` of its cache `slots[r]` (which holds positions 0..positions[r]-1), and
 * write each row's next-token logits (rows x vocab floats). Every weight matrix is read
 * once for all rows. Returns 0, or -1 for an argument out of range. */
int exo_decode_rows(const Model *m, int rows, const int *tokens, const int *positions,
                    const int *slots, float *logits) {
  if (rows < 1 || rows > m->max_rows) return -1;
  for (int r = 0; r < rows; r++) {
    if (positions[r] < 0 || positions[r] >= m->max_positions) return -1;
    if (tokens[r] < 0 || tokens[r] >= m->vocab || slots[r] < 0 || slots[r] >= m->slots)
      return -1;
    for (int o = 0; o < r; o++)
      if (slots[o] == slots[r]) return -1;
  }
  int n = m->hidden, d = m->head_dim, half = d / 2, inter = m->inter;
  int qn = m->heads * d, kvn = m->kv_heads * d;
  float *x = m->work, *normed = x + (size_t)rows * n, *proj = normed + (size_t)rows * n;
  float *q = proj + (size_t)rows * n, *att = q + (size_t)rows * qn;
  float *k = att + (size_t)rows * qn, *v = k + (size_t)rows * kvn;
  float *gate = v + (size_t)rows * kvn, *up = gate + (size_t)rows * inter;
  float *scores = m->work + (size_t)m->max_rows * row_floats(m);

  for (int r = 0; r < rows; r++)
    memcpy(x + (size_t)r * n, m->embed + (size_t)tokens[r] * n, sizeof(float) * n);
  for (int l = 0; l < m->layers; l++) {
    const Layer *w = &m->layer[l];
    for (int r = 0; r < rows; r++)
      rms_norm(x + (size_t)r * n, w->attn_norm, n, m->eps, normed + (size_t)r * n);
    matmul(w->wq, qn, n, rows, normed, q);
    matmul(w->wk, kvn, n, rows, normed, k);
    matmul(w->wv, kvn, n, rows, normed, v);
    for (int r = 0; r < rows; r++) {
      int pos = positions[r];
      const float *cos_row = m->rope_cos + (size_t)pos * half;
      const float *sin_row = m->rope_sin + (size_t)pos * half;
      float *qr = q + (size_t)r * qn, *kr = k + (size_t)r * kvn, *vr = v + (size_t)r * kvn;
      for (int h = 0; h < m->heads; h++)
        rope(qr + (size_t)h * d, d, m->interleaved, cos_row, sin_row);
      for (int h = 0; h < m->kv_heads; h++) {
        rope(kr + (size_t)h * d, d, m->interleaved, cos_row, sin_row);
        size_t at = cache_at(m, slots[r], l, h) + (size_t)pos * d;
        memcpy(m->keys + at, kr + (size_t)h * d, sizeof(float) * d);
        memcpy(m->values + at, vr + (size_t)h * d, sizeof(float) * d);
      }
      attend(m, slots[r], l, pos, qr, att + (size_t)r * qn, scores);
    }
    matmul(w->wo, n, qn, rows, att, proj);
    for (size_t i = 0; i < (size_t)rows * n; i++) x[i] += proj[i];

    for (int r = 0; r < rows; r++)
      rms_norm(x + (size_t)r * n, w->mlp_norm, n, m->eps, normed + (size_t)r * n);
    matmul(w->wgate, inter, n, rows, normed, gate);
    matmul(w->wup, inter, n, rows, normed, up);
    for (size_t i = 0; i < (size_t)rows * inter; i++)
      gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    matmul(w->wdown, n, inter, rows, gate, proj);
    for (size_t i = 0; i < (size_t)rows * n; i++) x[i] += proj[i];
  }
  for (int r = 0; r < rows; r++)
    rms_norm(x + (size_t)r * n, m->final_norm, n, m->eps, normed + (size_t)r * n);
  matmul(m->head, m->vocab, n, rows, normed, logits);
  return 0;
}
