"""Functions that take parameters from the job file, in Python: the
component exports weir:udf/params (built for the world guest-with-params),
so `py.plus(4)` / `py.plus(n = 4)` reach `plus` as its keyword `n`.

Built into udfs/params_py.wasm by udfs/build.sh (componentize-py).
"""

import weir_udf as weir
from weir_udf import Params, Udf  # noqa: F401  (the component's exports)


@weir.map(params=("n",))
def plus(x, n):
    return x + n


@weir.filter(params=("level",))
def level_is(line, level):
    return line.startswith(level)


@weir.map
def double(x):
    return 2 * x
