"""The optional native fast paths: ``ringbuf._cring`` (ringbuf/_cring.c, the producer) and
``ringbuf._cread`` (ringbuf/_cread.c, the flusher's frame scanner), C extensions.

Everything else is in pyproject.toml. The extension is ``optional``: without a
C compiler or the Python headers ``pip install`` warns and installs the
pure-Python path, which is complete on its own (``ringbuf._native``).
"""

from setuptools import Extension, setup

_C = ["-O2", "-std=c11"]

setup(ext_modules=[
    Extension("ringbuf._cring", ["ringbuf/_cring.c"], optional=True, extra_compile_args=_C,
              depends=["ringbuf/_cenc.h"]),  # its encoder
    # the reader's frame scanner for the flusher (ringbuf/_scan.py)
    Extension("ringbuf._cread", ["ringbuf/_cread.c"], optional=True, extra_compile_args=_C),
])
