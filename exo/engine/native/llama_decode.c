/* One decode step of a llama-family decoder for one sequence, in float32, as one call.
 *
 * Why: on a CPU, MLX runs a decode step of the bundled model as ~1000 primitives one after
 * another, ~19 ms of dispatch on top of the ~21 ms it takes to read the weights once
 * (docs/benchmarks.md). Here a layer is seven matrix-vector products (cblas_sgemv from
 * the BLAS loaded in the process, OpenBLAS in a runner) and a few loops over vectors of
 * the hidden size, so a step costs about what reading its weights costs.
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

enum { ROW_MAJOR = 101, NO_TRANS = 111 };

typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);

typedef struct {
  const float *attn_norm, *wq, *wk, *wv, *wo, *mlp_norm, *wgate, *wup, *wdown;
} Layer;

typedef struct {
  int hidden, layers, heads, kv_heads, head_dim, inter, vocab, max_positions;
  int interleaved; /* RoPE pairs (2i, 2i+1), "traditional"; else (i, i + head_dim/2) */
  float eps;
  const float *embed;      /* vocab x hidden */
  const float *head;       /* vocab x hidden (the embedding when tied) */
  const float *final_norm; /* hidden */
  const Layer *layer;      /* layers */
  const float *rope_cos;   /* max_positions x head_dim/2 */
  const float *rope_sin;
  float *keys;   /* layers x kv_heads x max_positions x head_dim */
  float *values; /* same */
  float *work;   /* exo_decode_work_floats(model) floats */
} Model;

static sgemv_fn sgemv;

/* The process's cblas_sgemv (0: found; -1: none loaded). */
int exo_decode_init(void) {
  if (sgemv == NULL) sgemv = (sgemv_fn)dlsym(RTLD_DEFAULT, "cblas_sgemv");
  return sgemv == NULL ? -1 : 0;
}

size_t exo_decode_work_floats(const Model *m) {
  size_t q = (size_t)m->heads * m->head_dim, kv = (size_t)m->kv_heads * m->head_dim;
  /* x, normed, q, k, v, attention out, projection out, gate, up, scores */
  return 4 * (size_t)m->hidden + q + 2 * kv + q + 2 * (size_t)m->inter + m->max_positions;
}

static void matvec(const float *w, int rows, int cols, const float *x, float *y) {
  sgemv(ROW_MAJOR, NO_TRANS, rows, cols, 1.0f, w, cols, x, 1, 0.0f, y, 1);
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

static void attend(const Model *m, int layer, int pos, const float *q, float *out,
                   float *scores) {
  int d = m->head_dim, group = m->heads / m->kv_heads;
  float scale = 1.0f / sqrtf((float)d);
  size_t per_head = (size_t)m->max_positions * d;
  const float *keys = m->keys + (size_t)layer * m->kv_heads * per_head;
  const float *values = m->values + (size_t)layer * m->kv_heads * per_head;
  for (int h = 0; h < m->heads; h++) {
    const float *qh = q + (size_t)h * d;
    const float *kh = keys + (size_t)(h / group) * per_head;
    const float *vh = values + (size_t)(h / group) * per_head;
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

/* Feed `token` at position `pos` (the cache holds positions 0..pos-1) and write the
 * next token's logits (vocab floats). Returns 0, or -1 for a position past the cache. */
int exo_decode_step(const Model *m, int token, int pos, float *logits) {
  if (pos < 0 || pos >= m->max_positions || token < 0 || token >= m->vocab) return -1;
  int n = m->hidden, d = m->head_dim, half = d / 2;
  int qn = m->heads * d, kvn = m->kv_heads * d;
  float *x = m->work, *normed = x + n, *q = normed + n, *k = q + qn, *v = k + kvn;
  float *att = v + kvn, *proj = att + qn, *gate = proj + n, *up = gate + m->inter;
  float *scores = up + m->inter;
  const float *cos_row = m->rope_cos + (size_t)pos * half;
  const float *sin_row = m->rope_sin + (size_t)pos * half;
  size_t per_head = (size_t)m->max_positions * d;

  memcpy(x, m->embed + (size_t)token * n, sizeof(float) * n);
  for (int l = 0; l < m->layers; l++) {
    const Layer *w = &m->layer[l];
    rms_norm(x, w->attn_norm, n, m->eps, normed);
    matvec(w->wq, qn, n, normed, q);
    matvec(w->wk, kvn, n, normed, k);
    matvec(w->wv, kvn, n, normed, v);
    for (int h = 0; h < m->heads; h++) rope(q + (size_t)h * d, d, m->interleaved, cos_row, sin_row);
    float *layer_keys = m->keys + (size_t)l * m->kv_heads * per_head;
    float *layer_values = m->values + (size_t)l * m->kv_heads * per_head;
    for (int h = 0; h < m->kv_heads; h++) {
      rope(k + (size_t)h * d, d, m->interleaved, cos_row, sin_row);
      memcpy(layer_keys + h * per_head + (size_t)pos * d, k + (size_t)h * d, sizeof(float) * d);
      memcpy(layer_values + h * per_head + (size_t)pos * d, v + (size_t)h * d,
             sizeof(float) * d);
    }
    attend(m, l, pos, q, att, scores);
    matvec(w->wo, n, qn, att, proj);
    for (int i = 0; i < n; i++) x[i] += proj[i];

    rms_norm(x, w->mlp_norm, n, m->eps, normed);
    matvec(w->wgate, m->inter, n, normed, gate);
    matvec(w->wup, m->inter, n, normed, up);
    for (int i = 0; i < m->inter; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    matvec(w->wdown, n, m->inter, gate, proj);
    for (int i = 0; i < n; i++) x[i] += proj[i];
  }
  rms_norm(x, m->final_norm, n, m->eps, normed);
  matvec(m->head, m->vocab, n, normed, logits);
  return 0;
}
