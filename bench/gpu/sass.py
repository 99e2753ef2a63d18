#!/usr/bin/env python3
"""Compile the CUDA kernels with NVRTC for one variant and dump their SASS — no GPU needed.

Usage: sass.py [--arch sm_90] [--d 128] [--bk 4] [--bv 4] [--kernel tq_decode_staged16] [--out DIR]

The source and options are the library's own (`cargo run --features cuda --example kernel_source`),
so this compiles exactly what a context would. Needs cargo, libnvrtc (pip: nvidia-cuda-nvrtc) on
LD_LIBRARY_PATH or in the venv of this Python, and nvdisasm (pip: nvidia-cuda-nvdisasm). Prints, per kernel, registers, shared memory and an
instruction histogram; writes the full listing to DIR/<kernel>.sass, its labels numbered per function so
that `diff -r` of two DIRs shows exactly the kernels whose machine code differs.
"""
import argparse, ctypes, glob, os, re, subprocess, sys, collections

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find(pattern):
    for base in [sys.prefix] + sys.path:
        hits = glob.glob(os.path.join(base, "**", pattern), recursive=True)
        if hits:
            return hits[0]
    return None


def nvrtc_compile(src, opts):
    lib = ctypes.CDLL(find("libnvrtc.so.*") or "libnvrtc.so")
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"k.cu", 0, None, None) == 0
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        sys.exit("compile failed:\n" + log.value.decode())
    # ptxas -v: registers, spills and shared memory per kernel.
    for line in log.value.decode().splitlines():
        if "registers" in line or "spill" in line or "Compiling entry" in line:
            print("ptxas:", line.strip())
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetCUBIN(prog, buf)
    return buf.raw


def renumber_labels(listing):
    """Labels numbered in order of first appearance within one function (nvdisasm numbers them across
    the whole module), so the listings of two builds compare equal when their machine code is."""
    names = {}
    return re.sub(r"\.L_x_\d+", lambda m: names.setdefault(m.group(0), f".L_{len(names)}"), listing)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--bk", type=int, default=4)
    ap.add_argument("--bv", type=int, default=4)
    ap.add_argument("--kernel", default="tq_decode")
    ap.add_argument("--out", default="/tmp/tq-sass")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    subprocess.run(["cargo", "run", "--quiet", "--release", "--features", "cuda", "--example", "kernel_source", "--",
                    "--d", str(a.d), "--bk", str(a.bk), "--bv", str(a.bv), "--arch", a.arch, "--out", a.out],
                   cwd=ROOT, check=True)
    src = open(os.path.join(a.out, "kernels.cu")).read()
    opts = open(os.path.join(a.out, "options.txt")).read().split() + ["-Xptxas=-v"]
    cubin = nvrtc_compile(src, opts)
    path = os.path.join(a.out, "k.cubin")
    open(path, "wb").write(cubin)
    nvdisasm = find("nvdisasm") or "nvdisasm"
    text = subprocess.run([nvdisasm, "-c", path],
                          capture_output=True, text=True, check=True).stdout
    # Split per function.
    funcs = re.split(r"\n\s*\.section\s+\.text\.", text)
    for f in funcs[1:]:
        name = f.split(",")[0].strip()
        if a.kernel not in name:
            continue
        ins = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", f)
        hist = collections.Counter(i.split(".")[0] for i in ins)
        open(os.path.join(a.out, name + ".sass"), "w").write(renumber_labels(f))
        print(f"{name}: {len(ins)} instructions")
        print("   ", ", ".join(f"{k} {v}" for k, v in hist.most_common(25)))


if __name__ == "__main__":
    main()
