"""WordCount in Python: the same functions as udfs/wordcount/src/lib.rs.

Built into udfs/wordcount_py.wasm by udfs/build.sh (componentize-py).
"""

import builtins
import re

import weir_udf as weir
from weir_udf import Udf  # noqa: F401  (the component's export)

# Rust's split_ascii_whitespace: only these five separate words (str.split()
# would also split at Unicode spaces and give other words).
_WS = re.compile(r"[ \t\n\f\r]+")


@weir.flat_map
def split(line):
    return [w for w in _WS.split(line) if w]


@weir.map
def pair(word):
    return (word, 1)


@weir.reduce
def sum(a, b):  # noqa: A001
    return a + b


@weir.reduce
def subtract(a, b):
    return a - b


@weir.update
def running_total(values, state):
    return (state or 0) + builtins.sum(values)
