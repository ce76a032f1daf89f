"""Sandbox only: the readiness probe of a server pod that shares its port with other replicas
(SO_REUSEPORT, see sitecustomize.py). An HTTP probe could be answered by another replica, so
a new pod would be Ready, and an old one stopped, before the new one listens; this passes only
when a process of this pod (its own PID namespace) holds a listening TCP socket on the port."""

import os
import sys


def own_socket_inodes() -> set[str]:
    inodes = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
        except OSError:
            continue
    return inodes


def listening(port: int) -> bool:
    inodes = own_socket_inodes()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                rows = [line.split() for line in lines.read().splitlines()[1:]]
        except OSError:
            continue
        # local_address is ADDR:PORT in hex; state 0A is LISTEN; column 9 is the inode.
        if any(row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port and row[9] in inodes for row in rows):
            return True
    return False


if __name__ == "__main__":
    sys.exit(0 if listening(int(sys.argv[1])) else 1)
