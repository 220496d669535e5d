#!/usr/bin/env bash
# Run a command (the test suite) in a private network namespace that has only `lo`, so a server that cannot
# bind to 127.0.0.1 only (Orthanc 1.10 listens on 0.0.0.0) is never reachable from outside.
# Falls back to running the command as is, with a note, where namespaces are not permitted.
set -euo pipefail
if [ "${HIMIG_PRIVATE_NETNS:-}" = 1 ]; then
  if ! { command -v ip >/dev/null && ip link set lo up; }; then
    # No iproute2: raise IFF_UP on lo with the SIOCGIFFLAGS/SIOCSIFFLAGS ioctls.
    python3 - <<'PY'
import fcntl, socket, struct
s = socket.socket()
flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh", b"lo", 0))[:18])[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))
PY
  fi
  exec "$@"
fi
if command -v unshare >/dev/null; then
  if unshare --net true 2>/dev/null; then
    exec unshare --net env HIMIG_PRIVATE_NETNS=1 bash "$0" "$@"
  elif unshare --net --map-root-user true 2>/dev/null; then
    exec unshare --net --map-root-user env HIMIG_PRIVATE_NETNS=1 bash "$0" "$@"
  fi
fi
echo "note: cannot create a private network namespace (unshare --net not permitted); running on the host network," \
     "the Orthanc PACS tests will skip"
exec "$@"
