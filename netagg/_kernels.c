/* netagg._kernels: the per-element loops of the hot path, one pass each.
 *
 * The protocol carries int32 in network byte order (docs/protocol.md), so every loop here byte-swaps
 * on the way in or out. With numpy the same work takes several passes and a cast loop for the
 * non-native byte order (netagg/kernels.py holds those numpy versions; they are the reference, and
 * tests check that both give the same bits). Nothing here knows the protocol: callers pass scales
 * and the exponent encoding.
 *
 * Floating point follows IEEE 754 exactly as numpy does: float32 arithmetic, round to nearest even,
 * no contraction into FMA (the build passes -ffp-contract=off), no flush of denormals.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

/* On x86-64, one copy of each loop for AVX2 and one for the baseline, chosen when the module loads. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif

/* Every buffer is read and written through these, at any alignment (payloads start 24 bytes into a
 * datagram; callers may pass any buffer); compilers turn them into plain (vector) loads and stores. */
static inline uint32_t load_u32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline void store_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }

static inline float load_f32(const unsigned char *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}

static inline void store_f32(unsigned char *p, float v) { memcpy(p, &v, 4); }

static inline uint32_t to_be(uint32_t v) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return __builtin_bswap32(v);
#else
    return v;
#endif
}

HOT static void quantize_loop(const unsigned char *restrict src, unsigned char *restrict dst, Py_ssize_t n,
                              float scale) {
    for (Py_ssize_t i = 0; i < n; i++) {
        float y = rintf(load_f32(src + 4 * i) * scale);
        store_u32(dst + 4 * i, to_be((uint32_t)(int32_t)y));
    }
}

HOT static void dequantize_loop(const unsigned char *restrict src, unsigned char *restrict dst,
                                Py_ssize_t n, float scale) {
    for (Py_ssize_t i = 0; i < n; i++)
        store_f32(dst + 4 * i, (float)(int32_t)to_be(load_u32(src + 4 * i)) * scale);
}

HOT static void add_loop(unsigned char *restrict acc, const unsigned char *restrict src, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) /* wraps like numpy's int32 add (unsigned arithmetic) */
        store_u32(acc + 4 * i, to_be(to_be(load_u32(acc + 4 * i)) + to_be(load_u32(src + 4 * i))));
}

HOT static uint32_t max_magnitude(const unsigned char *restrict src, Py_ssize_t n) {
    /* IEEE 754 magnitudes order like their bit patterns; inf and NaN are the largest. */
    uint32_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t v = load_u32(src + 4 * i) & 0x7fffffffu;
        m = v > m ? v : m;
    }
    return m;
}

/* The encoded exponent of a block whose largest magnitude has the bits m: `none` if it is zero,
 * `nonfinite` for inf or NaN, else frexp's exponent e (2**(e-1) <= |x| < 2**e) plus `bias`. */
static int encode_exponent(uint32_t m, int bias, int none, int nonfinite) {
    if (m == 0) return none;
    if (m >= 0x7f800000u) return nonfinite;
    int biased = (int)(m >> 23);
    if (biased) return biased - 126 + bias;
    return -117 - __builtin_clz(m) + bias; /* denormal: from the highest set bit of the fraction */
}

static int check_len(Py_buffer *b, Py_ssize_t need, const char *what) {
    if (b->len < need) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, need %zd", what, b->len, need);
        return -1;
    }
    return 0;
}

/* One element-wise pass of `loop` from src to dst (4-byte elements each), scaled: the two
 * (de)quantizers. Refuses a src of partial elements and a dst shorter than src. */
typedef void (*scaled_loop)(const unsigned char *src, unsigned char *dst, Py_ssize_t n, float scale);

