/* The lookup walk of bcr.prefix.chain.ChainIndex.longest, in C.
 *
 * Same algorithm and answer as the Python walk (ChainIndex._longest_py, the reference the tests
 * compare this with): follow a run by comparing the query's bytes with the run's, and where the
 * walk leaves a run find the child that continues the query -- at the root through the key dict,
 * below it by a lone child's first block or by the dict.  A dict hit counts only if the run found
 * hangs exactly there (collisions can only miss).  Hashing stays in Python: the walk calls the
 * index's own ``step(prev, tokens, offset)``, so there is one definition of a key.
 *
 * It exists because a lookup is a handful of dict probes and memcmps wrapped in a few hundred
 * bytecodes: on a scheduler thread whose caches the rest of the server keeps cold, the bytecodes
 * cost more than the work (DESIGN.md, "Exact-prefix serving").
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *s_start, *s_live, *s_parent, *s_ns, *s_branches, *s_kids, *s_keys, *s_pidx, *s_tokens;

/* An int attribute of a run. */
static int
attr_ssize(PyObject *o, PyObject *name, Py_ssize_t *out)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* A run's token bytes (a new reference in *holder keeps the pointer valid). */
static int
run_bytes(PyObject *run, PyObject **holder, const char **p, Py_ssize_t *n)
{
    PyObject *t = PyObject_GetAttr(run, s_tokens);
    if (t == NULL)
        return -1;
    if (PyByteArray_Check(t)) {
        *p = PyByteArray_AS_STRING(t);
        *n = PyByteArray_GET_SIZE(t);
    }
    else if (PyBytes_Check(t)) {
        *p = PyBytes_AS_STRING(t);
        *n = PyBytes_GET_SIZE(t);
    }
    else {
        Py_DECREF(t);
        PyErr_SetString(PyExc_TypeError, "bcr walk: a run's tokens must be bytearray or bytes");
        return -1;
    }
    *holder = t;
    return 0;
}

/* How many of the run's blocks [lo, hi) equal the query's blocks starting at q. */
static int
agree(PyObject *run, const char *q, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t bb, Py_ssize_t *out)
{
    PyObject *holder;
    const char *r;
    Py_ssize_t rlen;
    *out = 0;
    if (hi <= lo)
        return 0;
    if (run_bytes(run, &holder, &r, &rlen) < 0)
        return -1;
    if (rlen < hi * bb) {
        Py_DECREF(holder);
        PyErr_SetString(PyExc_ValueError, "bcr walk: a run holds fewer token bytes than its blocks");
        return -1;
    }
    const char *a = q, *b = r + lo * bb;
    Py_ssize_t len = (hi - lo) * bb, off = 0;
    enum { CHUNK = 256 };
    while (off + CHUNK <= len && memcmp(a + off, b + off, CHUNK) == 0)
        off += CHUNK;
    while (off < len && a[off] == b[off])
        off++;
    Py_DECREF(holder);
    *out = off / bb;
    return 0;
}

/* step(prev, tokens, offset) looked up in the key dict: a borrowed run or NULL (absent); -1 on error. */
static int
probe(PyObject *step, PyObject *prev, PyObject *tokens, Py_ssize_t offset, PyObject *map, PyObject **child)
{
    PyObject *off = PyLong_FromSsize_t(offset);
    if (off == NULL)
        return -1;
    PyObject *args[3] = {prev, tokens, off};
    PyObject *key = PyObject_Vectorcall(step, args, 3, NULL);
    Py_DECREF(off);
    if (key == NULL)
        return -1;
    *child = PyDict_GetItemWithError(map, key);
    Py_DECREF(key);
    return (*child == NULL && PyErr_Occurred()) ? -1 : 0;
}

/* The child run that continues the query below block idx of run (a new reference), or NULL with
 * *stop set when nothing does; -1 on error.  The Python walk's ``else`` branch, line for line. */
