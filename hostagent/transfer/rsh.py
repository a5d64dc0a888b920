"""The "remote shell" the source's rsync client runs (``rsync -e``): it hands its pipes to the agent.

rsync starts its remote shell as ``<this> <fd> <host> rsync --server <options> . <path>``, with the shell's
stdin/stdout connected to the rsync client. Instead of copying bytes between those and the agent, this
helper sends the two file descriptors themselves, with the server command line rsync asked for, to the
agent over the unix socket ``<fd>`` it inherited (SCM_RIGHTS), closes its own copies and waits: the agent
then reads and writes rsync's pipes directly and relays them over the migration websocket, where the
target validates the command line and runs its own ``rsync --server`` on a path it chooses. When that
server has exited, the agent sends its exit status (one byte), which this helper exits with, so that the
rsync client sees the remote side's status as it would through ssh.

Run as ``python -I -S rsh.py`` (standard library only) so that it starts in a few milliseconds.
"""

import json
import os
import socket
import sys


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    socket.send_fds(sock, [json.dumps(sys.argv[2:]).encode()], [0, 1])
    os.close(0)
    os.close(1)
    try:
        status = sock.recv(1)
    except OSError:
        status = b""
    os._exit(status[0] if status else 255)


if __name__ == "__main__":
    main()