static PyObject *scaled_pass(PyObject *args, scaled_loop loop) {
    Py_buffer src, dst;
    float scale;
    if (!PyArg_ParseTuple(args, "y*fw*", &src, &scale, &dst)) return NULL;
    PyObject *ret = NULL;
    Py_ssize_t n = src.len / 4;
    if (src.len % 4) {
        PyErr_SetString(PyExc_ValueError, "src must hold whole 4-byte values");
    } else if (check_len(&dst, 4 * n, "dst") == 0) {
        Py_BEGIN_ALLOW_THREADS; /* 64 KiB: worth letting other threads (a DDP backward) run */
        loop((const unsigned char *)src.buf, (unsigned char *)dst.buf, n, scale);
        Py_END_ALLOW_THREADS;
        ret = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return ret;
}

PyDoc_STRVAR(quantize_doc,
             "quantize(src, scale, dst)\n--\n\n"
             "dst (big-endian int32) = rint(src (float32) * scale), computed in float32; one pass.");

static PyObject *quantize(PyObject *self, PyObject *args) { return scaled_pass(args, quantize_loop); }

PyDoc_STRVAR(dequantize_doc,
             "dequantize(src, scale, dst)\n--\n\n"
             "dst (float32) = float32(src (big-endian int32)) * scale, in float32; one pass.");

static PyObject *dequantize(PyObject *self, PyObject *args) { return scaled_pass(args, dequantize_loop); }

PyDoc_STRVAR(add_net_doc,
             "add_net(acc, src)\n--\n\n"
             "acc += src, both int32 in network byte order, wrapping; len(src) elements.");

static PyObject *add_net(PyObject *self, PyObject *args) {
    Py_buffer acc, src;
    if (!PyArg_ParseTuple(args, "w*y*", &acc, &src)) return NULL;
    PyObject *ret = NULL;
    Py_ssize_t n = src.len / 4;
    if (src.len % 4 == 0 && check_len(&acc, 4 * n, "acc") == 0) {
        add_loop((unsigned char *)acc.buf, (const unsigned char *)src.buf, n);
        ret = Py_NewRef(Py_None);
    } else if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "src must hold whole int32 values");
    }
    PyBuffer_Release(&acc);
    PyBuffer_Release(&src);
    return ret;
}

PyDoc_STRVAR(chunk_exponents_doc,
             "chunk_exponents(src, elements, out, bias, none, nonfinite)\n--\n\n"
             "For each chunk of `elements` float32 of src (the last may be shorter), write to out\n"
             "(uint16, native order): `none` if the chunk is all zero, `nonfinite` if it holds inf or\n"
             "NaN, else frexp's exponent of its largest magnitude plus `bias`.");

static PyObject *chunk_exponents(PyObject *self, PyObject *args) {
    Py_buffer src, out;
    Py_ssize_t elements;
    int bias, none, nonfinite;
    if (!PyArg_ParseTuple(args, "y*nw*iii", &src, &elements, &out, &bias, &none, &nonfinite)) return NULL;
    PyObject *ret = NULL;
    Py_ssize_t n = src.len / 4;
    Py_ssize_t chunks = elements > 0 ? (n + elements - 1) / elements : 0;
    if (elements <= 0 || src.len % 4) {
        PyErr_SetString(PyExc_ValueError, "need elements > 0 and whole float32 values");
    } else if (check_len(&out, 2 * chunks, "out") == 0) {
        const unsigned char *bytes = (const unsigned char *)src.buf;
        uint16_t *o = (uint16_t *)out.buf;
        Py_BEGIN_ALLOW_THREADS;
        for (Py_ssize_t c = 0; c < chunks; c++) {
            Py_ssize_t lo = c * elements;
            Py_ssize_t len = n - lo < elements ? n - lo : elements;
            o[c] = (uint16_t)encode_exponent(max_magnitude(bytes + 4 * lo, len), bias, none, nonfinite);
        }
        Py_END_ALLOW_THREADS;
        ret = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&out);
    return ret;
}

PyDoc_STRVAR(block_exponent_doc,
             "block_exponent(src, bias, none, nonfinite)\n--\n\n"
             "chunk_exponents() of all of src as one chunk, returned as an int.");

static PyObject *block_exponent(PyObject *self, PyObject *args) {
    Py_buffer src;
    int bias, none, nonfinite;
    if (!PyArg_ParseTuple(args, "y*iii", &src, &bias, &none, &nonfinite)) return NULL;
    if (src.len % 4) {
        PyBuffer_Release(&src);
        PyErr_SetString(PyExc_ValueError, "src must hold whole float32 values");
        return NULL;
    }
    uint32_t m = max_magnitude((const unsigned char *)src.buf, src.len / 4);
    PyBuffer_Release(&src);
    return PyLong_FromLong(encode_exponent(m, bias, none, nonfinite));
}

static PyMethodDef methods[] = {
    {"quantize", quantize, METH_VARARGS, quantize_doc},
    {"dequantize", dequantize, METH_VARARGS, dequantize_doc},
    {"add_net", add_net, METH_VARARGS, add_net_doc},
    {"chunk_exponents", chunk_exponents, METH_VARARGS, chunk_exponents_doc},
    {"block_exponent", block_exponent, METH_VARARGS, block_exponent_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "netagg._kernels",
    "One-pass loops for netagg's hot path (see netagg/kernels.py for what each computes).", -1, methods,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