static int
below(PyObject *run, Py_ssize_t idx, const char *q, Py_ssize_t bb, PyObject *tokens, Py_ssize_t depth,
      PyObject *map, PyObject *step, PyObject **child)
{
    int rc = -1;
    PyObject *branches = NULL, *kids = NULL, *keys = NULL;
    PyObject *at = PyLong_FromSsize_t(idx);
    *child = NULL;
    if (at == NULL)
        return -1;
    branches = PyObject_GetAttr(run, s_branches);
    if (branches == NULL || !PyDict_Check(branches)) {
        if (branches != NULL)
            PyErr_SetString(PyExc_TypeError, "bcr walk: run.branches must be a dict");
        goto done;
    }
    PyObject *count_obj = PyDict_GetItemWithError(branches, at); /* borrowed */
    if (count_obj == NULL) {
        rc = PyErr_Occurred() ? -1 : 0;
        goto done; /* no run hangs from this block */
    }
    int truthy = PyObject_IsTrue(count_obj);
    if (truthy <= 0) {
        rc = truthy;
        goto done;
    }
    Py_ssize_t count = PyLong_AsSsize_t(count_obj);
    if (count == -1 && PyErr_Occurred())
        goto done;
    kids = PyObject_GetAttr(run, s_kids);
    if (kids == NULL)
        goto done;
    if (kids != Py_None) {
        if (!PyDict_Check(kids)) {
            PyErr_SetString(PyExc_TypeError, "bcr walk: run.kids must be a dict or None");
            goto done;
        }
        PyObject *lone = PyDict_GetItemWithError(kids, at); /* borrowed */
        if (lone == NULL && PyErr_Occurred())
            goto done;
        if (lone != NULL) { /* runs found by their first block's tokens */
            if (!PyList_Check(lone)) {
                PyErr_SetString(PyExc_TypeError, "bcr walk: run.kids values must be lists");
                goto done;
            }
            Py_ssize_t n = PyList_GET_SIZE(lone);
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *kid = PyList_GET_ITEM(lone, i), *holder;
                const char *kb;
                Py_ssize_t kn;
                Py_INCREF(kid);
                if (run_bytes(kid, &holder, &kb, &kn) < 0) {
                    Py_DECREF(kid);
                    goto done;
                }
                int same = kn >= bb && memcmp(kb, q, bb) == 0;
                Py_DECREF(holder);
                if (same) {
                    *child = kid;
                    rc = 0;
                    goto done;
                }
                Py_DECREF(kid);
            }
            if (n == count) {
                rc = 0; /* no other run hangs here: a miss */
                goto done;
            }
        }
    }
    keys = PyObject_GetAttr(run, s_keys);
    if (keys == NULL)
        goto done;
    if (!PyList_Check(keys) || idx < 0 || idx >= PyList_GET_SIZE(keys)) {
        PyErr_SetString(PyExc_IndexError, "bcr walk: a branch point's key is not stored");
        goto done;
    }
    PyObject *found;
    if (probe(step, PyList_GET_ITEM(keys, idx), tokens, depth * bb, map, &found) < 0)
        goto done;
    rc = 0;
    if (found == NULL)
        goto done;
    Py_INCREF(found);
    PyObject *parent = PyObject_GetAttr(found, s_parent);
    Py_ssize_t pidx;
    if (parent == NULL || attr_ssize(found, s_pidx, &pidx) < 0) {
        Py_XDECREF(parent);
        Py_DECREF(found);
        rc = -1;
        goto done;
    }
    Py_DECREF(parent); /* compared by identity only */
    if (parent != run || pidx != idx) {
        Py_DECREF(found); /* a colliding key: a miss, never a wrong hit */
        goto done;
    }
    *child = found;
done:
    Py_DECREF(at);
    Py_XDECREF(branches);
    Py_XDECREF(kids);
    Py_XDECREF(keys);
    return rc;
}

/* The run at the root that holds the query's first block (a new reference), or NULL; -1 on error. */
static int
at_root(PyObject *ns, PyObject *tokens, Py_ssize_t offset, PyObject *map, PyObject *step, PyObject **child)
{
    PyObject *found;
    *child = NULL;
    if (probe(step, ns, tokens, offset, map, &found) < 0)
        return -1;
    if (found == NULL)
        return 0;
    Py_INCREF(found);
    PyObject *parent = PyObject_GetAttr(found, s_parent);
    if (parent == NULL) {
        Py_DECREF(found);
        return -1;
    }
    int is_root = parent == Py_None;
    Py_DECREF(parent);
    int same_ns = 0;
    if (is_root) {
        PyObject *cns = PyObject_GetAttr(found, s_ns);
        if (cns == NULL) {
            Py_DECREF(found);
            return -1;
        }
        same_ns = PyObject_RichCompareBool(cns, ns, Py_EQ);
        Py_DECREF(cns);
        if (same_ns < 0) {
            Py_DECREF(found);
            return -1;
        }
    }
    if (!is_root || !same_ns) {
        Py_DECREF(found); /* a colliding key: a miss, never a wrong hit */
        return 0;
    }
    *child = found;
    return 0;
}

