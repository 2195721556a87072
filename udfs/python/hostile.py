"""A hostile Python UDF: what a sandbox must contain (udfs/hostile/ is the
same for core modules). Built into udfs/hostile_py.wasm by udfs/build.sh;
the runtime's tests (engine/runtime/tests/engine/components.rs) call each
function and expect a typed error or a deterministic answer.
"""

import os
import time

import weir_udf as weir
from weir_udf import Udf  # noqa: F401  (the component's export)


@weir.map
def spin(x):
    # An endless loop: stopped by fuel.
    while True:
        pass


@weir.map
def grow(x):
    # Memory growth without end: stopped at the memory limit.
    chunks = []
    while True:
        chunks.append(bytearray(1 << 20))


@weir.map
def read_file(path):
    # No filesystem: no directory is preopened.
    with open(path) as f:
        return f.read()


@weir.map
def clock(x):
    # Reads the clock twice and branches on it: with the batch time as the
    # clock, both reads agree and the answer is the same on recompute.
    t1 = time.time()
    time.sleep(0.25)
    t2 = time.time()
    return (x, "still" if t1 == t2 else "moved", int(t1 * 1000), time.monotonic_ns())


@weir.map
def entropy(x):
    # Random bytes from WASI: seeded with (module, batch time, partition).
    return (x, os.urandom(8))


@weir.map
def environ(x):
    return (x, sorted(os.environ.items()))


@weir.map
def shout(x):
    print("about to fail on", x)
    raise ValueError(f"bad record {x!r}")


@weir.map
def stamp(word):
    # A pair whose value depends on the clock and on random bytes: the
    # recomputation tests drop its shuffle output and expect the same bytes.
    t1 = time.time()
    t2 = time.time()
    return (word, f"{word}@{t1}{'' if t1 == t2 else '!'}:{os.urandom(4).hex()};")


@weir.reduce
def concat(a, b):
    return a + b
