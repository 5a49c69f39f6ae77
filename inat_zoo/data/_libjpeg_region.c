/* Decode one rectangle of a JPEG with libjpeg-turbo: the training crop's pixels and little else.
 *
 * A random-resized crop of a photo needs a rectangle of it. simplejpeg (and Pillow) can only decode whole rows of
 * the whole width, so every pixel above, left and right of the crop goes through the inverse DCT, chroma upsampling
 * and colour conversion for nothing. libjpeg-turbo's own API skips that work: jpeg_skip_scanlines() entropy-decodes
 * the rows above the crop without reconstructing them, jpeg_crop_scanline() reconstructs only the iMCU columns
 * under the crop, and stopping after the crop's last row leaves the rest of the file unread. The pixels are the
 * ones a full decode at the same DCT scale gives (libjpeg's default islow IDCT and fancy upsampling, as simplejpeg
 * and Pillow use).
 *
 * Strict like simplejpeg's strict mode: a libjpeg warning (corrupt or truncated data inside the part decoded) is an
 * error, so the caller can hand the file to Pillow, whose own checks decide.
 *
 * Optional: the package builds without it (no compiler or no libjpeg-turbo headers) and then decodes with
 * simplejpeg; inat_zoo.data.crop_decode.JPEG_DECODER says which one runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h> /* jpeglib.h needs FILE and size_t first */
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

#if !defined(LIBJPEG_TURBO_VERSION_NUMBER) || LIBJPEG_TURBO_VERSION_NUMBER < 2000000
#error "libjpeg-turbo >= 2.0 headers are needed (jpeg_crop_scanline, jpeg_skip_scanlines)"
#endif

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)
#define MESSAGE_SIZE (JMSG_LENGTH_MAX + 16) /* libjpeg's message and our prefix */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf on_error;
    char message[JMSG_LENGTH_MAX];
} ErrorManager;

static void on_error(j_common_ptr cinfo) {
    ErrorManager *err = (ErrorManager *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->on_error, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    if (level < 0) { /* a warning: corrupt data, which libjpeg would paper over with grey */
        on_error(cinfo);
    }
}

/* Decode rows [top, top + height) and columns [left, left + width) of the image reduced by 1/scale into `out`
 * (height * width * 3 bytes, RGB). Returns 1, or 0 with `message` set. Runs without the GIL. */
static int decode(const unsigned char *data, size_t size, int scale, int left, int top, int width, int height,
                  unsigned char *out, char *message) {
    struct jpeg_decompress_struct cinfo;
    ErrorManager err;
    unsigned char *volatile row = NULL; /* set after setjmp: volatile keeps its value for the error path */

    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    if (setjmp(err.on_error)) {
        snprintf(message, MESSAGE_SIZE, "libjpeg: %s", err.message);
        free(row);
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space != JCS_YCbCr && cinfo.jpeg_color_space != JCS_GRAYSCALE) {
        snprintf(message, MESSAGE_SIZE, "only YCbCr and greyscale JPEGs are decoded here");
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = 1;
    cinfo.scale_denom = (unsigned int)scale;
    jpeg_start_decompress(&cinfo);
    if ((JDIMENSION)(left + width) > cinfo.output_width || (JDIMENSION)(top + height) > cinfo.output_height) {
        snprintf(message, MESSAGE_SIZE, "region %dx%d at (%d, %d) is outside the %ux%u image", width, height,
                 left, top, cinfo.output_width, cinfo.output_height);
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    /* One column of margin on each side: fancy upsampling treats the edge of a cropped scanline as the edge of the
     * image, which would change the crop's first and last columns. libjpeg widens the start to an iMCU boundary. */
    JDIMENSION crop_left = left > 0 ? (JDIMENSION)left - 1 : 0;
    JDIMENSION crop_right = (JDIMENSION)(left + width) + 1;
    if (crop_right > cinfo.output_width) {
        crop_right = cinfo.output_width;
    }
    JDIMENSION crop_width = crop_right - crop_left;
    jpeg_crop_scanline(&cinfo, &crop_left, &crop_width);
    row = malloc((size_t)cinfo.output_width * (size_t)cinfo.output_components);
    if (row == NULL) {
        snprintf(message, MESSAGE_SIZE, "out of memory");
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    if (top > 0) {
        jpeg_skip_scanlines(&cinfo, (JDIMENSION)top);
    }
    const size_t shift = (size_t)(left - (int)crop_left) * 3, stride = (size_t)width * 3;
    for (int r = 0; r < height; r++) {
        JSAMPROW rows[1] = {row};
        if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) {
            snprintf(message, MESSAGE_SIZE, "libjpeg returned no scanline");
            free(row);
            jpeg_destroy_decompress(&cinfo);
            return 0;
        }
        memcpy(out + (size_t)r * stride, row + shift, stride);
    }
    free(row);
    row = NULL; /* nothing for the error path to free twice */
    jpeg_abort_decompress(&cinfo); /* the rows below the crop stay undecoded */
    jpeg_destroy_decompress(&cinfo);
    return 1;
}

PyDoc_STRVAR(decode_region_doc,
             "decode_region(data, scale, left, top, width, height) -> bytearray\n\n"
             "RGB pixels (height rows of width * 3 bytes) of the rectangle at (left, top) of JPEG `data` decoded at\n"
             "1/scale (1, 2, 4 or 8). ValueError for a bad rectangle, another colour space, or data libjpeg calls\n"
             "corrupt.");

static PyObject *decode_region(PyObject *self, PyObject *args) {
    Py_buffer data;
    int scale, left, top, width, height;
    if (!PyArg_ParseTuple(args, "y*iiiii:decode_region", &data, &scale, &left, &top, &width, &height)) {
        return NULL;
    }
    if (scale != 1 && scale != 2 && scale != 4 && scale != 8) {
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "scale must be 1, 2, 4 or 8, not %d", scale);
    }
    if (left < 0 || top < 0 || width <= 0 || height <= 0 || (long)left + width > JPEG_MAX_DIMENSION ||
        (long)top + height > JPEG_MAX_DIMENSION) { /* no JPEG is larger: and no int overflows below */
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "bad region %dx%d at (%d, %d)", width, height, left, top);
    }
    PyObject *out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)width * height * 3);
    if (out == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    char message[MESSAGE_SIZE];
    unsigned char *pixels = (unsigned char *)PyByteArray_AS_STRING(out);
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = decode(data.buf, (size_t)data.len, scale, left, top, width, height, pixels, message);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (!ok) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, message);
        return NULL;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"decode_region", decode_region, METH_VARARGS, decode_region_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_libjpeg_region", "Region decode of JPEGs with libjpeg-turbo's crop and skip API.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__libjpeg_region(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "LIBJPEG_TURBO_VERSION", STRINGIFY(LIBJPEG_TURBO_VERSION)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
