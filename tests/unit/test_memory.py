"""Memory freed after a burst goes back to the system (glibc: malloc_trim)."""

import ctypes

from mlflow_operator.runtime import memory


def _rss_pages() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1])


def test_pages_freed_after_a_burst_are_given_back_to_the_system():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # Small blocks (below glibc's mmap threshold) live in the heap; the last one keeps the
    # heap's top in use, so only a trim (not the heap shrinking) can return the rest.
    blocks = [libc.malloc(64 * 1024) for _ in range(1000)]
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)
    for block in blocks[:-1]:
        libc.free(block)
    before = _rss_pages()
    assert memory.release_freed_memory()
    after = _rss_pages()
    libc.free(blocks[-1])
    assert before - after > 10_000  # of the ~16,000 pages freed (64 MiB), most are returned
