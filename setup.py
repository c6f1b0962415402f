"""The optional native fast path: ``ringbuf._cring``, a C extension (ringbuf/_cring.c).

Everything else is in pyproject.toml. The extension is ``optional``: without a
C compiler or the Python headers ``pip install`` warns and installs the
pure-Python path, which is complete on its own (``ringbuf._native``).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("ringbuf._cring", ["ringbuf/_cring.c"], optional=True,
                             extra_compile_args=["-O2", "-std=c11"])])
