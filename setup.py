"""Only the optional C extension lives here; everything else about the package is in pyproject.toml.

``inat_zoo.data._libjpeg_region`` decodes just the training crop of a JPEG with libjpeg-turbo (see its source). It
needs a C compiler and the libjpeg-turbo headers (Debian/Ubuntu ``libjpeg-dev``, Fedora ``libjpeg-turbo-devel``,
conda ``libjpeg-turbo``). ``optional=True``: without them the build skips it with a warning and the package decodes
with simplejpeg instead, a bit slower, the same pixels; ``inat_zoo.data.crop_decode.JPEG_DECODER`` says which runs.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "inat_zoo.data._libjpeg_region",
            sources=["inat_zoo/data/_libjpeg_region.c"],
            libraries=["jpeg"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