PyDoc_STRVAR(longest_doc,
             "longest(tokens, nb, ns, run, idx, map, step, block_bytes) -> (depth, run, idx)\n\n"
             "ChainIndex.longest from block (run, idx) (run None: the root): the longest cached prefix\n"
             "of the query's first nb blocks, as the blocks matched and the deepest block's run and index.");

static PyObject *
walk_longest(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "longest() takes 8 arguments");
        return NULL;
    }
    PyObject *tokens = args[0], *ns = args[2], *map = args[5], *step = args[6];
    Py_ssize_t nb = PyLong_AsSsize_t(args[1]);
    Py_ssize_t idx = PyLong_AsSsize_t(args[4]);
    Py_ssize_t bb = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred())
        return NULL;
    if (!PyDict_Check(map)) {
        PyErr_SetString(PyExc_TypeError, "longest(): map must be a dict");
        return NULL;
    }
    if (bb <= 0 || nb < 0) {
        PyErr_SetString(PyExc_ValueError, "longest(): nb must be >= 0 and block_bytes > 0");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(tokens, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL, *run = args[3];
    Py_INCREF(run);
    if (view.len < nb * bb) {
        PyErr_Format(PyExc_ValueError, "longest(): the query holds %zd bytes, %zd blocks need %zd",
                     view.len, nb, nb * bb);
        goto done;
    }
    const char *q = view.buf;
    Py_ssize_t depth = 0;
    if (run != Py_None) {
        Py_ssize_t start, live, same;
        if (attr_ssize(run, s_start, &start) < 0 || attr_ssize(run, s_live, &live) < 0)
            goto done;
        depth = start + idx + 1;
        if (idx + 1 < live && depth < nb) { /* resume inside the held run */
            Py_ssize_t hi = live < idx + 1 + nb - depth ? live : idx + 1 + nb - depth;
            if (agree(run, q + depth * bb, idx + 1, hi, bb, &same) < 0)
                goto done;
            idx += same;
            depth += same;
        }
    }
    while (depth < nb) {
        PyObject *child;
        int rc = run == Py_None ? at_root(ns, tokens, depth * bb, map, step, &child)
                                : below(run, idx, q + depth * bb, bb, tokens, depth, map, step, &child);
        if (rc < 0)
            goto done;
        if (child == NULL)
            break;
        Py_ssize_t live, same;
        if (attr_ssize(child, s_live, &live) < 0) {
            Py_DECREF(child);
            goto done;
        }
        Py_ssize_t hi = live < nb - depth ? live : nb - depth;
        if (agree(child, q + depth * bb, 0, hi, bb, &same) < 0) {
            Py_DECREF(child);
            goto done;
        }
        if (same == 0) {
            Py_DECREF(child); /* its first block holds other tokens: a colliding key */
            break;
        }
        Py_SETREF(run, child);
        idx = same - 1;
        depth += same;
    }
    result = Py_BuildValue("(nOn)", depth, run, idx);
done:
    Py_DECREF(run);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef walk_methods[] = {
    {"longest", (PyCFunction)(void (*)(void))walk_longest, METH_FASTCALL, longest_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef walk_module = {
    PyModuleDef_HEAD_INIT, "bcr.prefix._walk", "ChainIndex.longest in C (see _walk.c).", -1, walk_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__walk(void)
{
    struct {
        PyObject **slot;
        const char *name;
    } names[] = {
        {&s_start, "start"}, {&s_live, "live"}, {&s_parent, "parent"}, {&s_ns, "ns"},
        {&s_branches, "branches"}, {&s_kids, "kids"}, {&s_keys, "keys"}, {&s_pidx, "pidx"},
        {&s_tokens, "tokens"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].name);
        if (*names[i].slot == NULL)
            return NULL;
    }
    return PyModule_Create(&walk_module);
}
