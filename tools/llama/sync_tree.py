#!/usr/bin/env python3
"""Make DST a copy of SRC, touching only files whose content differs.

Used to refresh the patched llama.cpp tree: files the patch series does not change keep their old
modification time, so an incremental build recompiles only what the patches changed (a plain
re-extract would either rebuild everything or, with the archive's old timestamps, miss files that a
changed patch no longer touches). Files present only in DST are removed.
"""
import filecmp
import os
import shutil
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: sync_tree.py SRC DST", file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    if not os.path.isdir(src):
        print(f"sync_tree.py: SRC '{src}' is not a directory", file=sys.stderr)
        return 2
    os.makedirs(dst, exist_ok=True)
    changed = removed = 0
    seen = set()
    for root, dirs, files in os.walk(src):
        rel = os.path.relpath(root, src)
        droot = os.path.join(dst, rel)
        os.makedirs(droot, exist_ok=True)
        for name in files:
            s = os.path.join(root, name)
            d = os.path.join(droot, name)
            seen.add(os.path.normpath(os.path.join(rel, name)))
            if os.path.islink(s):
                continue
            if not os.path.isfile(d) or not filecmp.cmp(s, d, shallow=False):
                shutil.copy2(s, d) if not os.path.exists(d) else shutil.copyfile(s, d)
                if os.path.exists(d):
                    os.utime(d, None)  # newer than any object built from the old content
                changed += 1
    for root, dirs, files in os.walk(dst):
        rel = os.path.relpath(root, dst)
        for name in files:
            p = os.path.normpath(os.path.join(rel, name))
            if p not in seen:
                os.remove(os.path.join(root, name))
                removed += 1
    print(f"sync_tree: {changed} file(s) updated, {removed} removed in {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
