#!/usr/bin/env python3
"""Kernel memory per idle established TCP socket, as docs/deploy.md quotes it.

Opens N loopback connections (2 N sockets, both ends in this process), waits a second, and
prints how much the kernel's slab grew per socket (/proc/meminfo: Slab, SUnreclaim). Needs
2 N + a few open files (the soft limit is raised to the hard one). Run it on a quiet machine:
other work allocating slab at the same time inflates the figure.

    python3 scripts/socket-memory.py [N]      # default 9000
"""
import resource
import socket
import sys
import time


def slab():
    fields = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            key, value = line.split(":")
            fields[key] = int(value.split()[0])
    return fields["Slab"], fields["SUnreclaim"]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if 2 * n + 16 > hard:
        sys.exit(f"needs {2 * n + 16} open files, the hard limit is {hard}: pass a smaller N")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4096)
    time.sleep(0.5)
    slab0, unreclaimable0 = slab()
    sockets = []
    for _ in range(n):
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        sockets += [client, accepted]
    time.sleep(1)
    slab1, unreclaimable1 = slab()
    count = len(sockets)
    print(
        f"{count} sockets: slab +{slab1 - slab0} KiB "
        f"({(slab1 - slab0) * 1024 / count:.0f} B/socket), unreclaimable "
        f"+{unreclaimable1 - unreclaimable0} KiB "
        f"({(unreclaimable1 - unreclaimable0) * 1024 / count:.0f} B/socket)"
    )
    for s in sockets:
        s.close()


if __name__ == "__main__":
    main()
