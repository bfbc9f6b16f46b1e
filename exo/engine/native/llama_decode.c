/* One decode step of a llama-family decoder, in float32, for one or several sequences at
 * once, as one call, on every core.
 *
 * Why: on a CPU, MLX runs a decode step of the bundled model as ~1000 primitives one after
 * another, ~19 ms of dispatch on top of the ~21 ms it takes to read the weights once
 * (docs/benchmarks.md). Here a layer is seven matrix products and a few loops over
 * vectors of the hidden size, so a step costs about what reading its weights costs.
 *
 * The products are this file's own, not BLAS's: a decode step multiplies each weight
 * matrix by 1 to 8 rows, a shape BLAS serves badly (OpenBLAS's sgemm packs the whole
 * matrix on every call: 8 rows took 3.2x the time of one). Here each block of weight rows
 * is read from memory once, multiplied into every row's accumulators while it is in
 * registers, and the next block is prefetched meanwhile, so 8 rows cost about what one
 * does (docs/benchmarks.md). A row's sums are added in the same order whatever the other
 * rows and the thread count, so a sequence gets the same logits alone or in a batch.
 *
 * The step runs on `threads` threads (the caller's and threads-1 started per call): each
 * takes a share of every product's output rows, of the sequences' norms and RoPE and of
 * the (sequence, head) pairs of attention, and they meet at a barrier between
 * dependent parts.
 *
 * The weights are the MLX model's own float32 arrays (row-major, out x in, as
 * nn.Linear holds them); the caller keeps them alive. RoPE comes as cos/sin tables made
 * by the model's own rope module, so its frequencies and scaling (llama3, yarn) are
 * the model's; pairs are interleaved ("traditional", as GGUF-converted llamas have) or
 * halves. Keys and values live in caches the caller owns.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

typedef struct {
  const float *attn_norm, *wq, *wk, *wv, *wo, *mlp_norm, *wgate, *wup, *wdown;
} Layer;

typedef struct {
  int hidden, layers, heads, kv_heads, head_dim, inter, vocab, max_positions;
  int interleaved; /* RoPE pairs (2i, 2i+1), "traditional"; else (i, i + head_dim/2) */
  int slots;       /* sequences with caches of their own */
  int max_rows;    /* sequences fed in one call, at most */
  int threads;     /* threads a step runs on, at most */
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

enum { MAX_ROWS = 8, MAX_THREADS = 64, OUT_UNIT = 16 };

/* A vector of LANES floats, loaded from any float address. GCC and Clang lower these
 * types to what -march=native allows. With AVX-512 (32 registers of 16 floats) a vector
 * is one register and a block keeps ~16 of them as accumulators; elsewhere (AVX2's 16
 * registers of 8 floats, NEON) a vector is 8 floats and a block keeps at most 12: wider
 * vectors there spill (measured on this machine built for x86-64-v3: 8 rows took 9x one
 * row's time with 16-float vectors). */
#if defined(__AVX512F__)
enum { LANES = 16 };
typedef float Vec __attribute__((vector_size(64), aligned(4), may_alias));
#else
enum { LANES = 8 };
typedef float Vec __attribute__((vector_size(32), aligned(4), may_alias));
#endif
typedef float Quarter __attribute__((vector_size(16), aligned(4)));

/* An unaligned load (the type's alignment is a float's; may_alias: it reads floats). A
 * memcpy into a local vector compiled to 16-byte pieces through the stack for AVX2. */
static inline Vec load(const float *p) { return *(const Vec *)p; }

