#!/usr/bin/env python3
"""Generates the hostile layer corpus used by tests/hostile_images.rs.

The generated files are checked in, so the tests need no Python; rerun this script (from any
directory) only to change the corpus, and update README.md with it. Output is deterministic
(mtime 0, gzip mtime 0), so rerunning it without changes leaves the files byte-identical.

Headers are written by hand rather than with tarfile.TarFile.addfile: tarfile refuses or
normalizes several of the malformed shapes we need (PAX size overrides that disagree with the
ustar field, sizes beyond the end of the archive, '..' in GNU long names).

Absolute targets point at CANARY, a fixed host directory the tests watch; relative targets that
climb 4 levels from a snapshot being unpacked (<root>/images/tmp/snapshot-*/) land in the test's
private <dir>/outside, which the tests watch too.
"""

import gzip
import io
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
CANARY = "/tmp/tinylet-hostile-canary"
# From <dir>/root/images/tmp/snapshot-x/ (and later <dir>/root/images/snapshots/<hex>/):
# four '..' reach <dir>, the test's private directory.
OUTSIDE_REL = "../../../../outside"
DEEP_REL = "../" * 12 + CANARY.lstrip("/")

BLOCK = 512


def octal(value, width):
    return ("%0*o" % (width - 1, value)).encode() + b"\0"


def header(name, size=0, kind=b"0", linkname="", mode=0o644, devmajor=0, devminor=0,
           raw_size=None):
    """One ustar header block. raw_size overrides the 12-byte size field verbatim."""
    name_b = name.encode() if isinstance(name, str) else name
    if len(name_b) > 100:
        raise ValueError("name too long for a plain ustar header: %r" % name)
    h = bytearray(BLOCK)
    h[0:len(name_b)] = name_b
    h[100:108] = octal(mode, 8)
    h[108:116] = octal(0, 8)
    h[116:124] = octal(0, 8)
    h[124:136] = raw_size if raw_size is not None else octal(size, 12)
    h[136:148] = octal(0, 12)
    h[148:156] = b" " * 8
    h[156:157] = kind
    link_b = linkname.encode()
    h[157:157 + len(link_b)] = link_b
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[329:337] = octal(devmajor, 8)
    h[337:345] = octal(devminor, 8)
    h[148:156] = ("%06o" % sum(h)).encode() + b"\0 "
    return bytes(h)


def pad(data):
    return data + b"\0" * (-len(data) % BLOCK)


def entry(name, data=b"", **kw):
    return header(name, size=len(data), **kw) + pad(data)


def end():
    return b"\0" * (2 * BLOCK)


def pax_record(key, value):
    body = (" %s=%s\n" % (key, value)).encode()
    n = len(body)
    while len(str(n).encode()) + len(body) != n:
        n = len(str(n).encode()) + len(body)
    return str(n).encode() + body


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


