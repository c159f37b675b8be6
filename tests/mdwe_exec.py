"""`python tests/mdwe_exec.py PROGRAM ARGS...`: exec PROGRAM with writable+executable memory forbidden.

PR_SET_MDWE (Linux 6.3+) is the kernel's own form of systemd's MemoryDenyWriteExecute=yes; running the
server under it checks that the unit's setting holds. Exits 77 when the kernel does not support it.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

if __name__ == "__main__":
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        print(f"PR_SET_MDWE: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        sys.exit(77)
    os.execv(sys.argv[1], sys.argv[1:])  # noqa: S606 - the point is to become PROGRAM, keeping the prctl