static inline float lane_sum(Vec v) {
#if defined(__AVX512F__)
  typedef float Half __attribute__((vector_size(32), aligned(4)));
  Half a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  Vec a = v;
#endif
  Quarter b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

/* y[r][j..j+J) of R rows, out wide, from J weight rows at w (each `in` floats) and R input
 * rows at x. The J x R sums stay in registers; the weights are read once for all rows,
 * and from 2 rows on the next J weight rows are prefetched as these stream by (measured:
 * 8 rows 58 -> 25 ms a step of the bundled model; for one row the prefetch costs more
 * than it brings). */
#define BLOCK(J, R)                                                                         \
  static void block_##J##_##R(const float *w, int in, const float *x, float *y, int out) { \
    Vec acc[J][R];                                                                          \
    _Pragma("GCC unroll 16") for (int j = 0; j < J; j++)                                    \
      _Pragma("GCC unroll 16") for (int r = 0; r < R; r++) acc[j][r] = (Vec){0};            \
    int k = 0;                                                                              \
    for (; k + LANES <= in; k += LANES) {                                                   \
      Vec wj[J];                                                                            \
      _Pragma("GCC unroll 16") for (int j = 0; j < J; j++) {                                \
        wj[j] = load(w + (size_t)j * in + k);                                               \
        if (R >= 2) __builtin_prefetch(w + (size_t)(J + j) * in + k, 0, 3);                 \
      }                                                                                     \
      _Pragma("GCC unroll 16") for (int r = 0; r < R; r++) {                                \
        Vec xr = load(x + (size_t)r * in + k);                                              \
        _Pragma("GCC unroll 16") for (int j = 0; j < J; j++) acc[j][r] += wj[j] * xr;       \
      }                                                                                     \
    }                                                                                       \
    for (int j = 0; j < J; j++)                                                             \
      for (int r = 0; r < R; r++) {                                                         \
        float sum = lane_sum(acc[j][r]);                                                    \
        for (int t = k; t < in; t++) sum += w[(size_t)j * in + t] * x[(size_t)r * in + t];  \
        y[(size_t)r * out + j] = sum;                                                       \
      }                                                                                     \
  }

typedef void (*block_fn)(const float *, int, const float *, float *, int);

/* Per row count: as many weight rows per block as the registers hold accumulators for,
 * and a one-row block for what is left of a thread's share. */
BLOCK(1, 1) BLOCK(1, 2) BLOCK(1, 3) BLOCK(1, 4) BLOCK(1, 5) BLOCK(1, 6) BLOCK(1, 7) BLOCK(1, 8)
static const block_fn single[MAX_ROWS + 1] = {0,         block_1_1, block_1_2, block_1_3, block_1_4,
                                              block_1_5, block_1_6, block_1_7, block_1_8};
#if defined(__AVX512F__)
BLOCK(8, 1) BLOCK(8, 2) BLOCK(4, 3) BLOCK(4, 4) BLOCK(2, 5) BLOCK(2, 6) BLOCK(2, 7) BLOCK(2, 8)
static const block_fn wide[MAX_ROWS + 1] = {0,         block_8_1, block_8_2, block_4_3, block_4_4,
                                            block_2_5, block_2_6, block_2_7, block_2_8};
static const int wide_rows[MAX_ROWS + 1] = {0, 8, 8, 4, 4, 2, 2, 2, 2};
#else
BLOCK(4, 1) BLOCK(4, 2) BLOCK(2, 3) BLOCK(2, 4) BLOCK(2, 5) BLOCK(2, 6)
static const block_fn wide[MAX_ROWS + 1] = {0,         block_4_1, block_4_2, block_2_3, block_2_4,
                                            block_2_5, block_2_6, block_1_7, block_1_8};
static const int wide_rows[MAX_ROWS + 1] = {0, 4, 4, 2, 2, 2, 2, 1, 1};
#endif

/* One step's shared state: what the threads compute from, and their barrier. */
typedef struct {
  const Model *m;
  int rows, threads;
  const int *tokens, *positions, *slots;
  float *logits;
  atomic_int arrived, generation, go;
} Step;

/* Wait until every thread of the step arrived. Spins (the others are seldom more than a
 * few microseconds away), yielding the core now and then in case it is shared. */
static void barrier(Step *s) {
  int generation = atomic_load_explicit(&s->generation, memory_order_acquire);
  if (atomic_fetch_add_explicit(&s->arrived, 1, memory_order_acq_rel) == s->threads - 1) {
    atomic_store_explicit(&s->arrived, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->generation, 1, memory_order_release);
    return;
  }
  for (unsigned spins = 1; atomic_load_explicit(&s->generation, memory_order_acquire) == generation;
       spins++) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (spins % 4096 == 0) sched_yield();
  }
}