def main():
    # '..' climbing out of the root, plain and hidden behind a real directory.
    write("dotdot.tar", entry(OUTSIDE_REL + "/pwned-dotdot", b"pwned\n") + end())
    write("dotdot-nested.tar",
          entry("a/", kind=b"5", mode=0o755)
          + entry("a/b/../../../../../../outside/pwned-dotdot-nested", b"pwned\n") + end())

    # Absolute name: must land inside the snapshot, never on the host.
    write("absolute.tar", entry(CANARY + "/pwned-absolute", b"pwned\n") + end())

    # Symlink out (absolute target), then a write through it.
    write("symlink-abs-write.tar",
          entry("escape", kind=b"2", linkname=CANARY, mode=0o777)
          + entry("escape/pwned-symlink-abs", b"pwned\n") + end())

    # Symlinks out (relative targets), then writes through them.
    write("symlink-rel-write.tar",
          entry("escape", kind=b"2", linkname=OUTSIDE_REL, mode=0o777)
          + entry("deep", kind=b"2", linkname=DEEP_REL, mode=0o777)
          + entry("escape/pwned-symlink-rel", b"pwned\n")
          + entry("deep/pwned-symlink-deep", b"pwned\n") + end())

    # Hardlinks to host files: absolute, and climbing with '..'.
    write("hardlink-passwd.tar", entry("passwd-link", kind=b"1", linkname="/etc/passwd") + end())
    write("hardlink-dotdot.tar",
          entry("passwd-link", kind=b"1", linkname="../../../../../../../../etc/passwd") + end())
    # A hardlink through a symlink that points out, then a write to the link's name: a host
    # file reached this way would be overwritten in place.
    write("hardlink-via-symlink.tar",
          entry("canary", kind=b"2", linkname=CANARY, mode=0o777)
          + entry("victim-link", kind=b"1", linkname="canary/victim")
          + entry("victim-link", b"overwritten\n") + end())

    # Symlink in one layer, writes through it in the next (each layer alone looks harmless).
    write("chain-layer1.tar",
          entry("lib", kind=b"2", linkname=CANARY, mode=0o777)
          + entry("rel", kind=b"2", linkname=OUTSIDE_REL, mode=0o777) + end())
    write("chain-layer2.tar",
          entry("lib/pwned-chain", b"pwned\n")
          + entry("rel/pwned-chain", b"pwned\n")
          # and a whiteout through the symlink: must not delete the host's victim file
          + entry("lib/.wh.victim") + end())

    # Device nodes and a fifo, one of them at an absolute host path.
    write("devices.tar",
          entry("dev/", kind=b"5", mode=0o755)
          + entry("dev/evil-null", kind=b"3", mode=0o666, devmajor=1, devminor=3)
          + entry("dev/evil-sda", kind=b"4", mode=0o660, devmajor=8, devminor=0)
          + entry("evil-fifo", kind=b"6", mode=0o644)
          + entry(CANARY + "/pwned-device", kind=b"3", mode=0o666, devmajor=1, devminor=5)
          + end())

    # PAX 'size' disagreeing with the ustar size field: a parser honouring the ustar field sees
    # a hidden '..' entry inside the data of "cover"; one honouring PAX sees a 1024-byte file.
    hidden = entry(OUTSIDE_REL + "/pwned-pax", b"pwned\n")
    cover_data = pad(hidden)
    assert len(cover_data) == 1024
    pax = pax_record("size", str(len(cover_data)))
    write("pax-size-desync.tar",
          entry("PaxHeaders/cover", pax, kind=b"x")
          + header("cover", size=0)  # ustar says 0
          + cover_data
          + end())
    # The reverse: PAX says 0, ustar says 1024.
    pax0 = pax_record("size", "0")
    write("pax-size-desync-rev.tar",
          entry("PaxHeaders/cover", pax0, kind=b"x")
          + header("cover", size=1024)
          + cover_data
          + end())

    # GNU long name ('L' entry) hiding '..' beyond the 100-byte ustar name field.
    long_name = ("x" * 120) + "/../../../../../../outside/pwned-longname"
    ln = long_name.encode() + b"\0"
    write("gnu-longname-dotdot.tar",
          header("././@LongLink", size=len(ln), kind=b"L") + pad(ln)
          + header("placeholder", size=6) + pad(b"pwned\n")
          + end())

    # Size fields beyond the end of the archive: a huge one (base-256, 2^40 bytes: 1 TiB) and an
    # ordinary one (1 MiB) with only 1 KiB of data behind it.
    huge = bytes([0x80]) + (1 << 40).to_bytes(11, "big")
    write("huge-size-truncated.tar",
          header("huge", raw_size=huge) + b"A" * 1024)
    # The same 1 TiB claim in a PAX record, with the ustar field saying 0.
    write("pax-huge-size.tar",
          entry("PaxHeaders/huge", pax_record("size", str(1 << 40)), kind=b"x")
          + header("huge", size=0) + b"A" * 1024)
    write("truncated.tar", header("short", size=1 << 20) + b"B" * 1024)

    # Whiteouts trying to delete outside the root.
    write("whiteout-dotdot-name.tar", entry(".wh..") + end())
    write("whiteout-parent.tar", entry("../.wh.outside") + end())
    write("whiteout-dotdot-deep.tar",
          entry("sub/", kind=b"5", mode=0o755) + entry("sub/.wh..") + end())

    # A gzip bomb: ~10 KiB of gzip, 16 MiB of zeros unpacked.
    buf = io.BytesIO()
    big = 16 << 20
    tar_bytes = header("zeros", size=big) + b"\0" * big + end()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(tar_bytes)
    write("gzip-bomb.tar.gz", buf.getvalue())

    # Sanity: every file is small and the well-formed ones parse with tarfile.
    for name in sorted(os.listdir(HERE)):
        if name.endswith((".tar", ".tar.gz")):
            size = os.path.getsize(os.path.join(HERE, name))
            assert size < 20 * 1024, (name, size)
    tarfile.open(os.path.join(HERE, "symlink-abs-write.tar")).getmembers()


if __name__ == "__main__":
    main()