/* Thread t's share [lo, hi) of n items, cut at multiples of `unit`. */
static void share(int n, int unit, int t, int threads, int *lo, int *hi) {
  int units = (n + unit - 1) / unit;
  *lo = units * t / threads * unit;
  *hi = units * (t + 1) / threads * unit;
  if (*lo > n) *lo = n;
  if (*hi > n) *hi = n;
}

/* Thread t's share of y (rows x out) = x (rows x in) w^T, w being out x in. */
static void matmul(const Step *s, int t, const float *w, int out, int in, const float *x,
                   float *y) {
  int lo, hi;
  share(out, OUT_UNIT, t, s->threads, &lo, &hi);
  /* More than MAX_ROWS rows (a --batch-size over 8) read the weights once per 8. */
  for (int first = 0; first < s->rows; first += MAX_ROWS) {
    int rows = s->rows - first < MAX_ROWS ? s->rows - first : MAX_ROWS, step = wide_rows[rows];
    const float *xs = x + (size_t)first * in;
    float *ys = y + (size_t)first * out;
    int j = lo;
    for (; j + step <= hi; j += step) wide[rows](w + (size_t)j * in, in, xs, ys + j, out);
    for (; j < hi; j++) single[rows](w + (size_t)j * in, in, xs, ys + j, out);
  }
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

/* One head's attention over its slot's positions 0..pos. */
static void attend(const Model *m, int slot, int layer, int pos, int h, const float *q,
                   float *out, float *scores) {
  int d = m->head_dim, group = m->heads / m->kv_heads;
  float scale = 1.0f / sqrtf((float)d);
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

static size_t row_floats(const Model *m) {
  size_t q = (size_t)m->heads * m->head_dim, kv = (size_t)m->kv_heads * m->head_dim;
  /* x, normed, projection out; q, attention out; k, v; gate, up */
  return 3 * (size_t)m->hidden + 2 * q + 2 * kv + 2 * (size_t)m->inter;
}

static int thread_count(const Model *m) {
  return m->threads < 1 ? 1 : m->threads > MAX_THREADS ? MAX_THREADS : m->threads;
}

size_t exo_decode_work_floats(const Model *m) {
  /* + attention scores, a row of them per thread */
  return (size_t)m->max_rows * row_floats(m) + (size_t)thread_count(m) * m->max_positions;
}

/* Thread t's part of the step: the whole layer loop, its shares of each part. */
static void run_step(Step *s, int t) {
  const Model *m = s->m;
  int rows = s->rows, threads = s->threads;
  int n = m->hidden, d = m->head_dim, half = d / 2, inter = m->inter;
  int qn = m->heads * d, kvn = m->kv_heads * d;
  float *x = m->work, *normed = x + (size_t)rows * n, *proj = normed + (size_t)rows * n;
  float *q = proj + (size_t)rows * n, *att = q + (size_t)rows * qn;
  float *k = att + (size_t)rows * qn, *v = k + (size_t)rows * kvn;
  float *gate = v + (size_t)rows * kvn, *up = gate + (size_t)rows * inter;
  float *scores = m->work + (size_t)m->max_rows * row_floats(m) + (size_t)t * m->max_positions;

  for (int r = t; r < rows; r += threads) {
    float *xr = x + (size_t)r * n;
    memcpy(xr, m->embed + (size_t)s->tokens[r] * n, sizeof(float) * n);
    rms_norm(xr, m->layer[0].attn_norm, n, m->eps, normed + (size_t)r * n);
  }
  barrier(s);
  for (int l = 0; l < m->layers; l++) {
    const Layer *w = &m->layer[l];
    matmul(s, t, w->wq, qn, n, normed, q);
    matmul(s, t, w->wk, kvn, n, normed, k);
    matmul(s, t, w->wv, kvn, n, normed, v);
    barrier(s);
    for (int r = t; r < rows; r += threads) {
      int pos = s->positions[r];
      const float *cos_row = m->rope_cos + (size_t)pos * half;
      const float *sin_row = m->rope_sin + (size_t)pos * half;
      float *qr = q + (size_t)r * qn, *kr = k + (size_t)r * kvn, *vr = v + (size_t)r * kvn;
      for (int h = 0; h < m->heads; h++)
        rope(qr + (size_t)h * d, d, m->interleaved, cos_row, sin_row);
      for (int h = 0; h < m->kv_heads; h++) {
        rope(kr + (size_t)h * d, d, m->interleaved, cos_row, sin_row);
        size_t at = cache_at(m, s->slots[r], l, h) + (size_t)pos * d;
        memcpy(m->keys + at, kr + (size_t)h * d, sizeof(float) * d);
        memcpy(m->values + at, vr + (size_t)h * d, sizeof(float) * d);
      }
    }
    barrier(s);
    for (int pair = t; pair < rows * m->heads; pair += threads) {
      int r = pair / m->heads, h = pair % m->heads;
      attend(m, s->slots[r], l, s->positions[r], h, q + (size_t)r * qn, att + (size_t)r * qn,
             scores);
    }
    barrier(s);
    matmul(s, t, w->wo, n, qn, att, proj);
    barrier(s);
    for (int r = t; r < rows; r += threads) {
      float *xr = x + (size_t)r * n, *pr = proj + (size_t)r * n;
      for (int i = 0; i < n; i++) xr[i] += pr[i];
      rms_norm(xr, w->mlp_norm, n, m->eps, normed + (size_t)r * n);
    }
    barrier(s);
    /* Each thread gates the very outputs it computed: no barrier between. */
    matmul(s, t, w->wgate, inter, n, normed, gate);
    matmul(s, t, w->wup, inter, n, normed, up);
    int lo, hi;
    share(inter, OUT_UNIT, t, threads, &lo, &hi);
    for (int r = 0; r < rows; r++)
      for (int i = lo; i < hi; i++) {
        size_t at = (size_t)r * inter + i;
        gate[at] = gate[at] / (1.0f + expf(-gate[at])) * up[at];
      }
    barrier(s);
    matmul(s, t, w->wdown, n, inter, gate, proj);
    barrier(s);
    const float *next_norm = l + 1 < m->layers ? m->layer[l + 1].attn_norm : m->final_norm;
    for (int r = t; r < rows; r += threads) {
      float *xr = x + (size_t)r * n, *pr = proj + (size_t)r * n;
      for (int i = 0; i < n; i++) xr[i] += pr[i];
      rms_norm(xr, next_norm, n, m->eps, normed + (size_t)r * n);
    }
    barrier(s);
  }
  matmul(s, t, m->head, m->vocab, n, normed, s->logits);
}

typedef struct {
  Step *step;
  int index;
} Helper;

static void *helper_main(void *arg) {
  Helper *helper = arg;
  Step *s = helper->step;
  while (!atomic_load_explicit(&s->go, memory_order_acquire)) sched_yield();
  if (helper->index < s->threads) run_step(s, helper->index);
  return NULL;
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
  Step s = {.m = m, .rows = rows, .tokens = tokens, .positions = positions, .slots = slots,
            .logits = logits};
  atomic_init(&s.arrived, 0);
  atomic_init(&s.generation, 0);
  atomic_init(&s.go, 0);
  int wanted = thread_count(m), started = 0;
  pthread_t ids[MAX_THREADS];
  Helper helpers[MAX_THREADS];
  /* A helper that cannot be started leaves its share to the others. */
  for (int i = 1; i < wanted; i++) {
    helpers[started] = (Helper){&s, started + 1};
    if (pthread_create(&ids[started], NULL, helper_main, &helpers[started]) != 0) break;
    started++;
  }
  s.threads = started + 1;
  atomic_store_explicit(&s.go, 1, memory_order_release);
  run_step(&s, 0);
  for (int i = 0; i < started; i++) pthread_join(ids[i], NULL);
  return 0;
}
